package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Settling: what follows a persisted message's handler (storing the reply,
// publishing it, acknowledging the message), retries and dead letters.

// persistReplier receives the outcome of one persisted message.
type persistReplier struct {
	pc  *persistConsumer
	pm  *pmsg
	obs CallObservation // nil without an Observer
}

// Started implements actor.StartNotifier.
func (p *persistReplier) Started() {
	if p.obs != nil {
		p.obs.Started()
	}
}

func (p *persistReplier) Chunk(context.Context, []byte) error {
	return fmt.Errorf("%w: persisted rpcs cannot stream", ErrBadRequest)
}

// Reply is called on the entity's goroutine (or by whoever refused the
// message). What follows the handler (storing its reply, publishing it,
// acknowledging the message, or scheduling a retry) needs NATS, which a
// runner cut off cannot reach for up to CallTimeout: it runs on a goroutine
// of its own, so that the entity is free at once. Otherwise a fenced
// shard's entities stayed active until their reply stores gave up, long
// after the next owner had activated them (K7, docs/reliability.md). The
// entity's next persisted message still waits for this one's finish, and a
// hand-off for its shard's running count.
func (p *persistReplier) Reply(payload []byte, err error) {
	pc := p.pc
	if p.obs != nil {
		p.obs.Done(declared(pc.host.rpcInfo(p.pm.addr.Type, p.pm.rpc), err))
	}
	pc.mu.Lock()
	if p.pm.cancel != nil {
		p.pm.cancel() // the handler returned: release its context
		p.pm.cancel = nil
	}
	async := !pc.closed // close waits for wg: no Add once it may be waiting
	if async {
		pc.wg.Add(1)
	}
	pc.mu.Unlock()
	if !async {
		p.settle(payload, err)
		return
	}
	go func() {
		defer pc.wg.Done()
		p.settle(payload, err)
	}()
}

// settle deals with the outcome of the message's handler.
func (p *persistReplier) settle(payload []byte, err error) {
	pc, pm := p.pc, p.pm
	code := ""
	if err != nil {
		code = replyCode(err)
	}
	switch code {
	case protocol.CodeNotServing, protocol.CodeShuttingDown:
		pc.finish(pm, false) // not run: the shard's next owner gets it again
		return
	case protocol.CodeDefect, protocol.CodeActivation, protocol.CodeMailboxFull, protocol.CodeTimeout, protocol.CodeCanceled:
		pm.attempts++
		if pm.attempts >= pc.cfg.PersistMaxAttempts {
			pc.deadLetter(pm, fmt.Errorf("after %d attempts: %w", pm.attempts, err))
			return
		}
		pc.retryLater(pm, err)
		return
	case protocol.CodeUnknownEntity, protocol.CodeUnknownRPC, protocol.CodeMalformed, protocol.CodeInvalidID, protocol.CodeNotImplemented, protocol.CodeBadRequest, protocol.CodePayloadTooLarge:
		pc.deadLetter(pm, err)
		return
	}
	// An answer: a result, a declared failure, or the handler's error.
	if pm.noReply {
		pc.finish(pm, true)
		return
	}
	var stored []byte
	if err == nil {
		stored = protocol.EncodeStored(pm.codec, "", payload)
	} else {
		info := pc.host.rpcInfo(pm.addr.Type, pm.rpc)
		em := pc.out.errorMsg("", pm.codec, info, err)
		stored = protocol.EncodeStored(pm.codec, em.Header.Get(protocol.HeaderError), em.Data)
	}
	// A reply the server would refuse to store (or publish) is answered
	// with PayloadTooLarge: retrying could never store it.
	if max := pc.nc.MaxPayload(); max > 0 && int64(len(stored))+1024 > max {
		em := errorMsg("", pm.codec, nil, fmt.Errorf("%w: reply of %d bytes, limit %d", ErrPayloadTooLarge, len(payload), max-1024), false)
		stored = protocol.EncodeStored(pm.codec, em.Header.Get(protocol.HeaderError), em.Data)
	}
	pc.storeAndFinish(pm, stored)
}

// storeAndFinish stores a handled message's reply, publishes it and
// acknowledges the message. A failed store is retried (the handler is not
// run again), and counts as an attempt: at PersistMaxAttempts the message
// is dead-lettered.
func (pc *persistConsumer) storeAndFinish(pm *pmsg, stored []byte) {
	final, ok := pc.store(pm, stored)
	if !ok {
		pm.stored = stored
		pm.attempts++
		if pm.attempts >= pc.cfg.PersistMaxAttempts {
			pc.deadLetter(pm, fmt.Errorf("storing the reply failed %d times", pm.attempts))
			return
		}
		pc.retryLater(pm, errors.New("storing the reply failed"))
		return
	}
	pm.stored = nil
	pc.publishStored(pm, final)
	pc.finish(pm, true)
}

