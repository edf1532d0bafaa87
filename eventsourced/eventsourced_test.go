package eventsourced

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/internal/testkit/patterntest"
	"github.com/natsmesh/natsmesh/mesh"
)

// The test model: an account whose balance is the fold of its events, and a
// log of every amount, so that the order of events is part of the state.
var (
	Account  = actor.NewEntity("Account")
	Deposit  = actor.NewRPC[int, int](Account, "Deposit", actor.Failure[*ConflictError]("Conflict"))
	Withdraw = actor.NewRPC[int, int](Account, "Withdraw", actor.Failure[*Insufficient]("Insufficient"))
	Transfer = actor.NewRPC[[]int, int](Account, "Split", actor.Failure[*ConflictError]("Conflict"))
	Balance  = actor.NewRPC[actor.Empty, account](Account, "Balance")
	Bogus    = actor.NewRPC[actor.Empty, int](Account, "Bogus")
)

type Deposited struct {
	Amount int `json:"amount"`
}

type Withdrawn struct {
	Amount int `json:"amount"`
}

type undeclared struct{}

type Insufficient struct{ Balance, Wanted int }

func (e *Insufficient) Error() string {
	return fmt.Sprintf("balance %d, wanted %d", e.Balance, e.Wanted)
}

type account struct {
	Balance int   `json:"balance"`
	Log     []int `json:"log"`
}

func accountSpec(snapshotEvery int) Spec[account] {
	return Spec[account]{
		SnapshotEvery: snapshotEvery,
		Events: []EventType[account]{
			Event("Deposited", func(s account, e Deposited) account {
				s.Balance += e.Amount
				s.Log = append(s.Log, e.Amount)
				return s
			}),
			Event("Withdrawn", func(s account, e Withdrawn) account {
				s.Balance -= e.Amount
				s.Log = append(s.Log, -e.Amount)
				return s
			}),
		},
		Handlers: []Handler[account]{
			Handle(Deposit, func(ctx context.Context, e *Entity[account], n int) (int, error) {
				if err := e.Persist(ctx, Deposited{n}); err != nil {
					return 0, err
				}
				return e.State().Balance, nil
			}),
			Handle(Withdraw, func(ctx context.Context, e *Entity[account], n int) (int, error) {
				if b := e.State().Balance; n > b {
					return b, &Insufficient{b, n}
				}
				if err := e.Persist(ctx, Withdrawn{n}); err != nil {
					return 0, err
				}
				return e.State().Balance, nil
			}),
			Handle(Transfer, func(ctx context.Context, e *Entity[account], parts []int) (int, error) {
				evs := make([]any, len(parts))
				for i, p := range parts {
					evs[i] = Deposited{p}
				}
				if err := e.Persist(ctx, evs...); err != nil {
					return 0, err
				}
				return e.State().Balance, nil
			}),
			Handle(Balance, func(_ context.Context, e *Entity[account], _ actor.Empty) (account, error) {
				return e.State(), nil
			}),
			Handle(Bogus, func(ctx context.Context, e *Entity[account], _ actor.Empty) (int, error) {
				err := e.Persist(ctx, undeclared{})
				_ = err // a handler that ignores the error still fails
				return 42, nil
			}),
		},
	}
}

type env struct {
	t     testing.TB
	srv   []*server.Server
	nc    *nats.Conn
	store *Store
}

