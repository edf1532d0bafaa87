package actor

import (
	"context"
	"fmt"
	"iter"
)

// message is one entry of a mailbox. Its concrete type knows the RPC's Go
// types, so requests and replies are never boxed on the in-process path.
type message interface {
	base() *envelope
	// invoke runs the handler h and answers the caller; it returns the
	// defect if the handler panicked.
	invoke(h any) *Defect
	// fail answers the caller with err without running the handler.
	fail(err error)
}

// envelope is the part of a message the runtime reads.
type envelope struct {
	next message
	ctx  context.Context
	d    *rpcDesc
}

func (e *envelope) base() *envelope { return e }

// call is a typed unary call. Calls are pooled per RPC: one that completed is
// reused; one its caller abandoned (context ended) is left to the collector.
type call[Req, Resp any] struct {
	envelope
	req  Req
	resp Resp
	err  error
	done chan struct{} // buffered: the answer never blocks
}

func (c *call[Req, Resp]) fail(err error) {
	c.err = err
	c.done <- struct{}{}
}

func (c *call[Req, Resp]) invoke(h any) (d *Defect) {
	defer func() {
		if r := recover(); r != nil {
			d = newDefect(r)
			c.err = d
		}
		c.done <- struct{}{}
	}()
	c.resp, c.err = h.(func(context.Context, Req) (Resp, error))(c.ctx, c.req)
	return nil
}

