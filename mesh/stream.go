package mesh

import (
	"context"
	"fmt"
	"iter"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Streams (docs/protocol.md, "Streaming RPCs"): the caller subscribes to an
// inbox and sends the request with protocol.HeaderStreamWindow. The runner publishes
// chunks to the inbox numbered by protocol.HeaderSeq, each naming its control subject,
// and never has more than the window unacknowledged; the caller acknowledges
// on the control subject as it reads, and cancels there when it stops. The
// last message carries protocol.HeaderEnd (and protocol.HeaderError for a failed stream).

// DefaultStreamWindow is the number of chunks in flight per stream.
const DefaultStreamWindow = 64

// Stream calls a streaming RPC and yields its chunks as they arrive. A
// final non-nil error, if any, is yielded last. Breaking out of the loop
// cancels the handler on the runner. Only ctx bounds a stream's length (no
// default timeout applies); while no runner serves the shard it retries.
func Stream[Req, Chunk any](ctx context.Context, c *Client, rpc actor.StreamRPC[Req, Chunk], id string, req Req) iter.Seq2[Chunk, error] {
	return func(yield func(Chunk, error) bool) {
		var zero Chunk
		payload, err := c.codec.Marshal(req)
		if err != nil {
			yield(zero, fmt.Errorf("encode request: %w", err))
			return
		}
		info := rpc.Info()
		m, err := c.newRequest(ctx, info, id, payload)
		if err != nil {
			yield(zero, err)
			return
		}
		s, err := c.openStream(ctx, m, info.Entity().Name(), info.Name(), info, c.codec)
		if err != nil {
			yield(zero, err)
			return
		}
		defer s.close()
		for {
			data, end, err := s.next()
			if err == nil && !end {
				var chunk Chunk
				if err = c.codec.Unmarshal(data, &chunk); err != nil {
					err = fmt.Errorf("%w: chunk: %w", actor.ErrMalformed, err)
				} else if !yield(chunk, nil) {
					return
				} else {
					err = s.acknowledge()
				}
			}
			if err != nil {
				s.outcome = err
				yield(zero, err)
				return
			}
			if end {
				return
			}
		}
	}
}

// StreamRaw calls a streaming RPC given by names, with an encoded payload
// (as CallRaw), and yields each chunk's encoded payload as it arrives. A
// final non-nil error, if any, is yielded last: a *Error with the wire code
// for an error reply, as CallRaw's. Breaking out of the loop cancels the
// handler on the runner. call.Persisted is refused: streams are not
// persisted.
func (c *Client) StreamRaw(ctx context.Context, call RawCall) iter.Seq2[[]byte, error] {
	return func(yield func([]byte, error) bool) {
		m, codec, err := c.rawRequest(ctx, call)
		if err == nil && call.Persisted {
			err = fmt.Errorf("%w: a streaming rpc is not persisted", ErrInvalidOption)
		}
		if err != nil {
			yield(nil, err)
			return
		}
		s, err := c.openStream(ctx, m, call.EntityType, call.RPC, nil, codec)
		if err != nil {
			yield(nil, err)
			return
		}
		defer s.close()
		for {
			data, end, err := s.next()
			if err == nil && !end {
				if !yield(data, nil) {
					return
				}
				err = s.acknowledge()
			}
			if err != nil {
				s.outcome = err
				yield(nil, err)
				return
			}
			if end {
				return
			}
		}
	}
}

// streamCall is the caller's side of one stream (docs/protocol.md,
// "Streaming RPCs"): the request, its inbox, and where the stream stands.
// It knows no Go types; Stream decodes the chunks.
type streamCall struct {
	c        *Client
	ctx      context.Context
	entity   string
	rpc      string
	info     actor.RPCInfo // nil for a raw stream
	codec    actor.Codec   // the request's
	m        *nats.Msg
	ch       chan *nats.Msg
	sub      *nats.Subscription
	done     func(error) // the Observer's, with the outcome
	outcome  error
	backoff  time.Duration
	expect   uint64 // the next chunk's sequence
	control  string // where acknowledgements and cancellation go
	finished bool   // the runner ended the stream

	askedHosted bool // notHosted was asked
}

// openStream sends m, the request of a stream of entity.rpc, and
// subscribes to its inbox. info is nil for a raw stream.
func (c *Client) openStream(ctx context.Context, m *nats.Msg, entity, rpc string, info actor.RPCInfo, codec actor.Codec) (*streamCall, error) {
	s := &streamCall{c: c, ctx: ctx, entity: entity, rpc: rpc, info: info, codec: codec, m: m, backoff: c.cfg.RetryBackoff, expect: 1}
	s.done = c.callSent(ctx, entity, rpc, m.Header)
	m.Header[protocol.HeaderStreamWindow] = []string{strconv.Itoa(DefaultStreamWindow)}
	m.Reply = c.nc.NewInbox()
	s.ch = make(chan *nats.Msg, DefaultStreamWindow+8)
	var err error
	if s.sub, err = c.nc.ChanSubscribe(m.Reply, s.ch); err != nil {
		s.done(err)
		return nil, err
	}
	_ = s.sub.SetPendingLimits(-1, -1) // flow control bounds what is in flight
	if err := c.nc.PublishMsg(m); err != nil {
		s.outcome = err
		s.close()
		return nil, err
	}
	return s, nil
}

// decodeError turns the stream's error reply into the caller's error.
func (s *streamCall) decodeError(code string, data []byte) error {
	if s.info == nil {
		return decodeRawError(s.codec, code, data)
	}
	return decodeError(s.info, s.codec, code, data)
}

// next returns the next chunk's payload, or end at the end of the stream
// (with the stream's error, if it failed). While no runner serves the shard
// (no responders, or a refusal before the first chunk because the shard
// moved) it sends the request again, with backoff.
func (s *streamCall) next() (data []byte, end bool, err error) {
	for {
		var msg *nats.Msg
		select {
		case msg = <-s.ch:
		case <-s.ctx.Done():
			return nil, false, s.ctx.Err()
		}
		if msg.Header.Get("Status") == "503" && s.expect == 1 { // no responders: retry
			if err := s.notHosted(); err != nil {
				return nil, false, err
			}
			if err := s.retryAfterBackoff(); err != nil {
				return nil, false, err
			}
			continue
		}
		if code := msg.Header.Get(protocol.HeaderError); code != "" && msg.Header.Get(protocol.HeaderEnd) == "" {
			s.finished = true // an error without the end marker: refused outright
			if code == protocol.CodeUnknownEntity {
				if err := s.notHosted(); err != nil {
					return nil, false, err
				}
			}
			return nil, false, s.decodeError(code, msg.Data)
		}
		seq, _ := strconv.ParseUint(msg.Header.Get(protocol.HeaderSeq), 10, 64)
		if seq != s.expect {
			return nil, false, fmt.Errorf("%w: chunk %d arrived, expected %d", ErrStreamBroken, seq, s.expect)
		}
		s.expect++
		if msg.Header.Get(protocol.HeaderEnd) == "" {
			s.control = msg.Header.Get(protocol.HeaderControl)
			return msg.Data, false, nil
		}
		code := msg.Header.Get(protocol.HeaderError)
		if code == "" {
			s.finished = true
			return nil, true, nil
		}
		if s.expect == 2 && protocol.Retryable(code) {
			// Refused before any chunk: the shard moved; retry.
			s.expect = 1
			if err := s.c.nc.PublishMsg(s.m); err != nil {
				return nil, false, err
			}
			continue
		}
		s.finished = true
		return nil, false, s.decodeError(code, msg.Data)
	}
}

// notHosted returns ErrNotHosted if the stream's entity type is hosted by
// no live runner (asked once per stream: the first refusal tells).
func (s *streamCall) notHosted() error {
	if s.askedHosted {
		return nil
	}
	s.askedHosted = true
	if err := s.c.notHosted(s.ctx, s.entity); err != nil {
		s.finished = true
		return err
	}
	return nil
}

// retryAfterBackoff sends the request again after the backoff, which
// doubles up to RetryBackoffMax.
func (s *streamCall) retryAfterBackoff() error {
	t := time.NewTimer(s.backoff)
	select {
	case <-t.C:
	case <-s.ctx.Done():
		t.Stop()
		return fmt.Errorf("%w: %s: %w", ErrShardUnavailable, s.m.Subject, s.ctx.Err())
	}
	s.backoff = min(s.backoff*2, s.c.cfg.RetryBackoffMax)
	setTimeout(s.ctx, s.m.Header)
	return s.c.nc.PublishMsg(s.m)
}

// acknowledge tells the runner, every half window, how many chunks were
// read: its credit to send more.
func (s *streamCall) acknowledge() error {
	n := s.expect - 1
	if n%(DefaultStreamWindow/2) != 0 || s.control == "" {
		return nil
	}
	ack := &nats.Msg{Subject: s.control, Header: nats.Header{protocol.HeaderAck: []string{strconv.FormatUint(n, 10)}}}
	return s.c.nc.PublishMsg(ack)
}

// close cancels the stream on the runner unless it ended, unsubscribes, and
// reports the outcome.
func (s *streamCall) close() {
	if s.control != "" && !s.finished {
		_ = s.c.nc.PublishMsg(&nats.Msg{Subject: s.control, Header: nats.Header{protocol.HeaderCancel: []string{"true"}}})
	}
	_ = s.sub.Unsubscribe()
	if s.info != nil {
		s.done(declared(s.info, s.outcome))
		return
	}
	s.done(s.outcome)
}
