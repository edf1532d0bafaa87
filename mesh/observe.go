package mesh

import (
	"context"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Observer hears what clients and runners do, for metrics and tracing
// (package observe/prom and observe/otel adapt it to Prometheus and
// OpenTelemetry). Give it with WithObserver; without one nothing is spent on the hot
// path. Its methods are called concurrently from many goroutines and must
// not block. Embed NopObserver to implement only some methods and to stay
// compatible when methods are added.
type Observer interface {
	// Activated and Deactivated come from the runner's actor runtime.
	actor.Observer

	// CallSent is called by a client before a request leaves, with the
	// request's headers, to which it may add (a W3C traceparent, say). The
	// returned function, if not nil, is called once with the outcome the
	// caller sees. Persisted sends report when the message is stored.
	CallSent(ctx context.Context, entityType, rpc string, h nats.Header) func(err error)

	// CallReceived is called by a runner when a call (volatile or
	// persisted) for an entity it hosts arrives, with the request's headers.
	// The returned context becomes the handler's (carrying a span, say); the
	// returned observation, if not nil, hears when the handler starts (the
	// end of the wait in the mailbox) and the outcome. Calls refused before
	// reaching a mailbox (unknown rpc, malformed, ...) are reported through
	// CallRefused instead.
	CallReceived(ctx context.Context, addr actor.Address, rpc string, shard ShardID, h nats.Header) (context.Context, CallObservation)

	// CallRefused is called when a runner answers a call with an error
	// before it reached an entity (the wire code says why).
	CallRefused(entityType, rpc, code string)

	// ShardAcquired and ShardReleased bracket the time a runner serves a
	// shard; LeaseRenewFailed reports a failed lease renewal (the lease is
	// kept while renewals may still succeed before it expires).
	ShardAcquired(s ShardID)
	ShardReleased(s ShardID)
	LeaseRenewFailed(s ShardID, err error)

	// Redelivered reports a persisted message delivered again (after a
	// failure, a crash or a move); DeadLettered one moved to the
	// dead-letter stream.
	Redelivered(addr actor.Address, rpc string)
	DeadLettered(addr actor.Address, rpc, reason string)

	// SingletonStarted and SingletonStopped bracket a singleton's run on
	// this runner.
	SingletonStarted(name string)
	SingletonStopped(name string)
}

// CallObservation follows one call on a runner.
type CallObservation interface {
	// Started is called when the handler begins.
	Started()
	// Done is called once with the handler's outcome (nil on success).
	Done(err error)
}

// NopObserver implements Observer and does nothing; embed it.
type NopObserver struct{}

func (NopObserver) Activated(actor.Address)                     {}
func (NopObserver) Deactivated(actor.Address, actor.StopReason) {}
func (NopObserver) CallRefused(string, string, string)          {}
func (NopObserver) ShardAcquired(ShardID)                       {}
func (NopObserver) ShardReleased(ShardID)                       {}
func (NopObserver) LeaseRenewFailed(ShardID, error)             {}
func (NopObserver) Redelivered(actor.Address, string)           {}
func (NopObserver) DeadLettered(actor.Address, string, string)  {}
func (NopObserver) SingletonStarted(string)                     {}
func (NopObserver) SingletonStopped(string)                     {}
func (NopObserver) CallSent(context.Context, string, string, nats.Header) func(error) {
	return nil
}
func (NopObserver) CallReceived(ctx context.Context, _ actor.Address, _ string, _ ShardID, _ nats.Header) (context.Context, CallObservation) {
	return ctx, nil
}

// callSent reports a call about to leave; it returns the function to call
// with its outcome (never nil).
func (c *Client) callSent(ctx context.Context, entityType, rpc string, h nats.Header) func(error) {
	if c.obs == nil {
		return noDone
	}
	if done := c.obs.CallSent(ctx, entityType, rpc, h); done != nil {
		return done
	}
	return noDone
}

func noDone(error) {}

// replyErr is the outcome of a request for an Observer: err, or the error
// code of the reply as a *Error.
func replyErr(reply *nats.Msg, err error) error {
	if err != nil || reply == nil {
		return err
	}
	if code := reply.Header.Get(protocol.HeaderError); code != "" {
		return &Error{Code: code, Message: "error reply"}
	}
	return nil
}
