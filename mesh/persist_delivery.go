package mesh

import (
	"context"
	"errors"
	"fmt"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Delivery: each message a consumer generation delivers is parsed, held by
// stream sequence, queued behind its entity's earlier messages and run in
// its entity's mailbox; finish acknowledges it and starts the next.

type pmsg struct {
	m          natsjs.Msg // newest delivery: acks go through it
	seq        uint64
	shard      ShardID
	addr       actor.Address
	rpc        string
	codec      actor.Codec
	msgID      string
	replyTo    string
	attempts   int
	deadReason error
	due        time.Time // local (monotonic) time to hold it until; zero: none
	noReply    bool      // Mesh-No-Reply: neither look up nor store a reply
	stored     []byte    // the handler's answer, once its store failed: only the store is retried
	running    bool
	cancel     context.CancelFunc // ends the running handler's context (fencing); nil when not running
}

// onMsg receives one delivery of generation g.
func (pc *persistConsumer) onMsg(g *consumerGen, m natsjs.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		return
	}
	if pc.hooks.lost(meta.Sequence.Stream, meta.NumDelivered) {
		return // fault injection (tests): as if lost in flight
	}
	seq := meta.Sequence.Stream
	pc.mu.Lock()
	if pc.closed || pc.gen != g || g.stale {
		pc.mu.Unlock()
		return
	}
	// Order check. A delivery lost in flight (a consumer leader change, a
	// dropped pull) would be redelivered only after the ack wait, behind
	// its entity's later messages. Deliveries are numbered without gaps, so
	// a gap means one was lost: rebuild the consumer, which delivers every
	// unacknowledged message again in stream order, before handling
	// anything after the gap.
	if cseq := meta.Sequence.Consumer; cseq != g.lastCSeq+1 {
		g.stale = true
		last := g.lastCSeq
		pc.mu.Unlock()
		pc.log.Warn("persisted messages out of sequence: rebuilding the consumer", "consumer", pc.name, "delivery", cseq, "after", last)
		pc.requestRebuild()
		return
	}
	g.lastCSeq++
	if pm := pc.held[seq]; pm != nil {
		pm.m = m // held already (a rebuild, or the ack wait passed): ack through the newest delivery
		pc.mu.Unlock()
		return
	}
	pc.mu.Unlock()
	if pc.done.has(seq) {
		// Handled here already; the ack was lost, or had not reached the
		// server before the consumer was rebuilt. Ack again.
		pc.trace("persisted: delivery of a message handled here: acked again", &pmsg{seq: seq})
		_ = m.Ack()
		return
	}
	pm := pc.parse(m, seq, int(meta.NumDelivered)-1, meta.Timestamp)
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closed || pc.gen != g || pc.held[seq] != nil {
		return
	}
	if pm.deadReason == nil && !g.shards[pm.shard] { // wanted, and not removed since g was built
		pc.trace("persisted: delivery for a shard not served: left unacknowledged", pm)
		return // a shard being removed: left for its next owner
	}
	pc.trace("persisted: delivery", pm)
	pc.held[seq] = pm
	q := pc.queues[pm.addr]
	pc.queues[pm.addr] = append(q, pm)
	if len(q) == 0 {
		pc.startLocked(pm)
	}
}

// parse reads a delivery's headers; a message that can never be handled
// gets a deadReason. stored is the server's time of storing it.
func (pc *persistConsumer) parse(m natsjs.Msg, seq uint64, attempts int, stored time.Time) *pmsg {
	pm := &pmsg{m: m, seq: seq, attempts: attempts}
	h := m.Headers()
	if v := h.Get(protocol.HeaderDeliverAt); v != "" {
		if at, err := time.Parse(time.RFC3339Nano, v); err == nil {
			pm.due = holdUntil(at, stored, pc.host.wallClock())
		}
	}
	shard, entityType, rpc, ok := pc.subj.ParsePersist(m.Subject())
	codec, cerr := protocol.CodecByName(h.Get(protocol.HeaderCodec))
	id, iderr := protocol.GetID(h)
	pm.msgID, pm.replyTo = h.Get(protocol.HeaderMsgID), h.Get(protocol.HeaderReplyTo)
	pm.noReply = h.Get(protocol.HeaderNoReply) == "true"
	if pm.replyTo != "" && !pc.out.allowed(pm.replyTo) {
		// Handled and stored, but not published where the sender said:
		// the runner's permissions must not serve a forged destination.
		pc.log.Warn("persisted message's reply subject outside the reply prefixes: not published", "msg", truncate(pm.msgID, 80), "reply", truncate(pm.replyTo, 80))
		pm.replyTo = ""
	}
	if pm.msgID == "" {
		pm.msgID = h.Get("Nats-Msg-Id")
	}
	if codec == nil {
		codec = protocol.JSON
	}
	pm.codec, pm.shard, pm.addr, pm.rpc = codec, shard, actor.Address{Type: entityType, ID: id}, rpc
	switch {
	case !ok:
		pm.deadReason = fmt.Errorf("%w: subject %q", ErrBadRequest, m.Subject())
	case cerr != nil:
		pm.deadReason = fmt.Errorf("%w: %w", ErrBadRequest, cerr)
	case iderr != nil:
		pm.deadReason = fmt.Errorf("%w: %w", ErrBadRequest, iderr)
	case pm.msgID == "":
		pm.deadReason = fmt.Errorf("%w: no %s or Nats-Msg-Id", ErrBadRequest, protocol.HeaderMsgID)
	case len(pm.msgID) > protocol.MaxMessageIDLen:
		pm.deadReason = fmt.Errorf("%w: message id of %d bytes, limit %d", ErrBadRequest, len(pm.msgID), protocol.MaxMessageIDLen)
	default:
		if err := actor.ValidateID(id); err != nil {
			pm.deadReason = err
		} else if g := pc.cfg.groupOf(entityType); g != shard.Group || protocol.ShardOf(id, pc.cfg.ShardsPerGroup) != shard.N {
			pm.deadReason = fmt.Errorf("%w: entity %s/%s is not in shard %s", ErrBadRequest, entityType, id, shard)
		}
	}
	return pm
}

