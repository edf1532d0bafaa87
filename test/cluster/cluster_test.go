//go:build unix

// Package cluster_test runs deploy/local/cluster.sh, the script behind
// `make cluster`, as users run it: "up" starts three nats-server processes
// forming a JetStream cluster (R3 buckets and streams), a shard manager,
// three runners hosting the example Counter and the HTTP gateway; the test
// calls an entity through the gateway and with `meshctl call`, finds both
// calls counted on the runners' and the gateway's /metrics, checks that
// every process is ready, then runs "down" and checks that every process
// the script started has exited, on SIGTERM and not killed.
//
// The binaries are built once by the test (internal/testkit/cmdtest) and given to
// the script with CLUSTER_BIN; the script's state, logs and pid files go to
// a temporary folder and its ports are picked free, so the test runs beside
// a `make cluster` of the user's. It needs bash and curl (the script's
// tools) and is skipped without them.
//
// The script detaches its processes (setsid), so they are not the test's
// children; on Linux the test makes itself their subreaper, so that they
// become its children when the script exits and it can collect their exit
// statuses (and no zombie outlives it where PID 1 does not reap).
package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/natsmesh/natsmesh/internal/testkit/cmdtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(mainM{m}) }

// mainM removes the binaries after the tests.
type mainM struct{ m *testing.M }

func (w mainM) Run() int {
	code := w.m.Run()
	cmdtest.Remove()
	return code
}

// shards is the default shard count, which cluster.sh keeps.
const shards = 300

// The processes cluster.sh starts, by the names of their pid files.
var (
	natsServers = []string{"n1", "n2", "n3"}
	runners     = []string{"r1", "r2", "r3"}
	processes   = append(append([]string{"gateway", "shardmgr"}, runners...), natsServers...)
)

// localCluster is one run of cluster.sh.
type localCluster struct {
	t        *testing.T
	script   string
	bin      string
	dir      string
	env      []string
	natsPort int // n1's client port; n2, n3 on the next two; monitoring +4000
	httpPort int // the gateway's API; health of gateway, shardmgr, r1-r3 on the next five
	pids     map[string]int
	stopped  bool
}

func TestLocalCluster(t *testing.T) {
	for _, tool := range []string{"bash", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("deploy/local/cluster.sh needs %s, not found: %v", tool, err)
		}
	}
	root, err := cmdtest.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := cmdtest.Build(t, "./cmd/runner", "./cmd/shardmgr", "./cmd/meshctl", "./cmd/gateway",
		"github.com/nats-io/nats-server/v2")
	adoptOrphans(t)

	// The whole run, down included, stays far inside go test's -timeout,
	// whose panic would skip the cleanups that stop the processes.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	natsPort, httpPort := freePorts(t)
	c := &localCluster{
		t:        t,
		script:   filepath.Join(root, "deploy/local/cluster.sh"),
		bin:      bin,
		dir:      filepath.Join(t.TempDir(), "cluster"),
		natsPort: natsPort,
		httpPort: httpPort,
	}
	c.env = append(os.Environ(),
		"CLUSTER_DIR="+c.dir,
		"CLUSTER_BIN="+bin,
		"CLUSTER_NATS_PORT="+strconv.Itoa(natsPort),
		"CLUSTER_HTTP_PORT="+strconv.Itoa(httpPort),
		"CLUSTER_READY_TIMEOUT=60",
	)
	// Registered after t.TempDir, so it runs before the folder is removed.
	t.Cleanup(c.cleanup)

	start := time.Now()
	if out, err := c.run(ctx, "up"); err != nil {
		t.Fatalf("cluster.sh up: %v\n%s", err, out)
	}
	c.pids = c.readPids()
	t.Logf("up in %v: %v", time.Since(start).Round(time.Millisecond), c.pids)
	start = time.Now()

	// The cluster settles: the three runners registered, every shard
	// assigned and its lease held by its assignee. The script waits only
	// for each /readyz and a first call, which a runner that has not yet
	// registered (assigned nothing) does not hold up.
	deadline := time.Now().Add(30 * time.Second)
	var status mesh.ClusterStatus
	natstest.WaitFor(t, time.Minute, func() bool {
		status = mesh.ClusterStatus{}
		out := c.meshctl(ctx, "-o", "json", "status")
		if err := json.Unmarshal([]byte(out), &status); err != nil {
			t.Fatalf("meshctl -o json status: %v\n%s", err, out)
		}
		return settled(status) || time.Now().After(deadline)
	}, "the cluster settled")
	if !settled(status) {
		t.Fatalf("not settled 30 s after up: %+v", status)
	}
	// Then every process is ready, ours on /readyz, nats-server on its
	// /healthz (JetStream current: it may lag the streams and consumers
	// just created).
	var notReady []string
	natstest.WaitFor(t, time.Minute, func() bool {
		notReady = c.notReady(ctx)
		return len(notReady) == 0 || time.Now().After(deadline)
	}, "every process ready")
	if len(notReady) > 0 {
		t.Fatalf("not ready 30 s after up:\n%s", strings.Join(notReady, "\n"))
	}
	t.Logf("settled and ready %v after up", time.Since(start).Round(time.Millisecond))

	// One entity, called through the gateway, then with meshctl: both
	// reach the same counter.
	const id = "cluster-test"
	if got := c.gateway(ctx, id, "Increment", `{"amount":5}`); got != "5" {
		t.Fatalf("gateway Increment = %s, want 5", got)
	}
	if got := c.meshctl(ctx, "-o", "json", "call", "Counter", id, "Increment", `{"amount":2}`); got != "7" {
		t.Fatalf("meshctl call Increment = %s, want 7", got)
	}

	// Both calls are counted where the entity ran, the gateway's on the
	// gateway. Counters are updated as replies go out, so scrape until
	// they show (or a deadline).
	handled := `natsmesh_calls_handled_total{code="OK",entity_type="Counter",rpc="Increment"}`
	sent := `natsmesh_client_calls_total{code="OK",entity_type="Counter",rpc="Increment"}`
	var onRunners, onGateway float64
	perRunner := map[string]float64{}
	natstest.WaitFor(t, 10*time.Second, func() bool {
		onRunners = 0
		for i, r := range runners {
			perRunner[r] = c.metric(ctx, c.healthPort(2+i), handled)
			onRunners += perRunner[r]
		}
		onGateway = c.metric(ctx, c.healthPort(0), sent)
		return onRunners == 2 && onGateway == 1
	}, "both calls counted on /metrics")
	t.Logf("%s: %v; gateway %s = %v", handled, perRunner, sent, onGateway)
	owners := 0
	for _, v := range perRunner {
		if v != 0 {
			owners++
		}
	}
	if owners != 1 {
		t.Errorf("calls of one entity counted on %d runners, want 1: %v", owners, perRunner)
	}

	start = time.Now()
	c.stop(ctx)
	t.Logf("down in %v", time.Since(start).Round(time.Millisecond))
}

