package cron_test

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/cron"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/reminder"
)

// runs records every job run: tick time -> runners that ran it.
type runs struct {
	mu    sync.Mutex
	ticks map[time.Time][]string
}

func (r *runs) record(runner string, tick time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ticks[tick] = append(r.ticks[tick], runner)
}

func (r *runs) sorted() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]time.Time, 0, len(r.ticks))
	for t := range r.ticks {
		out = append(out, t)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Before(out[b]) })
	return out
}

func (r *runs) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ticks)
}

func (r *runs) by(tick time.Time) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.ticks[tick]...)
}

// startRunner starts a runner whose Crons has job (with Run recording into
// rs under the runner's id).
func startRunner(t *testing.T, url string, cfg mesh.Config, job cron.Job, rs *runs) *meshtest.Runner {
	return meshtest.StartRunner(t, url, cfg, func(nc *nats.Conn, r *mesh.Runner) {
		rem, err := reminder.New(context.Background(), r.Client())
		if err != nil {
			t.Fatal(err)
		}
		j := job
		j.Run = func(_ context.Context, tick time.Time) error {
			rs.record(r.ID(), tick)
			return nil
		}
		crons := cron.New(rem)
		if err := crons.Add(j); err != nil {
			t.Fatal(err)
		}
		if err := crons.Install(r); err != nil {
			t.Fatal(err)
		}
	})
}

// Three runners run an every-second job once per tick, also while the
// runner that runs it leaves and another takes over.
func TestOncePerTickThreeRunners(t *testing.T) {
	s := natstest.StartServer(t)
	cfg := meshtest.Cluster(1)
	meshtest.StartManager(t, s.ClientURL(), cfg)
	rs := &runs{ticks: map[time.Time][]string{}}
	job := cron.Job{Name: "every-second", Schedule: "* * * * * *", FromPrevious: true}
	runners := map[string]*meshtest.Runner{}
	var all []*meshtest.Runner
	for range 3 {
		r := startRunner(t, s.ClientURL(), cfg, job, rs)
		runners[r.ID()] = r
		all = append(all, r)
	}
	meshtest.WaitServing(t, cfg.ShardsPerGroup, all...)
	natstest.WaitFor(t, 20*time.Second, func() bool { return rs.count() >= 4 }, "four ticks")
	ticks := rs.sorted()
	owner := rs.by(ticks[len(ticks)-1])[0]
	runners[owner].Stop() // graceful: its shards and the cron's singleton move
	n := rs.count()
	natstest.WaitFor(t, 30*time.Second, func() bool { return rs.count() >= n+4 }, "four ticks after the hand-off")

	ticks = rs.sorted()
	ran := map[string]bool{}
	for i, tk := range ticks {
		by := rs.by(tk)
		if len(by) != 1 {
			t.Fatalf("tick %v ran %d times (%v), want once", tk, len(by), by)
		}
		ran[by[0]] = true
		if i > 0 && tk.Sub(ticks[i-1]) != time.Second {
			t.Fatalf("ticks %v then %v: a tick was skipped", ticks[i-1], tk)
		}
	}
	if len(ran) < 2 {
		t.Fatalf("every tick ran on %v; the job did not move", ran)
	}
	rem, err := reminder.New(context.Background(), meshtest.Client(t, meshtest.Connect(t, s.ClientURL()), cfg))
	if err != nil {
		t.Fatal(err)
	}
	next, err := cron.Next(context.Background(), rem, "every-second")
	if err != nil || !next.After(ticks[len(ticks)-1]) {
		t.Fatalf("Next = %v, %v; want a time after the last run tick %v", next, err, ticks[len(ticks)-1])
	}
	if _, err := cron.Next(context.Background(), rem, "nope"); !errors.Is(err, reminder.ErrNotFound) {
		t.Fatalf("Next(nope) = %v, want reminder.ErrNotFound", err)
	}
}

