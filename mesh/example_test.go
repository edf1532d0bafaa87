package mesh_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/durablestate"
	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/devnats"
	"github.com/natsmesh/natsmesh/mesh"
)

// A runner hosts the Counter; a client calls it by id. Here both share an
// in-process NATS server; in production they are separate processes on a
// NATS cluster, and runners share the shards (see docs/operations.md).
func ExampleCall() {
	srv, err := devnats.Start(devnats.Options{}) // in-process only, JetStream in memory
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()
	nc, err := nats.Connect("", nats.InProcessServer(srv))
	if err != nil {
		panic(err)
	}
	defer nc.Close()

	cfg := mesh.DefaultConfig()
	cfg.Standalone = true // the only runner: it serves every shard
	runner, err := mesh.NewRunner(nc, cfg)
	if err != nil {
		panic(err)
	}
	// The Counter keeps its value as durable state, in a KV bucket.
	ctx := context.Background()
	store, err := durablestate.Open(nc, durablestate.DefaultConfig())
	if err != nil {
		panic(err)
	}
	behavior, err := counter.New(ctx, store)
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

	client, err := mesh.NewClient(nc, cfg.ClientConfig)
	if err != nil {
		panic(err)
	}
	v, err := mesh.Call(ctx, client, counter.Increment, "user-123", counter.Amount{Amount: 5})
	fmt.Println(v, err)
	v, err = mesh.Call(ctx, client, counter.Increment, "user-123", counter.Amount{Amount: 3})
	fmt.Println(v, err)

	// A declared failure arrives typed.
	_, err = mesh.Call(ctx, client, counter.Withdraw, "user-123", counter.Amount{Amount: 100})
	var over *counter.Overdrawn
	fmt.Println(errors.As(err, &over), over.Value, over.Wanted)
	// Output:
	// 5 <nil>
	// 8 <nil>
	// true 8 100
}
