//go:build chaos && linux

package chaos_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
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
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/internal/testkit/faultproxy"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/test/chaos/internal/check"
	"github.com/natsmesh/natsmesh/test/chaos/internal/model"
	"github.com/natsmesh/natsmesh/test/internal/proctest"
)

// cluster is the processes of a chaos run: three NATS servers (R3), two
// shard managers and the runners, each runner reaching every server
// through a fault-injecting proxy of its own. It keeps what the checker
// needs to know of each runner incarnation: when it started and ended, how,
// and when it was paused or cut off.
type cluster struct {
	t   *testing.T
	dir string
	bin string
	cfg mesh.Config
	opt options

	servers  [3]*server
	nc       *nats.Conn // the suite's own connection: client, checks
	client   *mesh.Client
	managers [2]*managerProc

	// closing is set when the test function returns: from then on the
	// cleanups kill processes, which is no finding.
	closing atomic.Bool

	mu       sync.Mutex
	runners  []*runner // every incarnation, in start order
	slots    int       // runner slots used so far (r1, r2, ...)
	problems []check.Violation
}

type server struct {
	name                     string
	port, clusterPort, httpP int
	store                    string

	mu   sync.Mutex
	proc *proctest.Proc
	down bool // stopped on purpose
}

type managerProc struct {
	mu   sync.Mutex
	proc *proctest.Proc
	down bool
	n    int // incarnations
}

// Runner states.
const (
	up          = "up"
	paused      = "paused"
	partitioned = "partitioned"
	killed      = "killed"   // SIGKILLed, to be restarted
	stopping    = "stopping" // SIGTERMed
	exited      = "exited"
)

// runner is one runner incarnation: slot r2's third life is r2-3.
type runner struct {
	inc     check.Incarnation // ID, Started, Ended, Killed, Pauses, Partitions
	slot    string
	proc    *proctest.Proc
	proxies []*faultproxy.Proxy
	records string
	log     string
	state   string // guarded by cluster.mu
	sent    syscall.Signal
}

func (c *cluster) problem(inv, who, format string, args ...any) {
	if c.closing.Load() {
		return
	}
	v := check.Violation{Invariant: inv, Addr: who, Detail: fmt.Sprintf(format, args...)}
	c.t.Logf("VIOLATION %v", v)
	c.mu.Lock()
	c.problems = append(c.problems, v)
	c.mu.Unlock()
}

// Process exits, as a violation's invariant.
const processExit = "process exit"

