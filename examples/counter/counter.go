// Package counter is the example Counter entity (Increment, Decrement,
// GetValue), plus a declared failure, a streaming RPC and a persisted one
// (Deposit), so that every kind of call can be tried from the dev runner,
// the gateway, meshctl, the nats CLI or another language.
//
// Its value is durable state (package durablestate): stored in the KV
// bucket <prefix>_state_Counter before each reply, so a runner crash, a
// hand-off or a passivation loses no acknowledged change. A persisted
// message (Deposit) is not persisted state: it is stored until handled,
// and it is the handler that must keep its effect.
package counter

import (
	"context"
	"fmt"
	"time"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/durablestate"
)

// Amount is the payload of Increment, Decrement, Withdraw and Deposit.
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
	// id (docs/persistence.md); its effect is kept by the durable state.
	Deposit = actor.NewRPC[Amount, int](Counter, "Deposit", actor.Persisted())
)

// Spec is the Counter as a durable-state entity: each change is saved
// before the reply, so an acknowledged change is never lost.
func Spec() durablestate.Spec[int] {
	add := func(ctx context.Context, e *durablestate.Entity[int], a Amount) (int, error) {
		v := e.State() + a.Amount
		if err := e.Save(ctx, v); err != nil {
			return e.State(), err
		}
		return v, nil
	}
	return durablestate.Spec[int]{Handlers: []durablestate.Handler[int]{
		durablestate.Handle(Increment, add),
		durablestate.Handle(Deposit, add),
		durablestate.Handle(Decrement, func(ctx context.Context, e *durablestate.Entity[int], a Amount) (int, error) {
			return add(ctx, e, Amount{Amount: -a.Amount})
		}),
		durablestate.Handle(GetValue, func(_ context.Context, e *durablestate.Entity[int], _ actor.Empty) (int, error) {
			return e.State(), nil
		}),
		durablestate.Handle(Withdraw, func(ctx context.Context, e *durablestate.Entity[int], a Amount) (int, error) {
			if a.Amount > e.State() {
				return e.State(), &Overdrawn{Value: e.State(), Wanted: a.Amount}
			}
			return add(ctx, e, Amount{Amount: -a.Amount})
		}),
		durablestate.HandleStream(Countdown, func(_ context.Context, _ *durablestate.Entity[int], n int, emit func(int) error) error {
			for i := n; i > 0; i-- {
				if err := emit(i); err != nil {
					return err
				}
			}
			return nil
		}),
	}}
}

// Options are the Counter's actor options: passivated after ten idle
// minutes (its state stays stored).
func Options() []actor.Option {
	return []actor.Option{actor.MaxIdleTime(10 * time.Minute)}
}

// New returns the Counter's behaviour, its values in store (the bucket is
// created if missing): register it with a runner.
func New(ctx context.Context, store *durablestate.Store) (*actor.Behavior, error) {
	return durablestate.New(ctx, store, Counter, Spec(), Options()...)
}
