package mesh_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/faultproxy"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

func clusterConfig() mesh.Config {
	cfg := mesh.DefaultConfig().FastFailover()
	cfg.ShardsPerGroup = 24
	cfg.CallTimeout = 20 * time.Second
	cfg.EntityTerminationTimeout = 5 * time.Second
	return cfg
}

// activations records which runner has each address active and fails on
// any overlap: the single-activation invariant.
type activations struct {
	mu         sync.Mutex
	active     map[actor.Address]string
	count      int
	violations []string
}

func newActivations() *activations { return &activations{active: map[actor.Address]string{}} }

type runnerObserver struct {
	a      *activations
	runner string
}

func (o runnerObserver) Activated(addr actor.Address) {
	o.a.mu.Lock()
	defer o.a.mu.Unlock()
	if other, ok := o.a.active[addr]; ok {
		o.a.violations = append(o.a.violations, fmt.Sprintf("%s activated on %s while active on %s", addr, o.runner, other))
	}
	o.a.active[addr] = o.runner
	o.a.count++
}

func (o runnerObserver) Deactivated(addr actor.Address, _ actor.StopReason) {
	o.a.mu.Lock()
	defer o.a.mu.Unlock()
	if o.a.active[addr] == o.runner {
		delete(o.a.active, addr)
	}
}

func (a *activations) check(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.violations) > 0 {
		t.Fatalf("single activation violated %d times, first: %s", len(a.violations), a.violations[0])
	}
}

type testCluster struct {
	t   testing.TB
	url string
	cfg mesh.Config
	obs *activations

	mu      sync.Mutex
	runners map[string]*mesh.Runner
}

func newTestCluster(t testing.TB, cfg mesh.Config) *testCluster {
	s := natstest.StartServer(t)
	return &testCluster{t: t, url: s.ClientURL(), cfg: cfg, obs: newActivations(), runners: map[string]*mesh.Runner{}}
}

// loadGen calls Increment on a set of entities from several goroutines
// until stopped, counting acknowledged and failed calls.
type loadGen struct {
	acked []atomic.Int64
	stop  chan struct{}
	wg    sync.WaitGroup

	mu        sync.Mutex
	failures  []failure
	latencies []time.Duration
}

// p99Since returns the 99th percentile latency of calls since mark
// (an index from mark()) and how many there were.
func (l *loadGen) p99Since(mark int) (time.Duration, int) {
	l.mu.Lock()
	d := slices.Clone(l.latencies[mark:])
	l.mu.Unlock()
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	return d[len(d)*99/100], len(d)
}

func (l *loadGen) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.latencies)
}

type failure struct {
	start time.Time
	err   error
}

// startLoad calls with a per-call timeout (0: the client's default).
func startLoad(client *mesh.Client, entities, workers int, timeout time.Duration) *loadGen {
	l := &loadGen{acked: make([]atomic.Int64, entities), stop: make(chan struct{})}
	for w := range workers {
		l.wg.Go(func() {
			for i := w; ; i += workers {
				select {
				case <-l.stop:
					return
				default:
				}
				e := i % entities
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if timeout > 0 {
					ctx, cancel = context.WithTimeout(ctx, timeout)
				}
				start := time.Now()
				_, err := mesh.Call(ctx, client, Increment, fmt.Sprint("e-", e), Amount{1})
				cancel()
				took := time.Since(start)
				l.mu.Lock()
				l.latencies = append(l.latencies, took)
				if err != nil {
					l.failures = append(l.failures, failure{start, err})
				}
				l.mu.Unlock()
				if err == nil {
					l.acked[e].Add(1)
				}
			}
		})
	}
	return l
}

func (l *loadGen) total() int64 {
	var n int64
	for i := range l.acked {
		n += l.acked[i].Load()
	}
	return n
}

// progress waits for n more acknowledged calls.
func (l *loadGen) progress(t testing.TB, n int64, what string) {
	t.Helper()
	base := l.total()
	natstest.WaitFor(t, 30*time.Second, func() bool { return l.total() >= base+n }, what)
}

// finish stops the load and fails the test for any failed call that
// started outside [from, to) (zero times: for any failed call at all).
func (l *loadGen) finish(t testing.TB, from, to time.Time) (excused int) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range l.failures {
		if !from.IsZero() && !f.start.Before(from) && f.start.Before(to) && errors.Is(f.err, context.DeadlineExceeded) {
			excused++
			continue
		}
		t.Fatalf("%d calls failed; one started at %s: %v", len(l.failures), f.start.Format("15:04:05.000"), f.err)
	}
	return excused
}

