package mesh

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// CallOption configures one Call or Send. A bad option fails the call with
// an error wrapping ErrInvalidOption.
type CallOption func(*callOptions) error

type callOptions struct {
	msgID     string
	deliverAt time.Time
}

// DeliverAt delays a persisted message: it is stored now and handled no
// earlier than t (a restart of every runner in between delays it no more
// than the restart). Volatile RPCs ignore it.
func DeliverAt(t time.Time) CallOption {
	return func(o *callOptions) error { o.deliverAt = t; return nil }
}

// MessageID gives a persisted message its id, an idempotency key: sending
// the same id again stores it once (within the dedup window) and is answered
// with the stored reply without running the handler again (within the reply
// retention). Without it, or with "", a unique id is generated. An id is at
// most protocol.MaxMessageIDLen bytes. Volatile RPCs ignore it.
func MessageID(id string) CallOption {
	return func(o *callOptions) error {
		if len(id) > protocol.MaxMessageIDLen {
			return fmt.Errorf("%w: message id of %d bytes, limit %d", ErrInvalidOption, len(id), protocol.MaxMessageIDLen)
		}
		o.msgID = id
		return nil
	}
}

func applyCallOptions(opts []CallOption) (callOptions, error) {
	var o callOptions
	for _, opt := range opts {
		if opt == nil {
			return o, fmt.Errorf("%w: nil CallOption", ErrInvalidOption)
		}
		if err := opt(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

// persistence returns the client's view of the persisted-message stream and
// reply bucket, opening (or creating) them on first use.
func (c *Client) persistence(ctx context.Context) (*persistence, error) {
	c.persistMu.Lock()
	defer c.persistMu.Unlock()
	if c.persist != nil {
		return c.persist, nil
	}
	p, err := openPersistence(ctx, c.nc, &c.cfg, c.log)
	if err != nil {
		return nil, err
	}
	c.persist = p
	return p, nil
}

// publishPersisted stores a persisted message in the stream and returns its
// id and whether the stream already had it (a duplicate).
// Headers in extra (a trace context, say) travel with the message.
func (c *Client) publishPersisted(ctx context.Context, entityType, rpc string, codec []string, id string, payload []byte, o callOptions, replyTo string, extra nats.Header) (string, bool, error) {
	p, err := c.persistence(ctx)
	if err != nil {
		return "", false, err
	}
	if err := actor.ValidateID(id); err != nil {
		return "", false, err
	}
	if max := c.nc.MaxPayload(); max > 0 && int64(len(payload)) > max {
		return "", false, fmt.Errorf("%w: request of %d bytes, limit %d", ErrPayloadTooLarge, len(payload), max)
	}
	// Not stored for a type no runner hosts: the caller learns it now,
	// rather than its message waiting for a runner that may never come.
	if err := c.notHosted(ctx, entityType); err != nil {
		return "", false, err
	}
	msgID := o.msgID
	if msgID == "" {
		msgID = nuid.Next()
	}
	target := c.subj.Persist(c.Shard(entityType, id), entityType, rpc)
	m := &nats.Msg{Subject: target, Data: payload, Header: make(nats.Header, 4+len(extra))}
	for k, v := range extra {
		m.Header[k] = v
	}
	protocol.SetID(m.Header, id)
	m.Header[protocol.HeaderCodec] = codec
	m.Header[protocol.HeaderMsgID] = []string{msgID}
	if replyTo != "" {
		m.Header[protocol.HeaderReplyTo] = []string{replyTo}
	} else if o.msgID == "" {
		m.Header[protocol.HeaderNoReply] = []string{"true"}
	}
	if !o.deliverAt.IsZero() && time.Until(o.deliverAt) > 0 {
		// A schedule in the stream: the server publishes the message to
		// its shard's subject at the next whole second at or after the
		// time (schedules have second resolution); the runner holds it
		// until the exact time.
		fire := o.deliverAt.UTC().Truncate(time.Second)
		if fire.Before(o.deliverAt) {
			fire = fire.Add(time.Second)
		}
		m.Subject = c.subj.Schedule(msgID)
		m.Header["Nats-Schedule"] = []string{"@at " + fire.Format(time.RFC3339)}
		m.Header["Nats-Schedule-Target"] = []string{target}
		m.Header[protocol.HeaderDeliverAt] = []string{o.deliverAt.UTC().Format(time.RFC3339Nano)}
	}
	ack, err := p.js.PublishMsg(ctx, m, natsjs.WithMsgID(msgID))
	if err != nil {
		if errors.Is(err, nats.ErrMaxPayload) {
			return "", false, fmt.Errorf("%w: %w", ErrPayloadTooLarge, err)
		}
		return "", false, fmt.Errorf("store persisted message: %w", err)
	}
	return msgID, ack.Duplicate, nil
}

// callPersisted stores a persisted message and waits for its reply.
func (c *Client) callPersisted(ctx context.Context, entityType, rpc string, codec []string, id string, payload []byte, o callOptions) (reply *nats.Msg, err error) {
	extra := nats.Header{}
	done := c.callSent(ctx, entityType, rpc, extra)
	defer func() { done(replyErr(reply, err)) }()
	inbox := c.nc.NewInbox()
	replies := make(chan *nats.Msg, 1)
	sub, err := c.nc.ChanSubscribe(inbox, replies)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	msgID, dup, err := c.publishPersisted(ctx, entityType, rpc, codec, id, payload, o, inbox, extra)
	if err != nil {
		return nil, err
	}
	if dup { // handled or queued under an earlier send: its reply went elsewhere
		return c.awaitStored(ctx, msgID, nil)
	}
	return c.awaitStored(ctx, msgID, replies)
}

// awaitStored waits for the reply of msgID: on replies if given, and by
// reading the reply bucket now and then (a reply published while nobody
// listened is still stored).
func (c *Client) awaitStored(ctx context.Context, msgID string, replies <-chan *nats.Msg) (*nats.Msg, error) {
	if msgID == "" || len(msgID) > protocol.MaxMessageIDLen {
		return nil, fmt.Errorf("%w: message id of %d bytes, want 1 to %d", ErrInvalidOption, len(msgID), protocol.MaxMessageIDLen)
	}
	p, err := c.persistence(ctx)
	if err != nil {
		return nil, err
	}
	poll := time.NewTimer(0)
	defer poll.Stop()
	wait := 50 * time.Millisecond
	for {
		select {
		case m := <-replies:
			return m, nil
		case <-poll.C:
			e, err := p.replies.Get(ctx, protocol.ReplyKey(msgID))
			if err == nil {
				codec, code, body, derr := protocol.DecodeStored(e.Value())
				if derr != nil {
					return nil, fmt.Errorf("%w: stored reply of %s: %w", actor.ErrMalformed, msgID, derr)
				}
				m := &nats.Msg{Data: body, Header: nats.Header{protocol.HeaderMsgID: []string{msgID}, protocol.HeaderCodec: []string{codec.Name()}}}
				if code != "" {
					m.Header[protocol.HeaderError] = []string{code}
				}
				return m, nil
			}
			if !errors.Is(err, natsjs.ErrKeyNotFound) && ctx.Err() == nil {
				return nil, err
			}
			wait = min(wait*2, time.Second)
			poll.Reset(wait)
		case <-ctx.Done():
			return nil, fmt.Errorf("persisted message %s: %w (it is stored and will be handled; its reply can be fetched with Reply)", msgID, ctx.Err())
		}
	}
}

// Reply waits for the reply of the persisted message msgID sent to rpc (by
// this or another process, before a restart say): the re-attach of a caller
// that lost its connection. It returns the stored reply at once if there is
// one. Replies are kept for Config.PersistReplyRetention.
func Reply[Req, Resp any](ctx context.Context, c *Client, rpc actor.RPC[Req, Resp], msgID string) (Resp, error) {
	var zero Resp
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	m, err := c.awaitStored(ctx, msgID, nil)
	if err != nil {
		return zero, err
	}
	return decodeReply[Resp](rpc.Info(), c.replyCodec(m), m)
}

// replyCodec is the codec of a persisted message's reply: a stored reply
// names its own (the message may have been sent in another codec by
// another client), a live one is in the codec it was asked in, the
// client's.
func (c *Client) replyCodec(m *nats.Msg) actor.Codec {
	if codec, err := protocol.CodecByName(m.Header.Get(protocol.HeaderCodec)); err == nil && m.Header.Get(protocol.HeaderCodec) != "" {
		return codec
	}
	return c.codec
}
