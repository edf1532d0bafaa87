package mesh

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Inbound calls: a message on a shard subject (or the route subject, for a
// shard served here) becomes a message in its entity's mailbox. handle
// checks the lease, parseCall reads and checks the request, and the
// replier (or streamReplier) carries the outcome back (docs/design.md,
// "Where a call goes").

// onCall handles a message on a shard subject, or a dispatcher barrier.
func (r *Runner) onCall(m *nats.Msg) {
	if m.Subject == "" {
		if done, ok := r.barriers.LoadAndDelete(m); ok {
			close(done.(chan struct{}))
		}
		return
	}
	cs, ok := r.subj.ParseCall(m.Subject)
	if !ok {
		r.out.refuse(m, protocol.JSON, nil, fmt.Errorf("%w: subject %q", ErrBadRequest, m.Subject))
		return
	}
	r.handle(m, cs)
}

// inboundCall is a request as parseCall reads it.
type inboundCall struct {
	shard      ShardID // the shard the caller addressed, which holds the entity
	entityType string
	rpc        string
	id         string
	codec      actor.Codec // the request's; JSON when it could not be read
	deadline   time.Time   // from Mesh-Timeout; zero: none
	window     string      // Mesh-Stream-Window; "": not a stream request
}

// parseCall reads a request from its parsed subject cs and its headers,
// and checks all that needs no runner state: the codec, the entity id,
// that the id belongs to the shard addressed (a call to the wrong shard
// must not activate the entity on a runner that may not own its real
// shard), and the time budget, which starts at now. The error is the
// refusal to answer (wrapping ErrBadRequest, or actor.ErrInvalidID); the
// returned call's codec is the one to answer in. It allocates nothing for
// a compact call.
func parseCall(cs protocol.CallSubject, h nats.Header, cfg *ClientConfig, now time.Time) (inboundCall, error) {
	c := inboundCall{shard: cs.Shard, entityType: cs.EntityType, rpc: cs.RPC, codec: protocol.JSON}
	var err error
	if cs.Compact {
		// The subject says it all: headers saying it too are refused, not
		// guessed between.
		if c.codec, err = protocol.CodecByName(cs.Codec); err != nil || cs.Codec == "" {
			c.codec = protocol.JSON
			return c, fmt.Errorf("%w: codec %q in the subject", ErrBadRequest, cs.Codec)
		}
		if h.Get(protocol.HeaderCodec) != "" || h.Get(protocol.HeaderID) != "" || h.Get(protocol.HeaderIDBase64) != "" {
			return c, fmt.Errorf("%w: a compact call subject carries the id and codec; %s, %s and %s are not allowed with it",
				ErrBadRequest, protocol.HeaderID, protocol.HeaderIDBase64, protocol.HeaderCodec)
		}
		c.id = cs.ID
	} else {
		if c.codec, err = protocol.CodecByName(h.Get(protocol.HeaderCodec)); err != nil {
			c.codec = protocol.JSON
			return c, fmt.Errorf("%w: %w", ErrBadRequest, err)
		}
		if c.id, err = protocol.GetID(h); err != nil {
			return c, fmt.Errorf("%w: %w", ErrBadRequest, err)
		}
	}
	if err := actor.ValidateID(c.id); err != nil {
		return c, err
	}
	if g, n := cfg.groupOf(c.entityType), protocol.ShardOf(c.id, cfg.ShardsPerGroup); g != c.shard.Group || n != c.shard.N {
		return c, fmt.Errorf("%w: entity %s/%s is in shard %s/%d, not %s", ErrBadRequest, c.entityType, c.id, g, n, c.shard)
	}
	if v := h.Get(protocol.HeaderTimeout); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms <= 0 {
			return c, fmt.Errorf("%w: %s %q", ErrBadRequest, protocol.HeaderTimeout, v)
		}
		c.deadline = now.Add(time.Duration(ms) * time.Millisecond)
	}
	c.window = h.Get(protocol.HeaderStreamWindow)
	return c, nil
}

// fits checks the request against the RPC it names (nil: not hosted here;
// the runtime refuses it): a persisted RPC is not taken by request/reply
// (it would run unstored, undeduplicated), a stream request for a unary
// RPC is refused, and a streaming RPC needs a reply subject for its chunks.
func (c *inboundCall) fits(info actor.RPCInfo, reply string, subj protocol.Subjects) error {
	switch {
	case info == nil:
		return nil
	case info.Persisted():
		return fmt.Errorf("%w: %s.%s is a persisted rpc: send it through the persisted-message stream (a JetStream publish to %s with Nats-Msg-Id and Mesh-Msg-Id; docs/protocol.md, \"Persisted messages\"), not by request/reply, which would run it without storing or deduplicating it",
			ErrBadRequest, c.entityType, c.rpc, subj.Persist(c.shard, c.entityType, c.rpc))
	case c.window != "" && info.Kind() != actor.Streaming:
		return fmt.Errorf("%w: %s.%s is not a streaming rpc", ErrBadRequest, c.entityType, c.rpc)
	case info.Kind() == actor.Streaming && reply == "":
		return fmt.Errorf("%w: a streaming call needs a reply subject", ErrBadRequest)
	}
	return nil
}