// holdUntil returns the local time until which a message to deliver at
// `at`, stored by the server at `stored`, is held (zero: none). A schedule
// fires at the whole second at or after its time by the server's clock, so
// the server's storing time says how early, if at all, the message came;
// the runner's own wall clock (now) can only shorten the wait, so a runner
// whose clock is behind, or jumps back, does not hold the message for the
// difference. The result is on the monotonic clock: a jump of the wall
// clock while the message waits does not move it either.
func holdUntil(at, stored, now time.Time) time.Time {
	wait := at.Sub(now)
	if !stored.IsZero() {
		wait = min(wait, at.Sub(stored))
	}
	if wait <= 0 {
		return time.Time{}
	}
	return time.Now().Add(wait)
}

// startLocked runs pm, the head of its entity's queue.
func (pc *persistConsumer) startLocked(pm *pmsg) {
	pm.running = true
	pc.running[pm.shard]++
	pc.wg.Add(1)
	go pc.process(pm)
}

// stillHeld reports whether pm is still to be handled here.
func (pc *persistConsumer) stillHeld(pm *pmsg) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return !pc.closed && pc.held[pm.seq] == pm && (pm.deadReason != nil || pc.want[pm.shard])
}

// process runs one message (the head of its entity's queue).
func (pc *persistConsumer) process(pm *pmsg) {
	defer pc.wg.Done()
	if pm.deadReason != nil {
		pc.deadLetter(pm, pm.deadReason)
		return
	}
	// Schedules fire on whole seconds and may be early: hold the message
	// (and its entity's later ones) until its time.
	if wait := time.Until(pm.due); !pm.due.IsZero() && wait > 0 {
		pc.processAfter(pm, wait)
		return
	}
	if pm.stored != nil { // handled; storing its reply failed
		pc.storeAndFinish(pm, pm.stored)
		return
	}
	if !pm.noReply {
		ctx, cancel := context.WithTimeout(context.Background(), pc.cfg.CallTimeout)
		// Handled before (a redelivery after a crash, or a resend of the
		// same id): answer from the stored reply, do not run the handler
		// again.
		var e natsjs.KeyValueEntry
		err := pc.hooks.replyLookup(pm.msgID)
		if err == nil {
			e, err = pc.p.replies.Get(ctx, protocol.ReplyKey(pm.msgID))
		}
		cancel()
		if err == nil {
			pc.trace("persisted: answered from its stored reply, not run", pm)
			pc.publishStored(pm, e.Value())
			pc.finish(pm, true)
			return
		}
		if !errors.Is(err, natsjs.ErrKeyNotFound) {
			// Without the reply store (NATS unreachable, say) neither the
			// check nor the reply can be done: do not run the handler, whose
			// reply could not be stored, so its next owner would run it
			// again.
			pc.retryLater(pm, fmt.Errorf("check the stored reply: %w", err))
			return
		}
	}
	// A shard removed meanwhile (handed off or fenced, maybe already served
	// elsewhere), or whose lease has just passed its validity (a pause),
	// must not deliver: its next owner has the message.
	if !pc.stillHeld(pm) || !pc.host.leaseValid(pm.shard) {
		pc.finish(pm, false)
		return
	}
	rep := &persistReplier{pc: pc, pm: pm}
	// The handler's context ends when the shard is fenced (its lease lost:
	// the next owner runs the message), and reads the lease's validity
	// from the clock on Err, as a singleton's does: a handler doing long
	// work (a workflow's activities) stops instead of going on where it no
	// longer owns the entity.
	lctx, cancel := newLeaseContext(func() bool { return pc.host.leaseValid(pm.shard) })
	pc.mu.Lock()
	pm.cancel = cancel
	pc.mu.Unlock()
	hctx := context.WithValue(lctx, msgIDKey{}, pm.msgID)
	if o := pc.obs; o != nil {
		if pm.attempts > 0 {
			o.Redelivered(pm.addr, pm.rpc)
		}
		hctx, rep.obs = o.CallReceived(hctx, pm.addr, pm.rpc, pm.shard, pc.msgOf(pm).Headers())
	}
	if err := pc.host.deliver(hctx, pm.addr, pm.rpc, pm.codec, pc.msgOf(pm).Data(), rep); err != nil {
		rep.Reply(nil, err)
	}
}

