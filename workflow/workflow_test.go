package workflow_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/workflow"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// log records what activities and compensations did, across runners.
type log struct {
	mu    sync.Mutex
	lines []string
	keys  map[string]int // effects by idempotency key
}

func newLog() *log { return &log{keys: map[string]int{}} }

func (l *log) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

// effect applies an effect once per key, as a persisted entity call with
// the key as its message id would.
func (l *log) effect(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys[key]++
}

func (l *log) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

func (l *log) count(line string) int {
	n := 0
	for _, x := range l.all() {
		if x == line {
			n++
		}
	}
	return n
}

// env is a NATS server and a runner hosting an engine whose workflows
// define declares.
type env struct {
	t      *testing.T
	url    string
	cfg    mesh.Config
	wcfg   workflow.Config
	runner *meshtest.Runner
	eng    *workflow.Engine
}

func setup(t *testing.T, wcfg workflow.Config, define func(e *workflow.Engine)) *env {
	t.Helper()
	s := natstest.StartServer(t)
	en := &env{t: t, url: s.ClientURL(), cfg: meshtest.Standalone(), wcfg: wcfg}
	en.start(define)
	return en
}

// start starts a runner whose engine has define's workflows (after a
// deployment, or a crash, the next runner's).
func (en *env) start(define func(e *workflow.Engine)) {
	en.t.Helper()
	en.runner = meshtest.StartRunner(en.t, en.url, en.cfg, func(nc *nats.Conn, r *mesh.Runner) {
		e, err := workflow.New(context.Background(), r.Client(), en.wcfg)
		if err != nil {
			en.t.Fatal(err)
		}
		define(e)
		if err := e.Install(r); err != nil {
			en.t.Fatal(err)
		}
		en.eng = e
	})
}

func fastConfig() workflow.Config {
	cfg := workflow.DefaultConfig()
	cfg.Activity = workflow.RetryPolicy{MaxAttempts: 3, Backoff: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond}
	cfg.InMemorySleep = 50 * time.Millisecond
	return cfg
}

// must returns v, or panics (failing the test) on err.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type Order struct {
	Item  string `json:"item"`
	Units int    `json:"units"`
}

// A workflow of activities returns its result; starting the same id twice
// runs it once; its activities' results are journaled.
func TestActivitiesAndIdempotentStart(t *testing.T) {
	l := newLog()
	var wf *workflow.Workflow[Order, string]
	en := setup(t, fastConfig(), func(e *workflow.Engine) {
		wf = must(workflow.Define(e, "order", func(c *workflow.Context, o Order) (string, error) {
			id, err := workflow.Activity(c, "reserve", func(ctx context.Context, a workflow.ActivityInfo) (string, error) {
				l.add("reserve %s", a.ID)
				l.effect(a.Key)
				return "res-" + o.Item, nil
			})
			if err != nil {
				return "", err
			}
			n, err := workflow.Activity(c, "charge", func(ctx context.Context, a workflow.ActivityInfo) (int, error) {
				l.add("charge %s", a.ID)
				return o.Units * 10, nil
			})
			if err != nil {
				return "", err
			}
			_, err = workflow.Activity(c, "ship", func(ctx context.Context, a workflow.ActivityInfo) (bool, error) {
				l.add("ship %s", a.ID)
				return true, nil
			})
			return fmt.Sprintf("%s charged %d", id, n), err
		}))
	})
	ctx := ctxT(t)
	got := must(wf.Run(ctx, "o-1", Order{Item: "book", Units: 3}))
	if got != "res-book charged 30" {
		t.Fatalf("result %q", got)
	}
	// The same id again: nothing runs, the same result.
	if err := wf.Start(ctx, "o-1", Order{Item: "other", Units: 9}); err != nil {
		t.Fatal(err)
	}
	if got := must(wf.Result(ctx, "o-1")); got != "res-book charged 30" {
		t.Fatalf("result after a second start %q", got)
	}
	if want := []string{"reserve o-1", "charge o-1", "ship o-1"}; !slices.Equal(l.all(), want) {
		t.Fatalf("activities ran %v, want %v", l.all(), want)
	}
	x := must(wf.Poll(ctx, "o-1"))
	if x.Status != workflow.Completed || x.Steps != 3 || x.Run != 1 || string(x.Output) != `"res-book charged 30"` {
		t.Fatalf("poll %+v", x)
	}
	if _, err := wf.Poll(ctx, "never"); !errors.Is(err, workflow.ErrNotFound) {
		t.Fatalf("poll of an unknown id: %v", err)
	}
	_ = en
}

