package mesh

import (
	"fmt"
	"time"
)

// WithTestHooks gives a runner the test hooks below (a runner made without
// it has none, as in production).
func WithTestHooks() Option {
	return func(o *options) error { o.hooks = &hooks{}; return nil }
}

// hooksOf returns r's test hooks; r must have been made WithTestHooks.
func hooksOf(r *Runner) *hooks {
	if r.hooks == nil {
		panic("mesh: runner made without WithTestHooks")
	}
	return r.hooks
}

// LoseDeliveries makes r's persisted consumer drop the deliveries f
// returns true for, until the returned function is called.
func LoseDeliveries(r *Runner, f func(streamSeq, numDelivered uint64) bool) (restore func()) {
	h := hooksOf(r)
	h.loseDelivery.Store(&f)
	return func() { h.loseDelivery.Store(nil) }
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
func StallAssignmentWatch(r *Runner) { hooksOf(r).stallWatch.Store(true) }

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

// FailReplyLookups makes r's look-ups of stored replies call f first and
// fail with the error it returns, until the returned function is called.
func FailReplyLookups(r *Runner, f func(msgID string) error) (restore func()) {
	h := hooksOf(r)
	h.failReplyLookup.Store(&f)
	return func() { h.failReplyLookup.Store(nil) }
}

// ShardOfEntity is the shard of an entity for r.
func ShardOfEntity(r *Runner, entityType, id string) ShardID { return r.cfg.shardOf(entityType, id) }

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

// HoldRebuilds holds r's persisted-consumer rebuilds until the returned
// function is called.
func HoldRebuilds(r *Runner) (release func()) {
	h := hooksOf(r)
	ch := make(chan struct{})
	h.holdRebuilds.Store(&ch)
	return func() {
		if h.holdRebuilds.CompareAndSwap(&ch, nil) {
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
