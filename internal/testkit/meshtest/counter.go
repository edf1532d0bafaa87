package meshtest

import (
	"context"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
)

// MemoryCounter implements the example Counter's protocol
// (examples/counter) with its value in memory, for the tests of the wire,
// the cluster and the tools, which need an entity with every kind of RPC
// but no storage: its value restarts from zero on every activation. The
// example itself keeps its value as durable state.
func MemoryCounter() *actor.Behavior {
	return actor.Implement(counter.Counter, func(*actor.Instance) ([]actor.Handler, error) {
		state := 0
		add := func(_ context.Context, a counter.Amount) (int, error) { state += a.Amount; return state, nil }
		return []actor.Handler{
			actor.Handle(counter.Increment, add),
			actor.Handle(counter.Deposit, add),
			actor.Handle(counter.Decrement, func(ctx context.Context, a counter.Amount) (int, error) {
				return add(ctx, counter.Amount{Amount: -a.Amount})
			}),
			actor.Handle(counter.GetValue, func(context.Context, actor.Empty) (int, error) { return state, nil }),
			actor.Handle(counter.Withdraw, func(ctx context.Context, a counter.Amount) (int, error) {
				if a.Amount > state {
					return state, &counter.Overdrawn{Value: state, Wanted: a.Amount}
				}
				return add(ctx, counter.Amount{Amount: -a.Amount})
			}),
			actor.HandleStream(counter.Countdown, func(_ context.Context, n int, emit func(int) error) error {
				for i := n; i > 0; i-- {
					if err := emit(i); err != nil {
						return err
					}
				}
				return nil
			}),
		}, nil
	})
}
