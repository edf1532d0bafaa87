package mesh

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
)

// Serving shards: a served shard has a subscription on its subject feeding
// the runner's inbox, an open actor partition, its persisted messages in
// the runner's consumer and its singletons running. A shard stops being
// served gracefully (a hand-off: calls received are handled, entities
// passivated) or at once (fencing: its lease is lost).

// shardSpace numbers a cluster's shards from 0 (group index times
// ShardsPerGroup plus the shard's number): one actor partition per shard,
// so that a shard's entities can be stopped as a unit.
type shardSpace struct {
	groups   map[string]int // group name -> index
	perGroup int
}

func newShardSpace(cfg *ClientConfig) shardSpace {
	s := shardSpace{groups: make(map[string]int, len(cfg.ShardGroups)), perGroup: cfg.ShardsPerGroup}
	for i, g := range cfg.ShardGroups {
		s.groups[g] = i
	}
	return s
}

// size is the number of shards.
func (s shardSpace) size() int { return len(s.groups) * s.perGroup }

// index is shard sh's number, which must be in the space (has).
func (s shardSpace) index(sh ShardID) int { return s.groups[sh.Group]*s.perGroup + sh.N }

// has reports whether sh is a shard of the cluster.
func (s shardSpace) has(sh ShardID) bool {
	_, ok := s.groups[sh.Group]
	return ok && sh.N >= 0 && sh.N < s.perGroup
}

// inboxSize bounds the calls received but not yet in a mailbox. Past it
// nats.go drops messages as a slow consumer (callers then time out), as
// it would past an async subscription's pending limit.
const inboxSize = 1 << 16

// dispatch moves calls from the shard subscriptions to entity mailboxes.
func (r *Runner) dispatch() {
	defer close(r.dispatchDone)
	for {
		select {
		case m := <-r.inbox:
			r.onCall(m)
		case <-r.stopDispatch:
			for { // the subscriptions are gone: hand over what arrived
				select {
				case m := <-r.inbox:
					r.onCall(m)
				default:
					return
				}
			}
		}
	}
}

