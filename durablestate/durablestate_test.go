package durablestate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/internal/testkit/patterntest"
	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	Cart   = actor.NewEntity("Cart")
	Add    = actor.NewRPC[string, int](Cart, "Add", actor.Failure[*ConflictError]("Conflict"))
	Items  = actor.NewRPC[actor.Empty, cart](Cart, "Items")
	Clear  = actor.NewRPC[actor.Empty, int](Cart, "Clear")
	Ignore = actor.NewRPC[string, int](Cart, "Ignore")
)

type cart struct {
	Items []string `json:"items"`
}

func cartSpec(wb *WriteBehind) Spec[cart] {
	add := func(ctx context.Context, e *Entity[cart], item string) (int, error) {
		s := e.State()
		s.Items = append(append([]string(nil), s.Items...), item)
		if err := e.Save(ctx, s); err != nil {
			return 0, err
		}
		return len(e.State().Items), nil
	}
	return Spec[cart]{
		WriteBehind: wb,
		Handlers: []Handler[cart]{
			Handle(Add, add),
			Handle(Items, func(_ context.Context, e *Entity[cart], _ actor.Empty) (cart, error) { return e.State(), nil }),
			Handle(Clear, func(ctx context.Context, e *Entity[cart], _ actor.Empty) (int, error) {
				return 0, e.Delete(ctx)
			}),
			Handle(Ignore, func(ctx context.Context, e *Entity[cart], item string) (int, error) {
				_, _ = add(ctx, e, item) // a handler that drops the error still fails
				return 42, nil
			}),
		},
	}
}

type env struct {
	nc    *nats.Conn
	store *Store
}

