package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

var (
	// Greeter is a second entity type, hosted by some runners only.
	Greeter = actor.NewEntity("Greeter")
	Greet   = actor.NewRPC[string, string](Greeter, "Greet")
)

func greeterBehavior(runner string) *actor.Behavior {
	return actor.Implement(Greeter, func(self *actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{
			actor.Handle(Greet, func(_ context.Context, who string) (string, error) {
				return "hello " + who + " from " + runner, nil
			}),
		}, nil
	})
}

// callBoth calls n Counter and n Greeter entities and returns the first
// failure.
func callBoth(ctx context.Context, c *mesh.Client, n int) error {
	for i := range n {
		id := fmt.Sprintf("e-%d", i)
		if _, err := mesh.Call(ctx, c, Increment, id, Amount{Amount: 1}); err != nil {
			return fmt.Errorf("Counter %s: %w", id, err)
		}
		got, err := mesh.Call(ctx, c, Greet, id, "x")
		if err != nil {
			return fmt.Errorf("Greeter %s: %w", id, err)
		}
		if !strings.HasPrefix(got, "hello x from ") {
			return fmt.Errorf("Greeter %s: got %q", id, got)
		}
	}
	return nil
}

// A runner that hosts part of a group's types is refused the group's
// shards: its readiness, its registration's refusal in the status and the
// assignment say so, and the shards go to the runner that hosts them all,
// so that no call fails with UnknownEntity.
func TestMixedRunnersRefusePartialHosts(t *testing.T) {
	cfg := clusterConfig()
	c := newTestCluster(t, cfg)
	c.manager()
	c.runnerHosting("counter-only", 1, nil, nil, counterBehavior(newHooks()))
	c.waitBalanced(map[string]int{"counter-only": cfg.ShardsPerGroup})
	both := c.runnerHosting("both", 1, nil, nil, counterBehavior(newHooks()), greeterBehavior("both"))
	c.waitBalanced(map[string]int{"counter-only": 0, "both": cfg.ShardsPerGroup})

	c.mu.Lock()
	partial := c.runners["counter-only"]
	c.mu.Unlock()
	natstest.WaitFor(t, 10*time.Second, func() bool { return partial.NotReady() != nil && both.NotReady() == nil },
		"the partial runner not ready, the other ready")
	if err := partial.NotReady(); !strings.Contains(err.Error(), "Greeter") || !strings.Contains(err.Error(), "default") {
		t.Fatalf("partial runner's readiness: %v; want the group and the missing type named", err)
	}

	nc, _ := c.jetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := mesh.Inspect(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []mesh.GroupRefusal{{Group: "default", Refusal: mesh.Refusal{Runner: "counter-only", Missing: []string{"Greeter"}}}}
	if fmt.Sprint(st.Refused) != fmt.Sprint(want) {
		t.Fatalf("status refusals %v, want %v", st.Refused, want)
	}
	client, _ := newClient(t, c.url, cfg)
	if err := callBoth(ctx, client, 40); err != nil {
		t.Fatal(err)
	}

	// Once the partial runner hosts every type (redeployed), it is given
	// its share again.
	c.stop("counter-only")
	c.runnerHosting("counter-only", 1, nil, nil, counterBehavior(newHooks()), greeterBehavior("counter-only"))
	half := cfg.ShardsPerGroup / 2
	c.waitBalanced(map[string]int{"counter-only": half, "both": half})
	st, err = mesh.Inspect(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Refused) != 0 {
		t.Fatalf("refusals after the redeploy: %v", st.Refused)
	}
	if err := callBoth(ctx, client, 40); err != nil {
		t.Fatal(err)
	}
	c.obs.check(t)
}

// Two runners that each lack a type the other hosts: no runner may serve
// the group, so its assignment stays as it was rather than being split or
// emptied, and both are reported.
func TestMixedRunnersConflictKeepsAssignment(t *testing.T) {
	cfg := clusterConfig()
	c := newTestCluster(t, cfg)
	c.manager()
	c.runnerHosting("counters", 1, nil, nil, counterBehavior(newHooks()))
	c.waitBalanced(map[string]int{"counters": cfg.ShardsPerGroup})
	c.runnerHosting("greeters", 1, nil, nil, greeterBehavior("greeters"))

	nc, _ := c.jetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var st *mesh.ClusterStatus
	natstest.WaitFor(t, 10*time.Second, func() bool {
		var err error
		st, err = mesh.Inspect(ctx, nc, cfg)
		return err == nil && len(st.Refused) == 2
	}, "both runners reported as refused")
	if st.Refused[0].Runner != "counters" || !slices.Equal(st.Refused[0].Missing, []string{"Greeter"}) ||
		st.Refused[1].Runner != "greeters" || !slices.Equal(st.Refused[1].Missing, []string{"Counter"}) {
		t.Fatalf("refusals %v", st.Refused)
	}
	c.waitBalanced(map[string]int{"counters": cfg.ShardsPerGroup, "greeters": 0})
	client, _ := newClient(t, c.url, cfg)
	if _, err := mesh.Call(ctx, client, Increment, "a", Amount{Amount: 1}); err != nil {
		t.Fatalf("Counter while the group is in conflict: %v", err)
	}
}

// A call to a type no live runner hosts fails at once with ErrNotHosted,
// naming what the group's runners host, rather than waiting out the call
// timeout; persisted sends to it are refused before being stored.
func TestNotHostedFailsFast(t *testing.T) {
	cfg := clusterConfig()
	cfg.CallTimeout = time.Minute // a wait for a runner would show
	c := newTestCluster(t, cfg)
	c.manager()
	c.runnerHosting("r1", 1, nil, nil, counterBehavior(newHooks()))
	c.waitBalanced(map[string]int{"r1": cfg.ShardsPerGroup})
	client, _ := newClient(t, c.url, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	natstest.WaitFor(t, 10*time.Second, func() bool {
		_, err := mesh.Call(ctx, client, Greet, "g", "x")
		return errors.Is(err, mesh.ErrNotHosted)
	}, "ErrNotHosted for Greeter")
	_, err := mesh.Call(ctx, client, Greet, "g", "x")
	if !errors.Is(err, actor.ErrUnknownEntity) || mesh.CodeOf(err) != "UnknownEntity" ||
		!strings.Contains(err.Error(), "Greeter") || !strings.Contains(err.Error(), "Counter") {
		t.Fatalf("call to an unhosted type: %v (code %s)", err, mesh.CodeOf(err))
	}
	if ctx.Err() != nil {
		t.Fatal("the call waited out its deadline")
	}
	// Once a runner hosts it, calls go through (r1, lacking it, is then
	// refused the group).
	c.runnerHosting("r2", 1, nil, nil, counterBehavior(newHooks()), greeterBehavior("r2"))
	natstest.WaitFor(t, 20*time.Second, func() bool {
		_, err := mesh.Call(ctx, client, Greet, "g", "x")
		return err == nil
	}, "Greeter served once hosted")
}

// Rolling out a new entity type, as docs/operations.md says: in its own
// shard group, on one runner first, then the rest. The existing group's
// shards stay spread over every runner throughout, and no call fails.
func TestRollOutNewType(t *testing.T) {
	cfg := clusterConfig()
	cfg.ShardGroups = []string{"default", "greetings"}
	cfg.EntityGroups = map[string]string{"Greeter": "greetings"}
	c := newTestCluster(t, cfg)
	c.manager()
	c.runnerHosting("a", 1, nil, nil, counterBehavior(newHooks()))
	c.runnerHosting("b", 1, nil, nil, counterBehavior(newHooks()))
	n := cfg.ShardsPerGroup
	// The group no runner hosts a type of is served by every runner.
	c.waitBalanced(map[string]int{"a": n, "b": n})

	client, _ := newClient(t, c.url, cfg)
	load := startLoad(client, 50, 4, 0)
	load.progress(t, 200, "load on Counter before the roll-out")

	// One runner first: it takes every shard of the new group, and its
	// share of the Counter's.
	c.runnerHosting("c", 1, nil, nil, counterBehavior(newHooks()), greeterBehavior("c"))
	third := n / 3
	c.waitBalanced(map[string]int{"a": third, "b": third, "c": n - 2*third + n})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := callBoth(ctx, client, 30); err != nil {
		t.Fatal(err)
	}
	// Then the rest, one at a time.
	for _, id := range []string{"a", "b"} {
		c.stop(id)
		c.runnerHosting(id, 1, nil, nil, counterBehavior(newHooks()), greeterBehavior(id))
	}
	c.waitBalanced(map[string]int{"a": 2 * third, "b": 2 * third, "c": 2 * (n - 2*third)})
	if err := callBoth(ctx, client, 30); err != nil {
		t.Fatal(err)
	}
	load.progress(t, 200, "load on Counter after the roll-out")
	load.finish(t, time.Time{}, time.Time{})
	c.obs.check(t)
}
