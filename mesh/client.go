package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Client calls entities wherever they run: it computes each entity's shard
// and sends to the shard's subject. It hosts nothing (client-only mode) and
// is safe for concurrent use.
type Client struct {
	nc         *nats.Conn
	cfg        ClientConfig
	log        *slog.Logger
	obs        Observer // nil: none
	subj       protocol.Subjects
	codec      actor.Codec
	codecValue []string // the codec header's value, shared by every request

	subjectsMu sync.RWMutex
	subjects   map[actor.RPCInfo][]string // call subject per shard, built on first use

	persistMu sync.Mutex
	persist   *persistence // opened on the first persisted call

	hosted hostedView // which types each group's runners host (hosted.go)
}

// NewClient returns a client on nc. It returns an error wrapping
// ErrInvalidOption for a bad configuration or option (WithRuntimeOptions
// does not apply to clients).
func NewClient(nc *nats.Conn, cfg ClientConfig, opts ...Option) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o, err := applyOptions("NewClient", false, opts)
	if err != nil {
		return nil, err
	}
	codec, _ := protocol.CodecByName(cfg.Codec)
	return &Client{
		nc: nc, cfg: cfg, log: o.log, obs: o.obs, subj: protocol.Subjects{Prefix: cfg.Prefix}, codec: codec,
		codecValue: []string{codec.Name()},
		subjects:   map[actor.RPCInfo][]string{},
	}, nil
}

// Shard returns the shard of an entity.
func (c *Client) Shard(entityType, id string) ShardID { return c.cfg.shardOf(entityType, id) }

// Config returns the client's configuration.
func (c *Client) Config() ClientConfig { return c.cfg }

// Conn returns the client's NATS connection.
func (c *Client) Conn() *nats.Conn { return c.nc }

// Logger returns the client's logger (WithLogger; it discards when none
// was given): packages built on a client, such as reminder and saga, log
// through it.
func (c *Client) Logger() *slog.Logger { return c.log }

// withTimeout applies the default call timeout to a context without a
// deadline.
func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.cfg.CallTimeout)
}

// request sends req once. A context that can never be cancelled needs no
// derived context: nats.go's timed request is cheaper than a timer context.
func (c *Client) request(ctx context.Context, req *nats.Msg, until time.Time) (*nats.Msg, error) {
	if ctx.Done() == nil {
		d := time.Until(until)
		if d <= 0 {
			return nil, context.DeadlineExceeded
		}
		m, err := c.nc.RequestMsg(req, d)
		if errors.Is(err, nats.ErrTimeout) {
			err = context.DeadlineExceeded
		}
		return m, err
	}
	return c.nc.RequestMsgWithContext(ctx, req)
}

// newRequest builds the request message of a call.
func (c *Client) newRequest(ctx context.Context, info actor.RPCInfo, id string, payload []byte) (*nats.Msg, error) {
	m := &nats.Msg{Header: make(nats.Header, 3)}
	if err := c.fillRequest(m, ctx, info, id, payload); err != nil {
		return nil, err
	}
	return m, nil
}

// fillRequest makes m, whose Header is empty and not nil, the request
// message of a call.
func (c *Client) fillRequest(m *nats.Msg, ctx context.Context, info actor.RPCInfo, id string, payload []byte) error {
	if err := actor.ValidateID(id); err != nil {
		return err
	}
	if max := c.nc.MaxPayload(); max > 0 && int64(len(payload)) > max {
		return fmt.Errorf("%w: request of %d bytes, limit %d", ErrPayloadTooLarge, len(payload), max)
	}
	m.Data = payload
	if protocol.IDSubjectSafe(id) {
		// The compact form: id and codec in the subject, so a call without
		// a deadline carries no header at all (headers cost NATS about a
		// fifth of its request/reply throughput).
		m.Subject = protocol.CompactCall(c.callSubject(info, id), c.codecValue[0], id)
	} else {
		m.Subject = c.callSubject(info, id)
		protocol.SetID(m.Header, id)
		m.Header[protocol.HeaderCodec] = c.codecValue
	}
	// Only a deadline the caller chose travels to the handler; the default
	// CallTimeout is the client's own guard.
	if d, ok := ctx.Deadline(); ok {
		setDeadline(d, m.Header)
	}
	return nil
}

// requestPool recycles the request messages of unary calls made without an
// Observer (which may keep the headers it is given): nats.go is done with
// a request message once RequestMsg returns, and reusing the message and
// its header map saves several allocations per call.
var requestPool = sync.Pool{New: func() any { return &nats.Msg{Header: make(nats.Header, 4)} }}

func putRequest(m *nats.Msg) {
	clear(m.Header)
	m.Subject, m.Data = "", nil
	requestPool.Put(m)
}

