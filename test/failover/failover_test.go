//go:build unix

// Package failover_test checks and measures docs/design.md's invariant 5
// (availability: calls resume within the lease expiry after losing a
// runner) with real OS processes: the cmd/runner and cmd/shardmgr binaries,
// built once per test run, on an embedded nats-server.
//
// A shard manager and three runners (r1, r2, r3) share 30 shards. A Go
// client drives load: four workers, each calling Increment on its quarter
// of 300 counters in turn, one call at a time with a 5 s deadline (the
// client retries internally while a shard has no runner). Then r1 dies:
//
//   - fast: SIGKILL with the -fast-failover timings (2 s leases). r1's
//     registration and leases expire on the server, the manager pings it,
//     reassigns its shards, and the survivors acquire the expired leases.
//   - default: the same with the default timings (35 s leases); only with
//     -failover.long, as it takes about a minute.
//   - graceful: SIGTERM with the fast timings: r1 deregisters and hands its
//     shards off as they are reassigned; no call may fail.
//
// What is measured, and how:
//
//   - Probes: one goroutine per shard calls GetValue on an entity of that
//     shard every 20 ms (300 ms deadline). A shard's unavailability window
//     is the longest interval between two consecutive answered probes that
//     ends after the kill; "kill->recovered" is the kill to the end of the
//     last such window among r1's shards, i.e. until every shard r1 held
//     answers again. The probes' pacing (20 ms) plus the client's retry
//     backoff bound the error of both figures; the longest gap before the
//     kill is reported as the baseline.
//     For the graceful case the headline is the longest window instead
//     ("handoff-window"), as r1 keeps serving until each hand-off.
//   - Load: failed calls, and the latency of the calls overlapping [kill,
//     recovered] (p50, p99, max) against the steady state before the kill.
//     A call the runner received but had not answered when it died is never
//     answered (volatile calls are at most once; docs/operations.md, Known
//     limits): it fails at its 5 s deadline. Failures are split into calls
//     sent before the signal and after it (sent in the instant before the
//     process is gone and the server has dropped its subscriptions).
//
// What is checked:
//
//   - Correctness bound: a sweep of GetValue over all 300 ids, started at
//     the kill, completes within 4 × ShardLockExpiration + 10 s (an attempt
//     lost in flight is tried again).
//   - The cluster settles: only the survivors are registered, and they
//     hold (lease) every shard the manager assigned them; r1 holds none.
//   - Every counter's replies tell a consistent story: each Increment
//     returns the previous value plus one (plus the calls that failed in
//     between, which may have run), on shards that moved as on those that
//     stayed (the Counter's value is durable state: a moved entity is
//     re-created on its new owner from its stored value, and no
//     acknowledged increment is lost or applied twice); a final GetValue
//     returns the last value.
//   - Failures are only deadline errors (no stray NotServing or defect),
//     and none at all on graceful shutdown; the manager and the survivors
//     never exit; a SIGTERMed runner exits 0.
//
// Each scenario logs one greppable line starting with "FAILOVER".
package failover_test

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/cmdtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
	"github.com/natsmesh/natsmesh/test/internal/proctest"
)

var long = flag.Bool("failover.long", false, "also measure failover with the default timings (35 s leases; about a minute more)")

const (
	shards   = 30
	entities = 300
	workers  = 4
	// callTimeout is each load call's deadline. With the fast timings it
	// exceeds the failover time, so only calls lost in flight fail.
	callTimeout  = 5 * time.Second
	probeEvery   = 20 * time.Millisecond
	probeTimeout = 300 * time.Millisecond
	victim       = "r1"
)

var (
	allRunners = []string{"r1", "r2", "r3"}
	survivors  = []string{"r2", "r3"}
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(mainM{m}) }

// mainM removes the binaries after the tests.
type mainM struct{ m *testing.M }

func (w mainM) Run() int {
	code := w.m.Run()
	cmdtest.Remove()
	return code
}

func TestFailover(t *testing.T) {
	tests := []struct {
		name string
		fast bool
		sig  syscall.Signal
		long bool
	}{
		{name: "fast", fast: true, sig: syscall.SIGKILL},
		{name: "graceful", fast: true, sig: syscall.SIGTERM},
		{name: "default", fast: false, sig: syscall.SIGKILL, long: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.long && !*long {
				t.Skip("default timings take about a minute: go test ./test/failover -failover.long")
			}
			runFailover(t, tt.name, tt.fast, tt.sig)
		})
	}
}

