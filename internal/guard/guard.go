// Package guard is the command discipline shared by the stateful entity
// patterns (eventsourced, durablestate): one command at a time per
// instance, a stale instance rebuilt from storage before its next command,
// and a command whose write failed answered with that failure.
package guard

import (
	"context"
	"sync"

	"github.com/natsmesh/natsmesh/actor"
)

// Guard belongs to one entity instance. Its zero value is ready once
// Rebuild is set. Commands and anything else that touches the instance's
// state (a background flush) hold it with Lock.
type Guard struct {
	mu     sync.Mutex
	stale  error // non-nil: the state may differ from storage
	failed error // the failed write of the running command

	// Rebuild reloads the instance's state from storage; it is called
	// with the guard held, before a command, while the instance is stale,
	// and must clear staleness (MarkFresh) on success.
	Rebuild func(ctx context.Context) error
}

// Lock and Unlock hold the instance for work outside a command.
func (g *Guard) Lock()   { g.mu.Lock() }
func (g *Guard) Unlock() { g.mu.Unlock() }

// MarkStale records that the state may differ from storage (a refused or
// unanswered write, a half-applied change), with the reason.
func (g *Guard) MarkStale(reason error) { g.stale = reason }

// MarkFresh records that the state matches storage.
func (g *Guard) MarkFresh() { g.stale = nil }

// Stale returns why the instance is stale, or nil.
func (g *Guard) Stale() error { return g.stale }

// Fail records err as the running command's outcome and returns it.
func (g *Guard) Fail(err error) error {
	g.failed = err
	return err
}

// Failed returns the running command's failed write, or nil.
func (g *Guard) Failed() error { return g.failed }

// Handle binds rpc to fn under g: fn runs with g held, after a rebuild if
// the instance is stale, and if a write failed during fn (Fail) the caller
// receives that error whatever fn returned.
func Handle[Req, Resp any](g *Guard, rpc actor.RPC[Req, Resp], fn func(ctx context.Context, req Req) (Resp, error)) actor.Handler {
	return actor.Handle(rpc, func(ctx context.Context, req Req) (Resp, error) {
		var zero Resp
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.stale != nil {
			if err := g.Rebuild(ctx); err != nil {
				return zero, err
			}
		}
		g.failed = nil
		resp, err := fn(ctx, req)
		if g.failed != nil {
			return zero, g.failed
		}
		return resp, err
	})
}

// HandleStream is Handle for a streaming RPC: fn runs with g held for the
// whole stream.
func HandleStream[Req, Chunk any](g *Guard, rpc actor.StreamRPC[Req, Chunk], fn func(ctx context.Context, req Req, emit func(Chunk) error) error) actor.Handler {
	return actor.HandleStream(rpc, func(ctx context.Context, req Req, emit func(Chunk) error) error {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.stale != nil {
			if err := g.Rebuild(ctx); err != nil {
				return err
			}
		}
		g.failed = nil
		err := fn(ctx, req, emit)
		if g.failed != nil {
			return g.failed
		}
		return err
	})
}