// callSubject returns the call subject of rpc for entity id.
func (c *Client) callSubject(info actor.RPCInfo, id string) string {
	n := protocol.ShardOf(id, c.cfg.ShardsPerGroup)
	c.subjectsMu.RLock()
	subs := c.subjects[info]
	c.subjectsMu.RUnlock()
	if subs == nil {
		entityType := info.Entity().Name()
		group := c.cfg.groupOf(entityType)
		subs = make([]string, c.cfg.ShardsPerGroup)
		for i := range subs {
			subs[i] = c.subj.Call(ShardID{Group: group, N: i}, entityType, info.Name())
		}
		c.subjectsMu.Lock()
		c.subjects[info] = subs
		c.subjectsMu.Unlock()
	}
	return subs[n]
}

func setTimeout(ctx context.Context, h nats.Header) {
	if d, ok := ctx.Deadline(); ok {
		setDeadline(d, h)
	}
}

func setDeadline(d time.Time, h nats.Header) {
	ms := max(time.Until(d).Milliseconds(), 1)
	h[protocol.HeaderTimeout] = []string{strconv.FormatInt(ms, 10)}
}

// requestRetry sends req, a call to an entity of entityType, and waits for
// its reply, retrying with backoff while no runner serves the shard (no
// responders, or a runner answering that it no longer serves it) until ctx
// ends. No responders when no live runner hosts entityType fails at once
// with ErrNotHosted.
func (c *Client) requestRetry(ctx context.Context, entityType string, req *nats.Msg) (*nats.Msg, error) {
	backoff := c.cfg.RetryBackoff
	until, ok := ctx.Deadline()
	if !ok {
		until = time.Now().Add(c.cfg.CallTimeout)
	}
	var last error
	for {
		reply, err := c.request(ctx, req, until)
		switch {
		case err == nil:
			code := reply.Header.Get(protocol.HeaderError)
			if code == protocol.CodeUnknownEntity {
				// Served by a runner that lacks the type: is it hosted
				// anywhere? (Off the path of a call that succeeds.)
				if herr := c.notHosted(ctx, entityType); herr != nil {
					return nil, herr
				}
			}
			if !protocol.Retryable(code) {
				return reply, nil
			}
			last = &Error{Code: code, Message: "runner is not serving the shard"}
		case errors.Is(err, nats.ErrNoResponders):
			if last == nil { // the first time: is the type hosted at all?
				if herr := c.notHosted(ctx, entityType); herr != nil {
					return nil, herr
				}
			}
			last = err
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
			if last != nil {
				return nil, fmt.Errorf("%w: %s: %w (last: %v)", ErrShardUnavailable, req.Subject, err, last)
			}
			return nil, err
		case errors.Is(err, nats.ErrMaxPayload):
			return nil, fmt.Errorf("%w: %w", ErrPayloadTooLarge, err)
		default:
			return nil, err
		}
		wait := min(backoff, time.Until(until))
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w: %s: %w (last: %v)", ErrShardUnavailable, req.Subject, ctx.Err(), last)
		}
		if !time.Now().Before(until) {
			return nil, fmt.Errorf("%w: %s: %w (last: %v)", ErrShardUnavailable, req.Subject, context.DeadlineExceeded, last)
		}
		backoff = min(backoff*2, c.cfg.RetryBackoffMax)
		if _, ok := req.Header[protocol.HeaderTimeout]; ok {
			setDeadline(until, req.Header)
		}
	}
}

// decodeError turns an error reply into the error the caller sees.
func decodeError(info actor.RPCInfo, codec actor.Codec, code string, data []byte) error {
	body, detail, err := protocol.DecodeError(codec, data)
	if err != nil {
		return &Error{Code: code, Message: fmt.Sprintf("undecodable error body: %v", err)}
	}
	switch body.Code {
	case protocol.CodeDefect:
		return &actor.Defect{Message: body.Message, Stack: body.Stack}
	case protocol.CodeFailure:
		if info != nil {
			for _, f := range info.Failures() {
				if f.Code != body.Failure {
					continue
				}
				v := reflect.New(f.Type)
				if len(detail) > 0 {
					if err := codec.Unmarshal(detail, v.Interface()); err != nil {
						return &Error{Code: protocol.CodeFailure, Message: fmt.Sprintf("%s: undecodable failure %s: %v", body.Message, f.Code, err)}
					}
				}
				if e, ok := v.Elem().Interface().(error); ok && e != nil {
					return e
				}
			}
		}
	}
	return &Error{Code: body.Code, Message: body.Message}
}