func runFailover(t *testing.T, name string, fast bool, sig syscall.Signal) {
	cfg := mesh.DefaultConfig()
	if fast {
		cfg = cfg.FastFailover()
	}
	cfg.ShardsPerGroup = shards
	bound := 4*cfg.ShardLockExpiration + 10*time.Second

	c := startCluster(t, cfg, fast)
	c.waitStatus(t, 30*time.Second, allRunners, "three runners share every shard")

	base := time.Now()
	pr := startProbes(t, c.client, base)
	ld := startLoad(t, c.client, base)
	natstest.WaitFor(t, 30*time.Second, func() bool {
		c.mustRun(t)
		return pr.allServed() && ld.minCycles() >= 2
	}, "every shard answers a probe and every counter was called twice")
	before := c.waitStatus(t, 10*time.Second, allRunners, "three runners share every shard")
	gone := map[int]bool{} // the victim's shards
	for _, s := range before.Shards {
		if s.Holder == victim {
			gone[s.Shard.N] = true
		}
	}

	p := c.procs[victim]
	// The event's time is taken before the signal: under -race the signal
	// call can return after the process is gone.
	kill := time.Since(base)
	if err := p.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", victim, err)
	}
	deadline := base.Add(kill + bound)
	t.Logf("%v sent to %s at %v; it held shards %v", sig, victim, kill.Round(time.Millisecond), sortedKeys(gone))

	// The correctness bound: every entity answers within it.
	if err := sweep(c.client, deadline); err != nil {
		t.Fatalf("not every entity answered within %v of the %v (4 × ShardLockExpiration + 10 s): %v", bound, sig, err)
	}
	swept := time.Since(base) - kill

	select {
	case <-p.Done():
	case <-time.After(time.Until(deadline) + cfg.EntityTerminationTimeout):
		t.Fatalf("%s still running %v after %v", victim, time.Since(base)-kill, sig)
	}
	exitAfter := p.ExitAt().Sub(base) - kill
	if sig == syscall.SIGTERM && p.Err() != nil {
		t.Errorf("%s after SIGTERM: %v, want a clean exit", victim, p.Err())
	}
	after := c.waitStatus(t, max(time.Until(deadline), time.Second), survivors, "the survivors hold every shard")
	moved := map[int]bool{}
	for i, s := range after.Shards {
		if s.Holder != before.Shards[i].Holder {
			moved[s.Shard.N] = true
		}
	}
	// Let every worker go twice more over all its counters, on the settled
	// cluster, so that each counter has answered after its move.
	n := ld.minCycles() + 2
	natstest.WaitFor(t, 30*time.Second, func() bool { return ld.minCycles() >= n }, "two more rounds of load")
	ld.stop()
	pr.stop()
	c.mustRun(t)

	// Probes: unavailability windows.
	gap := pr.analyze(kill)
	var recovered time.Duration
	for s := range gone {
		if gap.closing[s] == 0 {
			t.Errorf("probe of shard %d never answered after the %v", s, sig)
			continue
		}
		recovered = max(recovered, gap.closing[s]-kill)
	}

	// Load: failures and latencies.
	st := ld.analyze(kill, kill+recovered)
	for _, f := range st.failures {
		if !errors.Is(f.err, mesh.ErrShardUnavailable) && !errors.Is(f.err, context.DeadlineExceeded) {
			t.Errorf("Increment(%s) sent at %v failed with %v, want only deadline errors", entityID(f.id), f.start, f.err)
		}
	}
	if sig == syscall.SIGTERM && len(st.failures) > 0 {
		t.Errorf("%d calls failed during a graceful shutdown, want 0; first: %v", len(st.failures), st.failures[0].err)
	}
	checkValues(t, c.client, ld, moved, gone)

	// One greppable line per scenario. For a crash the figure is the time
	// to recover; for a graceful shutdown, the longest hand-off window.
	headline := fmt.Sprintf("kill->recovered=%v max-window=%v", ms(recovered), ms(gap.maxWindow))
	if sig == syscall.SIGTERM {
		headline = fmt.Sprintf("handoff-window=%v signal->recovered=%v", ms(gap.maxWindow), ms(recovered))
	}
	t.Logf("FAILOVER %s: %s failed=%d (sent-before-kill=%d sent-after=%d) p99=%v p50=%v max=%v p99-ok=%v (%d calls in window; steady p99=%v; probe baseline window=%v) sweep=%v exit=%v moved=%d calls=%d",
		name, headline, len(st.failures), st.inFlight, len(st.failures)-st.inFlight,
		ms(st.p99), ms(st.p50), ms(st.max), ms(st.okP99), st.windowCalls, ms(st.steadyP99), ms(gap.baseline),
		ms(swept), ms(exitAfter), len(moved), st.calls)
	if len(st.failures) > 0 {
		t.Logf("first failure: Increment(%s) sent at %v (kill at %v): %v", entityID(st.failures[0].id), ms(st.failures[0].start), ms(kill), st.failures[0].err)
	}
}