// handle delivers one call to its entity.
func (r *Runner) handle(m *nats.Msg, cs protocol.CallSubject) {
	if r.out.badReply(m, cs.EntityType, cs.RPC) {
		return
	}
	if !r.leaseValid(cs.Shard) {
		// The shard's lease is past its local validity: the runner may have
		// been paused (SIGSTOP, a long GC, a frozen VM) and its fencing has
		// not run yet. Silent, as a fenced shard is: the caller's retry
		// reaches the new owner.
		return
	}
	c, err := parseCall(cs, m.Header, &r.cfg.ClientConfig, time.Now())
	if err != nil {
		r.out.refuse(m, c.codec, nil, err)
		return
	}
	info := r.rpcInfo(c.entityType, c.rpc)
	if err := c.fits(info, m.Reply, r.subj); err != nil {
		r.out.refuse(m, c.codec, info, err)
		return
	}
	ctx, rep, err := r.newReplier(m, &c, info)
	if err != nil {
		r.out.refuse(m, c.codec, info, err)
		return
	}
	if err := r.rt.Deliver(ctx, c.entityType, c.id, c.rpc, c.codec, m.Data, rep); err != nil {
		r.undelivered(m, &c, rep, err)
	}
}

// newReplier makes the context and the replier of call c, with the
// Observer's observation of it: a replier for a unary call, a
// streamReplier (with its control subscription) for a streaming one. The
// context ends when the call is answered, or at its deadline. On error
// nothing is left to release.
func (r *Runner) newReplier(m *nats.Msg, c *inboundCall, info actor.RPCInfo) (context.Context, actor.Replier, error) {
	ctx, cancel := context.Background(), context.CancelFunc(nil)
	if !c.deadline.IsZero() {
		dc := newDeadlineCtx(c.deadline)
		ctx, cancel = dc, dc.cancel
	}
	var obs CallObservation
	if r.obs != nil && info != nil {
		ctx, obs = r.obs.CallReceived(ctx, actor.Address{Type: c.entityType, ID: c.id}, c.rpc, c.shard, m.Header)
	}
	if info == nil || info.Kind() != actor.Streaming {
		return ctx, &replier{out: r.out, reply: m.Reply, codec: c.codec, info: info, cancel: cancel, obs: obs}, nil
	}
	ctx, cancel = newStreamContext(ctx, cancel)
	sr, err := newStreamReplier(ctx, cancel, r.out, r.cfg.StreamAckTimeout, m, c.codec, info)
	if err != nil {
		cancel()
		if obs != nil {
			obs.Done(err)
		}
		return nil, nil, err
	}
	sr.obs = obs
	return ctx, sr, nil
}

// undelivered answers a call the runtime refused (unknown type or rpc,
// full mailbox, partition closed, shutting down, malformed payload).
func (r *Runner) undelivered(m *nats.Msg, c *inboundCall, rep actor.Replier, err error) {
	obs := takeObservation(rep) // reported here: the replier must not report it again
	if obs != nil {
		obs.Done(err)
	}
	if _, stream := rep.(*streamReplier); stream || c.window == "" {
		if r.obs != nil && obs == nil {
			r.obs.CallRefused(c.entityType, c.rpc, replyCode(err))
		}
		rep.Reply(nil, err)
		return
	}
	// A stream request for an unknown type or rpc: answer it as a refused
	// stream (with the end marker), as the protocol says.
	rep.(*replier).release()
	r.out.refuse(m, c.codec, nil, err)
}

// replier answers one unary call.
type replier struct {
	out    *outbox
	reply  string
	codec  actor.Codec
	info   actor.RPCInfo
	cancel context.CancelFunc
	obs    CallObservation // nil without an Observer
}

// Started implements actor.StartNotifier.
func (p *replier) Started() {
	if p.obs != nil {
		p.obs.Started()
	}
}

// release ends the call's context without answering.
func (p *replier) release() {
	if p.cancel != nil {
		p.cancel()
	}
}

// takeObservation detaches and returns the observation of a call that
// Deliver refused.
func takeObservation(rep actor.Replier) (obs CallObservation) {
	switch p := rep.(type) {
	case *replier:
		obs, p.obs = p.obs, nil
	case *streamReplier:
		obs, p.obs = p.obs, nil
	}
	return obs
}

func (p *replier) Chunk(context.Context, []byte) error {
	return fmt.Errorf("%w: chunk on a unary call", ErrBadRequest)
}

func (p *replier) Reply(payload []byte, err error) {
	p.release()
	if p.obs != nil {
		p.obs.Done(declared(p.info, err))
	}
	if errors.Is(err, errFenced) {
		return // see Runner.fenceShard: a fenced shard stays silent
	}
	if p.reply == "" {
		if err != nil {
			p.out.log.Debug("send failed", "err", err)
		}
		return
	}
	if err == nil {
		if max := p.out.maxPayload(); len(payload) > int(max) {
			err = fmt.Errorf("%w: reply of %d bytes, limit %d", ErrPayloadTooLarge, len(payload), max)
		} else {
			p.out.publish(p.reply, payload, nil)
			return
		}
	}
	p.out.replyError(p.reply, p.codec, p.info, err)
}
