package reminder_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/reminder"
)

var (
	Alarm  = actor.NewEntity("Alarm")
	Remind = reminder.NewRPC(Alarm)
	// SetSelf registers a reminder from the entity's own handler.
	SetSelf = actor.NewRPC[string, actor.Empty](Alarm, "SetSelf")
	// Other has the payload of a reminder RPC but is not one (of an entity
	// no runner hosts: it is never called).
	Other = actor.NewRPC[reminder.Message, actor.Empty](actor.NewEntity("NotAlarm"), "Other")
)

// fired records every tick delivered, across activations and runners.
type fired struct {
	mu          sync.Mutex
	ticks       map[string][]reminder.Tick // "id/name" -> ticks in delivery order
	at          map[string][]time.Time     // handling times
	activations atomic.Int64
}

func newFired() *fired {
	return &fired{ticks: map[string][]reminder.Tick{}, at: map[string][]time.Time{}}
}

func (f *fired) get(id, name string) []reminder.Tick {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]reminder.Tick(nil), f.ticks[id+"/"+name]...)
}

func (f *fired) count(id, name string) int { return len(f.get(id, name)) }

func alarmBehavior(rem *reminder.Service, f *fired, opts ...actor.Option) *actor.Behavior {
	return actor.Implement(Alarm, func(self *actor.Instance) ([]actor.Handler, error) {
		if !self.Probe() {
			f.activations.Add(1)
		}
		id := self.Address().ID
		return []actor.Handler{
			rem.Handle(Remind, self, func(_ context.Context, t reminder.Tick) error {
				f.mu.Lock()
				f.ticks[id+"/"+t.Name] = append(f.ticks[id+"/"+t.Name], t)
				f.at[id+"/"+t.Name] = append(f.at[id+"/"+t.Name], time.Now())
				f.mu.Unlock()
				return nil
			}),
			actor.Handle(SetSelf, func(ctx context.Context, name string) (actor.Empty, error) {
				return actor.Empty{}, rem.Register(ctx, Remind, id, name, time.Now(), reminder.Every(time.Second))
			}),
		}, nil
	}, opts...)
}

type env struct {
	url string
	cfg mesh.Config
	rem *reminder.Service
	f   *fired
}

func newService(t testing.TB, url string, cfg mesh.Config) *reminder.Service {
	t.Helper()
	nc := meshtest.Connect(t, url)
	rem, err := reminder.New(context.Background(), meshtest.Client(t, nc, cfg))
	if err != nil {
		t.Fatal(err)
	}
	return rem
}

// standalone starts one server and one standalone runner hosting Alarm.
func standalone(t *testing.T, opts ...actor.Option) *env {
	s := natstest.StartServer(t)
	e := &env{url: s.ClientURL(), cfg: meshtest.Standalone(), f: newFired()}
	e.rem = newService(t, e.url, e.cfg)
	e.start(t, opts...)
	return e
}

func (e *env) start(t *testing.T, opts ...actor.Option) *meshtest.Runner {
	return meshtest.StartRunner(t, e.url, e.cfg, func(nc *nats.Conn, r *mesh.Runner) {
		rem, err := reminder.New(context.Background(), r.Client())
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Register(alarmBehavior(rem, e.f, opts...)); err != nil {
			t.Fatal(err)
		}
	})
}

func waitGone(t *testing.T, rem *reminder.Service, id, name string) {
	t.Helper()
	natstest.WaitFor(t, 10*time.Second, func() bool {
		_, err := rem.Get(context.Background(), Remind, id, name)
		return errors.Is(err, reminder.ErrNotFound)
	}, "reminder "+name+" forgotten")
}

func TestOneShot(t *testing.T) {
	e := standalone(t)
	ctx := context.Background()
	due := time.Now().Add(1200 * time.Millisecond)
	if err := e.rem.Register(ctx, Remind, "a", "wake", due); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool { return e.f.count("a", "wake") == 1 }, "the tick")
	waitGone(t, e.rem, "a", "wake")
	e.f.mu.Lock()
	handled := e.f.at["a/wake"][0]
	e.f.mu.Unlock()
	if handled.Before(due) {
		t.Fatalf("tick handled %v before its due time", due.Sub(handled))
	}
	if got := e.f.get("a", "wake")[0]; !got.Due.Equal(due) || got.Name != "wake" {
		t.Fatalf("tick = %+v, want name wake due %v", got, due)
	}
}