func ms(d time.Duration) time.Duration {
	if d < 10*time.Millisecond {
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Millisecond)
}

func entityID(e int) string { return fmt.Sprintf("counter-%03d", e) }

// sweep calls GetValue on every entity until each answers or the deadline
// passes. A call the victim received before it died is never answered (at
// most once): such an attempt ends after callTimeout and is tried again,
// which GetValue allows.
func sweep(c *mesh.Client, deadline time.Time) error {
	for e := range entities {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), min(time.Until(deadline), callTimeout))
			_, err := mesh.Call(ctx, c, counter.GetValue, entityID(e), actor.Empty{})
			cancel()
			if err == nil {
				break
			}
			if !errors.Is(err, context.DeadlineExceeded) || !time.Now().Before(deadline) {
				return fmt.Errorf("GetValue(%s): %w", entityID(e), err)
			}
		}
	}
	return nil
}

func sortedKeys(m map[int]bool) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ---- binaries and processes ----

// binaries builds cmd/runner and cmd/shardmgr once per test run and
// returns their paths.
func binaries(t testing.TB) (runner, shardmgr string) {
	t.Helper()
	dir := cmdtest.Build(t, "./cmd/runner", "./cmd/shardmgr")
	return filepath.Join(dir, "runner"), filepath.Join(dir, "shardmgr")
}

// ---- the cluster ----

type cluster struct {
	cfg    mesh.Config
	nc     *nats.Conn
	client *mesh.Client
	procs  map[string]*proctest.Proc // "shardmgr", r1, r2, r3
}

func startCluster(t *testing.T, cfg mesh.Config, fast bool) *cluster {
	t.Helper()
	srv := natstest.StartServer(t)
	return startProcesses(t, cfg, fast, []string{srv.ClientURL()})
}