type msgIDKey struct{}

// MessageIDFromContext returns the id of the persisted message a handler is
// handling (the caller's MessageID, or the generated one), and false for a
// volatile call. A handler whose effect must happen exactly once records
// the ids it applied together with its state (a durable-state or
// event-sourced entity), and answers a message it already applied without
// applying it again: the runner delivers each message at least once, and
// twice when it crashes between running the handler and storing the reply.
func MessageIDFromContext(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(msgIDKey{}).(string)
	return id, ok
}

// ackPayload is the body of a JetStream acknowledgement (ADR-15).
var ackPayload = []byte("+ACK")

// finish acknowledges (or leaves) a message and starts its entity's next.
func (pc *persistConsumer) finish(pm *pmsg, ack bool) {
	if ack {
		pc.trace("persisted: finished, acknowledged", pm)
	} else {
		pc.trace("persisted: finished, left unacknowledged", pm)
	}
	if ack {
		pc.done.add(pm.seq)
		pc.mu.Lock()
		m := pm.m
		pc.mu.Unlock()
		// An ack is a plain publish to the delivery's reply subject (what
		// Msg.Ack does); batched with the replies (see replyBatcher).
		pc.out.publish(m.Reply(), ackPayload, nil)
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.stoppedLocked(pm)
	if pc.held[pm.seq] == pm {
		delete(pc.held, pm.seq)
	}
	q := pc.queues[pm.addr]
	if len(q) == 0 || q[0] != pm {
		return
	}
	q = q[1:]
	if len(q) == 0 {
		delete(pc.queues, pm.addr)
		return
	}
	pc.queues[pm.addr] = q
	if !pc.closed {
		pc.startLocked(q[0])
	}
}

// stoppedLocked records that pm is no longer running.
func (pc *persistConsumer) stoppedLocked(pm *pmsg) {
	if !pm.running {
		return
	}
	pm.running = false
	if pc.running[pm.shard]--; pc.running[pm.shard] <= 0 {
		delete(pc.running, pm.shard)
	}
	close(pc.idle)
	pc.idle = make(chan struct{})
}

// processAfter processes pm again after d, unless it is dropped (its shard
// removed, the runner stopping) meanwhile; pm stays at the head of its
// entity's queue until then, and its ack wait is reset.
func (pc *persistConsumer) processAfter(pm *pmsg, d time.Duration) {
	_ = pc.msgOf(pm).InProgress()
	pc.mu.Lock()
	pc.stoppedLocked(pm) // waiting is not handling: a hand-off need not wait for it
	pc.mu.Unlock()
	pc.wg.Add(1)
	go func() {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-pc.quit:
			t.Stop()
			pc.wg.Done()
			return
		}
		pc.mu.Lock()
		if pc.closed || pc.held[pm.seq] != pm || !(pm.deadReason != nil || pc.want[pm.shard]) {
			if !pc.closed && pc.held[pm.seq] == pm {
				// Its shard was removed while it waited (remove kept it, as it
				// was running then): leave it, unacknowledged, to the shard's
				// next owner, as remove does with what is not running. Kept,
				// it would block its entity's queue here for good should the
				// shard come back.
				pc.trace("persisted: shard removed while it waited: left unacknowledged", pm)
				pc.forgetIdleLocked(pm.addr)
			}
			pc.mu.Unlock()
			pc.wg.Done()
			return
		}
		pm.running = true
		pc.running[pm.shard]++
		pc.mu.Unlock()
		pc.process(pm)
	}()
}

// forgetIdleLocked forgets the messages queued for addr that are not
// running, leaving them unacknowledged for their shard's next owner; a
// running one stays until it finishes. pc.mu is held.
func (pc *persistConsumer) forgetIdleLocked(addr actor.Address) {
	q := pc.queues[addr]
	keep := q[:0]
	for _, pm := range q {
		if pm.running {
			keep = append(keep, pm)
		} else {
			delete(pc.held, pm.seq)
		}
	}
	if len(keep) == 0 {
		delete(pc.queues, addr)
	} else {
		pc.queues[addr] = keep
	}
}

// msgOf returns pm's newest delivery (onMsg replaces it).
func (pc *persistConsumer) msgOf(pm *pmsg) natsjs.Msg {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pm.m
}
