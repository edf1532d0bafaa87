package eventsourced_test

import (
	"context"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/eventsourced"
	"github.com/natsmesh/natsmesh/internal/devnats"
	"github.com/natsmesh/natsmesh/mesh"
)

var (
	Account  = actor.NewEntity("Account")
	Deposit  = actor.NewRPC[int, int](Account, "Deposit", actor.Failure[*eventsourced.ConflictError]("Conflict"))
	Withdraw = actor.NewRPC[int, int](Account, "Withdraw", actor.Failure[*eventsourced.ConflictError]("Conflict"))
	Balance  = actor.NewRPC[actor.Empty, int](Account, "Balance")
)

type Deposited struct {
	Amount int `json:"amount"`
}

type Withdrawn struct {
	Amount int `json:"amount"`
}

var accountSpec = eventsourced.Spec[int]{
	SnapshotEvery: 100,
	Events: []eventsourced.EventType[int]{
		eventsourced.Event("Deposited", func(balance int, e Deposited) int { return balance + e.Amount }),
		eventsourced.Event("Withdrawn", func(balance int, e Withdrawn) int { return balance - e.Amount }),
	},
	Handlers: []eventsourced.Handler[int]{
		eventsourced.Handle(Deposit, func(ctx context.Context, e *eventsourced.Entity[int], n int) (int, error) {
			if err := e.Persist(ctx, Deposited{n}); err != nil {
				return 0, err
			}
			return e.State(), nil
		}),
		eventsourced.Handle(Withdraw, func(ctx context.Context, e *eventsourced.Entity[int], n int) (int, error) {
			if n > e.State() {
				return e.State(), fmt.Errorf("balance %d is less than %d", e.State(), n)
			}
			if err := e.Persist(ctx, Withdrawn{n}); err != nil {
				return 0, err
			}
			return e.State(), nil
		}),
		eventsourced.Handle(Balance, func(_ context.Context, e *eventsourced.Entity[int], _ actor.Empty) (int, error) {
			return e.State(), nil
		}),
	},
}

// An event-sourced account hosted by a runner: its balance is the fold of
// its events, and a runner that starts later rebuilds it from the stream.
func Example() {
	dir, _ := os.MkdirTemp("", "es-example")
	defer os.RemoveAll(dir)
	srv, err := devnats.Start(devnats.Options{StoreDir: dir})
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()
	nc, err := nats.Connect("", nats.InProcessServer(srv))
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	ctx := context.Background()

	store, err := eventsourced.Open(ctx, nc, eventsourced.DefaultConfig())
	if err != nil {
		panic(err)
	}
	cfg := mesh.DefaultConfig()
	cfg.Standalone = true
	run := func(f func(*mesh.Client)) {
		runner, err := mesh.NewRunner(nc, cfg)
		if err != nil {
			panic(err)
		}
		behavior, err := eventsourced.New(store, Account, accountSpec)
		if err != nil {
			panic(err)
		}
		if err := runner.Register(behavior); err != nil {
			panic(err)
		}
		if err := runner.Start(ctx); err != nil {
			panic(err)
		}
		defer runner.Shutdown(ctx)
		f(runner.Client())
	}

	run(func(c *mesh.Client) {
		fmt.Println(mesh.Call(ctx, c, Deposit, "alice", 100))
		fmt.Println(mesh.Call(ctx, c, Withdraw, "alice", 30))
	})
	run(func(c *mesh.Client) { // a new runner: the account comes back from its events
		fmt.Println(mesh.Call(ctx, c, Balance, "alice", actor.Empty{}))
	})
	// Output:
	// 100 <nil>
	// 70 <nil>
	// 70 <nil>
}