// On a 3-server NATS cluster with R3 buckets, losing the server that leads
// the lease bucket loses no call and never activates an entity twice.
func TestClusterR3ServerLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-server NATS cluster")
	}
	servers := natstest.StartCluster(t, 3)
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup = 24
	cfg.StorageReplicas = 3
	// Leases must outlast a Raft election after a crash (seconds): 12 s
	// leases renewed every 2 s.
	cfg.ShardLockExpiration = 12 * time.Second
	cfg.ShardLockRefreshInterval = 2 * time.Second
	cfg.RefreshAssignmentsInterval = time.Second
	cfg.CallTimeout = 30 * time.Second
	c := &testCluster{t: t, url: natstest.ClientURLs(servers), cfg: cfg, obs: newActivations(), runners: map[string]*mesh.Runner{}}
	c.manager()
	c.runner("r1", 1, nil)
	c.runner("r2", 1, nil)
	c.waitBalanced(map[string]int{"r1": 12, "r2": 12})

	client, nc := newClient(t, c.url, cfg)
	const callTimeout = 5 * time.Second
	load := startLoad(client, 40, 4, callTimeout)
	load.progress(t, 200, "load before the server loss")
	leader := natstest.StreamLeader(t, servers, nc, "KV_"+cfg.Prefix+"_leases")
	t.Logf("shutting down %s, leader of the lease bucket", leader.Name())
	lossStart := time.Now()
	leader.Shutdown()
	lossEnd := time.Now()
	load.progress(t, 500, "load after the server loss")
	// Leases keep being renewed through the new leader for longer than a TTL.
	deadline := time.Now().Add(cfg.ShardLockExpiration + 2*time.Second)
	natstest.WaitFor(t, cfg.ShardLockExpiration+10*time.Second, func() bool { return time.Now().After(deadline) }, "a full lease period")
	c.waitBalanced(map[string]int{"r1": 12, "r2": 12})
	load.progress(t, 200, "load at the end")
	// A volatile call in flight on a connection to the lost server is lost
	// (core NATS request/reply is at most once): its caller times out.
	// Every call that started after the loss must succeed.
	excused := load.finish(t, lossStart.Add(-callTimeout), lossEnd.Add(time.Second))
	t.Logf("R3 server loss: %d calls in flight at the loss timed out, %d acknowledged", excused, load.total())
	c.obs.check(t)
}

// manager starts a shard manager; cancel stops it.
func (c *testCluster) manager() (*mesh.ShardManager, context.CancelFunc) {
	c.t.Helper()
	nc, err := nats.Connect(c.url)
	if err != nil {
		c.t.Fatal(err)
	}
	m, err := mesh.NewShardManager(nc, c.cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.Run(ctx); err != nil {
			c.t.Errorf("manager: %v", err)
		}
	}()
	stop := func() { cancel(); <-done; nc.Close() }
	c.t.Cleanup(stop)
	return m, sync.OnceFunc(stop)
}

// jetStream connects to the cluster's server (closed at the test's end).
func (c *testCluster) jetStream() (*nats.Conn, natsjs.JetStream) {
	c.t.Helper()
	nc, err := nats.Connect(c.url)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(nc.Close)
	js, err := natsjs.New(nc)
	if err != nil {
		c.t.Fatal(err)
	}
	return nc, js
}

// runner starts a runner with the given id and weight.
func (c *testCluster) runner(id string, weight int, singletons map[string]func(context.Context) error) *mesh.Runner {
	c.t.Helper()
	return c.runnerWith(id, weight, singletons, nil)
}

// runnerWith is runner with an observer (nil: none) and more behaviours
// than the Counter.
func (c *testCluster) runnerWith(id string, weight int, singletons map[string]func(context.Context) error, obs mesh.Observer, extra ...*actor.Behavior) *mesh.Runner {
	c.t.Helper()
	return c.runnerHosting(id, weight, singletons, obs, append([]*actor.Behavior{counterBehavior(newHooks())}, extra...)...)
}

// runnerHosting starts a runner hosting exactly the given behaviours.
func (c *testCluster) runnerHosting(id string, weight int, singletons map[string]func(context.Context) error, obs mesh.Observer, behaviors ...*actor.Behavior) *mesh.Runner {
	c.t.Helper()
	r, err := c.tryRunner(id, weight, singletons, obs, behaviors...)
	if err != nil {
		c.t.Fatal(err)
	}
	return r
}