// A runner killed mid-activity: the next owner replays the journal, runs
// the interrupted activity again with the same key (its effect once), and
// the execution completes once.
func TestCrashMidActivity(t *testing.T) {
	l := newLog()
	entered := make(chan struct{}, 10)
	release := make(chan struct{})
	var wf *workflow.Workflow[string, int]
	define := func(e *workflow.Engine) {
		wf = must(workflow.Define(e, "crashy", func(c *workflow.Context, in string) (int, error) {
			a, _ := workflow.Activity(c, "first", func(ctx context.Context, a workflow.ActivityInfo) (int, error) {
				l.add("first")
				return 1, nil
			})
			b, err := workflow.Activity(c, "second", func(ctx context.Context, a workflow.ActivityInfo) (int, error) {
				l.add("second attempt on a runner")
				l.effect(a.Key)
				entered <- struct{}{}
				select {
				case <-release:
				case <-ctx.Done():
					return 0, ctx.Err()
				}
				return 2, nil
			})
			return a + b, err
		}))
	}
	en := setup(t, fastConfig(), define)
	ctx := ctxT(t)
	if err := wf.Start(ctx, "x", "in"); err != nil {
		t.Fatal(err)
	}
	<-entered
	// The first activity's result is appended in the background while the
	// second runs (with the start, in one message): wait until the journal
	// holds it, then crash.
	nc := meshtest.Connect(t, en.url)
	js := must(natsjs.New(nc))
	natstest.WaitFor(t, 10*time.Second, func() bool {
		st, err := js.Stream(ctxT(t), "mesh_events")
		if err != nil {
			return false
		}
		info, err := st.Info(ctxT(t))
		return err == nil && info.State.Msgs >= 1
	}, "the first activity journaled")
	en.runner.Crash()
	en.start(define)
	<-entered // the second activity again, on the new runner
	close(release)
	if got := must(wf.Result(ctx, "x")); got != 3 {
		t.Fatalf("result %d", got)
	}
	if n := l.count("first"); n != 1 {
		t.Fatalf("the journaled activity ran %d times", n)
	}
	if n := l.count("second attempt on a runner"); n != 2 {
		t.Fatalf("the interrupted activity ran %d times, want 2 (at least once)", n)
	}
	if len(l.keys) != 1 {
		t.Fatalf("the activity's key changed across runners: %v", l.keys)
	}
}

// Sleep: a short one in memory, a long one as a persisted wake-up (the
// execution Waiting meanwhile), never returning early; a runner crash
// during the sleep does not lose it.
func TestDurableSleep(t *testing.T) {
	var wf *workflow.Workflow[int, time.Time]
	define := func(e *workflow.Engine) {
		wf = must(workflow.Define(e, "sleeper", func(c *workflow.Context, ms int) (time.Time, error) {
			workflow.Sleep(c, 10*time.Millisecond) // in memory
			start := workflow.Now(c)
			workflow.Sleep(c, time.Duration(ms)*time.Millisecond)
			end := workflow.Now(c)
			if end.Sub(start) < time.Duration(ms)*time.Millisecond {
				return end, workflow.NonRetryable(fmt.Errorf("woke after %v of %dms", end.Sub(start), ms))
			}
			return end, nil
		}))
	}
	en := setup(t, fastConfig(), define)
	ctx := ctxT(t)
	started := time.Now()
	if err := wf.Start(ctx, "s", 2500); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool {
		x, err := wf.Poll(ctx, "s")
		return err == nil && x.Status == workflow.Waiting && strings.HasPrefix(x.Waiting, "timer until ")
	}, "the execution waiting on its timer")
	en.runner.Crash()
	en.start(define)
	end := must(wf.Result(ctx, "s"))
	if time.Since(started) < 2500*time.Millisecond || end.Sub(started) < 2500*time.Millisecond {
		t.Fatalf("the sleep of 2.5s ended after %v", time.Since(started))
	}
}

