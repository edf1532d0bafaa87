package actor_test

import (
	"context"
	"fmt"

	"github.com/natsmesh/natsmesh/actor"
)

// Define the seed's Counter, implement it, and call it through the test
// client: no NATS involved.
func ExampleNewTestClient() {
	counter := actor.NewEntity("ExampleCounter")
	increment := actor.NewRPC[Amount, int](counter, "Increment")
	getValue := actor.NewRPC[actor.Empty, int](counter, "GetValue")

	live := actor.Implement(counter, func(self *actor.Instance) ([]actor.Handler, error) {
		state := 0 // private to this activation
		self.OnStop(func(context.Context) { fmt.Println("finalizing", self.Address(), "at", state) })
		return []actor.Handler{
			actor.Handle(increment, func(_ context.Context, a Amount) (int, error) {
				state += a.Amount
				return state, nil
			}),
			actor.Handle(getValue, func(context.Context, actor.Empty) (int, error) {
				return state, nil
			}),
		}, nil
	})

	rt, err := actor.NewTestClient(live)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	_, _ = actor.Call(ctx, rt, increment, "user-123", Amount{5})
	_, _ = actor.Call(ctx, rt, increment, "user-123", Amount{3})
	v, err := actor.Call(ctx, rt, getValue, "user-123", actor.Empty{})
	fmt.Println(v, err)
	_ = rt.Shutdown(ctx)
	// Output:
	// 8 <nil>
	// finalizing ExampleCounter/user-123 at 8
}