// Call sends req to the entity id of rpc's entity type and waits for the
// reply. ctx's deadline and cancellation reach the handler; if ctx ends
// first, Call returns ctx's error at once (a call not yet started is then
// never run).
//
// Errors: ErrMailboxFull, ErrUnknownEntity, ErrInvalidID, ErrShuttingDown,
// ErrNotServing, an error wrapping ErrActivation, a *Defect, ctx's error, or
// the handler's own error (a declared Failure matches with errors.As).
func Call[Req, Resp any](ctx context.Context, rt *Runtime, rpc RPC[Req, Resp], id string, req Req) (Resp, error) {
	var zero Resp
	ts, err := rt.typeOf(rpc.d.entity)
	if err != nil {
		return zero, err
	}
	pool := &ts.pools[rpc.d.index]
	c := pool.Get().(*call[Req, Resp])
	c.ctx, c.d, c.req = ctx, rpc.d, req
	if err := rt.enqueue(ts, id, c); err != nil {
		c.ctx, c.req = nil, *new(Req)
		pool.Put(c)
		return zero, err
	}
	select {
	case <-c.done:
		resp, err := c.resp, c.err
		c.ctx, c.req, c.resp, c.err = nil, *new(Req), zero, nil
		pool.Put(c)
		return resp, err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// StreamWindow is how many chunks a streaming handler may emit ahead of the
// caller's reading before emit blocks.
const StreamWindow = 16

type streamCall[Req, Chunk any] struct {
	envelope
	req Req
	ch  chan Chunk // closed after the handler returned; err is set before
	err error
}

func (s *streamCall[Req, Chunk]) fail(err error) {
	s.err = err
	close(s.ch)
}

func (s *streamCall[Req, Chunk]) invoke(h any) (d *Defect) {
	defer func() {
		if r := recover(); r != nil {
			d = newDefect(r)
			s.err = d
		}
		close(s.ch)
	}()
	ctx := s.ctx
	emit := func(c Chunk) error {
		select {
		case s.ch <- c:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.err = h.(func(context.Context, Req, func(Chunk) error) error)(ctx, s.req, emit)
	return nil
}

// Stream calls a streaming RPC and yields its chunks as the handler emits
// them. A final non-nil error, if any, is yielded last with a zero chunk.
// Breaking out of the loop cancels the handler's context, so its emit fails
// and it can stop. The handler holds its entity (as any message does) until
// it returns.
func Stream[Req, Chunk any](ctx context.Context, rt *Runtime, rpc StreamRPC[Req, Chunk], id string, req Req) iter.Seq2[Chunk, error] {
	return func(yield func(Chunk, error) bool) {
		var zero Chunk
		ts, err := rt.typeOf(rpc.d.entity)
		if err != nil {
			yield(zero, err)
			return
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		s := &streamCall[Req, Chunk]{req: req, ch: make(chan Chunk, StreamWindow)}
		s.ctx, s.d = ctx, rpc.d
		if err := rt.enqueue(ts, id, s); err != nil {
			yield(zero, err)
			return
		}
		for {
			select {
			case c, ok := <-s.ch:
				if !ok {
					if s.err != nil {
						yield(zero, s.err)
					}
					return
				}
				if !yield(c, nil) {
					return
				}
			case <-ctx.Done():
				yield(zero, ctx.Err())
				return
			}
		}
	}
}

// Codec turns payloads into bytes and back; package mesh/protocol supplies
// msgpack and JSON, and the packages that store entity state use the same
// two. Implementations must be safe for concurrent use.
type Codec interface {
	// Name is the codec's name on the wire and in stored data ("json",
	// "msgpack").
	Name() string
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// StrictCodec is an optional interface of a Codec: UnmarshalStrict
// refuses data with fields v's type does not have. A runtime decodes
// requests with it unless their RPC allows unknown fields (the mesh's JSON
// codec implements it).
type StrictCodec interface {
	UnmarshalStrict(data []byte, v any) error
}

// ErrMalformed wraps a payload that the codec could not decode.
var ErrMalformed = fmt.Errorf("actor: malformed payload")

// Replier receives the outcome of a call that arrived as bytes. For a unary
// RPC, Reply is called exactly once. For a streaming RPC, Chunk is called for
// each chunk (it blocks for flow control and returns an error once the
// caller is gone), then Reply once with a nil payload to end the stream.
type Replier interface {
	Chunk(ctx context.Context, payload []byte) error
	Reply(payload []byte, err error)
}

// StartNotifier is an optional interface of a Replier: Started is called
// from the entity's goroutine when the handler begins, which ends the call's
// wait in the mailbox (for tracing and metrics).
type StartNotifier interface {
	Started()
}

// codecOps builds a typed message from bytes; one per declared RPC.
type codecOps interface {
	message(ctx context.Context, codec Codec, payload []byte, r Replier) (message, error)
}

// decode decodes a request of RPC d, strictly when the codec can and d
// does not allow unknown fields.
func decode[Req any](d *rpcDesc, codec Codec, payload []byte) (Req, error) {
	var req Req
	if len(payload) == 0 {
		return req, nil // no payload: the zero value (Empty for RPCs without one)
	}
	var err error
	if sc, ok := codec.(StrictCodec); ok && !d.lenient {
		err = sc.UnmarshalStrict(payload, &req)
	} else {
		err = codec.Unmarshal(payload, &req)
	}
	if err != nil {
		return req, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return req, nil
}

type unaryCodec[Req, Resp any] struct{ d *rpcDesc }

func (u unaryCodec[Req, Resp]) message(ctx context.Context, codec Codec, payload []byte, r Replier) (message, error) {
	req, err := decode[Req](u.d, codec, payload)
	if err != nil {
		return nil, err
	}
	m := &rawCall[Req, Resp]{req: req, codec: codec, r: r}
	m.ctx, m.d = ctx, u.d
	return m, nil
}

type rawCall[Req, Resp any] struct {
	envelope
	req   Req
	codec Codec
	r     Replier
}

func (c *rawCall[Req, Resp]) fail(err error) { c.r.Reply(nil, err) }

func (c *rawCall[Req, Resp]) invoke(h any) (d *Defect) {
	var (
		out []byte
		err error
	)
	defer func() {
		if r := recover(); r != nil {
			d = newDefect(r)
			err = d
		}
		c.r.Reply(out, err)
	}()
	if sn, ok := c.r.(StartNotifier); ok {
		sn.Started()
	}
	resp, err := h.(func(context.Context, Req) (Resp, error))(c.ctx, c.req)
	if err == nil {
		out, err = c.codec.Marshal(resp)
	}
	return nil
}

type streamCodec[Req, Chunk any] struct{ d *rpcDesc }

func (s streamCodec[Req, Chunk]) message(ctx context.Context, codec Codec, payload []byte, r Replier) (message, error) {
	req, err := decode[Req](s.d, codec, payload)
	if err != nil {
		return nil, err
	}
	m := &rawStream[Req, Chunk]{req: req, codec: codec, r: r}
	m.ctx, m.d = ctx, s.d
	return m, nil
}

type rawStream[Req, Chunk any] struct {
	envelope
	req   Req
	codec Codec
	r     Replier
}

func (s *rawStream[Req, Chunk]) fail(err error) { s.r.Reply(nil, err) }

func (s *rawStream[Req, Chunk]) invoke(h any) (d *Defect) {
	var err error
	defer func() {
		if r := recover(); r != nil {
			d = newDefect(r)
			err = d
		}
		s.r.Reply(nil, err)
	}()
	if sn, ok := s.r.(StartNotifier); ok {
		sn.Started()
	}
	ctx := s.ctx
	emit := func(c Chunk) error {
		b, err := s.codec.Marshal(c)
		if err != nil {
			return err
		}
		return s.r.Chunk(ctx, b)
	}
	err = h.(func(context.Context, Req, func(Chunk) error) error)(ctx, s.req, emit)
	return nil
}

// Deliver hands a call that arrived as bytes (from the mesh) to the entity
// (entityType, id): payload is decoded with codec into the RPC's request
// type, and r hears the outcome. An error return means nothing was queued and
// r will not be called: ErrUnknownEntity, ErrUnknownRPC, ErrMalformed,
// ErrInvalidID, ErrMailboxFull, ErrShuttingDown or ErrNotServing.
func (rt *Runtime) Deliver(ctx context.Context, entityType, id, rpc string, codec Codec, payload []byte, r Replier) error {
	ts := (*rt.byName.Load())[entityType]
	if ts == nil {
		return fmt.Errorf("%w: %q", ErrUnknownEntity, entityType)
	}
	d := ts.b.entity.byName[rpc]
	if d == nil {
		return fmt.Errorf("%w: %s.%s", ErrUnknownRPC, entityType, rpc)
	}
	m, err := d.codec.message(ctx, codec, payload, r)
	if err != nil {
		return err
	}
	return rt.enqueue(ts, id, m)
}