// Signals: one sent before the execution awaits it is kept; one sent
// while it waits wakes it; an error signal is returned; a timeout passes.
func TestSignals(t *testing.T) {
	type Approval struct {
		By string `json:"by"`
	}
	var wf *workflow.Workflow[string, string]
	var eng *workflow.Engine
	en := setup(t, fastConfig(), func(e *workflow.Engine) {
		eng = e
		wf = must(workflow.Define(e, "approve", func(c *workflow.Context, in string) (string, error) {
			a, err := workflow.Await[Approval](c, "approval")
			if err != nil {
				return "", workflow.NonRetryable(err)
			}
			_, err = workflow.Await[int](c, "late", workflow.Within(300*time.Millisecond))
			return "approved by " + a.By + fmt.Sprintf(" (late: %v)", errors.Is(err, workflow.ErrTimeout)), nil
		}))
	})
	_ = en
	ctx := ctxT(t)
	// Before the start, even.
	if err := workflow.Signal(ctx, eng, "approve", "early", "approval", Approval{By: "ann"}); err != nil {
		t.Fatal(err)
	}
	if got := must(wf.Run(ctx, "early", "")); got != "approved by ann (late: true)" {
		t.Fatalf("early signal: %q", got)
	}
	if err := wf.Start(ctx, "later", ""); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool {
		x, err := wf.Poll(ctx, "later")
		return err == nil && x.Waiting == `signal "approval"`
	}, "waiting on the signal")
	if err := workflow.Signal(ctx, eng, "approve", "later", "approval", Approval{By: "bob"}); err != nil {
		t.Fatal(err)
	}
	if got := must(wf.Result(ctx, "later")); got != "approved by bob (late: true)" {
		t.Fatalf("signal while waiting: %q", got)
	}
	if err := wf.Start(ctx, "refused", ""); err != nil {
		t.Fatal(err)
	}
	if err := workflow.SignalError(ctx, eng, "approve", "refused", "approval", errors.New("no budget")); err != nil {
		t.Fatal(err)
	}
	if _, err := wf.Result(ctx, "refused"); err == nil || !strings.Contains(err.Error(), "no budget") {
		t.Fatalf("error signal: %v", err)
	}
}

// OutOfStock is a declared failure of the booking workflow.
type OutOfStock struct {
	Item string `json:"item"`
}

func (e *OutOfStock) Error() string { return "out of stock: " + e.Item }