// store saves a reply, first writer wins: if a reply is stored for the
// message already (a fenced runner's handler finished late, after the next
// owner had run the message again and stored its reply, or the other way
// round), that one stays and is returned, so that every Call and Reply for
// the id gets the same answer. It returns the reply stored and whether
// storing (or reading the one there) succeeded.
func (pc *persistConsumer) store(pm *pmsg, stored []byte) ([]byte, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), pc.cfg.CallTimeout)
	defer cancel()
	key := protocol.ReplyKey(pm.msgID)
	_, err := pc.p.replies.Create(ctx, key, stored)
	if errors.Is(err, natsjs.ErrKeyExists) {
		var e natsjs.KeyValueEntry
		if e, err = pc.p.replies.Get(ctx, key); err == nil {
			pc.log.Warn("persisted message answered twice: the reply stored first stands", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String())
			return e.Value(), true
		}
	}
	if err != nil {
		pc.log.Warn("store persisted reply", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "err", err)
		return nil, false
	}
	return stored, true
}

// publishStored sends a stored reply to the message's reply subject.
func (pc *persistConsumer) publishStored(pm *pmsg, stored []byte) {
	if pm.replyTo == "" {
		return
	}
	_, code, body, err := protocol.DecodeStored(stored)
	if err != nil {
		pc.log.Warn("corrupt stored reply", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "err", err)
		return
	}
	h := nats.Header{protocol.HeaderMsgID: []string{pm.msgID}}
	if code != "" {
		h[protocol.HeaderError] = []string{code}
	}
	pc.out.publish(pm.replyTo, body, h)
}

// retryLater runs the message again after a backoff; its entity's later
// messages wait.
func (pc *persistConsumer) retryLater(pm *pmsg, cause error) {
	cfg := &pc.cfg
	d := cfg.PersistRetryBackoff
	for i := 1; i < pm.attempts && d < cfg.PersistRetryBackoffMax; i++ {
		d *= 2
	}
	d = min(d, cfg.PersistRetryBackoffMax)
	pc.log.Warn("persisted message failed; retrying", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "attempt", pm.attempts, "after", d, "err", cause)
	pc.processAfter(pm, d)
}

// deadLetter moves a message that cannot succeed to the dead-letter stream
// with the reason, stores an error reply for its sender, and acknowledges it.
func (pc *persistConsumer) deadLetter(pm *pmsg, reason error) {
	code := replyCode(reason)
	shard := pm.shard
	if pm.addr.Type == "" { // unparseable subject: file it under shard 0 of the first group
		shard = ShardID{Group: pc.cfg.ShardGroups[0]}
	}
	m := pc.msgOf(pm)
	dm := &nats.Msg{Subject: pc.subj.Dead(shard), Data: m.Data(), Header: nats.Header{}}
	for k, v := range m.Headers() {
		if k != "Nats-Msg-Id" && !strings.HasPrefix(k, "Nats-") {
			dm.Header[k] = v
		}
	}
	dm.Header[protocol.HeaderMsgID] = []string{pm.msgID}
	dm.Header[protocol.HeaderDeadReason] = []string{strings.ReplaceAll(reason.Error(), "\n", " ")}
	dm.Header[protocol.HeaderDeadCode] = []string{code}
	dm.Header[protocol.HeaderDeadSubject] = []string{m.Subject()}
	dm.Header[protocol.HeaderAttempts] = []string{strconv.Itoa(pm.attempts)}
	ctx, cancel := context.WithTimeout(context.Background(), pc.cfg.CallTimeout)
	defer cancel()
	if _, err := pc.p.js.PublishMsg(ctx, dm); err != nil {
		pc.log.Error("dead-letter", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "err", err)
		pc.retryLater(pm, err) // never drop silently
		return
	}
	pc.log.Warn("persisted message dead-lettered", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "code", code, "reason", reason)
	if o := pc.obs; o != nil {
		o.DeadLettered(pm.addr, pm.rpc, code)
	}
	if !pm.noReply && pm.msgID != "" && len(pm.msgID) <= protocol.MaxMessageIDLen { // a reply needs a key
		em := pc.out.errorMsg("", pm.codec, nil, reason)
		stored := protocol.EncodeStored(pm.codec, em.Header.Get(protocol.HeaderError), em.Data)
		if final, ok := pc.store(pm, stored); ok {
			stored = final
		}
		pc.publishStored(pm, stored)
	}
	pc.finish(pm, true)
}

// trace logs a persisted message's step at debug level (the chaos suite
// reads them to follow a message), at no cost when that level is off.
func (pc *persistConsumer) trace(event string, pm *pmsg) {
	if !pc.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	pc.log.Debug(event, "seq", pm.seq, "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "attempts", pm.attempts)
}