// settled reports whether the runners r1-r3 are registered and hold the
// leases of all shards, each of those assigned to it.
func settled(st mesh.ClusterStatus) bool {
	ids := make([]string, 0, len(st.Runners))
	for _, r := range st.Runners {
		ids = append(ids, r.ID)
	}
	slices.Sort(ids)
	if st.Manager == "" || !slices.Equal(ids, runners) || len(st.Shards) != shards {
		return false
	}
	for _, s := range st.Shards {
		if s.Assigned == "" || s.Holder != s.Assigned {
			return false
		}
	}
	return true
}

// notReady probes every process and describes those that are not ready.
func (c *localCluster) notReady(ctx context.Context) []string {
	var bad []string
	probe := func(name string, port int, path string) {
		if status, body := c.get(ctx, port, path); status != http.StatusOK {
			bad = append(bad, fmt.Sprintf("%s: GET %s = %d: %s", name, path, status, body))
		}
	}
	for i, name := range []string{"gateway", "shardmgr", "r1", "r2", "r3"} {
		probe(name, c.healthPort(i), "/readyz")
	}
	for i, name := range natsServers {
		probe(name, c.natsPort+4000+i, "/healthz")
	}
	return bad
}

// healthPort is the -http port of process i: gateway, shardmgr, r1, r2, r3.
func (c *localCluster) healthPort(i int) int { return c.httpPort + 1 + i }

