package eventsourced

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/faultproxy"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/internal/testkit/patterntest"
	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh"
)

// Two runtimes that both believe they host the same entity (what two
// runners would do if fencing ever failed): the server refuses the stale
// one's append, the stale instance never answers from a diverged state,
// and it rebuilds from the stream before its next command.
func TestStaleWriterRefused(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	a := runtimeFor(t, env.store, accountSpec(0))
	b := runtimeFor(t, env.store, accountSpec(0))
	patterntest.Call(t, a, Deposit, "acct", 1) // a active, at 1
	if got := patterntest.Call(t, b, Deposit, "acct", 2); got != 3 {
		t.Fatalf("b: Deposit = %d, want 3 (it activated from a's event)", got)
	}
	_, err := actor.Call(context.Background(), a, Deposit, "acct", 10)
	var ce *ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, ErrConflict) {
		t.Fatalf("a: Deposit after b wrote = %v, want *ConflictError", err)
	}
	if ce.Expected == 0 || ce.Actual <= ce.Expected {
		t.Fatalf("ConflictError = %+v, want Actual > Expected > 0", ce)
	}
	// The refused command left nothing behind, and a's next command starts
	// from the stream: 1 + 2, then + 5.
	if got := patterntest.Call(t, a, Deposit, "acct", 5); got != 8 {
		t.Fatalf("a: Deposit after the conflict = %d, want 8", got)
	}
	if got := patterntest.Call(t, b, Balance, "acct", actor.Empty{}); got.Balance != 3 {
		// b does not know of a's write yet: it reads its own (now stale)
		// state until its next append is refused.
		t.Fatalf("b: Balance = %v, want its stale 3", got)
	}
	if _, err := actor.Call(context.Background(), b, Deposit, "acct", 1); !errors.Is(err, ErrConflict) {
		t.Fatalf("b: Deposit = %v, want ErrConflict", err)
	}
	full := rebuild(t, env.store, accountSpec(0), "acct", false)
	if want := []int{1, 2, 5}; !reflect.DeepEqual(full.Log, want) {
		t.Fatalf("stream holds %v, want %v (no refused command stored)", full.Log, want)
	}
}

