package saga_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/saga"
)

// Closed is a purse's refusal of a credit.
type Closed struct{}

func (*Closed) Error() string { return "purse closed" }

var (
	Purse = actor.NewEntity("Purse")
	Add   = actor.NewRPC[int, int](Purse, "Add", actor.Persisted(), actor.Failure[*Closed]("Closed"))
)

// bank holds every purse's balance, shared by all runners of a test (it
// stands for durable state), and counts Add handler runs.
type bank struct {
	mu      sync.Mutex
	balance map[string]int
	closed  map[string]bool
	adds    atomic.Int64
}

func newBank() *bank { return &bank{balance: map[string]int{}, closed: map[string]bool{}} }

func (b *bank) get(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.balance[id]
}

func (b *bank) behavior() *actor.Behavior {
	return actor.Implement(Purse, func(self *actor.Instance) ([]actor.Handler, error) {
		id := self.Address().ID
		return []actor.Handler{actor.Handle(Add, func(_ context.Context, n int) (int, error) {
			b.adds.Add(1)
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.closed[id] {
				return 0, &Closed{}
			}
			b.balance[id] += n
			return b.balance[id], nil
		})}, nil
	})
}

type Transfer struct {
	From, To string
	Amount   int
}

// hooks lets a test act inside the transfer's middle step.
type hooks struct {
	middle func(ctx context.Context, runner string, x saga.Exec[Transfer]) error
}

// define defines the transfer saga on ss: debit From (compensated by a
// credit), a middle step, credit To.
func define(t testing.TB, ss *saga.Sagas, client *mesh.Client, runner string, h *hooks) *saga.Definition[Transfer] {
	add := func(ctx context.Context, id string, n int, key string) error {
		_, err := mesh.Call(ctx, client, Add, id, n, mesh.MessageID(key))
		var closed *Closed
		if errors.As(err, &closed) {
			return saga.Abort(err)
		}
		return err
	}
	def, err := saga.Define(ss, "transfer",
		saga.Step[Transfer]{
			Name: "debit",
			Do: func(ctx context.Context, x saga.Exec[Transfer]) error {
				return add(ctx, x.Input.From, -x.Input.Amount, x.Key())
			},
			Compensate: func(ctx context.Context, x saga.Exec[Transfer]) error {
				// What the debit left (its stored reply), read by its key.
				if _, err := mesh.Reply(ctx, client, Add, x.DoKey()); err != nil {
					return err
				}
				return add(ctx, x.Input.From, x.Input.Amount, x.Key())
			},
		},
		saga.Step[Transfer]{
			Name: "middle",
			Do: func(ctx context.Context, x saga.Exec[Transfer]) error {
				if h != nil && h.middle != nil {
					return h.middle(ctx, runner, x)
				}
				return nil
			},
		},
		saga.Step[Transfer]{
			Name: "credit",
			Do: func(ctx context.Context, x saga.Exec[Transfer]) error {
				return add(ctx, x.Input.To, x.Input.Amount, x.Key())
			},
		},
	)
	if err != nil {
		t.Fatal(err)
	}
	return def
}

// start starts a runner hosting purses and sagas.
func start(t *testing.T, url string, cfg mesh.Config, b *bank, h *hooks, opts saga.Config) *meshtest.Runner {
	return meshtest.StartRunner(t, url, cfg, func(nc *nats.Conn, r *mesh.Runner) {
		ss, err := saga.New(context.Background(), r.Client(), opts)
		if err != nil {
			t.Fatal(err)
		}
		define(t, ss, r.Client(), r.ID(), h)
		if err := ss.Install(r); err != nil {
			t.Fatal(err)
		}
		if err := r.Register(b.behavior()); err != nil {
			t.Fatal(err)
		}
	})
}

// caller returns the transfer definition as seen by a client process.
func caller(t *testing.T, url string, cfg mesh.Config) *saga.Definition[Transfer] {
	nc := meshtest.Connect(t, url)
	c, err := mesh.NewClient(nc, cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := saga.New(context.Background(), c, saga.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return define(t, ss, c, "", nil)
}

func TestCompleteAndCompensate(t *testing.T) {
	s := natstest.StartServer(t)
	cfg := meshtest.Standalone()
	b := newBank()
	b.balance["alice"] = 100
	b.closed["carol"] = true
	start(t, s.ClientURL(), cfg, b, nil, saga.DefaultConfig())
	def := caller(t, s.ClientURL(), cfg)
	ctx := context.Background()

	o, err := def.Run(ctx, "t1", Transfer{From: "alice", To: "bob", Amount: 30})
	if err != nil || o.Status != saga.Completed {
		t.Fatalf("Run(t1) = %+v, %v, want completed", o, err)
	}
	// Started again: nothing happens twice.
	if o, err := def.Run(ctx, "t1", Transfer{From: "alice", To: "bob", Amount: 30}); err != nil || o.Status != saga.Completed {
		t.Fatalf("Run(t1) again = %+v, %v", o, err)
	}
	if a, bo := b.get("alice"), b.get("bob"); a != 70 || bo != 30 {
		t.Fatalf("after t1: alice %d bob %d, want 70 30", a, bo)
	}

	o, err = def.Run(ctx, "t2", Transfer{From: "alice", To: "carol", Amount: 20})
	if err != nil || o.Status != saga.Compensated || o.FailedStep != "credit" {
		t.Fatalf("Run(t2) = %+v, %v, want compensated at credit", o, err)
	}
	if a, c := b.get("alice"), b.get("carol"); a != 70 || c != 0 {
		t.Fatalf("after t2: alice %d carol %d, want 70 (refunded) 0", a, c)
	}
	if st, err := def.Status(ctx, "t2"); err != nil || st != o {
		t.Fatalf("Status(t2) = %+v, %v, want %+v", st, err, o)
	}
	if _, err := def.Status(ctx, "nope"); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("Status(nope) = %v, want ErrNotFound", err)
	}
	if err := def.Forget(ctx, "t2"); err != nil {
		t.Fatal(err)
	}
	if _, err := def.Status(ctx, "t2"); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("Status(t2) after Forget = %v, want ErrNotFound", err)
	}
}