// startProcesses starts the shard manager and the runners on the NATS
// servers at urls, with extra flags, and connects a client.
func startProcesses(t *testing.T, cfg mesh.Config, fast bool, urls []string, extra ...string) *cluster {
	t.Helper()
	runnerBin, managerBin := binaries(t)
	c := &cluster{cfg: cfg, procs: map[string]*proctest.Proc{}}
	common := append([]string{"-nats", strings.Join(urls, ","), "-shards", strconv.Itoa(shards)}, extra...)
	if fast {
		common = append(common, "-fast-failover")
	}
	c.procs["shardmgr"] = proctest.Start(t, "shardmgr", managerBin, common...)
	for _, id := range allRunners {
		c.procs[id] = proctest.Start(t, id, runnerBin, append(slices.Clone(common), "-id", id, "-log-level", "warn")...)
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c.nc = nc
	if c.client, err = mesh.NewClient(c.nc, cfg.ClientConfig); err != nil {
		t.Fatal(err)
	}
	return c
}

// mustRun fails the test if the manager or a runner other than the victim
// has exited.
func (c *cluster) mustRun(t testing.TB) {
	t.Helper()
	for name, p := range c.procs {
		if name != victim && p.Exited() {
			t.Fatalf("%s exited: %s", name, p.Status())
		}
	}
}

// waitStatus waits until exactly runners are registered and every shard's
// lease is held by the runner the manager assigned it to, each of runners
// holding some, and returns that status.
func (c *cluster) waitStatus(t testing.TB, timeout time.Duration, runners []string, msg string) *mesh.ClusterStatus {
	t.Helper()
	var st *mesh.ClusterStatus
	natstest.WaitFor(t, timeout, func() bool {
		c.mustRun(t)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		if st, err = mesh.Inspect(ctx, c.nc, c.cfg); err != nil {
			return false
		}
		return settled(st, runners)
	}, msg)
	return st
}

func settled(st *mesh.ClusterStatus, runners []string) bool {
	if len(st.Runners) != len(runners) || len(st.Shards) != shards {
		return false
	}
	for i, r := range st.Runners { // sorted by id
		if r.ID != runners[i] || r.Held == 0 || r.Held != r.Assigned {
			return false
		}
	}
	for _, s := range st.Shards {
		if s.Holder == "" || s.Holder != s.Assigned || !slices.Contains(runners, s.Holder) {
			return false
		}
	}
	return true
}

// ---- probes ----

type span struct{ start, end time.Duration }

// probes call one entity of each shard every probeEvery and record the
// answered calls.
type probes struct {
	ids    [shards]string
	ok     [shards][]span // written by probe s only, read after stop
	served [shards]atomic.Bool
	stopc  chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

func startProbes(t testing.TB, c *mesh.Client, base time.Time) *probes {
	p := &probes{stopc: make(chan struct{})}
	for s := range shards {
		for k := 0; p.ids[s] == ""; k++ {
			if id := fmt.Sprintf("probe-%d-%d", s, k); protocol.ShardOf(id, shards) == s {
				p.ids[s] = id
			}
		}
	}
	for s := range shards {
		p.wg.Add(1)
		go p.run(s, c, base)
	}
	t.Cleanup(p.stop)
	return p
}

func (p *probes) run(s int, c *mesh.Client, base time.Time) {
	defer p.wg.Done()
	tick := time.NewTicker(probeEvery) // pacing, not synchronization
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		start := time.Since(base)
		_, err := mesh.Call(ctx, c, counter.GetValue, p.ids[s], actor.Empty{})
		end := time.Since(base)
		cancel()
		if err == nil {
			p.ok[s] = append(p.ok[s], span{start, end})
			p.served[s].Store(true)
		}
		select {
		case <-p.stopc:
			return
		case <-tick.C:
		}
	}
}

func (p *probes) allServed() bool {
	for s := range shards {
		if !p.served[s].Load() {
			return false
		}
	}
	return true
}

func (p *probes) stop() {
	p.once.Do(func() { close(p.stopc) })
	p.wg.Wait()
}

type gaps struct {
	// closing[s] is when shard s's longest window ending after the event
	// closed (its next answer); 0 if it never answered after the event.
	closing   [shards]time.Duration
	maxWindow time.Duration // longest such window over all shards
	baseline  time.Duration // longest window that closed before the event
}

// analyze measures unavailability windows: intervals between two
// consecutive answered probes of a shard.
func (p *probes) analyze(event time.Duration) gaps {
	var g gaps
	for s := range shards {
		var longest time.Duration
		for i := 1; i < len(p.ok[s]); i++ {
			prev, cur := p.ok[s][i-1].end, p.ok[s][i].end
			w := cur - prev
			if cur <= event {
				g.baseline = max(g.baseline, w)
				continue
			}
			if w > longest {
				longest, g.closing[s] = w, cur
			}
		}
		g.maxWindow = max(g.maxWindow, longest)
	}
	return g
}

// ---- load ----

type call struct {
	id         int32
	value      int32 // the reply; -1 if the call failed
	start, end time.Duration
}

type failure struct {
	id    int
	start time.Duration
	err   error
}

// worker calls Increment on its counters in turn, one call at a time, so
// each counter sees its calls in order.
type worker struct {
	ids      []int
	calls    []call    // read after stop
	failures []failure // read after stop
	cycles   atomic.Int64
}

type load struct {
	workers [workers]*worker
	stopc   chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

func startLoad(t testing.TB, c *mesh.Client, base time.Time) *load {
	l := &load{stopc: make(chan struct{})}
	for w := range workers {
		l.workers[w] = &worker{}
	}
	for e := range entities {
		l.workers[e%workers].ids = append(l.workers[e%workers].ids, e)
	}
	for _, w := range l.workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			w.run(c, base, l.stopc)
		}()
	}
	t.Cleanup(l.stop)
	return l
}