// A failing workflow compensates its completed activities, latest first,
// each once, and fails with its declared failure, typed.
func TestCompensation(t *testing.T) {
	l := newLog()
	var wf *workflow.Workflow[string, string]
	setup(t, fastConfig(), func(e *workflow.Engine) {
		step := func(c *workflow.Context, name string, fail bool) error {
			_, err := workflow.Activity(c, name, func(ctx context.Context, a workflow.ActivityInfo) (string, error) {
				l.add("do %s", name)
				if fail {
					return "", workflow.NonRetryable(&OutOfStock{Item: "hotel"})
				}
				return name + "-ref", nil
			}, workflow.Compensate(func(ctx context.Context, a workflow.ActivityInfo) error {
				l.add("undo %s %s", name, a.Result)
				return nil
			}))
			return err
		}
		wf = must(workflow.Define(e, "trip", func(c *workflow.Context, _ string) (string, error) {
			for _, s := range []struct {
				name string
				fail bool
			}{{"flight", false}, {"car", false}, {"hotel", true}} {
				if err := step(c, s.name, s.fail); err != nil {
					return "", &OutOfStock{Item: s.name}
				}
			}
			return "booked", nil
		}, workflow.Failure[*OutOfStock]("OutOfStock")))
	})
	ctx := ctxT(t)
	_, err := wf.Run(ctx, "trip-1", "")
	var oos *OutOfStock
	if !errors.As(err, &oos) || oos.Item != "hotel" {
		t.Fatalf("result error %v, want *OutOfStock hotel", err)
	}
	want := []string{"do flight", "do car", "do hotel", `undo car "car-ref"`, `undo flight "flight-ref"`}
	if !slices.Equal(l.all(), want) {
		t.Fatalf("ran %v, want %v", l.all(), want)
	}
	x := must(wf.Poll(ctx, "trip-1"))
	if x.Status != workflow.Failed || x.Error.Code != "OutOfStock" {
		t.Fatalf("poll %+v", x)
	}
}

// An interrupt stops a waiting execution: its completed activities are
// compensated, it ends Interrupted; an interrupt during a failure's
// compensation leaves the compensation to finish, once.
func TestInterrupt(t *testing.T) {
	l := newLog()
	compEntered := make(chan struct{}, 4)
	compRelease := make(chan struct{})
	var waiter, failer *workflow.Workflow[string, string]
	setup(t, fastConfig(), func(e *workflow.Engine) {
		waiter = must(workflow.Define(e, "waiter", func(c *workflow.Context, _ string) (string, error) {
			if _, err := workflow.Activity(c, "hold", func(ctx context.Context, a workflow.ActivityInfo) (int, error) {
				l.add("hold")
				return 1, nil
			}, workflow.Compensate(func(ctx context.Context, a workflow.ActivityInfo) error { l.add("release"); return nil })); err != nil {
				return "", err
			}
			v, err := workflow.Await[string](c, "go")
			return v, err
		}))
		failer = must(workflow.Define(e, "failer", func(c *workflow.Context, _ string) (string, error) {
			if _, err := workflow.Activity(c, "a", func(ctx context.Context, a workflow.ActivityInfo) (int, error) { return 1, nil },
				workflow.Compensate(func(ctx context.Context, a workflow.ActivityInfo) error {
					l.add("undo a")
					compEntered <- struct{}{}
					<-compRelease
					return nil
				})); err != nil {
				return "", err
			}
			return "", errors.New("boom")
		}))
	})
	ctx := ctxT(t)
	if err := waiter.Start(ctx, "w", ""); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool {
		x, err := waiter.Poll(ctx, "w")
		return err == nil && x.Status == workflow.Waiting
	}, "waiting")
	if err := waiter.Interrupt(ctx, "w"); err != nil {
		t.Fatal(err)
	}
	if _, err := waiter.Result(ctx, "w"); !errors.Is(err, workflow.ErrInterrupted) {
		t.Fatalf("interrupted result: %v", err)
	}
	if !slices.Equal(l.all(), []string{"hold", "release"}) {
		t.Fatalf("ran %v", l.all())
	}

	if err := failer.Start(ctx, "f", ""); err != nil {
		t.Fatal(err)
	}
	<-compEntered
	if err := failer.Interrupt(ctx, "f"); err != nil {
		t.Fatal(err)
	}
	close(compRelease)
	_, err := failer.Result(ctx, "f")
	if err == nil || !strings.Contains(err.Error(), "boom") || errors.Is(err, workflow.ErrInterrupted) {
		t.Fatalf("failer: %v, want its own failure", err)
	}
	if n := l.count("undo a"); n != 1 {
		t.Fatalf("compensation ran %d times", n)
	}
}