// tryRunner is runnerHosting returning Start's error.
func (c *testCluster) tryRunner(id string, weight int, singletons map[string]func(context.Context) error, obs mesh.Observer, behaviors ...*actor.Behavior) (*mesh.Runner, error) {
	c.t.Helper()
	nc, err := nats.Connect(c.url)
	if err != nil {
		c.t.Fatal(err)
	}
	cfg := c.cfg
	cfg.RunnerID, cfg.RunnerWeight = id, weight
	opts := []mesh.Option{mesh.WithTestHooks(), mesh.WithRuntimeOptions(actor.WithObserver(runnerObserver{c.obs, id}))}
	if obs != nil {
		opts = append(opts, mesh.WithObserver(obs))
	}
	if os.Getenv("MESH_TEST_LOG") != "" { // debug logs of every runner on stderr
		opts = append(opts, mesh.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	}
	r, err := mesh.NewRunner(nc, cfg, opts...)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, b := range behaviors {
		if err := r.Register(b); err != nil {
			c.t.Fatal(err)
		}
	}
	for name, fn := range singletons {
		if err := r.RegisterSingleton(name, fn); err != nil {
			c.t.Fatal(err)
		}
	}
	if err := r.Start(context.Background()); err != nil {
		nc.Close()
		return nil, err
	}
	c.mu.Lock()
	c.runners[id] = r
	c.mu.Unlock()
	c.t.Cleanup(func() { c.stop(id); nc.Close() })
	return r, nil
}

// stop shuts a runner down gracefully.
func (c *testCluster) stop(id string) {
	c.mu.Lock()
	r := c.runners[id]
	delete(c.runners, id)
	c.mu.Unlock()
	if r == nil {
		return
	}
	// Generous: a runner of TestClusterScale hands 300 shards off, and the
	// race detector on a loaded 2-core machine slows that down a lot.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := r.Shutdown(ctx); err != nil {
		c.t.Errorf("shutdown %s: %v", id, err)
	}
}

// waitBalanced waits until the runners serve want[id] shards each, all
// shards in all.
func (c *testCluster) waitBalanced(want map[string]int) {
	c.t.Helper()
	natstest.WaitFor(c.t, 30*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.runners) != len(want) {
			return false
		}
		for id, r := range c.runners {
			if len(r.Shards()) != want[id] {
				return false
			}
		}
		return true
	}, fmt.Sprintf("shards served as %v", want))
}

func TestClusterBalanceByWeight(t *testing.T) {
	c := newTestCluster(t, clusterConfig())
	m, _ := c.manager()
	natstest.WaitFor(t, 10*time.Second, m.Ready, "manager ready")
	c.runner("r1", 1, nil)
	c.runner("r2", 1, nil)
	c.waitBalanced(map[string]int{"r1": 12, "r2": 12})
	natstest.WaitFor(t, 10*time.Second, func() bool { return c.runners["r1"].Ready() && c.runners["r2"].Ready() }, "runners ready")
	r3 := c.runner("r3", 2, nil)
	c.waitBalanced(map[string]int{"r1": 6, "r2": 6, "r3": 12})
	natstest.WaitFor(t, 10*time.Second, r3.Ready, "r3 ready once it holds its shards")

	client, cnc := newClient(t, c.url, c.cfg)
	st, err := mesh.Inspect(context.Background(), cnc, c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Manager == "" || len(st.Runners) != 3 || len(st.Shards) != 24 {
		t.Fatalf("Inspect: manager %q, %d runners, %d shards", st.Manager, len(st.Runners), len(st.Shards))
	}
	for _, r := range st.Runners {
		want := map[string]int{"r1": 6, "r2": 6, "r3": 12}[r.ID]
		if r.Assigned != want || r.Held != want {
			t.Fatalf("Inspect: runner %s assigned %d, holds %d; want %d", r.ID, r.Assigned, r.Held, want)
		}
	}
	for _, s := range st.Shards {
		if s.Holder != s.Assigned || s.LeaseRevision == 0 {
			t.Fatalf("Inspect: shard %v assigned to %q, held by %q (rev %d)", s.Shard, s.Assigned, s.Holder, s.LeaseRevision)
		}
	}
	for i := range 100 {
		id := fmt.Sprint("acct-", i)
		if v, err := mesh.Call(context.Background(), client, Increment, id, Amount{i}); err != nil || v != i {
			t.Fatalf("Increment(%s) = %d, %v", id, v, err)
		}
	}
	c.obs.check(t)
}

// Ten runners and 3,000 shards settle to a balanced assignment.
func TestClusterScale(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 10 runners holding 3,000 leases")
	}
	cfg := mesh.DefaultConfig() // default timings: 3,000 leases renewed every 10 s
	cfg.ShardsPerGroup = 3000
	c := newTestCluster(t, cfg)
	c.manager()
	start := time.Now()
	var wg sync.WaitGroup
	want := map[string]int{}
	for i := range 10 {
		id := fmt.Sprintf("r%02d", i)
		want[id] = 300
		wg.Go(func() { c.runner(id, 1, nil) })
	}
	wg.Wait()
	c.waitBalanced(want)
	t.Logf("SCALE 10 runners x 3000 shards: balanced and served after %v", time.Since(start).Round(time.Millisecond))
}