// A step that keeps failing without Abort leaves the saga Stuck (nothing
// compensated on a guess); Resume finishes it.
func TestStuckAndResume(t *testing.T) {
	s := natstest.StartServer(t)
	cfg := meshtest.Standalone()
	b := newBank()
	b.balance["alice"] = 100
	var broken atomic.Bool
	broken.Store(true)
	h := &hooks{middle: func(context.Context, string, saga.Exec[Transfer]) error {
		if broken.Load() {
			return errors.New("downstream unavailable")
		}
		return nil
	}}
	scfg := saga.DefaultConfig()
	scfg.MaxAttempts, scfg.Backoff = 3, time.Millisecond
	start(t, s.ClientURL(), cfg, b, h, scfg)
	def := caller(t, s.ClientURL(), cfg)
	ctx := context.Background()
	o, err := def.Run(ctx, "t", Transfer{From: "alice", To: "bob", Amount: 10})
	if err != nil || o.Status != saga.Stuck || o.FailedStep != "middle" {
		t.Fatalf("Run = %+v, %v, want stuck at middle", o, err)
	}
	broken.Store(false)
	if o, err := def.Resume(ctx, "t"); err != nil || o.Status != saga.Completed {
		t.Fatalf("Resume = %+v, %v, want completed", o, err)
	}
	if o, err := def.Wait(ctx, "t"); err != nil || o.Status != saga.Completed {
		t.Fatalf("Wait = %+v, %v, want completed", o, err)
	}
	if a, bo := b.get("alice"), b.get("bob"); a != 90 || bo != 10 {
		t.Fatalf("alice %d bob %d, want 90 10", a, bo)
	}
}

// A saga whose runner crashes between steps resumes on another runner and
// ends consistent: each step's effect applied once.
func TestResumeAfterCrashR3(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	url := natstest.ClientURLs(servers)
	cfg := meshtest.Cluster(3)
	meshtest.StartManager(t, url, cfg)
	b := newBank()
	b.balance["alice"] = 100
	entered := make(chan string, 4)
	release := make(chan struct{})
	var blocked atomic.Bool
	h := &hooks{middle: func(_ context.Context, runner string, _ saga.Exec[Transfer]) error {
		if blocked.CompareAndSwap(false, true) { // the first try only
			entered <- runner
			<-release
		}
		return nil
	}}
	opts := saga.DefaultConfig()
	opts.Backoff, opts.BackoffMax = 10*time.Millisecond, 500*time.Millisecond
	runners := map[string]*meshtest.Runner{}
	var all []*meshtest.Runner
	for range 2 {
		r := start(t, url, cfg, b, h, opts)
		runners[r.ID()] = r
		all = append(all, r)
	}
	meshtest.WaitServing(t, cfg.ShardsPerGroup, all...)
	def := caller(t, url, cfg)
	ctx := context.Background()
	if err := def.Start(ctx, "x1", Transfer{From: "alice", To: "bob", Amount: 40}); err != nil {
		t.Fatal(err)
	}
	host := <-entered // debit done, the saga's runner is inside the middle step
	if got := b.get("alice"); got != 60 {
		t.Fatalf("alice %d after the debit, want 60", got)
	}
	runners[host].Crash()
	close(release) // the crashed runner's step returns into a dead connection
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	o, err := def.Wait(wctx, "x1")
	if err != nil || o.Status != saga.Completed {
		t.Fatalf("Wait = %+v, %v, want completed", o, err)
	}
	if a, bo := b.get("alice"), b.get("bob"); a != 60 || bo != 40 {
		t.Fatalf("alice %d bob %d, want 60 40 (each step once)", a, bo)
	}
	if n := b.adds.Load(); n != 2 {
		t.Fatalf("%d Add handler runs, want 2 (debit and credit once each)", n)
	}
}

func TestDefineInvalid(t *testing.T) {
	s := natstest.StartServer(t)
	nc := meshtest.Connect(t, s.ClientURL())
	c, err := mesh.NewClient(nc, meshtest.Standalone().ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := saga.New(context.Background(), c, saga.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	do := func(context.Context, saga.Exec[int]) error { return nil }
	tests := []struct {
		name  string
		def   string
		steps []saga.Step[int]
	}{
		{"no name", "", []saga.Step[int]{{Name: "a", Do: do}}},
		{"no steps", "d", nil},
		{"step without Do", "d", []saga.Step[int]{{Name: "a"}}},
		{"duplicate step", "d", []saga.Step[int]{{Name: "a", Do: do}, {Name: "a", Do: do}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := saga.Define(ss, tt.def, tt.steps...); !errors.Is(err, saga.ErrInvalidOption) {
				t.Fatalf("Define = %v, want ErrInvalid", err)
			}
		})
	}
	bad := saga.DefaultConfig()
	bad.MaxAttempts = -1
	if _, err := saga.New(context.Background(), c, bad); !errors.Is(err, saga.ErrInvalidOption) {
		t.Fatalf("New with negative MaxAttempts = %v, want ErrInvalid", err)
	}
}
