// Command complete is the complete example of @effect/cluster's guide, in
// Go: a Counter entity with in-memory state, unbounded concurrency and a
// 10 s idle time, and a SendMessage singleton that calls it. The singleton
// runs on one runner of the cluster at a time, so however many runners
// there are, the log shows "Client" 1, 2, 1 once.
//
// One process (an embedded NATS server, a shard manager, the gateway and
// this runner):
//
//	go run ./examples/complete -dev
//
// Three runner processes on a NATS server (start the shard manager last,
// so that it assigns the shards once, to all three):
//
//	nats-server -js &
//	go run ./examples/complete -id r1 & go run ./examples/complete -id r2 & go run ./examples/complete -id r3 &
//	go run ./cmd/shardmgr
package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/app"
	"github.com/natsmesh/natsmesh/mesh"
)

// Amount is the payload of Increment and Decrement.
type Amount struct {
	Amount int `json:"amount"`
}

// The Counter entity and its RPCs.
var (
	Counter   = actor.NewEntity("Counter")
	Increment = actor.NewRPC[Amount, int](Counter, "Increment")
	Decrement = actor.NewRPC[Amount, int](Counter, "Decrement")
)

// CounterLive implements Counter.
var CounterLive = actor.Implement(Counter, func(self *actor.Instance) ([]actor.Handler, error) {
	if !self.Probe() { // Register runs init once to check the handlers: not an activation
		slog.Info("Creating Counter", "address", self.Address().String())
	}
	// In-memory state: fast reads, instant writes, gone when the entity
	// passivates or moves (package durablestate keeps it).
	var (
		mu    sync.Mutex // unbounded concurrency: handlers may run at once
		state int
	)
	update := func(d int) int {
		mu.Lock()
		defer mu.Unlock()
		state += d
		return state
	}
	self.OnStop(func(context.Context) { slog.Info("Finalizing", "state", update(0)) })
	return []actor.Handler{
		actor.Handle(Increment, func(_ context.Context, a Amount) (int, error) { return update(a.Amount), nil }),
		actor.Handle(Decrement, func(_ context.Context, a Amount) (int, error) { return update(-a.Amount), nil }),
	}, nil
}, actor.MaxIdleTime(10*time.Second), actor.Concurrency(actor.Unbounded))

// SendMessage calls the Counter "test" three times, from wherever it runs.
var SendMessage = app.Singleton{Name: "SendMessage", Run: func(ctx context.Context, client *mesh.Client) error {
	for i, step := range []actor.RPC[Amount, int]{Increment, Increment, Decrement} {
		v, err := mesh.Call(ctx, client, step, "test", Amount{Amount: 1})
		if err != nil {
			return err // restarted after a backoff
		}
		slog.Info("Client", "call", i+1, "value", v)
	}
	return nil // done: not run again unless it moves to another runner
}}

func main() {
	app.Runner{
		Name:       "complete",
		Behaviors:  []*actor.Behavior{CounterLive},
		Singletons: []app.Singleton{SendMessage},
	}.Main()
}