func startCluster(t *testing.T, dir, bin string, opt options) *cluster {
	c := &cluster{t: t, dir: dir, bin: bin, opt: opt}
	c.cfg = mesh.DefaultConfig()
	c.cfg.Prefix, c.cfg.ShardsPerGroup, c.cfg.StorageReplicas = "chaos", opt.shards, 3
	// The suite's own Inspect opens the buckets with this configuration,
	// and opening a bucket updates it to the opener's settings (replicas,
	// expiry-marker TTL): it must agree with the cluster's.
	c.cfg.ShardLockExpiration, c.cfg.ShardLockRefreshInterval, c.cfg.ShardLockMargin = opt.lease, opt.refresh, opt.margin
	c.cfg.RefreshAssignmentsInterval, c.cfg.RunnerHealthCheckTimeout, c.cfg.EntityMaxIdleTime = opt.refresh, 500*time.Millisecond, opt.idle
	var routes []string
	for i := range c.servers {
		s := &server{name: fmt.Sprintf("s%d", i+1), port: freePort(t), clusterPort: freePort(t), httpP: freePort(t)}
		s.store = filepath.Join(dir, s.name)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", s.clusterPort))
		c.servers[i] = s
	}
	for _, s := range c.servers {
		c.startServer(s, strings.Join(routes, ","))
	}
	c.waitHealthy(60 * time.Second)

	var err error
	// The suite's connection lives through server restarts; what nats.go
	// reports meanwhile (a watcher's consumer recreated, say) goes to a
	// file, not the test's output.
	errLog, err := os.Create(filepath.Join(dir, "suite-nats.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { errLog.Close() })
	var errMu sync.Mutex
	c.nc, err = nats.Connect(c.urls(), nats.Name("chaos-suite"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			errMu.Lock()
			defer errMu.Unlock()
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			fmt.Fprintf(errLog, "%s %s: %v\n", time.Now().Format("15:04:05.000"), subject, err)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.nc.Close)
	if c.client, err = mesh.NewClient(c.nc, c.cfg.ClientConfig); err != nil {
		t.Fatal(err)
	}
	js, err := natsjs.New(c.nc)
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := js.CreateKeyValue(ctx, natsjs.KeyValueConfig{Bucket: model.StateBucket, Replicas: 3, History: 1})
		return err == nil
	}, "state bucket created")

	for i := range c.managers {
		c.managers[i] = &managerProc{}
		c.startManager(i)
	}
	for range opt.runners {
		c.startRunner("")
	}
	return c
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (c *cluster) urls() string {
	var u []string
	for _, s := range c.servers {
		u = append(u, fmt.Sprintf("nats://127.0.0.1:%d", s.port))
	}
	return strings.Join(u, ",")
}

// common are the flags every runner and manager shares.
func (c *cluster) common() []string {
	o := c.opt
	return []string{"-prefix", c.cfg.Prefix, "-shards", strconv.Itoa(o.shards), "-replicas", "3", "-log-level", "debug",
		"-shard-lock-expiration", o.lease.String(), "-shard-lock-refresh-interval", o.refresh.String(),
		"-shard-lock-margin", o.margin.String(), "-refresh-assignments-interval", o.refresh.String(),
		"-runner-health-check-timeout", "500ms"}
}

func (c *cluster) startServer(s *server, routes string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proc = proctest.StartLogged(c.t, s.name, filepath.Join(c.dir, s.name+".log"), filepath.Join(c.bin, "node"), "nats",
		"-name", s.name, "-port", strconv.Itoa(s.port), "-cluster-port", strconv.Itoa(s.clusterPort),
		"-http-port", strconv.Itoa(s.httpP), "-routes", routes, "-store", s.store)
	s.down = false
	p := s.proc
	go c.watch(p, func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.down })
}

// watch reports the exit of a process the suite did not stop.
func (c *cluster) watch(p *proctest.Proc, expected func() bool) {
	<-p.Done()
	if !expected() {
		c.problem(processExit, p.Name(), "exited on its own: %s (see its log in %s)", p.Status(), c.dir)
	}
}

// healthy reports whether every server answers /healthz: JetStream
// enabled, meta leader known, this server's streams and consumers current.
func (c *cluster) healthy() bool {
	for _, s := range c.servers {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", s.httpP))
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false
		}
	}
	return true
}

func (c *cluster) waitHealthy(timeout time.Duration) {
	natstest.WaitFor(c.t, timeout, c.healthy, "every NATS server healthy")
}