func newEnv(t testing.TB, cfg Config) *env {
	t.Helper()
	s := natstest.StartServer(t)
	nc := natstest.Connect(t, s)
	st, err := Open(context.Background(), nc, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return &env{t: t, srv: []*server.Server{s}, nc: nc, store: st}
}

// runtime starts an actor runtime hosting the account behaviour of store.
func runtimeFor(t testing.TB, store *Store, spec Spec[account], opts ...actor.Option) *actor.Runtime {
	t.Helper()
	b, err := New(store, Account, spec, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return patterntest.Runtime(t, b)
}

// startRunner starts a mesh runner hosting the account behaviour of store
// and shuts it down on cleanup.
func startRunner(t testing.TB, nc *nats.Conn, cfg mesh.Config, store *Store, spec Spec[account]) *mesh.Runner {
	t.Helper()
	r, err := mesh.NewRunner(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(store, Account, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Register(b); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
	})
	return r
}

func TestPersistAndReactivate(t *testing.T) {
	ids := []string{"alice", "a.b", "star*", "gt>", "with space", "ünïcødé", "=3D", "x/y", "\ttab"}
	for _, snap := range []int{0, 3} {
		t.Run(fmt.Sprintf("snapshotEvery=%d", snap), func(t *testing.T) {
			env := newEnv(t, DefaultConfig())
			rt := runtimeFor(t, env.store, accountSpec(snap))
			for _, id := range ids {
				for i := 1; i <= 5; i++ {
					patterntest.Call(t, rt, Deposit, id, i)
				}
				if got := patterntest.Call(t, rt, Withdraw, id, 4); got != 11 {
					t.Fatalf("Withdraw(%q) = %d, want 11", id, got)
				}
				patterntest.Call(t, rt, Transfer, id, []int{100, 200, 300})
			}
			patterntest.Passivate(t, rt)
			for _, id := range ids {
				got := patterntest.Call(t, rt, Balance, id, actor.Empty{})
				want := account{Balance: 611, Log: []int{1, 2, 3, 4, 5, -4, 100, 200, 300}}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("after reactivation Balance(%q) = %v, want %v", id, got, want)
				}
			}
		})
	}
}

func TestTypedErrors(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	rt := runtimeFor(t, env.store, accountSpec(0))
	ctx := context.Background()
	if _, err := actor.Call(ctx, rt, Bogus, "a", actor.Empty{}); !errors.Is(err, ErrUnknownEvent) {
		t.Fatalf("Bogus = %v, want ErrUnknownEvent even though the handler ignored it", err)
	}
	var ins *Insufficient
	if _, err := actor.Call(ctx, rt, Withdraw, "a", 5); !errors.As(err, &ins) {
		t.Fatalf("Withdraw on empty = %v, want *Insufficient", err)
	}
	big := make([]int, MaxEventsPerAppend+1)
	if _, err := actor.Call(ctx, rt, Transfer, "a", big); !errors.Is(err, ErrTooManyEvents) {
		t.Fatalf("Transfer of %d events = %v, want ErrTooManyEvents", len(big), err)
	}
	if got := patterntest.Call(t, rt, Balance, "a", actor.Empty{}); got.Balance != 0 || len(got.Log) != 0 {
		t.Fatalf("Balance after failures = %v, want empty", got)
	}
}

// A batch occupies consecutive sequences on the entity's subject: the
// disambiguation after an unanswered attempt relies on it.
func TestBatchIsAtomicAndContiguous(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	rt := runtimeFor(t, env.store, accountSpec(0))
	patterntest.Call(t, rt, Deposit, "other", 1)
	patterntest.Call(t, rt, Transfer, "a", []int{1, 2, 3})
	patterntest.Call(t, rt, Deposit, "other", 1)
	var seqs []uint64
	read(t, env, "a", func(seq uint64, h nats.Header) { seqs = append(seqs, seq) })
	if len(seqs) != 3 || seqs[1] != seqs[0]+1 || seqs[2] != seqs[1]+1 {
		t.Fatalf("batch stored at %v, want 3 consecutive sequences", seqs)
	}
}

func read(t testing.TB, env *env, id string, fn func(seq uint64, h nats.Header)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	subj := env.store.Subject(Account.Name(), id)
	info, err := env.store.js.Stream(ctx, env.store.stream)
	if err != nil {
		t.Fatal(err)
	}
	last := info.CachedInfo().State.LastSeq
	var seq uint64 = 1
	for seq <= last {
		m, err := info.GetMsg(ctx, seq, natsjs.WithGetMsgSubject(subj))
		if err != nil {
			break
		}
		fn(m.Sequence, m.Header)
		seq = m.Sequence + 1
	}
}

// withSnapshots is the default configuration with snapshots in storage.
func withSnapshots(storage SnapshotStorage) Config {
	cfg := DefaultConfig()
	cfg.Snapshots = storage
	return cfg
}

// withAppendAttempt is the default configuration with append attempts
// bounded by d.
func withAppendAttempt(d time.Duration) Config {
	cfg := DefaultConfig()
	cfg.AppendAttemptTimeout = d
	return cfg
}
