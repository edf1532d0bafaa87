package mesh

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// The runner side of streaming RPCs (docs/protocol.md, "Streaming RPCs"):
// chunks under credit-based flow control, numbered, then an end marker.

// newStreamContext is a streaming call's context: cancelled by the caller
// (through the control subject) or the end of the stream, besides cancel.
func newStreamContext(ctx context.Context, cancel context.CancelFunc) (context.Context, context.CancelFunc) {
	sctx, scancel := context.WithCancel(ctx)
	if cancel == nil {
		return sctx, scancel
	}
	return sctx, func() { scancel(); cancel() }
}

// streamReplier sends a streaming call's chunks with credit-based flow
// control.
type streamReplier struct {
	out        *outbox
	ackTimeout time.Duration // Config.StreamAckTimeout
	reply      string
	control    string
	codec      actor.Codec
	info       actor.RPCInfo
	cancel     context.CancelFunc
	window     uint64
	sub        *nats.Subscription
	obs        CallObservation // nil without an Observer

	mu     sync.Mutex
	sent   uint64
	acked  uint64
	credit chan struct{} // signalled when acked moves
	ended  bool
}

func newStreamReplier(ctx context.Context, cancel context.CancelFunc, out *outbox, ackTimeout time.Duration, m *nats.Msg, codec actor.Codec, info actor.RPCInfo) (*streamReplier, error) {
	window, err := strconv.ParseUint(m.Header.Get(protocol.HeaderStreamWindow), 10, 32)
	if err != nil || window == 0 {
		return nil, fmt.Errorf("%w: %s %q", ErrBadRequest, protocol.HeaderStreamWindow, m.Header.Get(protocol.HeaderStreamWindow))
	}
	s := &streamReplier{
		out: out, ackTimeout: ackTimeout, reply: m.Reply, control: out.subj.StreamControl(), codec: codec, info: info,
		cancel: cancel, window: window, credit: make(chan struct{}, 1),
	}
	s.sub, err = out.nc.Subscribe(s.control, s.onControl)
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
	if int64(len(payload)) > s.out.maxPayload() {
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
			return s.out.nc.PublishMsg(m)
		}
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(s.ackTimeout)
		}
		select {
		case <-s.credit:
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
			s.cancel()
			return fmt.Errorf("%w: no acknowledgement for %v", ErrStreamBroken, s.ackTimeout)
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
		m = s.out.errorMsg(s.reply, s.codec, s.info, err)
	} else {
		m = &nats.Msg{Subject: s.reply, Header: nats.Header{}}
	}
	m.Header[protocol.HeaderEnd] = []string{"true"}
	m.Header[protocol.HeaderSeq] = []string{strconv.FormatUint(seq, 10)}
	if perr := s.out.nc.PublishMsg(m); perr != nil {
		s.out.log.Warn("stream end", "err", perr)
	}
}
