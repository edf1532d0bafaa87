package jetstream_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/jetstream"
)

// Two holders compete for a lease; the loser learns who holds it, and takes
// it once it is released.
func ExampleLeases() {
	dir, _ := os.MkdirTemp("", "leases-example")
	defer os.RemoveAll(dir)
	srv, _ := server.NewServer(&server.Options{DontListen: true, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true})
	go srv.Start()
	srv.ReadyForConnections(10 * time.Second)
	defer srv.Shutdown()
	nc, _ := nats.Connect("", nats.InProcessServer(srv))
	defer nc.Close()
	js, _ := natsjs.New(nc)
	ctx := context.Background()

	leases, err := jetstream.OpenLeases(ctx, js, jetstream.LeaseConfig{Bucket: "example", TTL: 5 * time.Second})
	if err != nil {
		panic(err)
	}
	a, err := leases.Acquire(ctx, "shard.default.7", "runner-a")
	fmt.Println("a:", err, a.Valid(time.Now()))
	_, err = leases.Acquire(ctx, "shard.default.7", "runner-b")
	fmt.Println("b:", errors.Is(err, jetstream.ErrLeaseHeld))
	holder, _, _ := leases.Holder(ctx, "shard.default.7")
	fmt.Println("holder:", holder)

	// Keep it renewed in the background; Lost closes if it cannot be.
	k := leases.Keep(ctx, a, time.Second)
	if err := k.Release(ctx); err != nil {
		panic(err)
	}
	b, err := leases.Acquire(ctx, "shard.default.7", "runner-b")
	fmt.Println("b after release:", err, b.Revision > a.Revision)
	// Output:
	// a: <nil> true
	// b: true
	// holder: runner-a
	// b after release: <nil> true
}
