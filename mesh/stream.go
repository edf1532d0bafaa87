package mesh

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"sync"
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

func (r *Runner) newStreamContext(ctx context.Context, cancel context.CancelFunc) (context.Context, context.CancelFunc) {
	sctx, scancel := context.WithCancel(ctx)
	if cancel == nil {
		return sctx, scancel
	}
	return sctx, func() { scancel(); cancel() }
}

// streamReplier sends a streaming call's chunks with credit-based flow
// control.
type streamReplier struct {
	r       *Runner
	reply   string
	control string
	codec   actor.Codec
	info    actor.RPCInfo
	cancel  context.CancelFunc
	window  uint64
	sub     *nats.Subscription
	obs     CallObservation // nil without an Observer

	mu     sync.Mutex
	sent   uint64
	acked  uint64
	credit chan struct{} // signalled when acked moves
	ended  bool
}

func (r *Runner) newStreamReplier(ctx context.Context, cancel context.CancelFunc, m *nats.Msg, codec actor.Codec, info actor.RPCInfo) (*streamReplier, error) {
	window, err := strconv.ParseUint(m.Header.Get(protocol.HeaderStreamWindow), 10, 32)
	if err != nil || window == 0 {
		return nil, fmt.Errorf("%w: %s %q", ErrBadRequest, protocol.HeaderStreamWindow, m.Header.Get(protocol.HeaderStreamWindow))
	}
	s := &streamReplier{
		r: r, reply: m.Reply, control: r.subj.StreamControl(), codec: codec, info: info,
		cancel: cancel, window: window, credit: make(chan struct{}, 1),
	}
	s.sub, err = r.nc.Subscribe(s.control, s.onControl)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *streamReplier) onControl(m *nats.Msg) {
	if m.Header.Get(protocol.HeaderCancel) != "" {
		s.cancel()
		return
	}
	if v := m.Header.Get(protocol.HeaderAck); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return
		}
		s.mu.Lock()
		if n > s.acked && n <= s.sent {
			s.acked = n
		}
		s.mu.Unlock()
		select {
		case s.credit <- struct{}{}:
		default:
		}
	}
}

// Chunk publishes one chunk, waiting for credit first.
func (s *streamReplier) Chunk(ctx context.Context, payload []byte) error {
	if int64(len(payload)) > s.r.nc.MaxPayload() {
		return fmt.Errorf("%w: chunk of %d bytes", ErrPayloadTooLarge, len(payload))
	}
	var timer *time.Timer
	for {
		s.mu.Lock()
		if s.sent-s.acked < s.window {
			s.sent++
			seq := s.sent
			s.mu.Unlock()
			if timer != nil {
				timer.Stop()
			}
			m := &nats.Msg{Subject: s.reply, Data: payload, Header: nats.Header{
				protocol.HeaderSeq:     []string{strconv.FormatUint(seq, 10)},
				protocol.HeaderControl: []string{s.control},
			}}
			return s.r.nc.PublishMsg(m)
		}
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(s.r.cfg.StreamAckTimeout)
		}
		select {
		case <-s.credit:
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
			s.cancel()
			return fmt.Errorf("%w: no acknowledgement for %v", ErrStreamBroken, s.r.cfg.StreamAckTimeout)
		}
	}
}

// Started implements actor.StartNotifier.
func (s *streamReplier) Started() {
	if s.obs != nil {
		s.obs.Started()
	}
}

