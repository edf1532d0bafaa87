// Command complete is the seed's complete example without its singleton: an
// embedded NATS server, a runner hosting a Counter with unbounded concurrency
// and a 10 s idle time, and a client calling it by id from anywhere.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh"
)

type Amount struct {
	Amount int `json:"amount"`
}

var (
	Counter   = actor.NewEntity("Counter")
	Increment = actor.NewRPC[Amount, int](Counter, "Increment")
	Decrement = actor.NewRPC[Amount, int](Counter, "Decrement")
)

var CounterLive = actor.Implement(Counter, func(self *actor.Instance) ([]actor.Handler, error) {
	log.Println("Creating Counter", self.Address())
	state := 0 // in-memory state: fast reads, instant writes
	self.OnStop(func(context.Context) { log.Println("Finalizing", state) })
	// With unbounded concurrency the handlers may run at once: guard state.
	var mu = make(chan struct{}, 1)
	update := func(d int) int { mu <- struct{}{}; state += d; v := state; <-mu; return v }
	return []actor.Handler{
		actor.Handle(Increment, func(_ context.Context, a Amount) (int, error) { return update(a.Amount), nil }),
		actor.Handle(Decrement, func(_ context.Context, a Amount) (int, error) { return update(-a.Amount), nil }),
	}, nil
}, actor.MaxIdleTime(10*time.Second), actor.Concurrency(actor.Unbounded))

func main() {
	// A NATS server inside this process (use a real cluster in production),
	// its JetStream data in a folder of its own, removed at the end.
	dir, err := os.MkdirTemp("", "natsmesh-complete")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ns, err := server.NewServer(&server.Options{DontListen: true, JetStream: true, JetStreamMaxStore: -1, NoSigs: true, StoreDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats-server not ready")
	}
	defer ns.Shutdown()
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	ctx := context.Background()
	cfg := mesh.DefaultConfig()
	cfg.Standalone = true // one runner: no shard manager needed
	runner, err := mesh.NewRunner(nc, cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := runner.Register(CounterLive); err != nil {
		log.Fatal(err)
	}
	if err := runner.Start(ctx); err != nil {
		log.Fatal(err)
	}

	client, err := mesh.NewClient(nc, mesh.DefaultConfig().ClientConfig)
	if err != nil {
		log.Fatal(err)
	}
	for i, step := range []struct {
		rpc actor.RPC[Amount, int]
		n   int
	}{{Increment, 1}, {Increment, 1}, {Decrement, 1}} {
		v, err := mesh.Call(ctx, client, step.rpc, "test", Amount{step.n})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("Client %d: %d\n", i+1, v)
	}
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := runner.Shutdown(sctx); err != nil {
		log.Fatal(err)
	}
}
