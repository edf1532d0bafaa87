package mesh

import (
	"fmt"
	"time"

	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// LoseDeliveries makes every runner's persisted consumers drop the
// deliveries f returns true for, until the returned function is called.
func LoseDeliveries(f func(streamSeq, numDelivered uint64) bool) (restore func()) {
	loseDelivery.Store(&f)
	return func() { loseDelivery.Store(nil) }
}

// DebugPersisted describes a runner's persisted-message consumer, for a
// failing test's log.
func DebugPersisted(r *Runner) string {
	r.mu.Lock()
	pc := r.pc
	r.mu.Unlock()
	if pc == nil {
		return "no persisted consumer"
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	out := fmt.Sprintf("consumer %s: want %d shards, gen %v, version %d built %d, held %d, running %v, queues %d\n",
		pc.name, len(pc.want), pc.gen != nil, pc.version, pc.built, len(pc.held), pc.running, len(pc.queues))
	for addr, q := range pc.queues {
		h := q[0]
		out += fmt.Sprintf("  %s: %d queued; head seq %d running %v attempts %d msg %s\n", addr, len(q), h.seq, h.running, h.attempts, h.msgID)
	}
	if pc.gen != nil {
		out += fmt.Sprintf("  last delivery %d, stale %v\n", pc.gen.lastCSeq, pc.gen.stale)
	}
	return out
}

// StallAssignmentWatch makes r ignore its assignment watch from now on, as
// if the watch had stalled: only re-reading the assignments can move its
// shards.
func StallAssignmentWatch(r *Runner) { r.coordp.Load().stallWatch.Store(true) }

// LockRunner holds r's lock until the returned function is called, as a
// shard set-up blocked on a wedged NATS connection would.
func LockRunner(r *Runner) (unlock func()) {
	r.mu.Lock()
	return r.mu.Unlock
}

// SetWallClock makes r read the wall clock as now() + offset where it
// compares it with times from elsewhere, as on a host whose clock is wrong
// or has jumped; the monotonic clock, as on such a host, is not moved.
// Call before Start.
func SetWallClock(r *Runner, offset time.Duration) {
	r.wallNow = func() time.Time { return time.Now().Round(0).Add(offset) }
}

// ReplyKey is the key of a persisted message's stored reply.
func ReplyKey(msgID string) string { return protocol.ReplyKey(msgID) }

// FailReplyLookups makes every runner's look-ups of stored replies call f
// first and fail with the error it returns, until the returned function
// is called.
func FailReplyLookups(f func(msgID string) error) (restore func()) {
	failReplyLookup.Store(&f)
	return func() { failReplyLookup.Store(nil) }
}

// ShardOfEntity is the shard of an entity for r.
func ShardOfEntity(r *Runner, entityType, id string) ShardID {
	return ShardID{Group: r.cfg.groupOf(entityType), N: protocol.ShardOf(id, r.cfg.ShardsPerGroup)}
}

// DropPersistedShard makes r's persisted consumer stop handling shard s's
// messages, as a fencing or hand-off of s does, without waiting.
func DropPersistedShard(r *Runner, s ShardID) { persistedOf(r).remove(s) }

// AddPersistedShard makes r's persisted consumer handle shard s's messages
// again, as getting its lease back does.
func AddPersistedShard(r *Runner, s ShardID) { persistedOf(r).add(s) }

// PersistedHeld is how many delivered messages r's persisted consumer
// holds (queued, running or waiting for a retry).
func PersistedHeld(r *Runner) int {
	pc := persistedOf(r)
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return len(pc.held)
}

func persistedOf(r *Runner) *persistConsumer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pc
}

// HoldRebuilds holds every runner's persisted-consumer rebuilds until the
// returned function is called.
func HoldRebuilds() (release func()) {
	ch := make(chan struct{})
	holdRebuilds.Store(&ch)
	return func() {
		if holdRebuilds.CompareAndSwap(&ch, nil) {
			close(ch)
		}
	}
}

// PersistedDeliveries is how many deliveries r's current persisted
// consumer has made (0 without one).
func PersistedDeliveries(r *Runner) uint64 {
	pc := persistedOf(r)
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.gen == nil {
		return 0
	}
	return pc.gen.lastCSeq
}