// Reply ends the stream.
func (s *streamReplier) Reply(_ []byte, err error) {
	if errors.Is(err, errFenced) {
		err = actor.ErrNotServing // the stream's caller must learn it ended
	}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.ended = true
	seq := s.sent + 1
	s.mu.Unlock()
	if s.obs != nil {
		s.obs.Done(declared(s.info, err))
	}
	_ = s.sub.Unsubscribe()
	s.cancel()
	var m *nats.Msg
	if err != nil {
		m = errorMsg(s.reply, s.codec, s.info, err, s.r.cfg.ExposeDefectStacks)
	} else {
		m = &nats.Msg{Subject: s.reply, Header: nats.Header{}}
	}
	m.Header[protocol.HeaderEnd] = []string{"true"}
	m.Header[protocol.HeaderSeq] = []string{strconv.FormatUint(seq, 10)}
	if perr := s.r.nc.PublishMsg(m); perr != nil {
		s.r.log.Warn("stream end", "err", perr)
	}
}

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
		done := c.callSent(ctx, info.Entity().Name(), info.Name(), m.Header)
		var outcome error
		consumer := yield
		yield = func(ch Chunk, err error) bool {
			if err != nil {
				outcome = err
			}
			return consumer(ch, err)
		}
		defer func() { done(declared(info, outcome)) }()
		const window = DefaultStreamWindow
		m.Header[protocol.HeaderStreamWindow] = []string{strconv.Itoa(window)}
		m.Reply = c.nc.NewInbox()
		ch := make(chan *nats.Msg, window+8)
		sub, err := c.nc.ChanSubscribe(m.Reply, ch)
		if err != nil {
			yield(zero, err)
			return
		}
		defer func() { _ = sub.Unsubscribe() }()
		_ = sub.SetPendingLimits(-1, -1) // flow control bounds what is in flight

		control := ""
		finished := false
		defer func() {
			if control != "" && !finished {
				_ = c.nc.PublishMsg(&nats.Msg{Subject: control, Header: nats.Header{protocol.HeaderCancel: []string{"true"}}})
			}
		}()
		if err := c.nc.PublishMsg(m); err != nil {
			yield(zero, err)
			return
		}
		backoff := c.cfg.RetryBackoff
		var expect uint64 = 1
		for {
			var msg *nats.Msg
			select {
			case msg = <-ch:
			case <-ctx.Done():
				yield(zero, ctx.Err())
				return
			}
			if msg.Header.Get("Status") == "503" && expect == 1 { // no responders: retry
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					yield(zero, fmt.Errorf("%w: %s: %w", ErrShardUnavailable, m.Subject, ctx.Err()))
					return
				}
				backoff = min(backoff*2, c.cfg.RetryBackoffMax)
				setTimeout(ctx, m.Header)
				if err := c.nc.PublishMsg(m); err != nil {
					yield(zero, err)
					return
				}
				continue
			}
			if code := msg.Header.Get(protocol.HeaderError); code != "" && msg.Header.Get(protocol.HeaderEnd) == "" {
				finished = true // an error without the end marker: refused outright
				yield(zero, decodeError(info, c.codec, code, msg.Data))
				return
			}
			seq, _ := strconv.ParseUint(msg.Header.Get(protocol.HeaderSeq), 10, 64)
			if seq != expect {
				yield(zero, fmt.Errorf("%w: chunk %d arrived, expected %d", ErrStreamBroken, seq, expect))
				return
			}
			expect++
			if msg.Header.Get(protocol.HeaderEnd) != "" {
				finished = true
				if code := msg.Header.Get(protocol.HeaderError); code != "" {
					if expect == 2 && protocol.Retryable(code) {
						// Refused before any chunk: the shard moved; retry.
						expect = 1
						if err := c.nc.PublishMsg(m); err != nil {
							yield(zero, err)
							return
						}
						finished = false
						continue
					}
					yield(zero, decodeError(info, c.codec, code, msg.Data))
				}
				return
			}
			control = msg.Header.Get(protocol.HeaderControl)
			var chunk Chunk
			if err := c.codec.Unmarshal(msg.Data, &chunk); err != nil {
				yield(zero, fmt.Errorf("%w: chunk: %w", actor.ErrMalformed, err))
				return
			}
			if !yield(chunk, nil) {
				return
			}
			if n := expect - 1; n%(window/2) == 0 && control != "" {
				ack := &nats.Msg{Subject: control, Header: nats.Header{protocol.HeaderAck: []string{strconv.FormatUint(n, 10)}}}
				if err := c.nc.PublishMsg(ack); err != nil {
					yield(zero, err)
					return
				}
			}
		}
	}
}