// The same across the mesh: two standalone runners (separate mesh
// prefixes, so each serves every shard) share one event store. The caller
// of the stale runner receives the declared *ConflictError.
func TestStaleWriterTwoRunners(t *testing.T) {
	s := natstest.StartServer(t)
	nc := natstest.Connect(t, s)
	store, err := Open(context.Background(), nc, DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	var clients []*mesh.Client
	for _, prefix := range []string{"r1", "r2"} {
		cfg := mesh.DefaultConfig()
		cfg.Prefix, cfg.Standalone, cfg.ShardsPerGroup = prefix, true, 4
		startRunner(t, natstest.Connect(t, s), cfg, store, accountSpec(0))
		c, err := mesh.NewClient(natstest.Connect(t, s), cfg.ClientConfig)
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	ctx := context.Background()
	id := "shared.id with*odd>chars"
	if _, err := mesh.Call(ctx, clients[0], Deposit, id, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := mesh.Call(ctx, clients[1], Deposit, id, 2); err != nil {
		t.Fatal(err)
	}
	_, err = mesh.Call(ctx, clients[0], Deposit, id, 3)
	var ce *ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("stale runner: Deposit = %v, want *ConflictError across the wire", err)
	}
	if got, err := mesh.Call(ctx, clients[0], Deposit, id, 3); err != nil || got != 6 {
		t.Fatalf("stale runner after rebuilding: Deposit = %d, %v; want 6", got, err)
	}
}

// An append whose answer is lost: the retry is refused because the first
// attempt landed, and the append id tells that apart from a conflict.
func TestUnansweredAppendThatLanded(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	rt := runtimeFor(t, env.store, accountSpec(0))
	for _, parts := range [][]int{{7}, {1, 2, 3}} {
		env.store.hooks = &hooks{attempt: func(attempt int, publish func() (uint64, error)) (uint64, error) {
			seq, err := publish()
			if attempt == 1 && err == nil {
				return 0, fmt.Errorf("%w: simulated lost acknowledgement", jetstream.ErrNoAnswer)
			}
			return seq, err
		}}
		got, err := actor.Call(context.Background(), rt, Transfer, "a", parts)
		env.store.hooks = nil
		if err != nil {
			t.Fatalf("Transfer(%v) with a lost ack: %v", parts, err)
		}
		if want := patterntest.Call(t, rt, Balance, "a", actor.Empty{}).Balance; got != want {
			t.Fatalf("Transfer(%v) = %d, state %d", parts, got, want)
		}
	}
	// The instance went on from the right sequence: its next append works
	// and the stream holds each event once.
	patterntest.Call(t, rt, Deposit, "a", 100)
	if got := rebuild(t, env.store, accountSpec(0), "a", false).Log; !reflect.DeepEqual(got, []int{7, 1, 2, 3, 100}) {
		t.Fatalf("stream = %v, want each event once", got)
	}
}

// A network partition during an append: the caller gets ErrUnknownOutcome,
// and once the network heals the instance rebuilds and finds the append
// that was held in flight.
func TestPartitionUnknownOutcome(t *testing.T) {
	s := natstest.StartServer(t)
	proxy := faultproxy.New(t, s.Addr().String())
	nc, err := nats.Connect(proxy.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	store, err := Open(context.Background(), nc, withAppendAttempt(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	rt := runtimeFor(t, store, accountSpec(0))
	patterntest.Call(t, rt, Deposit, "a", 1)
	proxy.Blackhole()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err = actor.Call(ctx, rt, Deposit, "a", 2)
	cancel()
	// The handler's context is the caller's: the caller sees its deadline
	// pass, or ErrUnknownOutcome if the handler's answer wins the race.
	if !errors.Is(err, ErrUnknownOutcome) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Deposit during a partition = %v, want ErrUnknownOutcome or a timeout", err)
	}
	proxy.Restore() // the held publish reaches the server and is stored
	natstest.WaitFor(t, 10*time.Second, func() bool {
		info, err := store.js.Stream(context.Background(), store.stream)
		return err == nil && info.CachedInfo().State.Msgs == 2
	}, "the held append stored")
	if got := patterntest.Call(t, rt, Deposit, "a", 4); got != 7 {
		t.Fatalf("Deposit after healing = %d, want 7 (1, the held 2, 4)", got)
	}
}

// Snapshot plus replay gives the same state as a full replay, for random
// command sequences, snapshot intervals and passivations.
func TestSnapshotEquivalence(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	var mu sync.Mutex
	fromSnapshot := 0
	env.store.hooks = &hooks{loaded: func(_ actor.Address, snap uint64, _ int) {
		mu.Lock()
		if snap > 0 {
			fromSnapshot++
		}
		mu.Unlock()
	}}
	for round := range 12 {
		every := 1 + rng.IntN(7)
		spec := accountSpec(every)
		rt := runtimeFor(t, env.store, spec)
		id := fmt.Sprintf("p%d", round)
		var model account
		for range 20 + rng.IntN(60) {
			switch k := rng.IntN(10); {
			case k < 5:
				n := 1 + rng.IntN(50)
				patterntest.Call(t, rt, Deposit, id, n)
				model.Balance += n
				model.Log = append(model.Log, n)
			case k < 7:
				n := 1 + rng.IntN(30)
				if _, err := actor.Call(context.Background(), rt, Withdraw, id, n); err == nil {
					model.Balance -= n
					model.Log = append(model.Log, -n)
				} else if n <= model.Balance {
					t.Fatalf("Withdraw(%d) at %d: %v", n, model.Balance, err)
				}
			case k < 9:
				parts := make([]int, 1+rng.IntN(4))
				for i := range parts {
					parts[i] = 1 + rng.IntN(9)
					model.Balance += parts[i]
					model.Log = append(model.Log, parts[i])
				}
				patterntest.Call(t, rt, Transfer, id, parts)
			default:
				waitSnapshots(t, rt)
				patterntest.Passivate(t, rt)
			}
		}
		waitSnapshots(t, rt)
		withSnap := rebuild(t, env.store, spec, id, true)
		full := rebuild(t, env.store, spec, id, false)
		live := patterntest.Call(t, rt, Balance, id, actor.Empty{})
		for name, got := range map[string]account{"snapshot+replay": withSnap, "full replay": full, "live": live} {
			if got.Balance != model.Balance || !reflect.DeepEqual(got.Log, model.Log) {
				t.Fatalf("round %d (every %d): %s = %v, want %v", round, every, name, got, model)
			}
		}
	}
	if fromSnapshot == 0 {
		t.Fatal("no activation started from a snapshot: the property was not exercised")
	}
}

// waitSnapshots waits until no snapshot write is in flight, by passivating
// the runtime's activations: their finalizers wait for snapshot writes.
func waitSnapshots(t testing.TB, rt *actor.Runtime) { t.Helper(); patterntest.Passivate(t, rt) }

// rebuild loads an entity's state from the stream outside any runtime,
// with or without its snapshot.
func rebuild(t testing.TB, store *Store, spec Spec[account], id string, useSnapshot bool) account {
	t.Helper()
	d, err := define(store, Account, spec)
	if err != nil {
		t.Fatal(err)
	}
	e := newEntity(d, actor.Address{Type: Account.Name(), ID: id}, nil)
	// Write no snapshot while checking: this rebuild must not change what
	// the next one reads. load reads snapshots only for a spec that takes
	// them, so keep the interval when asked to read.
	if !useSnapshot {
		e.d.spec.SnapshotEvery = 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.load(ctx, useSnapshot); err != nil {
		t.Fatalf("rebuild %q: %v", id, err)
	}
	e.stop(ctx)
	return e.State()
}