func (c *cluster) startManager(i int) {
	m := c.managers[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n++
	name := fmt.Sprintf("m%d-%d", i+1, m.n)
	// The manager logs at info: its decisions (leading, runners gone,
	// assignments) are the evidence for availability findings.
	args := append([]string{"-nats", c.urls()}, c.common()...)
	m.proc = proctest.StartLogged(c.t, name, filepath.Join(c.dir, name+".log"), filepath.Join(c.bin, "shardmgr"), append(args, "-log-level", "info")...)
	m.down = false
	p := m.proc
	go c.watch(p, func() bool { m.mu.Lock(); defer m.mu.Unlock(); return m.down })
}

// startRunner starts a runner in slot (a new slot if ""), as a new
// incarnation, behind three new proxies.
func (c *cluster) startRunner(slot string) *runner {
	c.mu.Lock()
	if slot == "" {
		c.slots++
		slot = fmt.Sprintf("r%d", c.slots)
	}
	n := 1
	for _, r := range c.runners {
		if r.slot == slot {
			n++
		}
	}
	c.mu.Unlock()
	id := fmt.Sprintf("%s-%d", slot, n)
	r := &runner{slot: slot, records: filepath.Join(c.dir, id+".records"), log: filepath.Join(c.dir, id+".log"), state: up}
	r.inc.ID = id
	var urls []string
	for _, s := range c.servers {
		p := faultproxy.New(c.t, fmt.Sprintf("127.0.0.1:%d", s.port))
		r.proxies = append(r.proxies, p)
		urls = append(urls, p.URL())
	}
	r.inc.Started = time.Now()
	r.proc = proctest.StartLogged(c.t, id, r.log, filepath.Join(c.bin, "node"),
		append([]string{"runner", "-id", id, "-records", r.records, "-nats", strings.Join(urls, ","), "-entity-max-idle-time", c.opt.idle.String()}, c.common()...)...)
	c.mu.Lock()
	c.runners = append(c.runners, r)
	c.mu.Unlock()
	go func() {
		<-r.proc.Done()
		c.mu.Lock()
		sent := r.sent
		r.state = exited
		r.inc.Ended = r.proc.ExitAt()
		r.inc.Killed = r.proc.Killed(syscall.SIGKILL)
		c.mu.Unlock()
		for _, p := range r.proxies {
			p.Close()
		}
		switch {
		case sent == syscall.SIGKILL && r.inc.Killed:
		case sent == syscall.SIGTERM && r.proc.Err() == nil:
		default:
			c.problem(processExit, id, "exited with %s after the suite sent %v (log: %s)", r.proc.Status(), sent, r.log)
		}
	}()
	return r
}

// running returns the incarnations in state, or every not yet exited one
// for "".
func (c *cluster) running(states ...string) []*runner {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*runner
	for _, r := range c.runners {
		if (len(states) == 0 && r.state != exited) || slices.Contains(states, r.state) {
			out = append(out, r)
		}
	}
	return out
}

func (c *cluster) setState(r *runner, state string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r.state = state
}

// signal sends sig to r, remembering it for the exit check.
func (c *cluster) signal(r *runner, sig syscall.Signal) {
	c.mu.Lock()
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM {
		r.sent = sig
	}
	c.mu.Unlock()
	if err := r.proc.Signal(sig); err != nil {
		c.t.Logf("signal %v to %s: %v", sig, r.inc.ID, err)
	}
}

// pause stops r and returns once every thread of it is stopped: from
// then on it can do nothing, which is what the checker's pause span means.
func (c *cluster) pause(r *runner) (from time.Time) {
	c.signal(r, syscall.SIGSTOP)
	deadline := time.Now().Add(5 * time.Second)
	for !stopped(r.proc.Pid()) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // poll interval of a wait with a deadline
	}
	return time.Now()
}

// resume continues r; the pause span ends just before the signal.
func (c *cluster) resume(r *runner, from time.Time) {
	to := time.Now()
	c.signal(r, syscall.SIGCONT)
	c.mu.Lock()
	r.inc.Pauses = append(r.inc.Pauses, check.Span{From: from, To: to})
	c.mu.Unlock()
}

// stopped reports whether every thread of process pid is stopped.
func stopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return true // gone
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			continue
		}
		// The state follows the command name in parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) || (s[i+2] != 'T' && s[i+2] != 't') {
			return false
		}
	}
	return true
}

// status returns the cluster's coordination state.
func (c *cluster) status() (*mesh.ClusterStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return mesh.Inspect(ctx, c.nc, c.cfg)
}

// settleAfterFaults waits for the cluster to settle after the faults. If
// it has not within a minute because the leading manager assigns shards to
// runners no longer registered (check.StaleRegistry), that is recorded and
// that manager restarted, as an operator would, so that the run's other
// checks can still be made.
func (c *cluster) settleAfterFaults() {
	deadline := time.Now().Add(time.Minute)
	for !c.settled() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // poll interval of a wait with a deadline
	}
	if c.settled() {
		return
	}
	st, err := c.status()
	if err != nil {
		c.waitSettled(2*time.Minute, "the runners hold every shard after the faults")
		return
	}
	gone := map[string]bool{}
	for _, r := range c.running(exited) {
		gone[r.inc.ID] = true
	}
	repaired := false
	// Keys naming exited runners (check.ExpiryLost): removed, with a
	// conditional delete, as an operator would.
	for _, r := range st.Runners {
		if gone[r.ID] {
			c.knownProblem(check.ExpiryLost, r.ID, "a minute after the faults, runner %s is still registered though its process exited at %s; deleting its registration",
				r.ID, clock(c.exitOf(r.ID)))
			c.deleteKey(c.cfg.Prefix+"_runners", r.ID)
			repaired = true
		}
	}
	for _, sh := range st.Shards {
		if gone[sh.Holder] {
			c.knownProblem(check.ExpiryLost, fmt.Sprint("shard ", sh.Shard.N), "a minute after the faults, shard %d's lease still names %s, whose process exited at %s (lease revision %d); deleting it",
				sh.Shard.N, sh.Holder, clock(c.exitOf(sh.Holder)), sh.LeaseRevision)
			c.deleteKey(c.cfg.Prefix+"_leases", fmt.Sprintf("shard.%s.%d", sh.Shard.Group, sh.Shard.N))
			repaired = true
		}
	}
	registered := map[string]bool{}
	for _, r := range st.Runners {
		registered[r.ID] = true
	}
	stale := map[string]int{}
	for _, sh := range st.Shards {
		if sh.Assigned != "" && !registered[sh.Assigned] {
			stale[sh.Assigned]++
		}
	}
	if m := c.managerByID(st.Manager); len(stale) > 0 && m >= 0 {
		c.knownProblem(check.StaleRegistry, st.Manager, "a minute after the faults the leading manager still assigns shards to runners that are not registered (shards per runner: %v); restarting it", stale)
		mp := c.managers[m]
		stop(&mp.mu, &mp.down, &mp.proc)
		c.startManager(m)
		repaired = true
	}
	what := "the runners hold every shard after the faults"
	if repaired {
		what += " and the repairs"
	}
	c.waitSettled(2*time.Minute, what)
}