func newEnv(t testing.TB, cfg Config) *env {
	t.Helper()
	s := natstest.StartServer(t)
	nc := natstest.Connect(t, s)
	st, err := Open(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{nc: nc, store: st}
}

func runtimeFor(t testing.TB, store *Store, spec Spec[cart], opts ...actor.Option) *actor.Runtime {
	t.Helper()
	b, err := New(context.Background(), store, Cart, spec, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return patterntest.Runtime(t, b)
}

// stored reads what the bucket holds for id, as a fresh activation would.
func stored(t testing.TB, env *env, id string) (cart, uint64) {
	t.Helper()
	d, err := define(env.store, Cart, cartSpec(nil))
	if err != nil {
		t.Fatal(err)
	}
	e := &Entity[cart]{d: d, addr: actor.Address{Type: Cart.Name(), ID: id}}
	e.subject = d.subject + Key(id)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.load(ctx); err != nil {
		t.Fatalf("load %q: %v", id, err)
	}
	return e.state, e.rev
}

func TestWriteThrough(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	rt := runtimeFor(t, env.store, cartSpec(nil))
	ids := []string{"plain", "a.b", "*", ">", "with space", "ünï", "=3D", "\ttab"}
	for _, id := range ids {
		patterntest.Call(t, rt, Add, id, "x")
		patterntest.Call(t, rt, Add, id, "y")
		// Write-through: stored before the reply.
		if got, rev := stored(t, env, id); !reflect.DeepEqual(got.Items, []string{"x", "y"}) || rev == 0 {
			t.Fatalf("stored(%q) = %v at %d, want [x y]", id, got, rev)
		}
	}
	patterntest.Passivate(t, rt)
	for _, id := range ids {
		if got := patterntest.Call(t, rt, Items, id, actor.Empty{}); !reflect.DeepEqual(got.Items, []string{"x", "y"}) {
			t.Fatalf("Items(%q) after reactivation = %v", id, got)
		}
	}
	if n := patterntest.Call(t, rt, Clear, "plain", actor.Empty{}); n != 0 {
		t.Fatal(n)
	}
	patterntest.Passivate(t, rt)
	if got := patterntest.Call(t, rt, Items, "plain", actor.Empty{}); len(got.Items) != 0 {
		t.Fatalf("Items after Delete and reactivation = %v, want none", got)
	}
	if got := patterntest.Call(t, rt, Add, "plain", "z"); got != 1 {
		t.Fatalf("Add after Delete = %d, want 1 (a write after a delete marker)", got)
	}
}

// Two runtimes with the same entity active: the second writer's stale
// revision is refused, and it reloads before its next command.
func TestRevisionConflict(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	a := runtimeFor(t, env.store, cartSpec(nil))
	b := runtimeFor(t, env.store, cartSpec(nil))
	patterntest.Call(t, a, Add, "c", "a1")
	patterntest.Call(t, b, Add, "c", "b1") // b loaded a1
	_, err := actor.Call(context.Background(), a, Add, "c", "a2")
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Actual <= ce.Expected {
		t.Fatalf("stale Add = %v, want *ConflictError with Actual > Expected", err)
	}
	if got := patterntest.Call(t, a, Add, "c", "a3"); got != 3 {
		t.Fatalf("Add after reload = %d, want 3 (a1 b1 a3)", got)
	}
	if got, _ := stored(t, env, "c"); !reflect.DeepEqual(got.Items, []string{"a1", "b1", "a3"}) {
		t.Fatalf("stored = %v, want [a1 b1 a3]: the refused a2 never stored", got.Items)
	}
	// A handler that ignores the refusal still fails.
	if _, err := actor.Call(context.Background(), b, Ignore, "c", "b2"); !errors.Is(err, ErrConflict) {
		t.Fatalf("Ignore on a stale instance = %v, want ErrConflict", err)
	}
}

// Across the mesh the declared *ConflictError arrives typed.
func TestRevisionConflictTwoRunners(t *testing.T) {
	s := natstest.StartServer(t)
	store, err := Open(natstest.Connect(t, s), DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	var clients []*mesh.Client
	for _, prefix := range []string{"r1", "r2"} {
		cfg := mesh.DefaultConfig()
		cfg.Prefix, cfg.Standalone, cfg.ShardsPerGroup = prefix, true, 4
		r, err := mesh.NewRunner(natstest.Connect(t, s), cfg)
		if err != nil {
			t.Fatal(err)
		}
		b, err := New(context.Background(), store, Cart, cartSpec(nil))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Register(b); err != nil {
			t.Fatal(err)
		}
		if err := r.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Shutdown(context.Background()) })
		clients = append(clients, r.Client())
	}
	ctx := context.Background()
	for i, c := range clients {
		if _, err := mesh.Call(ctx, c, Add, "x.y", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	_, err = mesh.Call(ctx, clients[0], Add, "x.y", "stale")
	var ce *ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("stale runner: Add = %v, want *ConflictError across the wire", err)
	}
}

// An acknowledgement lost after the write landed: the retry is refused,
// and the write id shows it was this write.
func TestUnansweredWriteThatLanded(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	rt := runtimeFor(t, env.store, cartSpec(nil))
	env.store.hooks = &hooks{attempt: func(attempt int, publish func() (uint64, error)) (uint64, error) {
		seq, err := publish()
		if attempt == 1 && err == nil {
			return 0, jetstream.ErrNoAnswer
		}
		return seq, err
	}}
	got, err := actor.Call(context.Background(), rt, Add, "c", "x")
	env.store.hooks = nil
	if err != nil || got != 1 {
		t.Fatalf("Add with a lost ack = %d, %v", got, err)
	}
	if got := patterntest.Call(t, rt, Add, "c", "y"); got != 2 {
		t.Fatalf("next Add = %d, want 2 (the instance knows its revision)", got)
	}
}

func TestWriteBehind(t *testing.T) {
	t.Run("flushed at passivation", func(t *testing.T) {
		env := newEnv(t, DefaultConfig())
		rt := runtimeFor(t, env.store, cartSpec(&WriteBehind{Interval: time.Hour}))
		for _, it := range []string{"a", "b", "c"} {
			patterntest.Call(t, rt, Add, "wb", it)
		}
		if _, rev := stored(t, env, "wb"); rev != 0 {
			t.Fatalf("stored at revision %d before any flush, want nothing stored", rev)
		}
		patterntest.Passivate(t, rt)
		if got, _ := stored(t, env, "wb"); !reflect.DeepEqual(got.Items, []string{"a", "b", "c"}) {
			t.Fatalf("after passivation stored %v, want [a b c]", got.Items)
		}
	})
	t.Run("flushed at shutdown", func(t *testing.T) {
		env := newEnv(t, DefaultConfig())
		rt := runtimeFor(t, env.store, cartSpec(&WriteBehind{Interval: time.Hour}))
		patterntest.Call(t, rt, Add, "wb", "a")
		if err := rt.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got, _ := stored(t, env, "wb"); !reflect.DeepEqual(got.Items, []string{"a"}) {
			t.Fatalf("after shutdown stored %v, want [a]", got.Items)
		}
	})
	t.Run("flushed after Interval", func(t *testing.T) {
		env := newEnv(t, DefaultConfig())
		rt := runtimeFor(t, env.store, cartSpec(&WriteBehind{Interval: 50 * time.Millisecond}))
		patterntest.Call(t, rt, Add, "wb", "a")
		patterntest.Call(t, rt, Add, "wb", "b")
		natstest.WaitFor(t, 10*time.Second, func() bool {
			got, _ := stored(t, env, "wb")
			return reflect.DeepEqual(got.Items, []string{"a", "b"})
		}, "the timer flush")
	})
	t.Run("flushed at MaxChanges", func(t *testing.T) {
		env := newEnv(t, DefaultConfig())
		rt := runtimeFor(t, env.store, cartSpec(&WriteBehind{Interval: time.Hour, MaxChanges: 3}))
		patterntest.Call(t, rt, Add, "wb", "a")
		patterntest.Call(t, rt, Add, "wb", "b")
		if _, rev := stored(t, env, "wb"); rev != 0 {
			t.Fatalf("stored at %d after 2 of 3 changes", rev)
		}
		patterntest.Call(t, rt, Add, "wb", "c") // the third change flushes before the reply
		if got, _ := stored(t, env, "wb"); len(got.Items) != 3 {
			t.Fatalf("after MaxChanges stored %v, want 3 items", got.Items)
		}
	})
	t.Run("refused flush loses the unsaved changes, never stores over another writer", func(t *testing.T) {
		env := newEnv(t, DefaultConfig())
		a := runtimeFor(t, env.store, cartSpec(&WriteBehind{Interval: time.Hour}))
		b := runtimeFor(t, env.store, cartSpec(nil))
		patterntest.Call(t, a, Items, "wb", actor.Empty{}) // a loads: nothing stored
		patterntest.Call(t, a, Add, "wb", "lost")
		patterntest.Call(t, b, Add, "wb", "kept")
		patterntest.Passivate(t, a) // a's flush is refused
		if got, _ := stored(t, env, "wb"); !reflect.DeepEqual(got.Items, []string{"kept"}) {
			t.Fatalf("stored %v, want [kept]", got.Items)
		}
		if got := patterntest.Call(t, a, Items, "wb", actor.Empty{}); !reflect.DeepEqual(got.Items, []string{"kept"}) {
			t.Fatalf("a reactivated with %v, want [kept]", got.Items)
		}
	})
}

func TestMigrate(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	// Version 0 stored a comma-free list under "list".
	if _, err := env.store.js.CreateKeyValue(context.Background(), natsjsKV(env.store.Bucket(Cart.Name()))); err != nil {
		t.Fatal(err)
	}
	if _, err := env.store.js.Publish(context.Background(), "$KV."+env.store.Bucket(Cart.Name())+"."+Key("old"), []byte(`{"list":["p","q"]}`)); err != nil {
		t.Fatal(err)
	}
	spec := cartSpec(nil)
	spec.StateVersion = 1
	var mu sync.Mutex
	migrated := 0
	spec.Migrate = func(from int, data []byte) ([]byte, error) {
		mu.Lock()
		migrated++
		mu.Unlock()
		var v0 struct {
			List []string `json:"list"`
		}
		if err := json.Unmarshal(data, &v0); err != nil {
			return nil, err
		}
		return json.Marshal(cart{Items: v0.List})
	}
	rt := runtimeFor(t, env.store, spec)
	if got := patterntest.Call(t, rt, Add, "old", "r"); got != 3 {
		t.Fatalf("Add on a migrated state = %d, want 3", got)
	}
	patterntest.Passivate(t, rt)
	patterntest.Call(t, rt, Items, "old", actor.Empty{})
	if migrated != 1 {
		t.Fatalf("Migrate ran %d times, want once (the state is stored at version 1 after the Add)", migrated)
	}
	// Without Migrate an old state fails activation.
	noMig := cartSpec(nil)
	noMig.StateVersion = 2
	rt2 := runtimeFor(t, env.store, noMig, actor.DefectRetryPolicy(actor.ExponentialBackoff(1, 1)))
	if _, err := actor.Call(context.Background(), rt2, Items, "old", actor.Empty{}); !errors.Is(err, ErrDecode) || !errors.Is(err, actor.ErrActivation) {
		t.Fatalf("activation of a version-1 state with no Migrate to 2 = %v, want ErrDecode", err)
	}
}

func TestInvalidSpec(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	other := actor.NewEntity("Other")
	otherRPC := actor.NewRPC[int, int](other, "Do")
	tests := map[string]Spec[cart]{
		"zero interval":    cartSpec(&WriteBehind{}),
		"negative changes": cartSpec(&WriteBehind{Interval: time.Second, MaxChanges: -1}),
		"negative version": {StateVersion: -1},
		"other entity":     {Handlers: []Handler[cart]{Handle(otherRPC, func(context.Context, *Entity[cart], int) (int, error) { return 0, nil })}},
		"nil handler":      {Handlers: []Handler[cart]{Handle[cart](Add, nil)}},
		"two for one rpc":  {Handlers: []Handler[cart]{cartSpec(nil).Handlers[0], cartSpec(nil).Handlers[0]}},
	}
	for name, spec := range tests {
		if _, err := New(context.Background(), env.store, Cart, spec); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("%s: New = %v, want ErrInvalidOption", name, err)
		}
	}
	if _, err := New(context.Background(), nil, Cart, cartSpec(nil)); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("nil store: %v", err)
	}
	for _, change := range []func(*Config){
		func(c *Config) { c.Prefix = "a.b" }, func(c *Config) { c.Replicas = 6 }, func(c *Config) { c.LoadTimeout = -1 },
	} {
		cfg := DefaultConfig()
		change(&cfg)
		if _, err := Open(env.nc, cfg); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("Open(%+v) = %v, want ErrInvalidOption", cfg, err)
		}
	}
}

func natsjsKV(bucket string) natsjs.KeyValueConfig {
	return natsjs.KeyValueConfig{Bucket: bucket, History: 1}
}
