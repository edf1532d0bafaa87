package durablestate

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/internal/testkit/patterntest"
)

// On a 3-server cluster with an R3 bucket: a host whose connection is
// severed (a crash) loses no acknowledged write, the next host continues
// from the stored state, and writes go on across the loss of the bucket's
// leader, each acknowledged one stored.
func TestClusterCrashAndLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-server NATS cluster")
	}
	servers := natstest.StartCluster(t, 3)
	host := func() *actor.Runtime {
		st, err := Open(natstest.Connect(t, servers...), replicated(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return runtimeFor(t, st, cartSpec(nil))
	}
	crashNC := natstest.Connect(t, servers...)
	st1, err := Open(crashNC, replicated(0))
	if err != nil {
		t.Fatal(err)
	}
	first := runtimeFor(t, st1, cartSpec(nil))
	var want []string
	for i := range 20 {
		item := fmt.Sprint("a", i)
		patterntest.Call(t, first, Add, "c", item)
		want = append(want, item)
	}
	crashNC.Close() // the first host is gone: nothing flushed, nothing released

	second := host()
	if got := patterntest.Call(t, second, Items, "c", actor.Empty{}); fmt.Sprint(got.Items) != fmt.Sprint(want) {
		t.Fatalf("after the crash the next host loaded %v, want %v", got.Items, want)
	}
	cnc := natstest.Connect(t, servers...)
	leader := natstest.StreamLeader(t, servers, cnc, "KV_"+st1.Bucket(Cart.Name()))
	for i := range 40 {
		if i == 10 {
			t.Logf("shutting down %s, leader of the bucket", leader.Name())
			leader.Shutdown()
		}
		item := fmt.Sprint("b", i)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := actor.Call(ctx, second, Add, "c", item)
		cancel()
		if err != nil {
			t.Fatalf("Add(%s) across the leader loss: %v", item, err)
		}
		want = append(want, item)
	}
	third := host()
	if got := patterntest.Call(t, third, Items, "c", actor.Empty{}); fmt.Sprint(got.Items) != fmt.Sprint(want) {
		t.Fatalf("stored %d items, want the %d acknowledged", len(got.Items), len(want))
	}
}

// replicated is the configuration of a 3-replica store; attempt, if not
// zero, bounds each write attempt.
func replicated(attempt time.Duration) Config {
	cfg := DefaultConfig()
	cfg.Replicas = 3
	if attempt != 0 {
		cfg.WriteAttemptTimeout = attempt
	}
	return cfg
}