// Under steady load, a runner joins and another leaves: no call fails, no
// address is ever active on two runners, and counters hold every
// acknowledged increment.
func TestClusterHandoffUnderLoad(t *testing.T) {
	c := newTestCluster(t, clusterConfig())
	c.manager()
	c.runner("r1", 1, nil)
	c.runner("r2", 1, nil)
	c.runner("r3", 1, nil)
	c.waitBalanced(map[string]int{"r1": 8, "r2": 8, "r3": 8})

	client, _ := newClient(t, c.url, c.cfg)
	const entities = 60
	load := startLoad(client, entities, 4, 0)
	load.progress(t, 200, "load before scale-out")
	steady, _ := load.p99Since(0)
	mark, joined := load.mark(), time.Now()
	c.runner("r4", 1, nil)
	c.waitBalanced(map[string]int{"r1": 6, "r2": 6, "r3": 6, "r4": 6})
	rebalance := time.Since(joined)
	p99, calls := load.p99Since(mark)
	t.Logf("HANDOFF join 3->4: rebalanced in %v; %d calls meanwhile, p99 %v (steady p99 %v)", rebalance.Round(time.Millisecond), calls, p99, steady)
	load.progress(t, 200, "load after scale-out")
	mark, left := load.mark(), time.Now()
	c.stop("r1")
	c.waitBalanced(map[string]int{"r2": 8, "r3": 8, "r4": 8})
	p99, calls = load.p99Since(mark)
	t.Logf("HANDOFF leave 4->3: rebalanced in %v; %d calls meanwhile, p99 %v", time.Since(left).Round(time.Millisecond), calls, p99)
	load.progress(t, 200, "load after scale-in")
	load.finish(t, time.Time{}, time.Time{})
	c.obs.check(t)
	for e := range entities {
		v, err := mesh.Call(context.Background(), client, GetValue, fmt.Sprint("e-", e), actor.Empty{})
		// Entities moved and were re-created with fresh state: a counter
		// holds the increments since its last activation, never more.
		if err != nil || int64(v) > load.acked[e].Load() {
			t.Fatalf("e-%d = %d, %v; acknowledged %d", e, v, err, load.acked[e].Load())
		}
	}
}

// When the leading shard manager stops, another takes over and keeps
// assigning.
func TestClusterManagerFailover(t *testing.T) {
	c := newTestCluster(t, clusterConfig())
	m1, stop1 := c.manager()
	natstest.WaitFor(t, 10*time.Second, m1.IsLeader, "first manager leads")
	m2, _ := c.manager()
	c.runner("r1", 1, nil)
	c.waitBalanced(map[string]int{"r1": 24})
	if m2.IsLeader() {
		t.Fatal("two leaders")
	}
	stop1()
	natstest.WaitFor(t, 10*time.Second, m2.IsLeader, "second manager takes over")
	c.runner("r2", 1, nil)
	c.waitBalanced(map[string]int{"r1": 12, "r2": 12})
}

// A singleton runs on exactly one runner and moves when that runner leaves.
func TestClusterSingleton(t *testing.T) {
	c := newTestCluster(t, clusterConfig())
	var mu sync.Mutex
	running := map[string]bool{}
	var overlap atomic.Bool
	singleton := func(runner string) func(context.Context) error {
		return func(ctx context.Context) error {
			mu.Lock()
			if len(running) > 0 {
				overlap.Store(true)
			}
			running[runner] = true
			mu.Unlock()
			<-ctx.Done()
			mu.Lock()
			delete(running, runner)
			mu.Unlock()
			return nil
		}
	}
	c.manager()
	c.runner("r1", 1, map[string]func(context.Context) error{"coordinator": singleton("r1")})
	c.runner("r2", 1, map[string]func(context.Context) error{"coordinator": singleton("r2")})
	c.waitBalanced(map[string]int{"r1": 12, "r2": 12})
	runningOn := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for r := range running {
			out = append(out, r)
		}
		return out
	}
	natstest.WaitFor(t, 10*time.Second, func() bool { return len(runningOn()) == 1 }, "the singleton running once")
	host := runningOn()[0]
	_, cnc := newClient(t, c.url, c.cfg)
	st, err := mesh.Inspect(context.Background(), cnc, c.cfg)
	if err != nil || len(st.Singletons) != 1 || st.Singletons[0].Runner != host {
		t.Fatalf("Inspect singletons = %+v, %v; want coordinator on %s", st.Singletons, err, host)
	}
	c.stop(host)
	other := map[string]string{"r1": "r2", "r2": "r1"}[host]
	natstest.WaitFor(t, 20*time.Second, func() bool {
		on := runningOn()
		return len(on) == 1 && on[0] == other
	}, "the singleton restarted on the other runner")
	if overlap.Load() {
		t.Fatal("two instances of the singleton ran at once")
	}
}