// knownProblem records a violation matching a known bug's signature.
func (c *cluster) knownProblem(known, who, format string, args ...any) {
	v := check.Violation{Invariant: check.Availability, Addr: who, Known: known, Detail: fmt.Sprintf(format, args...)}
	c.t.Logf("VIOLATION %v", v)
	c.mu.Lock()
	c.problems = append(c.problems, v)
	c.mu.Unlock()
}

// exitOf returns when incarnation id exited.
func (c *cluster) exitOf(id string) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.runners {
		if r.inc.ID == id {
			return r.inc.Ended
		}
	}
	return time.Time{}
}

// deleteKey deletes key from KV bucket at its current revision.
func (c *cluster) deleteKey(bucket, key string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := natsjs.New(c.nc)
	if err == nil {
		var kv natsjs.KeyValue
		if kv, err = js.KeyValue(ctx, bucket); err == nil {
			var e natsjs.KeyValueEntry
			if e, err = kv.Get(ctx, key); err == nil {
				err = kv.Delete(ctx, key, natsjs.LastRevision(e.Revision()))
			}
		}
	}
	if err != nil {
		c.t.Logf("delete %s/%s: %v", bucket, key, err)
	}
}

func clock(t time.Time) string { return t.Format("15:04:05.000") }

// managerByID returns the index of the manager whose current incarnation
// has id (its log lines name it), or -1.
func (c *cluster) managerByID(id string) int {
	for i, m := range c.managers {
		m.mu.Lock()
		name := m.proc.Name()
		m.mu.Unlock()
		b, err := os.ReadFile(filepath.Join(c.dir, name+".log"))
		if err == nil && id != "" && strings.Contains(string(b), "manager="+id) {
			return i
		}
	}
	return -1
}

// waitSettled waits until settled, and on timeout logs what is not.
func (c *cluster) waitSettled(timeout time.Duration, what string) {
	deadline := time.Now().Add(timeout)
	for !c.settled() {
		if time.Now().After(deadline) {
			c.t.Logf("not settled: up runners %v", ids(c.running(up)))
			if st, err := c.status(); err != nil {
				c.t.Logf("status: %v", err)
			} else {
				c.t.Logf("manager %q", st.Manager)
				for _, r := range st.Runners {
					c.t.Logf("registered %s: assigned %d, held %d", r.ID, r.Assigned, r.Held)
				}
				for _, sh := range st.Shards {
					if sh.Holder == "" || sh.Holder != sh.Assigned {
						c.t.Logf("shard %d: assigned %q, held by %q", sh.Shard.N, sh.Assigned, sh.Holder)
					}
				}
			}
			c.t.Fatalf("timed out after %v waiting for: %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond) // poll interval of a wait with a deadline
	}
}

func ids(rs []*runner) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.inc.ID)
	}
	return out
}

// settled reports whether exactly the up runners are registered and hold
// every shard the manager assigned them, and every shard is assigned.
func (c *cluster) settled() bool {
	st, err := c.status()
	if err != nil {
		return false
	}
	want := map[string]bool{}
	for _, r := range c.running(up) {
		want[r.inc.ID] = true
	}
	if len(st.Runners) != len(want) || st.Manager == "" {
		return false
	}
	for _, r := range st.Runners {
		if !want[r.ID] || r.Held != r.Assigned {
			return false
		}
	}
	for _, s := range st.Shards {
		if s.Holder == "" || s.Holder != s.Assigned {
			return false
		}
	}
	return true
}