func decodeReply[Resp any](info actor.RPCInfo, codec actor.Codec, reply *nats.Msg) (Resp, error) {
	var resp Resp
	if code := reply.Header.Get(protocol.HeaderError); code != "" {
		return resp, decodeError(info, codec, code, reply.Data)
	}
	if err := codec.Unmarshal(reply.Data, &resp); err != nil {
		return resp, fmt.Errorf("%w: reply: %w", actor.ErrMalformed, err)
	}
	return resp, nil
}

// Call sends req to the entity id of rpc's entity type, wherever it runs,
// and waits for the reply. For an RPC declared actor.Persisted, the message
// is first stored in JetStream (with a generated id, or MessageID's), then
// handled at least once and answered from the stored reply (see
// docs/persistence.md). A default timeout (Config.CallTimeout) applies
// when ctx has no deadline; when ctx has one, the handler's context gets it
// too (Mesh-Timeout).
// While no runner serves the entity's shard, Call retries with backoff.
//
// Errors: ErrShardUnavailable (no runner before the deadline), a *actor.Defect,
// the RPC's declared failures (match with errors.As), *Error values matching
// actor.ErrMailboxFull, actor.ErrUnknownEntity, actor.ErrUnknownRPC,
// actor.ErrMalformed and the rest with errors.Is, ErrPayloadTooLarge,
// actor.ErrInvalidID, or ctx's error.
func Call[Req, Resp any](ctx context.Context, c *Client, rpc actor.RPC[Req, Resp], id string, req Req, opts ...CallOption) (Resp, error) {
	var zero Resp
	info := rpc.Info()
	o, err := applyCallOptions(opts)
	if err != nil {
		return zero, err
	}
	if info.Persisted() {
		ctx, cancel := c.withTimeout(ctx)
		defer cancel()
		payload, err := c.codec.Marshal(req)
		if err != nil {
			return zero, fmt.Errorf("encode request: %w", err)
		}
		reply, err := c.callPersisted(ctx, info.Entity().Name(), info.Name(), c.codecValue, id, payload, o)
		if err != nil {
			return zero, err
		}
		return decodeReply[Resp](info, c.replyCodec(reply), reply)
	}
	if ctx.Done() != nil { // cancellable: bound it (an uncancellable one is bounded by requestRetry)
		var cancel context.CancelFunc
		ctx, cancel = c.withTimeout(ctx)
		defer cancel()
	}
	payload, err := c.codec.Marshal(req)
	if err != nil {
		return zero, fmt.Errorf("encode request: %w", err)
	}
	var m *nats.Msg
	if c.obs != nil {
		if m, err = c.newRequest(ctx, info, id, payload); err != nil {
			return zero, err
		}
		done := c.callSent(ctx, info.Entity().Name(), info.Name(), m.Header)
		defer func() { done(declared(info, err)) }()
	} else {
		m = requestPool.Get().(*nats.Msg)
		defer putRequest(m)
		if err = c.fillRequest(m, ctx, info, id, payload); err != nil {
			return zero, err
		}
	}
	reply, err := c.requestRetry(ctx, info.Entity().Name(), m)
	if err != nil {
		return zero, err
	}
	resp, err := decodeReply[Resp](info, c.codec, reply)
	return resp, err
}

// Send delivers req to the entity without waiting for a reply. For a
// volatile RPC it returns once the NATS server has accepted the message (a
// flush round trip), and delivery is at most once: if no runner serves the
// shard at that moment the message is lost. For a persisted RPC it returns
// once JetStream has stored the message, which is then handled at least
// once; fetch its reply with Reply and the id given by MessageID.
func Send[Req, Resp any](ctx context.Context, c *Client, rpc actor.RPC[Req, Resp], id string, req Req, opts ...CallOption) error {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	payload, err := c.codec.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	o, err := applyCallOptions(opts)
	if err != nil {
		return err
	}
	if rpc.Info().Persisted() {
		info := rpc.Info()
		extra := nats.Header{}
		done := c.callSent(ctx, info.Entity().Name(), info.Name(), extra)
		_, _, err := c.publishPersisted(ctx, info.Entity().Name(), info.Name(), c.codecValue, id, payload, o, "", extra)
		done(err)
		return err
	}
	m, err := c.newRequest(ctx, rpc.Info(), id, payload)
	if err != nil {
		return err
	}
	delete(m.Header, protocol.HeaderTimeout) // nobody waits: the handler gets no deadline
	done := c.callSent(ctx, rpc.Info().Entity().Name(), rpc.Info().Name(), m.Header)
	if err := c.nc.PublishMsg(m); err != nil {
		if errors.Is(err, nats.ErrMaxPayload) {
			err = fmt.Errorf("%w: %w", ErrPayloadTooLarge, err)
		}
		done(err)
		return err
	}
	err = c.nc.FlushWithContext(ctx)
	done(err)
	return err
}
