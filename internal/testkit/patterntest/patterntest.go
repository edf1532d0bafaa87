// Package patterntest holds the test helpers shared by the stateful entity
// patterns: a runtime whose activations a test can end at will, and typed
// calls that fail the test.
package patterntest

import (
	"context"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/actor"
)

// Runtime starts an actor runtime with one partition (so Passivate can end
// every activation) hosting b, and shuts it down on cleanup.
func Runtime(t testing.TB, b *actor.Behavior) *actor.Runtime {
	t.Helper()
	rt, err := actor.New(actor.WithPartitions(1, func(actor.Address) int { return 0 }))
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Register(b); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
	return rt
}

// Passivate ends every activation of a runtime from Runtime, running their
// finalizers, and serves again.
func Passivate(t testing.TB, rt *actor.Runtime) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rt.ClosePartition(ctx, 0, nil); err != nil {
		t.Fatal(err)
	}
	if err := rt.OpenPartition(0); err != nil {
		t.Fatal(err)
	}
}

// Call calls rpc and fails the test on error.
func Call[Req, Resp any](t testing.TB, rt *actor.Runtime, rpc actor.RPC[Req, Resp], id string, req Req) Resp {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := actor.Call(ctx, rt, rpc, id, req)
	if err != nil {
		t.Fatalf("%s(%q, %v): %v", rpc.Info().Name(), id, req, err)
	}
	return v
}