// An activity that keeps failing makes the execution Stuck; once the cause
// is fixed, Resume carries on from the step.
func TestStuckAndResume(t *testing.T) {
	var broken sync.Mutex
	fixed := false
	attempts := 0
	var wf *workflow.Workflow[string, string]
	setup(t, fastConfig(), func(e *workflow.Engine) {
		wf = must(workflow.Define(e, "fragile", func(c *workflow.Context, _ string) (string, error) {
			return workflow.Activity(c, "call", func(ctx context.Context, a workflow.ActivityInfo) (string, error) {
				broken.Lock()
				defer broken.Unlock()
				attempts++
				if !fixed {
					return "", errors.New("service down")
				}
				return "ok", nil
			}, workflow.Retry(workflow.RetryPolicy{MaxAttempts: 2, Backoff: time.Millisecond, BackoffMax: time.Millisecond}))
		}))
	})
	ctx := ctxT(t)
	_, err := wf.Run(ctx, "r", "")
	if !errors.Is(err, workflow.ErrStuck) || !strings.Contains(err.Error(), "service down") {
		t.Fatalf("result of a failing activity: %v", err)
	}
	broken.Lock()
	fixed = true
	n := attempts
	broken.Unlock()
	if n != 2 {
		t.Fatalf("%d attempts, want 2", n)
	}
	if err := wf.Resume(ctx, "r"); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool {
		x, err := wf.Poll(ctx, "r")
		return err == nil && x.Status == workflow.Completed
	}, "completed after Resume")
	if got := must(wf.Result(ctx, "r")); got != "ok" {
		t.Fatalf("result %q", got)
	}
}

// A child workflow: the parent waits for it, durably, and gets its
// result; a failed child's error reaches the parent.
func TestChild(t *testing.T) {
	var parent *workflow.Workflow[int, string]
	setup(t, fastConfig(), func(e *workflow.Engine) {
		child := must(workflow.Define(e, "square", func(c *workflow.Context, n int) (int, error) {
			if n < 0 {
				return 0, errors.New("negative")
			}
			return workflow.Activity(c, "square", func(ctx context.Context, a workflow.ActivityInfo) (int, error) { return n * n, nil })
		}))
		parent = must(workflow.Define(e, "sum", func(c *workflow.Context, n int) (string, error) {
			total := 0
			for i := 1; i <= n; i++ {
				v, err := workflow.Child(c, child, fmt.Sprintf("%s-%d", c.ID(), i), i)
				if err != nil {
					return "", err
				}
				total += v
			}
			_, err := workflow.Child(c, child, c.ID()+"-neg", -1)
			return fmt.Sprintf("%d, then %v", total, err), nil
		}))
	})
	ctx := ctxT(t)
	if got := must(parent.Run(ctx, "p", 3)); got != "14, then negative" {
		t.Fatalf("parent: %q", got)
	}
}

// Continue-as-new: each run keeps a short journal; the execution's result
// is its last run's.
func TestContinueAsNew(t *testing.T) {
	var wf *workflow.Workflow[int, int]
	setup(t, fastConfig(), func(e *workflow.Engine) {
		wf = must(workflow.Define(e, "loop", func(c *workflow.Context, n int) (int, error) {
			next, err := workflow.Activity(c, "inc", func(ctx context.Context, a workflow.ActivityInfo) (int, error) { return n + 1, nil })
			if err != nil {
				return 0, err
			}
			if next < 5 {
				return 0, workflow.ContinueAsNew(c, next)
			}
			return next, nil
		}))
	})
	ctx := ctxT(t)
	if got := must(wf.Run(ctx, "l", 0)); got != 5 {
		t.Fatalf("result %d", got)
	}
	x := must(wf.Poll(ctx, "l"))
	if x.Run != 5 || x.Steps != 1 {
		t.Fatalf("poll %+v: want run 5 with one step", x)
	}
}