// With no shard manager running, runners keep serving the shards they hold.
func TestClusterNoManager(t *testing.T) {
	c := newTestCluster(t, clusterConfig())
	_, stop := c.manager()
	c.runner("r1", 1, nil)
	c.runner("r2", 1, nil)
	c.waitBalanced(map[string]int{"r1": 12, "r2": 12})
	stop()
	client, _ := newClient(t, c.url, c.cfg)
	// Longer than a lease period: leases are renewed without a manager.
	deadline := time.Now().Add(3 * c.cfg.ShardLockExpiration)
	for time.Now().Before(deadline) {
		if _, err := mesh.Call(context.Background(), client, Increment, fmt.Sprint("n-", time.Now().UnixNano()%100), Amount{1}); err != nil {
			t.Fatalf("call without a shard manager: %v", err)
		}
	}
	c.waitBalanced(map[string]int{"r1": 12, "r2": 12})
}

// A singleton calls entities; when its runner crashes (its connection is
// severed, nothing is released) it starts on the other runner once the
// lease expires, never overlapping.
func TestClusterSingletonCrash(t *testing.T) {
	c := newTestCluster(t, clusterConfig())
	var mu sync.Mutex
	running := map[string]bool{}
	var overlap atomic.Bool
	var calls atomic.Int64
	singleton := func(runner string, client func() *mesh.Client) func(context.Context) error {
		return func(ctx context.Context) error {
			mu.Lock()
			if len(running) > 0 {
				overlap.Store(true)
			}
			running[runner] = true
			mu.Unlock()
			defer func() {
				mu.Lock()
				delete(running, runner)
				mu.Unlock()
			}()
			for ctx.Err() == nil { // a singleton that calls entities
				cctx, cancel := context.WithTimeout(ctx, time.Second)
				if _, err := mesh.Call(cctx, client(), Increment, "tally", Amount{1}); err == nil {
					calls.Add(1)
				}
				cancel()
			}
			return nil
		}
	}
	c.manager()
	// r1 runs on a connection this test can sever.
	nc1, err := nats.Connect(c.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg1 := c.cfg
	cfg1.RunnerID = "r1"
	var r1 *mesh.Runner
	r1, err = mesh.NewRunner(nc1, cfg1, mesh.WithRuntimeOptions(actor.WithObserver(runnerObserver{c.obs, "r1"})))
	if err != nil {
		t.Fatal(err)
	}
	if err := r1.Register(counterBehavior(newHooks())); err != nil {
		t.Fatal(err)
	}
	if err := r1.RegisterSingleton("tallier", singleton("r1", func() *mesh.Client { return r1.Client() })); err != nil {
		t.Fatal(err)
	}
	if err := r1.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r1.Shutdown(context.Background()) })
	natstest.WaitFor(t, 10*time.Second, func() bool { return len(r1.Shards()) == 24 }, "r1 serving")
	var r2 *mesh.Runner
	r2 = c.runner("r2", 1, map[string]func(context.Context) error{"tallier": singleton("r2", func() *mesh.Client { return r2.Client() })})
	natstest.WaitFor(t, 10*time.Second, func() bool { return len(r1.Shards()) == 12 && len(r2.Shards()) == 12 }, "balanced")
	natstest.WaitFor(t, 10*time.Second, func() bool { return calls.Load() > 10 }, "the singleton calling entities")
	mu.Lock()
	host := ""
	for r := range running {
		host = r
	}
	mu.Unlock()
	if host != "r1" {
		// Make r1 the host: the crash must hit the singleton's runner.
		t.Skipf("singleton landed on %s; this test crashes r1", host)
	}
	crashed := time.Now()
	nc1.Close() // a crash: no hand-off, no release
	natstest.WaitFor(t, 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return running["r2"]
	}, "the singleton restarted on r2")
	t.Logf("SINGLETON crash: restarted on r2 after %v (lease TTL %v)", time.Since(crashed).Round(time.Millisecond), c.cfg.ShardLockExpiration)
	before := calls.Load()
	natstest.WaitFor(t, 10*time.Second, func() bool { return calls.Load() > before+10 }, "the singleton calling entities from r2")
	if overlap.Load() {
		t.Fatal("two instances of the singleton ran at once")
	}
}

