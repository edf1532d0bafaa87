package main

import (
	"context"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/authtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

// The runner reaches a server that requires mutual TLS and a credentials
// file, and serves calls made over the same kind of connection.
func TestSecureServer(t *testing.T) {
	sec := authtest.StartSecure(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out, errs natstest.Buffer
	go func() {
		done <- run(ctx, append(sec.Flags, "-standalone", "-shards", "8", "-log-level", "error"), &out, &errs)
	}()
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup = 8
	c, err := mesh.NewClient(sec.Connect(t), cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	// Call retries until the runner serves the shard.
	if v, err := mesh.Call(cctx, c, counter.Increment, "user-1", counter.Amount{Amount: 3}); err != nil || v != 3 {
		t.Fatalf("Increment over TLS with credentials = %d, %v\n%s", v, err, errs.String())
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v\n%s", err, errs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("runner did not stop")
	}
}