// barrier returns once the dispatcher has handled every message queued
// before the call (or ctx ends).
func (r *Runner) barrier(ctx context.Context) {
	m := &nats.Msg{} // no subject: a marker, never a call
	done := make(chan struct{})
	r.barriers.Store(m, done)
	select {
	case r.inbox <- m:
	case <-ctx.Done():
		r.barriers.Delete(m)
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// leaseValid reports whether this runner may act on shard s now: always
// when standalone, else only while the shard's lease is locally valid,
// checked against the clock at this moment rather than waiting for the
// lease's watchdog, which may not have run yet after a pause.
func (r *Runner) leaseValid(s ShardID) bool {
	c := r.coordp.Load()
	return c == nil || c.valid(s, time.Now())
}

// serveShard starts serving shard s: its entities may activate here, its
// subject is subscribed and its persisted messages are consumed. The caller
// must own the shard.
func (r *Runner) serveShard(s ShardID) error {
	if !r.space.has(s) {
		return fmt.Errorf("%w: no shard %s", ErrInvalidOption, s)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	if _, ok := r.shards[s]; ok {
		r.mu.Unlock()
		return nil
	}
	if err := r.rt.OpenPartition(r.space.index(s)); err != nil {
		r.mu.Unlock()
		return err
	}
	sub, err := r.nc.ChanSubscribe(r.subj.ShardCalls(s), r.inbox)
	if err != nil {
		r.mu.Unlock()
		_ = r.rt.ClosePartition(context.Background(), r.space.index(s), nil)
		return fmt.Errorf("subscribe shard %s: %w", s, err)
	}
	r.shards[s] = sub
	pc := r.pc
	r.mu.Unlock()
	if pc != nil {
		pc.add(s)
	}
	if r.obs != nil {
		r.obs.ShardAcquired(s)
	}
	for _, sg := range r.singletonsOf(s) {
		sg.start(func() bool { return r.leaseValid(sg.shard) }, &r.env)
	}
	return nil
}

// unlistShard removes s from the shards served and returns its
// subscription and the persisted consumer; ok is false if s was not served.
func (r *Runner) unlistShard(s ShardID) (sub *nats.Subscription, pc *persistConsumer, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sub, ok = r.shards[s]
	delete(r.shards, s)
	return sub, r.pc, ok
}

// stopShard stops serving shard s. Graceful (abort nil): no new calls are
// taken, calls already received are handled, then the shard's entities are
// passivated. Fencing (abort non-nil): queued calls fail with abort at once.
// It returns when the shard's entities have stopped or ctx ends.
func (r *Runner) stopShard(ctx context.Context, s ShardID, abort error) error {
	if abort != nil {
		return r.fenceShard(ctx, s, abort)
	}
	sub, pc, ok := r.unlistShard(s)
	if !ok {
		return nil
	}
	if r.obs != nil {
		defer r.obs.ShardReleased(s)
	}
	for _, sg := range r.singletonsOf(s) {
		sg.stop(r.cfg.EntityTerminationTimeout)
	}
	if pc != nil {
		// No new persisted message; those already in mailboxes finish, and
		// the runner's consumer lets go of the shard before its lease is
		// released.
		defer pc.remove(s)(ctx)
	}
	if !r.nc.IsConnected() {
		// Draining needs the server: without it, unsubscribe (the calls in
		// flight are then lost to their callers' timeouts, as the connection
		// itself is).
		_ = sub.Unsubscribe()
		return r.rt.ClosePartition(ctx, r.space.index(s), nil)
	}
	// Drain, not Unsubscribe: a call the server routed here just before the
	// unsubscription must still reach the dispatcher (and get an answer)
	// instead of being dropped by the client library, which would leave its
	// caller waiting for the timeout.
	if err := sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		r.log.Warn("drain shard subscription", "shard", s.String(), "err", err)
	}
	// Once the server has processed the unsubscription (flush) and the
	// dispatcher has handed over everything received before it (barrier),
	// every call that reached us is in a mailbox, where the partition's
	// closing lets it finish.
	if err := r.flush(ctx); err == nil {
		r.barrier(ctx)
	}
	return r.rt.ClosePartition(ctx, r.space.index(s), nil)
}

// fenceShard stops serving s at once because its lease is lost. It stops
// processing first, in memory, before anything that needs the NATS
// connection or r.mu: the connection may be unreachable or wedged, and
// serveShard holds r.mu across a subscription that can wait for a wedged
// connection (nats.go's flusher holds the connection's lock in a blocked
// write until its timeout), which once delayed fencing by seconds (the
// long chaos run). The fenced shard answers nothing from now on
// (errFenced): its subscription may linger on the server (a partition
// hides our unsubscription) while the new owner's receives the same calls,
// so a NotServing from here could make a caller retry a call the new owner
// ran. Its callers get the new owner's answer, or time out.
func (r *Runner) fenceShard(ctx context.Context, s ShardID, abort error) error {
	abort = fmt.Errorf("%w (%w)", errFenced, abort)
	part := r.space.index(s)
	_ = r.rt.FencePartition(part, abort)
	for _, sg := range r.singletonsOf(s) {
		sg.cancelNow()
	}
	if pc := r.pcp.Load(); pc != nil {
		pc.fence(s) // the persisted messages' running handlers stop
	}
	err := r.rt.ClosePartition(ctx, part, abort)
	sub, pc, ok := r.unlistShard(s)
	if !ok {
		return err
	}
	if r.obs != nil {
		defer r.obs.ShardReleased(s)
	}
	// A set-up of the shard that finished while we waited for r.mu may
	// have reopened the partition or started singletons: stop them again.
	_ = r.rt.FencePartition(part, abort)
	for _, sg := range r.singletonsOf(s) {
		sg.cancelNow()
	}
	if pc != nil {
		pc.remove(s) // no waiting: the connection may be wedged
	}
	// Unsubscribe, not drain: a drain started while the client is
	// reconnecting leaves the subscription on the server.
	if uerr := sub.Unsubscribe(); uerr != nil && !errors.Is(uerr, nats.ErrConnectionClosed) && !errors.Is(uerr, nats.ErrBadSubscription) {
		r.log.Warn("unsubscribe fenced shard", "shard", s.String(), "err", uerr)
	}
	return err
}

// errFenced marks calls refused by a fenced shard: they are not answered.
var errFenced = fmt.Errorf("%w: shard fenced", actor.ErrNotServing)

// errLeaseLapsed refuses a message whose shard's lease lapsed while it
// waited in the mailbox: fenced, so not answered.
var errLeaseLapsed = fmt.Errorf("%w: lease no longer valid", errFenced)
