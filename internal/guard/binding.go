package guard

import (
	"context"
	"fmt"

	"github.com/natsmesh/natsmesh/actor"
)

// Binding binds one RPC of an entity type to a command handler of its
// instances, of type *E (durablestate.Entity[S], eventsourced.Entity[S]):
// it is those packages' Handler. Build it with Bind or BindStream.
type Binding[E any] struct {
	rpc  actor.RPCInfo
	bind func(*E) actor.Handler
}

// Bind binds rpc to fn under the guard of each instance (guardOf): see
// Handle. A nil fn makes a binding Check refuses.
func Bind[E, Req, Resp any](rpc actor.RPC[Req, Resp], guardOf func(*E) *Guard, fn func(ctx context.Context, e *E, req Req) (Resp, error)) Binding[E] {
	if fn == nil {
		return Binding[E]{rpc: rpc.Info()}
	}
	return Binding[E]{rpc: rpc.Info(), bind: func(e *E) actor.Handler {
		return Handle(guardOf(e), rpc, func(ctx context.Context, req Req) (Resp, error) { return fn(ctx, e, req) })
	}}
}

// BindStream is Bind for a streaming rpc (see HandleStream).
func BindStream[E, Req, Chunk any](rpc actor.StreamRPC[Req, Chunk], guardOf func(*E) *Guard, fn func(ctx context.Context, e *E, req Req, emit func(Chunk) error) error) Binding[E] {
	if fn == nil {
		return Binding[E]{rpc: rpc.Info()}
	}
	return Binding[E]{rpc: rpc.Info(), bind: func(e *E) actor.Handler {
		return HandleStream(guardOf(e), rpc, func(ctx context.Context, req Req, emit func(Chunk) error) error { return fn(ctx, e, req, emit) })
	}}
}

// Handler returns the binding's handler for instance e.
func (b Binding[E]) Handler(e *E) actor.Handler { return b.bind(e) }

// Check returns an error wrapping actor.ErrInvalidOption, after prefix,
// for the first binding that is for another entity type than entity,
// has no function, or binds an RPC bound already.
func Check[E any](prefix string, entity *actor.Entity, bs []Binding[E]) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", actor.ErrInvalidOption, prefix, fmt.Sprintf(format, args...))
	}
	seen := map[actor.RPCInfo]bool{}
	for _, b := range bs {
		switch {
		case b.rpc == nil || b.rpc.Entity() != entity:
			return bad("handler for an RPC of another entity type")
		case b.bind == nil:
			return bad("nil handler for rpc %s", b.rpc.Name())
		case seen[b.rpc]:
			return bad("two handlers for rpc %s", b.rpc.Name())
		}
		seen[b.rpc] = true
	}
	return nil
}