// A periodic reminder keeps its phase, registering it again changes
// nothing, and a cancel stops it.
func TestPeriodicIdempotentCancel(t *testing.T) {
	e := standalone(t)
	ctx := context.Background()
	origin := time.Now().Add(time.Second).Truncate(time.Second)
	for range 3 { // registered three times: still one chain of ticks
		if err := e.rem.Register(ctx, Remind, "p", "beat", origin, reminder.Every(time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	natstest.WaitFor(t, 15*time.Second, func() bool { return e.f.count("p", "beat") >= 4 }, "four ticks")
	info, err := e.rem.Get(ctx, Remind, "p", "beat")
	if err != nil || info.Spec.Period != time.Second {
		t.Fatalf("Get = %+v, %v", info, err)
	}
	if names, err := e.rem.List(ctx, Remind, "p"); err != nil || fmt.Sprint(names) != "[beat]" {
		t.Fatalf("List = %v, %v", names, err)
	}
	if err := e.rem.Cancel(ctx, Remind, "p", "beat"); err != nil {
		t.Fatal(err)
	}
	cancelled := time.Now()
	waitGone(t, e.rem, "p", "beat")
	// A sentinel due well after the cancelled reminder's next tick: once it
	// fired, that tick would have fired too.
	if err := e.rem.Register(ctx, Remind, "p", "sentinel", time.Now().Add(2500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool { return e.f.count("p", "sentinel") == 1 }, "the sentinel")
	ticks := e.f.get("p", "beat")
	seen := map[time.Time]bool{}
	for i, tk := range ticks {
		if seen[tk.Due] {
			t.Fatalf("tick %v delivered twice: %v", tk.Due, ticks)
		}
		seen[tk.Due] = true
		if off := tk.Due.Sub(origin); off%time.Second != 0 || off < 0 {
			t.Fatalf("tick %d due %v is off the one-second grid from %v", i, tk.Due, origin)
		}
		if tk.Due.After(cancelled.Add(time.Second)) {
			t.Fatalf("tick due %v delivered after Cancel at %v", tk.Due, cancelled)
		}
	}
}

// Registering the same name with another schedule replaces it: the old
// chain's pending tick is dropped.
func TestReplace(t *testing.T) {
	e := standalone(t)
	ctx := context.Background()
	if err := e.rem.Register(ctx, Remind, "r", "x", time.Now().Add(1500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(2500 * time.Millisecond)
	if err := e.rem.Register(ctx, Remind, "r", "x", later); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool { return e.f.count("r", "x") >= 1 }, "a tick")
	waitGone(t, e.rem, "r", "x")
	if got := e.f.get("r", "x"); len(got) != 1 || !got[0].Due.Equal(later) {
		t.Fatalf("ticks %+v, want only the replacement's at %v", got, later)
	}
}

// A reminder re-activates a passivated entity; an entity may register its
// own reminders from a handler.
func TestPassivatedAndSelf(t *testing.T) {
	e := standalone(t, actor.MaxIdleTime(100*time.Millisecond))
	ctx := context.Background()
	c, err := mesh.NewClient(meshtest.Connect(t, e.url), e.cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mesh.Call(ctx, c, SetSelf, "s", "own"); err != nil {
		t.Fatal(err)
	}
	// Passivated between ticks (idle 100 ms, period 1 s): every tick
	// activates it again.
	natstest.WaitFor(t, 15*time.Second, func() bool { return e.f.count("s", "own") >= 3 }, "three ticks")
	if n := e.f.activations.Load(); n < 3 {
		t.Fatalf("%d activations for 3 ticks 1 s apart with 100 ms idle time", n)
	}
	if err := e.rem.Cancel(ctx, Remind, "s", "own"); err != nil {
		t.Fatal(err)
	}
	waitGone(t, e.rem, "s", "own")
}

func TestInvalid(t *testing.T) {
	e := standalone(t)
	ctx := context.Background()
	tests := []struct {
		name string
		err  error
	}{
		{"empty name", e.rem.Register(ctx, Remind, "a", "", time.Now())},
		{"short period", e.rem.Register(ctx, Remind, "a", "n", time.Now(), reminder.Every(time.Millisecond))},
		{"no due", e.rem.Register(ctx, Remind, "a", "n", time.Time{})},
		{"bad cron", e.rem.Register(ctx, Remind, "a", "n", time.Time{}, reminder.Cron("61 * * * *", nil))},
		{"fixed zone", e.rem.Register(ctx, Remind, "a", "n", time.Time{}, reminder.Cron("* * * * *", time.FixedZone("X", 3600)))},
		{"period and cron", e.rem.Register(ctx, Remind, "a", "n", time.Now(), reminder.Every(time.Hour), reminder.Cron("* * * * *", nil))},
		{"not a reminder rpc", e.rem.Register(ctx, Other, "a", "n", time.Now())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !errors.Is(tt.err, reminder.ErrInvalidOption) {
				t.Fatalf("Register = %v, want ErrInvalid", tt.err)
			}
		})
	}
}

// Reminders fire after every runner of a three-server cluster crashed and
// new runners took over, periodic ones without losing their chain.
func TestFullRestartR3(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	url := natstest.ClientURLs(servers)
	e := &env{url: url, cfg: meshtest.Cluster(3), f: newFired()}
	meshtest.StartManager(t, url, e.cfg)
	r1, r2 := e.start(t), e.start(t)
	meshtest.WaitServing(t, e.cfg.ShardsPerGroup, r1, r2)
	e.rem = newService(t, url, e.cfg)
	ctx := context.Background()
	ids := []string{"x", "y", "z", "w"}
	for _, id := range ids {
		if err := e.rem.Register(ctx, Remind, id, "beat", time.Now().Add(time.Second), reminder.Every(time.Second)); err != nil {
			t.Fatal(err)
		}
		if err := e.rem.Register(ctx, Remind, id, "once", time.Now().Add(6*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	natstest.WaitFor(t, 20*time.Second, func() bool {
		for _, id := range ids {
			if e.f.count(id, "beat") < 2 {
				return false
			}
		}
		return true
	}, "ticks before the crash")
	r1.Crash()
	r2.Crash()
	before := map[string]int{}
	for _, id := range ids {
		before[id] = e.f.count(id, "beat")
	}
	r3, r4 := e.start(t), e.start(t)
	meshtest.WaitServing(t, e.cfg.ShardsPerGroup, r3, r4)
	natstest.WaitFor(t, 30*time.Second, func() bool {
		for _, id := range ids {
			if e.f.count(id, "beat") < before[id]+3 || e.f.count(id, "once") < 1 {
				return false
			}
		}
		return true
	}, "periodic ticks and the one-shot after the restart")
	for _, id := range ids {
		// At least once per tick: no duplicate chain, ticks in order.
		ticks := e.f.get(id, "beat")
		for i := 1; i < len(ticks); i++ {
			if ticks[i].Due.Before(ticks[i-1].Due) {
				t.Fatalf("%s: tick %v after %v", id, ticks[i].Due, ticks[i-1].Due)
			}
		}
		if err := e.rem.Cancel(ctx, Remind, id, "beat"); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		waitGone(t, e.rem, id, "beat")
	}
}

// A runner crashes while a periodic reminder's handler runs: the next
// runner delivers that tick again (the one duplicate allowed) and the
// chain goes on, one tick per period, without a second chain.
func TestCrashDuringTick(t *testing.T) {
	s := natstest.StartServer(t)
	cfg := meshtest.Standalone()
	var (
		mu      sync.Mutex
		ticks   []time.Time
		block   atomic.Bool
		entered = make(chan struct{})
		release = make(chan struct{})
	)
	block.Store(true)
	start := func() *meshtest.Runner {
		return meshtest.StartRunner(t, s.ClientURL(), cfg, func(nc *nats.Conn, r *mesh.Runner) {
			rem, err := reminder.New(context.Background(), r.Client())
			if err != nil {
				t.Fatal(err)
			}
			err = r.Register(actor.Implement(Alarm, func(self *actor.Instance) ([]actor.Handler, error) {
				return []actor.Handler{rem.Handle(Remind, self, func(_ context.Context, tk reminder.Tick) error {
					mu.Lock()
					ticks = append(ticks, tk.Due)
					n := len(ticks)
					mu.Unlock()
					if n == 2 && block.CompareAndSwap(true, false) { // inside the second tick
						close(entered)
						<-release
					}
					return nil
				}), actor.Handle(SetSelf, func(context.Context, string) (actor.Empty, error) { return actor.Empty{}, nil })}, nil
			}))
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	r1 := start()
	rem := newService(t, s.ClientURL(), cfg)
	if err := rem.Register(context.Background(), Remind, "c", "beat", time.Now().Add(time.Second), reminder.Every(time.Second)); err != nil {
		t.Fatal(err)
	}
	<-entered
	r1.Crash()
	close(release)
	start()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(ticks) }
	natstest.WaitFor(t, 30*time.Second, func() bool { return count() >= 6 }, "ticks after the crash")

	mu.Lock()
	got := slices.Clone(ticks)
	mu.Unlock()
	if !got[2].Equal(got[1]) {
		t.Fatalf("ticks %v: the tick in flight at the crash was not delivered again", got)
	}
	for i := 3; i < len(got); i++ {
		if !got[i].After(got[i-1]) {
			t.Fatalf("ticks %v: %v after %v (a duplicate or a second chain)", got, got[i], got[i-1])
		}
	}
	if err := rem.Cancel(context.Background(), Remind, "c", "beat"); err != nil {
		t.Fatal(err)
	}
	waitGone(t, rem, "c", "beat")
}
