// Package counter is the seed's Counter entity (Increment, Decrement,
// GetValue), plus a declared failure, a streaming RPC and a persisted one
// (Deposit), so that every kind of call can be tried from the dev runner,
// the nats CLI or another language.
package counter

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/natsmesh/natsmesh/actor"
)

// Amount is the payload of Increment, Decrement and Withdraw.
type Amount struct {
	Amount int `json:"amount"`
}

// Overdrawn is Withdraw's declared failure.
type Overdrawn struct {
	Value  int `json:"value"`
	Wanted int `json:"wanted"`
}

func (e *Overdrawn) Error() string {
	return fmt.Sprintf("counter at %d cannot go below zero by %d", e.Value, e.Wanted)
}

// The Counter entity type and its RPCs.
var (
	Counter   = actor.NewEntity("Counter")
	Increment = actor.NewRPC[Amount, int](Counter, "Increment")
	Decrement = actor.NewRPC[Amount, int](Counter, "Decrement")
	GetValue  = actor.NewRPC[actor.Empty, int](Counter, "GetValue")
	// Withdraw decrements but never below zero: it fails with *Overdrawn.
	Withdraw = actor.NewRPC[Amount, int](Counter, "Withdraw", actor.Failure[*Overdrawn]("Overdrawn"))
	// Countdown streams n, n-1, ..., 1.
	Countdown = actor.NewStreamRPC[int, int](Counter, "Countdown")
	// Deposit adds like Increment, but is persisted: stored in JetStream
	// before it is handled, handled at least once, deduplicated by message
	// id (docs/persistence.md).
	Deposit = actor.NewRPC[Amount, int](Counter, "Deposit", actor.Persisted())
)

// Behavior implements Counter with in-memory state. log may be nil.
func Behavior(log *slog.Logger, opts ...actor.Option) *actor.Behavior {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return actor.Implement(Counter, func(self *actor.Instance) ([]actor.Handler, error) {
		addr := self.Address()
		log.Debug("creating counter", "entity", addr.String())
		state := 0
		self.OnStop(func(context.Context) {
			log.Debug("finalizing counter", "entity", addr.String(), "value", state)
		})
		return []actor.Handler{
			actor.Handle(Increment, func(_ context.Context, a Amount) (int, error) {
				state += a.Amount
				return state, nil
			}),
			actor.Handle(Deposit, func(_ context.Context, a Amount) (int, error) {
				state += a.Amount
				return state, nil
			}),
			actor.Handle(Decrement, func(_ context.Context, a Amount) (int, error) {
				state -= a.Amount
				return state, nil
			}),
			actor.Handle(GetValue, func(context.Context, actor.Empty) (int, error) {
				return state, nil
			}),
			actor.Handle(Withdraw, func(_ context.Context, a Amount) (int, error) {
				if a.Amount > state {
					return state, &Overdrawn{Value: state, Wanted: a.Amount}
				}
				state -= a.Amount
				return state, nil
			}),
			actor.HandleStream(Countdown, func(ctx context.Context, n int, emit func(int) error) error {
				for i := n; i > 0; i-- {
					if err := emit(i); err != nil {
						return err
					}
				}
				return nil
			}),
		}, nil
	}, append([]actor.Option{actor.MaxIdleTime(10 * time.Minute)}, opts...)...)
}