func (c *localCluster) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.script, args...)
	cmd.Env = c.env
	cmd.WaitDelay = 5 * time.Second // the processes it starts must not hold its output open
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *localCluster) readPids() map[string]int {
	c.t.Helper()
	pids := map[string]int{}
	for _, name := range processes {
		b, err := os.ReadFile(filepath.Join(c.dir, "pids", name+".pid"))
		if err != nil {
			c.t.Fatalf("pid file of %s: %v", name, err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			c.t.Fatalf("pid file of %s: %v", name, err)
		}
		pids[name] = pid
	}
	return pids
}

// stop runs "down" and checks that every process the script started exited
// on its own after SIGTERM, and that nothing else it started is left.
func (c *localCluster) stop(ctx context.Context) {
	t := c.t
	t.Helper()
	c.stopped = true
	out, err := c.run(ctx, "down")
	if err != nil {
		t.Errorf("cluster.sh down: %v\n%s", err, out)
	}
	if strings.Contains(out, "did not stop") {
		t.Errorf("cluster.sh down had to kill processes:\n%s", out)
	}
	for _, name := range processes {
		pid, ok := c.pids[name]
		if !ok {
			continue
		}
		if status, err := collect(pid); err != nil {
			t.Errorf("%s (pid %d) left after down: %v", name, pid, err)
		} else if status != "" {
			t.Errorf("%s (pid %d) %s after SIGTERM, want exit status 0", name, pid, status)
		}
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("processes left after down: %v", left)
	}
}

// cleanup stops the cluster if the test did not (it failed or was
// skipped on the way), and logs the processes' logs if the test failed.
func (c *localCluster) cleanup() {
	if c.t.Failed() {
		c.logTails()
	}
	if c.stopped {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if c.pids == nil {
		// "up" failed: it stopped what it had started itself; "down" below
		// finds nothing, leftovers still checks.
		c.pids = map[string]int{}
	}
	c.stop(ctx)
}

func (c *localCluster) logTails() {
	logs, _ := filepath.Glob(filepath.Join(c.dir, "logs", "*.log"))
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		lines = lines[max(0, len(lines)-40):]
		c.t.Logf("--- %s (last %d lines)\n%s", filepath.Base(f), len(lines), strings.Join(lines, "\n"))
	}
}

var client = &http.Client{Timeout: 15 * time.Second}

func (c *localCluster) get(ctx context.Context, port int, path string) (int, string) {
	c.t.Helper()
	return c.do(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), "")
}

func (c *localCluster) do(ctx context.Context, method, url, body string) (int, string) {
	c.t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// gateway calls an RPC through the gateway's HTTP API and returns the JSON
// reply.
func (c *localCluster) gateway(ctx context.Context, id, rpc, body string) string {
	c.t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d/v1/Counter/%s/%s", c.httpPort, id, rpc)
	status, reply := c.do(ctx, http.MethodPost, url, body)
	if status != http.StatusOK {
		c.t.Fatalf("POST %s = %d, want 200: %s", url, status, reply)
	}
	return reply
}

func (c *localCluster) meshctl(ctx context.Context, args ...string) string {
	c.t.Helper()
	urls := make([]string, len(natsServers))
	for i := range urls {
		urls[i] = fmt.Sprintf("nats://127.0.0.1:%d", c.natsPort+i)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "meshctl"), append([]string{"-nats", strings.Join(urls, ",")}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		c.t.Fatalf("meshctl %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	out := strings.TrimSpace(stdout.String())
	if !json.Valid([]byte(out)) {
		c.t.Fatalf("meshctl %s printed %q, not JSON", strings.Join(args, " "), out)
	}
	return out
}

// metric scrapes /metrics on port and returns the value of one series,
// "name{label="value",...}" with labels in sorted order, 0 if absent.
func (c *localCluster) metric(ctx context.Context, port int, series string) float64 {
	c.t.Helper()
	status, body := c.get(ctx, port, "/metrics")
	if status != http.StatusOK {
		c.t.Fatalf("GET :%d/metrics = %d: %s", port, status, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body + "\n"))
	if err != nil {
		c.t.Fatalf("GET :%d/metrics: %v", port, err)
	}
	name, _, _ := strings.Cut(series, "{")
	f := families[name]
	if f == nil {
		return 0
	}
	for _, m := range f.GetMetric() {
		if seriesName(name, m) == series {
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return 0
}

func seriesName(name string, m *dto.Metric) string {
	labels := make([]string, 0, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	slices.Sort(labels)
	return name + "{" + strings.Join(labels, ",") + "}"
}

// freePorts picks the script's two base ports so that every port it uses
// (NATS clients +0..2, routes +2000..2002, monitoring +4000..4002; HTTP
// +0..5) is free now. They are below Linux's ephemeral range (32768 up),
// so only a program that binds them by number can take one meanwhile.
func freePorts(t *testing.T) (natsPort, httpPort int) {
	t.Helper()
	free := func(base int, offsets ...int) bool {
		for _, o := range offsets {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(base+o)))
			if err != nil {
				return false
			}
			_ = l.Close()
		}
		return true
	}
	for range 100 {
		natsPort = 10000 + rand.IntN(10000)
		httpPort = 25000 + rand.IntN(7000)
		if free(natsPort, 0, 1, 2, 2000, 2001, 2002, 4000, 4001, 4002) && free(httpPort, 0, 1, 2, 3, 4, 5) {
			return natsPort, httpPort
		}
	}
	t.Fatal("no free ports for the cluster in 100 tries")
	return 0, 0
}
