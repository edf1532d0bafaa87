package mesh_test

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh"
)

// Counter as a later version would declare it: one more RPC.
var (
	counterV2 = actor.NewEntity("Counter")
	incV2     = actor.NewRPC[Amount, int](counterV2, "Increment")
	resetV2   = actor.NewRPC[actor.Empty, actor.Empty](counterV2, "Reset")
)

func counterV2Behavior() *actor.Behavior {
	return actor.Implement(counterV2, func(*actor.Instance) ([]actor.Handler, error) {
		n := 0
		return []actor.Handler{
			actor.Handle(incV2, func(_ context.Context, a Amount) (int, error) { n += a.Amount; return n, nil }),
			actor.Handle(resetV2, func(context.Context, actor.Empty) (actor.Empty, error) { n = 0; return actor.Empty{}, nil }),
		}, nil
	})
}

// Types lists what live runners host: each version of a type (two during
// a rolling upgrade) with its RPCs, their kinds and shapes, and the
// runners hosting it.
func TestTypesRegistry(t *testing.T) {
	cfg := clusterConfig()
	c := newTestCluster(t, cfg)
	c.manager()
	schemaOf := func(t reflect.Type) json.RawMessage { return json.RawMessage(`{"title":"` + t.String() + `"}`) }
	for _, id := range []string{"v1-a", "v1-b"} {
		nc, err := nats.Connect(c.url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		rc := cfg
		rc.RunnerID = id
		r, err := mesh.NewRunner(nc, rc, mesh.WithSchemas(schemaOf), mesh.WithVersion("1.0.0"))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Register(counterBehavior(newHooks())); err != nil {
			t.Fatal(err)
		}
		if err := r.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = r.Shutdown(ctx)
		})
	}
	c.runnerHosting("v2", 1, nil, nil, counterV2Behavior())

	nc, _ := c.jetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	types, err := mesh.Types(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(types) != 1 || types[0].Name != "Counter" || types[0].Group != "default" || len(types[0].Versions) != 2 {
		t.Fatalf("types: %+v", types)
	}
	var v1, v2 mesh.TypeVersion
	for _, v := range types[0].Versions {
		if slices.Equal(v.Runners, []string{"v1-a", "v1-b"}) {
			v1 = v
		} else if slices.Equal(v.Runners, []string{"v2"}) {
			v2 = v
		}
	}
	if !v1.Described || !v2.Described || v1.Fingerprint == v2.Fingerprint || v1.Fingerprint == "" {
		t.Fatalf("versions: %+v", types[0].Versions)
	}
	rpcs := map[string]mesh.RPCDesc{}
	for _, r := range v1.RPCs {
		rpcs[r.Name] = r
	}
	if len(rpcs) != 9 || rpcs["Countdown"].Kind != "stream" || rpcs["Increment"].Kind != "unary" ||
		rpcs["Increment"].Payload.GoType != "mesh_test.Amount" || string(rpcs["Increment"].Payload.Schema) != `{"title":"mesh_test.Amount"}` ||
		rpcs["Increment"].Result.GoType != "int" {
		t.Fatalf("v1 RPCs: %+v", v1.RPCs)
	}
	if f := rpcs["Withdraw"].Failures; len(f) != 1 || f[0].Code != "InsufficientFunds" || f[0].Detail.GoType != "*mesh_test.InsufficientFunds" {
		t.Fatalf("Withdraw's failures: %+v", f)
	}
	if len(v2.RPCs) != 2 || v2.RPCs[1].Name != "Reset" || v2.RPCs[1].Payload.Schema != nil {
		t.Fatalf("v2 RPCs: %+v", v2.RPCs)
	}
}
