package workflow_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/workflow"
)

// A new version of a workflow's code is deployed between two steps of a
// running execution: with Version, the execution in flight keeps its old
// path and a new one takes the new path; a later deployment that drops
// the old version stops the old execution as Stuck, naming the change,
// instead of running a path its journal does not match.
func TestVersionChangeInFlight(t *testing.T) {
	l := newLog()
	var wf *workflow.Workflow[string, string]
	var eng *workflow.Engine
	step := func(c *workflow.Context, name string) {
		_, _ = workflow.Activity(c, name, func(ctx context.Context, a workflow.ActivityInfo) (string, error) {
			l.add("%s %s", a.ID, name)
			return name, nil
		})
	}
	deploy := func(code func(c *workflow.Context, _ string) (string, error)) func(e *workflow.Engine) {
		return func(e *workflow.Engine) {
			eng = e
			wf = must(workflow.Define(e, "shipping", code))
		}
	}
	v1 := func(c *workflow.Context, _ string) (string, error) {
		step(c, "pack")
		if _, err := workflow.Await[bool](c, "go"); err != nil {
			return "", err
		}
		step(c, "ship")
		return "v1 path", nil
	}
	// v2 inserts an insurance step before the wait.
	v2 := func(c *workflow.Context, _ string) (string, error) {
		step(c, "pack")
		path := "v1 path"
		if workflow.Version(c, "insure", workflow.DefaultVersion, 1) == 1 {
			step(c, "insure")
			path = "v2 path"
		}
		if _, err := workflow.Await[bool](c, "go"); err != nil {
			return "", err
		}
		step(c, "ship")
		return path, nil
	}
	// v3 drops the old path.
	v3 := func(c *workflow.Context, _ string) (string, error) {
		step(c, "pack")
		workflow.Version(c, "insure", 1, 1)
		step(c, "insure")
		if _, err := workflow.Await[bool](c, "go"); err != nil {
			return "", err
		}
		step(c, "ship")
		return "v3 path", nil
	}
	en := setup(t, fastConfig(), deploy(v1))
	ctx := ctxT(t)
	waiting := func(id string) {
		natstest.WaitFor(t, 10*time.Second, func() bool {
			x, err := wf.Poll(ctx, id)
			return err == nil && x.Status == workflow.Waiting
		}, id+" waiting")
	}
	for _, id := range []string{"old", "old2"} {
		if err := wf.Start(ctx, id, ""); err != nil {
			t.Fatal(err)
		}
		waiting(id)
	}

	en.runner.Stop()
	en.start(deploy(v2))
	if err := wf.Start(ctx, "new", ""); err != nil {
		t.Fatal(err)
	}
	waiting("new")
	for _, id := range []string{"old", "new"} {
		if err := workflow.Signal(ctx, eng, "shipping", id, "go", true); err != nil {
			t.Fatal(err)
		}
	}
	if got := must(wf.Result(ctx, "old")); got != "v1 path" {
		t.Fatalf("the execution in flight took %q", got)
	}
	if got := must(wf.Result(ctx, "new")); got != "v2 path" {
		t.Fatalf("the new execution took %q", got)
	}
	want := []string{"old pack", "old2 pack", "new pack", "new insure", "old ship", "new ship"}
	got := l.all()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("steps %v, want %v", l.all(), want)
	}

	en.runner.Stop()
	en.start(deploy(v3))
	if err := workflow.Signal(ctx, eng, "shipping", "old2", "go", true); err != nil {
		t.Fatal(err)
	}
	_, err := wf.Result(ctx, "old2")
	if !errors.Is(err, workflow.ErrStuck) || !errors.Is(err, workflow.ErrNonDeterminism) {
		t.Fatalf("an execution of a dropped version: %v", err)
	}
	x := must(wf.Poll(ctx, "old2"))
	if x.Status != workflow.Stuck || x.Error.Code != "NonDeterminism" || !strings.Contains(x.Error.Message, `change "insure"`) {
		t.Fatalf("poll %+v", x)
	}
}

// Code changed without Version under a running execution: the replay
// meets a journal it cannot match and the execution is Stuck with a
// NonDeterminismError naming the step; resumed on code that matches again,
// it completes.
func TestNonDeterminism(t *testing.T) {
	var wf *workflow.Workflow[string, string]
	var eng *workflow.Engine
	act := func(c *workflow.Context, name string) {
		_, _ = workflow.Activity(c, name, func(ctx context.Context, a workflow.ActivityInfo) (int, error) { return 1, nil })
	}
	deploy := func(first, second string) func(e *workflow.Engine) {
		return func(e *workflow.Engine) {
			eng = e
			wf = must(workflow.Define(e, "ordered", func(c *workflow.Context, _ string) (string, error) {
				act(c, first)
				act(c, second)
				if _, err := workflow.Await[bool](c, "go"); err != nil {
					return "", err
				}
				return first + "+" + second, nil
			}))
		}
	}
	en := setup(t, fastConfig(), deploy("a", "b"))
	ctx := ctxT(t)
	if err := wf.Start(ctx, "x", ""); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool {
		x, err := wf.Poll(ctx, "x")
		return err == nil && x.Status == workflow.Waiting
	}, "waiting")
	en.runner.Stop()
	en.start(deploy("b", "a")) // the steps swapped, no Version
	if err := workflow.Signal(ctx, eng, "ordered", "x", "go", true); err != nil {
		t.Fatal(err)
	}
	if _, err := wf.Result(ctx, "x"); !errors.Is(err, workflow.ErrNonDeterminism) {
		t.Fatalf("replay of swapped steps: %v", err)
	}
	x := must(wf.Poll(ctx, "x"))
	if x.Status != workflow.Stuck || !strings.Contains(x.Error.Message, `step 0: the code asks for activity "b", the journal holds activity "a"`) {
		t.Fatalf("poll %+v", x.Error)
	}
	en.runner.Stop()
	en.start(deploy("a", "b")) // fixed
	if err := wf.Resume(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool {
		x, err := wf.Poll(ctx, "x")
		return err == nil && x.Status == workflow.Completed
	}, "completed once fixed and resumed")
}
