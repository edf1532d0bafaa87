package actor

import (
	"context"
	"fmt"
	"math"
	"time"
)

// Handler binds one RPC to the function that handles it. Build it with
// Handle or HandleStream; the compiler checks the function against the RPC.
type Handler struct {
	d  *rpcDesc
	fn any // func(context.Context, Req) (Resp, error) or a stream handler
}

// Handle binds a unary RPC to its handler. The handler receives the caller's
// context: its deadline and cancellation reach the handler.
func Handle[Req, Resp any](rpc RPC[Req, Resp], fn func(ctx context.Context, req Req) (Resp, error)) Handler {
	return Handler{d: rpc.d, fn: fn}
}

// HandleStream binds a streaming RPC to its handler. emit blocks while the
// caller's buffer is full (flow control) and returns an error once the caller
// has stopped reading or its context ended; the handler should then return.
func HandleStream[Req, Chunk any](rpc StreamRPC[Req, Chunk], fn func(ctx context.Context, req Req, emit func(Chunk) error) error) Handler {
	return Handler{d: rpc.d, fn: fn}
}

// Init builds one activation of an entity: it may set up state (kept in its
// closure), register finalizers with OnStop, and returns the handlers. It runs
// on the entity's own goroutine before the first message of the activation,
// and once more when the behaviour is registered, on a probe instance
// (Instance.Probe), so that Register can check the handlers.
type Init func(self *Instance) ([]Handler, error)

// Behavior is an implementation of an entity type: its init function and
// its options. Register it with a Runtime (or a mesh runner).
type Behavior struct {
	entity *Entity
	init   Init
	opts   []Option
}

// Implement returns the behaviour of e built by init, with options that
// override the runtime's defaults for this entity type. Options are checked
// when the behaviour is registered.
func Implement(e *Entity, init Init, opts ...Option) *Behavior {
	return &Behavior{entity: e, init: init, opts: opts}
}

// Entity returns the entity type this behaviour implements.
func (b *Behavior) Entity() *Entity { return b.entity }

// Unbounded is the Concurrency that lets every queued message run at once.
const Unbounded = math.MaxInt32

// entityOptions are the per-type settings resolved at registration.
type entityOptions struct {
	maxIdle     time.Duration
	concurrency int
	capacity    int
	noFatal     bool
	retry       Backoff
}

// Option configures an entity type's behaviour.
type Option func(*entityOptions) error

// MaxIdleTime passivates an entity after d without messages (and without
// KeepAlive). d must be positive.
func MaxIdleTime(d time.Duration) Option {
	return func(o *entityOptions) error {
		if d <= 0 {
			return fmt.Errorf("%w: MaxIdleTime %v must be positive", ErrInvalidOption, d)
		}
		o.maxIdle = d
		return nil
	}
}

// Concurrency lets n messages of one entity run at once (1, the default, is
// strict actor semantics; Unbounded runs every message at once).
func Concurrency(n int) Option {
	return func(o *entityOptions) error {
		if n < 1 {
			return fmt.Errorf("%w: Concurrency %d must be at least 1", ErrInvalidOption, n)
		}
		o.concurrency = n
		return nil
	}
}

// MailboxCapacity bounds the messages waiting for one entity; past it a send
// fails at once with ErrMailboxFull.
func MailboxCapacity(n int) Option {
	return func(o *entityOptions) error {
		if n < 1 || n > math.MaxInt32 {
			return fmt.Errorf("%w: MailboxCapacity %d out of range", ErrInvalidOption, n)
		}
		o.capacity = n
		return nil
	}
}

// DisableFatalDefects keeps an entity alive, state intact, after a handler
// panics: the caller still receives the *Defect.
func DisableFatalDefects() Option {
	return func(o *entityOptions) error { o.noFatal = true; return nil }
}

// DefectRetryPolicy sets how long to wait before re-creating an entity whose
// init failed or whose handler panicked, by consecutive failure count.
func DefectRetryPolicy(b Backoff) Option {
	return func(o *entityOptions) error {
		if b == nil {
			return fmt.Errorf("%w: nil DefectRetryPolicy", ErrInvalidOption)
		}
		o.retry = b
		return nil
	}
}

// Backoff returns the delay before retry number attempt (1 for the first).
type Backoff func(attempt int) time.Duration

// ExponentialBackoff doubles from base up to max.
func ExponentialBackoff(base, max time.Duration) Backoff {
	return func(attempt int) time.Duration {
		d := base
		for i := 1; i < attempt && d < max; i++ {
			d *= 2
		}
		return min(d, max)
	}
}

// Address returns the address of the entity this instance activates.
//
// An Instance is one activation of an entity, as its init function sees
// it. Its methods are safe to call from the entity's handlers and from
// goroutines the entity starts. It is also the runtime's bookkeeping for
// the entity, which is why it has unexported fields: one allocation per
// activation.
func (in *Instance) Address() Address { return in.addr }

// Probe reports whether this instance is the probe that Register runs the
// behaviour's init on, once, to check the handlers it returns against the
// entity's declared RPCs (a missing handler, or one for another type's
// RPC, fails Register). A probe is never activated: its address has an
// empty id, and its OnStop, Stop and KeepAlive do nothing. An init that
// loads state, acquires resources or starts work returns its handlers at
// once when probed (building them costs nothing: they are closures).
func (in *Instance) Probe() bool { return in.probe }

// OnStop registers a finalizer, run once when this activation ends
// (passivation, shutdown, a fatal defect, or the partition being closed),
// after its last message. Finalizers run in reverse registration order with a
// context bounded by the runtime's termination timeout.
func (in *Instance) OnStop(fn func(ctx context.Context)) {
	if in.probe {
		return
	}
	in.mu.Lock()
	in.finalizers = append(in.finalizers, fn)
	in.mu.Unlock()
}

// Stop ends this activation once the handlers running now return: its
// finalizers run, and the next message (queued or new) re-creates the
// entity, running its init again on fresh state. An entity calls it when
// it finds its in-memory state can no longer be trusted, for example when
// its storage refused a write because another writer went ahead: it
// reloads instead of going on. Unlike a defect it counts no failure and
// waits no backoff. Calling it again, or after the activation ended, does
// nothing.
func (in *Instance) Stop() {
	if in.probe {
		return
	}
	rt := in.ts.rt
	in.mu.Lock()
	if in.state != stActive || in.closing {
		in.mu.Unlock()
		return
	}
	in.state = stFailed
	in.handlers = nil
	if in.cold != nil {
		in.cold.retryAt = 0
	}
	wasActive := in.activated
	in.activated = false
	in.mu.Unlock()
	if obs := rt.opts.observer; obs != nil && wasActive {
		obs.Deactivated(in.addr, StopRequested)
	}
}

// KeepAlive holds off passivation while enabled, for an entity doing work
// outside its handlers. Shutdown and partition closing still stop it.
func (in *Instance) KeepAlive(enabled bool) {
	if in.probe {
		return
	}
	in.mu.Lock()
	in.keepAlive = enabled
	in.lastActive = in.ts.rt.clock.Load()
	in.mu.Unlock()
}