// A tick that comes later than SkipIfOlderThan (its runner crashed and none
// took over in time) is skipped, and the job resumes on schedule without
// replaying the ticks it missed.
func TestMissedTicks(t *testing.T) {
	s := natstest.StartServer(t)
	cfg := meshtest.Standalone()
	rs := &runs{ticks: map[time.Time][]string{}}
	job := cron.Job{Name: "beat", Schedule: "* * * * * *", SkipIfOlderThan: time.Second}
	r := startRunner(t, s.ClientURL(), cfg, job, rs)
	natstest.WaitFor(t, 20*time.Second, func() bool { return rs.count() >= 2 }, "two ticks")
	r.Crash()
	crashed := time.Now()
	before := rs.count()
	// The outage: longer than SkipIfOlderThan plus a tick.
	natstest.WaitFor(t, 10*time.Second, func() bool { return time.Since(crashed) > 3*time.Second }, "the outage")
	restarted := time.Now()
	startRunner(t, s.ClientURL(), cfg, job, rs)
	natstest.WaitFor(t, 20*time.Second, func() bool { return rs.count() >= before+3 }, "ticks after the restart")

	ticks := rs.sorted()
	for _, tk := range ticks {
		if tk.After(crashed.Add(time.Second)) && tk.Before(restarted.Add(-time.Second)) {
			t.Fatalf("tick %v, due during the outage (%v to %v), ran after it", tk, crashed, restarted)
		}
		if n := len(rs.by(tk)); n != 1 {
			t.Fatalf("tick %v ran %d times", tk, n)
		}
	}
}

func TestAddInvalid(t *testing.T) {
	crons := cron.New(nil)
	run := func(context.Context, time.Time) error { return nil }
	tests := []struct {
		name string
		job  cron.Job
		want error
	}{
		{"no name", cron.Job{Schedule: "* * * * *", Run: run}, cron.ErrInvalidOption},
		{"no run", cron.Job{Name: "a", Schedule: "* * * * *"}, cron.ErrInvalidOption},
		{"bad expression", cron.Job{Name: "a", Schedule: "* * *", Run: run}, cron.ErrSyntax},
		{"negative skip", cron.Job{Name: "a", Schedule: "* * * * *", Run: run, SkipIfOlderThan: -time.Second}, cron.ErrInvalidOption},
		{"unnamed zone", cron.Job{Name: "a", Schedule: "* * * * *", Run: run, Location: time.FixedZone("X", 60)}, cron.ErrInvalidOption},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := crons.Add(tt.job); !errors.Is(err, tt.want) {
				t.Fatalf("Add = %v, want %v", err, tt.want)
			}
		})
	}
	if err := crons.Add(cron.Job{Name: "a", Schedule: "@daily", Run: run}); err != nil {
		t.Fatal(err)
	}
	if err := crons.Add(cron.Job{Name: "a", Schedule: "@daily", Run: run}); !errors.Is(err, cron.ErrInvalidOption) {
		t.Fatalf("second Add of a = %v, want ErrInvalid", err)
	}
}

// On a three-server cluster, the runner running a job crashes: another
// takes the job over, no tick is lost (FromPrevious replays the ones due
// meanwhile), none runs on two runners except the one the crashed runner
// may have been running (at least once).
func TestCrashR3(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	url := natstest.ClientURLs(servers)
	cfg := meshtest.Cluster(3)
	meshtest.StartManager(t, url, cfg)
	rs := &runs{ticks: map[time.Time][]string{}}
	job := cron.Job{Name: "every-second", Schedule: "* * * * * *", FromPrevious: true}
	runners := map[string]*meshtest.Runner{}
	var all []*meshtest.Runner
	for range 3 {
		r := startRunner(t, url, cfg, job, rs)
		runners[r.ID()] = r
		all = append(all, r)
	}
	meshtest.WaitServing(t, cfg.ShardsPerGroup, all...)
	natstest.WaitFor(t, 30*time.Second, func() bool { return rs.count() >= 3 }, "three ticks")
	ticks := rs.sorted()
	owner := rs.by(ticks[len(ticks)-1])[0]
	runners[owner].Crash()
	crashed := time.Now()
	natstest.WaitFor(t, 60*time.Second, func() bool {
		ts := rs.sorted()
		last := ts[len(ts)-1]
		return last.After(crashed.Add(2*time.Second)) && rs.by(last)[0] != owner
	}, "ticks on another runner after the crash")

	ticks = rs.sorted()
	twice := 0
	for i, tk := range ticks {
		if n := len(rs.by(tk)); n > 1 {
			twice++
			if n > 2 {
				t.Fatalf("tick %v ran %d times", tk, n)
			}
		}
		if i > 0 && tk.Sub(ticks[i-1]) != time.Second {
			t.Fatalf("ticks %v then %v: a tick was lost", ticks[i-1], tk)
		}
	}
	if twice > 1 {
		t.Fatalf("%d ticks ran twice; at most the one in flight at the crash may", twice)
	}
}