func (w *worker) run(c *mesh.Client, base time.Time, stop <-chan struct{}) {
	for {
		for _, e := range w.ids {
			select {
			case <-stop:
				return
			default:
			}
			// The stop signal never cancels a call: each ends on its own.
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			start := time.Since(base)
			v, err := mesh.Call(ctx, c, counter.Increment, entityID(e), counter.Amount{Amount: 1})
			end := time.Since(base)
			cancel()
			cl := call{id: int32(e), value: int32(v), start: start, end: end}
			if err != nil {
				cl.value = -1
				w.failures = append(w.failures, failure{id: e, start: start, err: err})
			}
			w.calls = append(w.calls, cl)
		}
		w.cycles.Add(1)
	}
}

func (l *load) minCycles() int64 {
	n := l.workers[0].cycles.Load()
	for _, w := range l.workers[1:] {
		n = min(n, w.cycles.Load())
	}
	return n
}

func (l *load) stop() {
	l.once.Do(func() { close(l.stopc) })
	l.wg.Wait()
}

type loadStats struct {
	calls       int
	failures    []failure // by send time
	inFlight    int       // failures sent before the event (in flight then)
	windowCalls int
	p50, p99    time.Duration // of the calls overlapping the window
	max         time.Duration
	okP99       time.Duration // of those that succeeded
	steadyP99   time.Duration // of the calls that ended before the event
}

// analyze summarizes the load; the window is [from, to].
func (l *load) analyze(from, to time.Duration) loadStats {
	var st loadStats
	var window, ok, steady []time.Duration
	for _, w := range l.workers {
		st.calls += len(w.calls)
		st.failures = append(st.failures, w.failures...)
		for _, c := range w.calls {
			d := c.end - c.start
			switch {
			case c.end < from:
				steady = append(steady, d)
			case c.start <= to:
				window = append(window, d)
				if c.value >= 0 {
					ok = append(ok, d)
				}
			}
		}
	}
	slices.SortFunc(st.failures, func(a, b failure) int { return cmp.Compare(a.start, b.start) })
	for _, f := range st.failures {
		if f.start < from {
			st.inFlight++
		}
	}
	st.windowCalls = len(window)
	st.p50, st.p99, st.max = percentile(window, 0.50), percentile(window, 0.99), percentile(window, 1)
	st.okP99 = percentile(ok, 0.99)
	st.steadyP99 = percentile(steady, 0.99)
	return st
}

func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(q*float64(len(ds))+0.999999) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

// checkValues checks each counter's replies: +1 per call (more if calls
// failed in between: they may have run), across moves too; then that a
// final GetValue returns the last value. gone are the victim's shards: all
// of them must have moved.
func checkValues(t *testing.T, c *mesh.Client, l *load, moved, gone map[int]bool) {
	t.Helper()
	for s := range gone {
		if !moved[s] {
			t.Errorf("shard %d of %s has the same holder after the failover", s, victim)
		}
	}
	type state struct{ value, failed int }
	counters := make([]state, entities)
	bad := 0
	for _, w := range l.workers {
		for _, cl := range w.calls {
			st := &counters[cl.id]
			if cl.value < 0 {
				st.failed++
				continue
			}
			v := int(cl.value)
			shard := protocol.ShardOf(entityID(int(cl.id)), shards)
			// The Counter's value is durable state: a counter moved to a
			// new runner continues from its stored value, so each answer
			// is the last one plus this call, plus the failed calls since
			// (a call that timed out may have been applied).
			if v <= st.value || v > st.value+1+st.failed {
				if bad++; bad <= 10 {
					t.Errorf("Increment(%s) on shard %d (moved: %v) sent at %v = %d after %d (%d failed calls since), want %d: an acknowledged increment lost or applied twice",
						entityID(int(cl.id)), shard, moved[shard], ms(cl.start), v, st.value, st.failed, st.value+1)
				}
			}
			st.value, st.failed = v, 0
		}
	}
	for e, st := range counters {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		got, err := mesh.Call(ctx, c, counter.GetValue, entityID(e), actor.Empty{})
		cancel()
		if err != nil {
			t.Errorf("GetValue(%s) after the load = %v", entityID(e), err)
		} else if got < st.value || got > st.value+st.failed {
			t.Errorf("GetValue(%s) after the load = %d, want %d (+ up to %d failed calls)", entityID(e), got, st.value, st.failed)
		}
	}
}