// A registration the server failed to expire (docs/reliability.md, K5)
// must not keep shards assigned to a runner that is gone: once its last
// write is more than twice the TTL older than the newest registration, the
// manager treats it as expired, pings the runner, and with no answer gives
// its shards to the live runners.
func TestClusterOutlivedRegistration(t *testing.T) {
	cfg := clusterConfig()
	c := newTestCluster(t, cfg)
	nc, js := c.jetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The ghost's registration: an hour-long TTL the server will not
	// expire during the test. Created before anyone else opens the bucket,
	// with the settings the mesh uses.
	ghostStore, err := jetstream.OpenLeases(ctx, js, jetstream.LeaseConfig{Bucket: cfg.Prefix + "_runners", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	info, _ := json.Marshal(mesh.RunnerInfo{ID: "ghost", Weight: 1, EntityTypes: []string{"Counter"}})
	if _, err := ghostStore.Acquire(ctx, "ghost", "ghost", jetstream.WithMeta(info)); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	m, _ := c.manager()
	natstest.WaitFor(t, 10*time.Second, m.Ready, "manager ready")
	c.runner("live", 1, nil)
	c.waitBalanced(map[string]int{"live": cfg.ShardsPerGroup})
	if d := time.Since(written); d < 2*cfg.ShardLockExpiration {
		t.Fatalf("the ghost's shards moved %v after its registration, before twice the TTL", d)
	}
	client, err := mesh.NewClient(nc, cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.ShardsPerGroup * 2 {
		if _, err := mesh.Call(ctx, client, Increment, fmt.Sprintf("e%d", i), Amount{Amount: 1}); err != nil {
			t.Fatalf("call after the ghost was dropped: %v", err)
		}
	}
	// The ghost answers no ping: its registration is removed from the
	// bucket, not only ignored.
	natstest.WaitFor(t, 10*time.Second, func() bool {
		_, _, err := ghostStore.Holder(ctx, "ghost")
		return errors.Is(err, jetstream.ErrNoLease)
	}, "the ghost's registration removed")
}

// A runner whose assignment watch stalls (as one on a lost NATS server
// can, without closing) still follows its assignment by re-reading it: its
// shards move to a new runner.
func TestClusterStalledAssignmentWatch(t *testing.T) {
	c := newTestCluster(t, clusterConfig())
	m, _ := c.manager()
	natstest.WaitFor(t, 10*time.Second, m.Ready, "manager ready")
	a := c.runner("a", 1, nil)
	c.waitBalanced(map[string]int{"a": 24})
	mesh.StallAssignmentWatch(a)
	c.runner("b", 1, nil)
	c.waitBalanced(map[string]int{"a": 12, "b": 12})
	c.obs.check(t)
}

// Fencing does not wait for the runner's lock: a shard set-up can hold it
// across a NATS call that blocks on a wedged connection, and the lost
// shard's entities must still stop at once.
func TestClusterFencingWithRunnerLockHeld(t *testing.T) {
	cfg := clusterConfig()
	c := newTestCluster(t, cfg)
	m, _ := c.manager()
	natstest.WaitFor(t, 10*time.Second, m.Ready, "manager ready")
	r := c.runner("a", 1, nil)
	c.waitBalanced(map[string]int{"a": cfg.ShardsPerGroup})
	nc, err := nats.Connect(c.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	client, err := mesh.NewClient(nc, cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := mesh.Call(ctx, client, Increment, "fenced-1", Amount{Amount: 1}); err != nil {
		t.Fatal(err)
	}
	addr := actor.Address{Type: "Counter", ID: "fenced-1"}
	active := func() bool {
		c.obs.mu.Lock()
		defer c.obs.mu.Unlock()
		return c.obs.active[addr] != ""
	}
	if !active() {
		t.Fatal("fenced-1 is not active after a call")
	}
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	thief, err := jetstream.OpenLeases(ctx, js, jetstream.LeaseConfig{Bucket: cfg.Prefix + "_leases", TTL: cfg.ShardLockExpiration, Margin: cfg.ShardLockMargin})
	if err != nil {
		t.Fatal(err)
	}
	unlock := mesh.LockRunner(r)
	defer unlock()
	key := fmt.Sprintf("shard.default.%d", protocol.ShardOf("fenced-1", cfg.ShardsPerGroup))
	kv, err := js.KeyValue(ctx, cfg.Prefix+"_leases")
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, key); err != nil { // as an operator would
		t.Fatal(err)
	}
	if _, err := thief.Acquire(ctx, key, "thief"); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool { return !active() }, "fenced-1 deactivated while the runner's lock is held")
}

var (
	SlowInit = actor.NewEntity("SlowInit")
	Touch    = actor.NewRPC[int, int](SlowInit, "Touch")
)

// fenceObserver reports lease losses and the outcome of SlowInit calls.
type fenceObserver struct {
	mesh.NopObserver
	lost    chan mesh.ShardID
	outcome chan error
}

func (o *fenceObserver) LeaseRenewFailed(s mesh.ShardID, _ error) {
	select {
	case o.lost <- s:
	default:
	}
}

func (o *fenceObserver) CallReceived(ctx context.Context, addr actor.Address, _ string, _ mesh.ShardID, _ nats.Header) (context.Context, mesh.CallObservation) {
	if addr.Type != SlowInit.Name() {
		return ctx, nil
	}
	return ctx, callOutcome(o.outcome)
}

type callOutcome chan error

func (callOutcome) Started() {}

// Done keeps the first outcome: a retry of the call may reach the runner
// again once it holds the shard anew.
func (c callOutcome) Done(err error) {
	select {
	case c <- err:
	default:
	}
}

// A call taken while the shard's lease was valid, whose entity's init
// then waited (for storage, across a pause of the process) until the lease
// was lost, must not run: the lease is checked again once init returns.
// Before that check (K6, docs/reliability.md) a runner resumed from a pause
// ran handlers of entities whose init had begun before the pause, on shards
// other runners held by then.
func TestClusterLeaseLostDuringActivation(t *testing.T) {
	cfg := clusterConfig()
	c := newTestCluster(t, cfg)
	m, _ := c.manager()
	natstest.WaitFor(t, 10*time.Second, m.Ready, "manager ready")
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	var ran atomic.Int32
	slow := actor.Implement(SlowInit, func(self *actor.Instance) ([]actor.Handler, error) {
		hs := []actor.Handler{actor.Handle(Touch, func(_ context.Context, v int) (int, error) {
			ran.Add(1)
			return v, nil
		})}
		if self.Probe() {
			return hs, nil
		}
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release // a state load whose reply comes late
		return hs, nil
	})
	obs := &fenceObserver{lost: make(chan mesh.ShardID, 64), outcome: make(chan error, 1)}
	c.runnerWith("a", 1, nil, obs, slow)
	c.waitBalanced(map[string]int{"a": cfg.ShardsPerGroup})
	client, nc := newClient(t, c.url, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	called := make(chan struct{})
	go func() {
		defer close(called)
		_, _ = mesh.Call(ctx, client, Touch, "slow-1", 1) // refused silently: ends with ctx
	}()
	defer func() { cancel(); <-called }()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the call did not reach init")
	}

	// Another holder takes the shard's lease while init waits.
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	thief, err := jetstream.OpenLeases(ctx, js, jetstream.LeaseConfig{Bucket: cfg.Prefix + "_leases", TTL: cfg.ShardLockExpiration, Margin: cfg.ShardLockMargin})
	if err != nil {
		t.Fatal(err)
	}
	shard := mesh.ShardID{Group: "default", N: protocol.ShardOf("slow-1", cfg.ShardsPerGroup)}
	key := fmt.Sprintf("shard.default.%d", shard.N)
	kv, err := js.KeyValue(ctx, cfg.Prefix+"_leases")
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, key); err != nil { // as an operator would
		t.Fatal(err)
	}
	if _, err := thief.Acquire(ctx, key, "thief"); err != nil {
		t.Fatal(err)
	}
	for lost := false; !lost; {
		select {
		case s := <-obs.lost:
			lost = s == shard
		case <-ctx.Done():
			t.Fatal("the runner never found the lease lost")
		}
	}
	close(release)
	select {
	case err := <-obs.outcome:
		if !errors.Is(err, actor.ErrNotServing) {
			t.Fatalf("call taken before the lease was lost ended with %v, want NotServing (refused)", err)
		}
	case <-ctx.Done():
		t.Fatal("the call's outcome never came")
	}
	if n := ran.Load(); n != 0 {
		t.Fatalf("handler ran %d times after the lease was lost", n)
	}
	c.obs.check(t)
}

// A runner cut off from NATS right after a persisted message's handler
// returned fences the message's shard, and the entity's activation ends
// then, not when storing the handler's reply gives up (CallTimeout later):
// the entity is no longer active while the shard's next owner may activate
// it. Before K7 (docs/reliability.md) the reply was stored on the entity's
// own goroutine, which fencing waited for.
func TestClusterFencingWithReplyStoreBlocked(t *testing.T) {
	cfg := clusterConfig()            // 2 s leases, valid locally for 1.5 s after a renewal is sent
	cfg.CallTimeout = 8 * time.Second // how long storing a reply may wait for NATS
	c := newTestCluster(t, cfg)
	m, _ := c.manager()
	natstest.WaitFor(t, 10*time.Second, m.Ready, "manager ready")
	proxy := faultproxy.New(t, strings.TrimPrefix(c.url, "nats://"))
	nc, err := nats.Connect(proxy.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	rcfg := cfg
	rcfg.RunnerID = "a"
	r, err := mesh.NewRunner(nc, rcfg, mesh.WithRuntimeOptions(actor.WithObserver(runnerObserver{c.obs, "a"})))
	if err != nil {
		t.Fatal(err)
	}
	l := newLedgerLog()
	if err := r.Register(ledgerBehavior(l)); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.runners["a"] = r
	c.mu.Unlock()
	t.Cleanup(func() { proxy.Restore(); c.stop("a"); nc.Close() })
	c.waitBalanced(map[string]int{"a": cfg.ShardsPerGroup})

	client, _ := newClient(t, c.url, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := mesh.Send(ctx, client, Gate, "held-1", 1, mesh.MessageID("held-1-1")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.entered:
	case <-ctx.Done():
		t.Fatal("the persisted message never reached its handler")
	}
	addr := actor.Address{Type: Ledger.Name(), ID: "held-1"}
	active := func() bool {
		c.obs.mu.Lock()
		defer c.obs.mu.Unlock()
		return c.obs.active[addr] != ""
	}
	if !active() {
		t.Fatal("held-1 is not active while its handler runs")
	}
	proxy.Cut()
	cut := time.Now()
	close(l.gate) // the handler returns: its reply is to be stored over the cut connection
	// The shard is fenced within 1.5 s of the cut; storing the reply gives
	// up 8 s after it began.
	natstest.WaitFor(t, 5*time.Second, func() bool { return !active() }, "held-1 deactivated once its shard is fenced")
	t.Logf("held-1 deactivated %v after the cut", time.Since(cut).Round(time.Millisecond))
	proxy.Restore()
}

// A shard manager (or runner) started while NATS cannot yet serve it (a
// cluster electing leaders after a server restart) retries its start-up
// steps instead of exiting on the first failure: here the leadership
// watch is refused until a consumer slot of the lease bucket frees up.
func TestManagerStartRetriesItsWatch(t *testing.T) {
	cfg := clusterConfig()
	c := newTestCluster(t, cfg)
	first, stop := c.manager() // creates the buckets
	natstest.WaitFor(t, 30*time.Second, first.IsLeader, "the first manager leads")
	stop()
	nc, js := c.jetStream()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leases := "KV_" + cfg.Prefix + "_leases"
	st, err := js.Stream(ctx, leases)
	if err != nil {
		t.Fatal(err)
	}
	sc := st.CachedInfo().Config
	sc.MaxConsumers = 1
	if _, err := js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, cfg.Prefix+"_leases")
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.WatchAll(ctx) // takes the one consumer slot
	if err != nil {
		t.Fatal(err)
	}
	// The server's API audit reports each refused consumer creation.
	refused := make(chan struct{}, 100)
	audit, err := nc.Subscribe("$JS.EVENT.ADVISORY.API", func(m *nats.Msg) {
		if strings.Contains(string(m.Data), "CONSUMER.CREATE."+leases) && strings.Contains(string(m.Data), "maximum consumers") {
			select {
			case refused <- struct{}{}:
			default: // counted enough
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer audit.Unsubscribe()
	mnc, err := nats.Connect(c.url)
	if err != nil {
		t.Fatal(err)
	}
	defer mnc.Close()
	m, err := mesh.NewShardManager(mnc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mctx, mcancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(mctx) }()
	defer func() { mcancel(); <-done }()
	for range 2 { // refused, and tried again
		select {
		case <-refused:
		case err := <-done:
			done <- err
			t.Fatalf("the manager gave up at its first refused watch: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("the manager's watch was not refused twice")
		}
	}
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 30*time.Second, m.IsLeader, "the manager leads once its watch is possible")
}
