// Command quickstart is the README's "In 20 lines": an entity type and a
// main that is a deployable runner binary (go run ./examples/quickstart -dev).
package main

import (
	"context"
	"time"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/app"
)

type Amount struct {
	Amount int `json:"amount"`
}

var (
	Counter   = actor.NewEntity("Counter")
	Increment = actor.NewRPC[Amount, int](Counter, "Increment")
)

var CounterLive = actor.Implement(Counter, func(self *actor.Instance) ([]actor.Handler, error) {
	state := 0 // private to this activation; handlers run one at a time
	return []actor.Handler{
		actor.Handle(Increment, func(ctx context.Context, a Amount) (int, error) {
			state += a.Amount
			return state, nil
		}),
	}, nil
}, actor.MaxIdleTime(5*time.Minute))

func main() {
	app.Runner{Name: "quickstart", Behaviors: []*actor.Behavior{CounterLive}}.Main()
}
