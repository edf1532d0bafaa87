package compose_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
	"github.com/natsmesh/natsmesh/test/internal/leaselog"
)

// TestComposeFaults uses containers as hosts: under a load from this
// process it pauses a runner container (docker pause, the cgroup freezer:
// a frozen VM) past its leases' expiry, cuts another runner off the compose
// network while its process keeps running (docker network disconnect), cuts
// a NATS server off the network, and kills a runner container and starts it
// again; each fault is held until the victim's shards have passed to other
// runners (or for longer than a lease), then healed, and the next one waits
// for full service again. Then it checks:
//
//   - no acknowledged persisted Deposit was lost or applied twice
//     (checkDeposits: every one has a stored reply, and the Counter's state
//     in each reply and at the end holds each deposit of its activation
//     exactly once);
//   - no runner answered from a stale activation (checkIncrements: an
//     entity's volatile Increment replies never go back to an older
//     activation's count);
//   - fencing, from the runners' own logs against the lease bucket's
//     history (checkFencing): a runner whose lease lapsed and passed to
//     another runner had stopped serving that shard before the other took
//     it, or was frozen then and fenced it on resuming, or was dead.
//
// It logs one line starting with "COMPOSEFAULTS". With
// NATSMESH_COMPOSE_KEEP=1 (or on failure) it keeps the evidence: every
// service's log, the lease log and the violations, in a folder it names.
func TestComposeFaults(t *testing.T) {
	requireCompose(t, faultsEnv, "to run the container fault test (make chaos-containers)")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	start := time.Now()
	dir, err := os.MkdirTemp("", "natsmesh-composefaults-")
	if err != nil {
		t.Fatal(err)
	}
	keep := os.Getenv("NATSMESH_COMPOSE_KEEP") == "1"
	t.Cleanup(func() { // registered first: runs after everything is down
		if t.Failed() || keep {
			t.Logf("evidence kept in %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	// Debug logs: runners then log each shard they start serving and hand
	// off, besides the fencing they always log (checkFencing).
	c, built := upCompose(ctx, t, "NATSMESH_LOG_LEVEL=debug")
	fr := &faultRun{c: c, dir: dir, hosts: map[string]string{}, frozen: map[string][]pauseSpan{}, killed: map[string]bool{}}
	t.Cleanup(func() { fr.saveLogs(t, dir) }) // before compose down

	natsAddr := c.must(ctx, "port", "nats1", "4222")
	// nats1 only: the other servers' addresses are the compose network's,
	// unreachable from here. nats1 is never faulted.
	nc, err := nats.Connect("nats://"+natsAddr, nats.DontRandomize(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close) // after the lease watch's cleanup
	fr.nc = nc
	fr.cfg = mesh.DefaultConfig()
	fr.cfg.StorageReplicas = 3 // the cluster's: a client never downgrades its assets
	client, err := mesh.NewClient(nc, fr.cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 3*time.Minute, time.Second, func() bool {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := mesh.Call(cctx, client, counter.Increment, "composefaults/first", counter.Amount{Amount: 1})
		return err == nil
	}, "a first call")
	fr.waitSettled(ctx, t, 2*time.Minute)
	up := time.Now()
	fr.leases = leaselog.Watch(t, nc, fr.cfg)

	ld := startLoad(client, fr.cfg.ShardsPerGroup)
	t.Cleanup(ld.stop)
	fr.ld = ld
	// Every entity has some state before the first fault, so that a stale
	// activation's count is told from a fresh one's (checkIncrements).
	waitUntil(t, 2*time.Minute, 250*time.Millisecond, func() bool { return ld.minAnswered() >= 5 }, "every entity answering five calls")
	t.Logf("cluster up in %v (image built in %v); load running", up.Sub(built).Round(time.Millisecond), built.Sub(start).Round(time.Millisecond))

	fr.pauseRunner(ctx, t, "runner1")
	fr.cutRunner(ctx, t, "runner2")
	fr.cutNATS(ctx, t)
	fr.killRunner(ctx, t, "runner3")
	ld.stop()
	t.Logf("faults done; load stopped after %v", time.Since(ld.began).Round(time.Second))

	drained := drainPersisted(ctx, t, nc, fr.cfg)
	if !drained {
		// Check what can be checked (a stuck message shows as an
		// acknowledged deposit never handled), then record why.
		defer fr.diagnose(ctx, t)
	}
	fetchReplies(ctx, t, client, ld, drained)
	var violations []string
	for _, e := range ld.incs {
		violations = append(violations, checkIncrements(e)...)
	}
	lost, applied := 0, 0
	for _, s := range ld.deps {
		for _, e := range s.entities {
			v := checkDeposits(e)
			violations = append(violations, v...)
			for _, d := range e.deps {
				if d.acked && !d.stored {
					lost++
				}
				if d.stored {
					applied++
				}
			}
		}
	}
	fence, fv := fr.checkFencing(t)
	violations = append(violations, fv...)
	if err := os.WriteFile(filepath.Join(dir, "violations.txt"), []byte(strings.Join(violations, "\n")+"\n"), 0o644); err != nil {
		t.Error(err)
	}
	if err := ld.write(filepath.Join(dir, "load.txt")); err != nil {
		t.Error(err)
	}

	st := ld.stats()
	var full, served, window []string
	for _, f := range fr.faults {
		name := f.kind + ":" + f.target
		full = append(full, fmt.Sprintf("%s=%v", name, f.full.Sub(f.from).Round(100*time.Millisecond)))
		served = append(served, fmt.Sprintf("%s=%v", name, ld.servedAfter(f.from).Round(100*time.Millisecond)))
		window = append(window, fmt.Sprintf("%s=%v", name, ld.maxWindow(f.from, f.full).Round(100*time.Millisecond)))
		t.Logf("fault %s: %s", name, f.note)
	}
	t.Logf("errors by class: %v", st.errs)
	t.Logf("COMPOSEFAULTS faults=%d calls=%d acknowledged=%d errors=%d (increments %d/%d answered; deposits %d acknowledged, %d unknown, %d handled, %d acknowledged but not handled) max-unavailable=%v unavailable-per-fault=%s failover=%s fault-to-full-service=%s fencing=%s lease-log-gaps=%d violations=%d total=%v",
		len(fr.faults), st.incs+st.deposits, st.incsOK+st.depositsAcked, st.errors,
		st.incsOK, st.incs, st.depositsAcked, st.deposits-st.depositsAcked, applied, lost,
		ld.maxWindow(ld.began, ld.stopped).Round(100*time.Millisecond), strings.Join(window, ","), strings.Join(served, ","), strings.Join(full, ","),
		fence, len(fr.leases.Gaps()), len(violations), time.Since(start).Round(time.Second))
	for i, v := range violations {
		if i == 30 {
			t.Errorf("... and %d more (violations.txt)", len(violations)-i)
			break
		}
		t.Error(v)
	}
}

// faultsEnv enables TestComposeFaults.
const faultsEnv = "NATSMESH_COMPOSE_FAULTS"

// waitUntil polls cond every period until it holds, and fails t after
// timeout. It returns when cond held.
func waitUntil(t testing.TB, timeout, every time.Duration, cond func() bool, what string) time.Time {
	t.Helper()
	at, ok := poll(timeout, every, cond)
	if !ok {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
	return at
}

// poll polls cond every period until it holds (true, and when) or timeout
// passes (false).
func poll(timeout, every time.Duration, cond func() bool) (time.Time, bool) {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return time.Time{}, false
		}
		time.Sleep(every) // poll interval of a wait with a deadline
	}
	return time.Now(), true
}

// docker runs a docker command.
func docker(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("docker %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func mustDocker(ctx context.Context, t testing.TB, args ...string) string {
	t.Helper()
	out, err := docker(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// endpoint is a container's attachment to one network.
type endpoint struct {
	IPAddress string
	Aliases   []string
}

func endpoints(ctx context.Context, t testing.TB, container string) map[string]endpoint {
	t.Helper()
	var eps map[string]endpoint
	if err := json.Unmarshal([]byte(mustDocker(ctx, t, "inspect", "-f", "{{json .NetworkSettings.Networks}}", container)), &eps); err != nil {
		t.Fatalf("inspect %s: %v", container, err)
	}
	return eps
}

// pauseSpan is a docker pause window: from before the pause command to
// after the unpause command, which started at thaw.
type pauseSpan struct{ from, thaw, to time.Time }

// fault is one injected fault, from the docker command that made it to
// full service again.
type fault struct {
	kind, target string
	from         time.Time // just before the docker command
	healed       time.Time // the healing command returned
	full         time.Time // full service again (waitFull)
	note         string
}

// faultRun drives the faults; only the test's goroutine uses it.
type faultRun struct {
	c      *compose
	dir    string // evidence
	nc     *nats.Conn
	cfg    mesh.Config
	leases *leaselog.Log
	ld     *load
	faults []*fault

	hosts  map[string]string      // runner id -> container host name, from every Inspect
	frozen map[string][]pauseSpan // host -> docker pause windows
	killed map[string]bool        // runner ids killed
}

func (fr *faultRun) inspect(ctx context.Context) (*mesh.ClusterStatus, error) {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := mesh.Inspect(ictx, fr.nc, fr.cfg)
	if err != nil {
		return nil, err
	}
	for _, r := range st.Runners {
		fr.hosts[r.ID] = r.Host
	}
	return st, nil
}

// settled reports whether three runners hold every shard, each the ones it
// is assigned, under a leading manager.
func (fr *faultRun) settled(ctx context.Context) bool {
	st, err := fr.inspect(ctx)
	if err != nil || len(st.Runners) != 3 || st.Manager == "" {
		return false
	}
	held := 0
	for _, r := range st.Runners {
		if r.Held == 0 || r.Held != r.Assigned {
			return false
		}
		held += r.Held
	}
	return held == fr.cfg.ShardsPerGroup*len(fr.cfg.ShardGroups)
}

func (fr *faultRun) waitSettled(ctx context.Context, t testing.TB, timeout time.Duration) time.Time {
	t.Helper()
	at, ok := poll(timeout, 500*time.Millisecond, func() bool { return fr.settled(ctx) })
	if !ok {
		fr.diagnose(ctx, t)
		t.Fatalf("timed out after %v waiting for three runners holding their shards", timeout)
	}
	return at
}

// diagnose records why the cluster does not settle: what Inspect sees,
// every mesh process's readiness, every NATS server's connections and
// routes, then a goroutine dump of every mesh process (SIGQUIT: the Go
// runtime prints every goroutine's stack and exits), which saveLogs keeps.
func (fr *faultRun) diagnose(ctx context.Context, t testing.TB) {
	t.Helper()
	if st, err := fr.inspect(ctx); err != nil {
		t.Logf("inspect: %v", err)
	} else {
		t.Logf("manager %q", st.Manager)
		for _, r := range st.Runners {
			t.Logf("runner %s on %s: assigned %d, held %d", r.ID, r.Host, r.Assigned, r.Held)
		}
	}
	if js, err := natsjs.New(fr.nc); err == nil {
		if s, err := js.Stream(ctx, fr.cfg.Prefix+"_persist"); err == nil {
			t.Logf("stream %s: %d messages", fr.cfg.Prefix+"_persist", s.CachedInfo().State.Msgs)
			for name := range s.ConsumerNames(ctx).Name() {
				c, err := s.Consumer(ctx, name)
				if err != nil {
					t.Logf("consumer %s: %v", name, err)
					continue
				}
				ci := c.CachedInfo()
				leader := ""
				if ci.Cluster != nil {
					leader = ci.Cluster.Leader
				}
				t.Logf("consumer %s: %d filters, pending %d, ack pending %d, waiting %d, delivered %d, ack floor %d, leader %s",
					name, len(ci.Config.FilterSubjects), ci.NumPending, ci.NumAckPending, ci.NumWaiting, ci.Delivered.Stream, ci.AckFloor.Stream, leader)
			}
		}
	}
	hc := &http.Client{Timeout: 3 * time.Second}
	get := func(url string) string {
		resp, err := hc.Get(url)
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.Status + "\n" + string(b)
	}
	for _, svc := range []string{"nats1", "nats2", "nats3"} {
		ip := fr.ip(ctx, t, svc)
		for _, path := range []string{"healthz", "connz", "routez"} {
			if err := os.WriteFile(filepath.Join(fr.dir, svc+"."+path), []byte(get("http://"+ip+":8222/"+path)), 0o644); err != nil {
				t.Error(err)
			}
		}
	}
	procs := []string{"shardmgr", "runner1", "runner2", "runner3"}
	for _, svc := range procs {
		t.Logf("%s (%s) /readyz: %s", svc, fr.ip(ctx, t, svc), get("http://"+fr.ip(ctx, t, svc)+":8081/readyz"))
	}
	for _, svc := range procs {
		if _, err := docker(ctx, "kill", "-s", "QUIT", fr.container(ctx, svc)); err != nil {
			t.Log(err)
		}
	}
	_, ok := poll(30*time.Second, 250*time.Millisecond, func() bool {
		for _, svc := range procs {
			if out, err := docker(ctx, "inspect", "-f", "{{.State.Running}}", fr.container(ctx, svc)); err != nil || out != "false" {
				return false
			}
		}
		return true
	})
	t.Logf("goroutine dumps of %v in their logs (all exited: %v)", procs, ok)
}

// ip returns the address of a service's container on the compose network.
func (fr *faultRun) ip(ctx context.Context, t testing.TB, svc string) string {
	t.Helper()
	for _, ep := range endpoints(ctx, t, fr.container(ctx, svc)) {
		return ep.IPAddress
	}
	return ""
}

// waitFull waits for full service: the cluster settled (three runners
// holding what they are assigned), then every entity of the load answering
// a call started after that. A NATS connection left dead by a network cut
// is noticed by nats.go's pings (every 2 min, two unanswered: 4-6 min by
// default), hence the bound.
func (fr *faultRun) waitFull(ctx context.Context, t testing.TB, f *fault) {
	t.Helper()
	at := fr.waitSettled(ctx, t, 8*time.Minute)
	f.full = waitUntil(t, time.Minute, 100*time.Millisecond, func() bool { return fr.ld.allAnsweredSince(at) }, "every entity answering after the cluster settled")
	t.Logf("%s %s: full service %v after the fault (%v after healing)", f.kind, f.target,
		f.full.Sub(f.from).Round(100*time.Millisecond), f.full.Sub(f.healed).Round(100*time.Millisecond))
}

// victim returns the id of the runner in container host svc and the
// shards it holds.
func (fr *faultRun) victim(ctx context.Context, t testing.TB, svc string) (string, []int) {
	t.Helper()
	st, err := fr.inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := ""
	for _, r := range st.Runners {
		if r.Host == svc {
			id = r.ID
		}
	}
	var held []int
	for _, s := range st.Shards {
		if id != "" && s.Holder == id {
			held = append(held, s.Shard.N)
		}
	}
	if id == "" || len(held) == 0 {
		t.Fatalf("%s: runner %q holds %d shards, want some", svc, id, len(held))
	}
	return id, held
}

// waitTakeover waits until every shard of held has been acquired by
// another runner than id since the fault began, and holds the fault at
// least minHold.
func (fr *faultRun) waitTakeover(t testing.TB, f *fault, id string, held []int, minHold time.Duration) {
	t.Helper()
	waitUntil(t, 2*time.Minute, 250*time.Millisecond, func() bool {
		taken := map[int]bool{}
		for _, e := range fr.leases.Entries() {
			if e.Held() && e.Holder != id && e.At.After(f.from) {
				taken[e.Shard.N] = true
			}
		}
		for _, n := range held {
			if !taken[n] {
				return false
			}
		}
		return true
	}, fmt.Sprintf("the %d shards of %s (%s) taken by other runners", len(held), f.target, id))
	t.Logf("%s %s: its %d shards taken over %v after the fault", f.kind, f.target, len(held), time.Since(f.from).Round(100*time.Millisecond))
	time.Sleep(time.Until(f.from.Add(minHold))) // the fault's duration, not synchronization
}

// minHold is how long a runner fault lasts at least: past its leases'
// expiry however early the takeover.
const minHold = leaseExpiry + 2*time.Second

func (fr *faultRun) container(ctx context.Context, svc string) string {
	return fr.c.must(ctx, "ps", "-q", svc)
}

// pauseRunner freezes a runner's container (docker pause: every process
// stopped by the cgroup freezer, sockets open, as a frozen VM) until its
// shards have passed to the others, then thaws it: it must not serve them
// on waking up.
func (fr *faultRun) pauseRunner(ctx context.Context, t *testing.T, svc string) {
	id, held := fr.victim(ctx, t, svc)
	ctr := fr.container(ctx, svc)
	f := &fault{kind: "pause", target: svc, from: time.Now()}
	fr.faults = append(fr.faults, f)
	mustDocker(ctx, t, "pause", ctr)
	t.Logf("pause %s (runner %s, %d shards)", svc, id, len(held))
	fr.waitTakeover(t, f, id, held, minHold)
	thaw := time.Now()
	mustDocker(ctx, t, "unpause", ctr)
	f.healed = time.Now()
	fr.frozen[svc] = append(fr.frozen[svc], pauseSpan{f.from, thaw, f.healed})
	f.note = fmt.Sprintf("runner %s frozen %v", id, f.healed.Sub(f.from).Round(100*time.Millisecond))
	fr.waitFull(ctx, t, f)
}

// cutOff disconnects a container from its networks (its process keeps
// running, its sockets stay open with nowhere to send), holds, and
// connects it again with its aliases (service name), so the others find
// it by name again.
func (fr *faultRun) cutOff(ctx context.Context, t testing.TB, f *fault, ctr string, hold func()) {
	t.Helper()
	eps := endpoints(ctx, t, ctr)
	for net := range eps {
		mustDocker(ctx, t, "network", "disconnect", net, ctr)
	}
	hold()
	for net, ep := range eps {
		args := []string{"network", "connect"}
		for _, a := range ep.Aliases {
			if !strings.HasPrefix(ctr, a) { // the short container id: docker adds it itself
				args = append(args, "--alias", a)
			}
		}
		mustDocker(ctx, t, append(args, net, ctr)...)
	}
	f.healed = time.Now()
}

// cutRunner cuts a runner off the network until its shards have passed to
// the others: it must fence them before they do.
func (fr *faultRun) cutRunner(ctx context.Context, t *testing.T, svc string) {
	id, held := fr.victim(ctx, t, svc)
	ctr := fr.container(ctx, svc)
	f := &fault{kind: "cut", target: svc, from: time.Now()}
	fr.faults = append(fr.faults, f)
	fr.cutOff(ctx, t, f, ctr, func() {
		t.Logf("cut %s off the network (runner %s, %d shards)", svc, id, len(held))
		fr.waitTakeover(t, f, id, held, minHold)
	})
	f.note = fmt.Sprintf("runner %s cut off %v", id, f.healed.Sub(f.from).Round(100*time.Millisecond))
	fr.waitFull(ctx, t, f)
}

// cutNATS cuts a NATS server off the network for longer than a lease:
// of nats2 and nats3 (nats1 serves this process), the one that more mesh
// processes (runners, shard manager) are connected to, or else the one
// leading the lease bucket's stream. Those processes lose NATS as if they
// were cut off themselves, until they notice and reconnect elsewhere.
func (fr *faultRun) cutNATS(ctx context.Context, t *testing.T) {
	users := fr.natsUsers(ctx, t)
	svc := "nats2"
	if len(users["nats3"]) > len(users["nats2"]) {
		svc = "nats3"
	}
	js, err := natsjs.New(fr.nc)
	if err != nil {
		t.Fatal(err)
	}
	led := ""
	if info, err := js.Stream(ctx, "KV_"+fr.cfg.Prefix+"_leases"); err == nil && info.CachedInfo().Cluster != nil {
		led = info.CachedInfo().Cluster.Leader
	}
	if len(users["nats3"]) == len(users["nats2"]) && led == "nats3" {
		svc = "nats3"
	}
	ctr := fr.container(ctx, svc)
	f := &fault{kind: "cut", target: svc, from: time.Now()}
	fr.faults = append(fr.faults, f)
	fr.cutOff(ctx, t, f, ctr, func() {
		t.Logf("cut %s off the network (clients: %v; lease bucket leader %s)", svc, users[svc], led)
		time.Sleep(leaseExpiry + 3*time.Second) // the fault's duration
	})
	// Its JetStream caught up again (nats-server's own health check).
	ip := fr.ip(ctx, t, svc)
	hc := &http.Client{Timeout: 2 * time.Second}
	waitUntil(t, 2*time.Minute, 250*time.Millisecond, func() bool {
		resp, err := hc.Get("http://" + ip + ":8222/healthz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, svc+" healthy")
	f.note = fmt.Sprintf("clients %v, lease bucket leader %s; healthy %v after reconnecting", users[svc], led, time.Since(f.healed).Round(100*time.Millisecond))
	fr.waitFull(ctx, t, f)
}

// natsUsers returns, per NATS server, the mesh services connected to it
// (its /connz, matched by address).
func (fr *faultRun) natsUsers(ctx context.Context, t testing.TB) map[string][]string {
	t.Helper()
	byIP := map[string]string{}
	for _, svc := range []string{"shardmgr", "runner1", "runner2", "runner3"} {
		byIP[fr.ip(ctx, t, svc)] = svc
	}
	hc := &http.Client{Timeout: 3 * time.Second}
	users := map[string][]string{}
	for _, svc := range []string{"nats1", "nats2", "nats3"} {
		resp, err := hc.Get("http://" + fr.ip(ctx, t, svc) + ":8222/connz?limit=1000")
		if err != nil {
			t.Fatalf("%s connz: %v", svc, err)
		}
		var connz struct {
			Connections []struct {
				IP string `json:"ip"`
			} `json:"connections"`
		}
		err = json.NewDecoder(resp.Body).Decode(&connz)
		_ = resp.Body.Close()
		if err != nil {
			t.Fatalf("%s connz: %v", svc, err)
		}
		for _, c := range connz.Connections {
			if u, ok := byIP[c.IP]; ok {
				users[svc] = append(users[svc], u)
			}
		}
		slices.Sort(users[svc])
	}
	return users
}

// killRunner kills a runner's container (SIGKILL), waits until its shards
// have passed to the others, and starts the container again: a new runner.
func (fr *faultRun) killRunner(ctx context.Context, t *testing.T, svc string) {
	id, held := fr.victim(ctx, t, svc)
	ctr := fr.container(ctx, svc)
	f := &fault{kind: "kill", target: svc, from: time.Now()}
	fr.faults = append(fr.faults, f)
	fr.killed[id] = true
	mustDocker(ctx, t, "kill", ctr)
	t.Logf("kill %s (runner %s, %d shards)", svc, id, len(held))
	fr.waitTakeover(t, f, id, held, 0)
	mustDocker(ctx, t, "start", ctr)
	f.healed = time.Now()
	f.note = fmt.Sprintf("runner %s killed, container started again after %v", id, f.healed.Sub(f.from).Round(100*time.Millisecond))
	fr.waitFull(ctx, t, f)
}

// saveLogs writes every service's log and the lease log into dir.
func (fr *faultRun) saveLogs(t testing.TB, dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, svc := range []string{"nats1", "nats2", "nats3", "shardmgr", "runner1", "runner2", "runner3", "gateway"} {
		ctr, err := fr.c.run(ctx, "ps", "-q", svc)
		if err != nil || ctr == "" {
			continue
		}
		out, _ := exec.CommandContext(ctx, "docker", "logs", "-t", ctr).CombinedOutput()
		if err := os.WriteFile(filepath.Join(dir, svc+".log"), out, 0o644); err != nil {
			t.Error(err)
		}
	}
	if fr.leases == nil {
		return
	}
	var b strings.Builder
	for _, e := range fr.leases.Entries() {
		fmt.Fprintf(&b, "%s rev=%d shard=%d op=%v holder=%s host=%s\n", e.At.Format("15:04:05.000000"), e.Rev, e.Shard.N, e.Op, e.Holder, fr.hosts[e.Holder])
	}
	for _, g := range fr.leases.Gaps() {
		fmt.Fprintf(&b, "gap: revisions %d to %d not seen\n", g[0]+1, g[1]-1)
	}
	if err := os.WriteFile(filepath.Join(dir, "leases.log"), []byte(b.String()), 0o644); err != nil {
		t.Error(err)
	}
}

// stops are the times a runner's log says it stopped serving each shard:
// the fencing it logs right before closing the shard's partition in memory
// (watchLoss), or the end of a graceful hand-off (debug).
type stops struct{ fenced, handed map[int][]time.Time }

var stopLine = regexp.MustCompile(`^time=(\S+) level=\S+ msg="(shard lease lost: fencing|handed off shard)" (?:.* )?shard=[^\s/]+/(\d+)`)

// parseStops reads a runner container's log (every incarnation).
func parseStops(log []byte) (stops, error) {
	st := stops{fenced: map[int][]time.Time{}, handed: map[int][]time.Time{}}
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := stopLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			return st, fmt.Errorf("log time %q: %w", m[1], err)
		}
		n, _ := strconv.Atoi(m[3])
		if m[2] == "handed off shard" {
			st.handed[n] = append(st.handed[n], at)
		} else {
			st.fenced[n] = append(st.fenced[n], at)
		}
	}
	return st, sc.Err()
}

// firstAfter returns the first time in ts after t.
func firstAfter(ts []time.Time, t time.Time) (time.Time, bool) {
	for _, x := range ts {
		if x.After(t) {
			return x, true
		}
	}
	return time.Time{}, false
}

// checkFencing reads the runners' logs and checks them against the lease
// log (checkLeases).
func (fr *faultRun) checkFencing(t testing.TB) (string, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logs := map[string]stops{}
	for _, svc := range []string{"runner1", "runner2", "runner3"} {
		out, err := exec.CommandContext(ctx, "docker", "logs", fr.container(ctx, svc)).CombinedOutput()
		if err != nil {
			t.Fatalf("docker logs %s: %v", svc, err)
		}
		if logs[svc], err = parseStops(out); err != nil {
			t.Fatalf("%s: %v", svc, err)
		}
	}
	return checkLeases(fr.leases.Entries(), fr.leases.Gaps(), logs, fr.hosts, fr.frozen, fr.killed)
}

// checkLeases compares what the runners say (logs, by host) with what the
// lease bucket saw. For every lapsed lease (a shard's lease taken by
// runner B at T, the previous holder A's last renewal at L, and no release
// by A in between), the server must not have let B in before A's lease
// expired (T-L at least the expiry), and A must have stopped serving the
// shard before T: its log shows the fencing (or a hand-off) of that shard
// between L and T. The fencing line is logged right before the shard's
// partition is closed in memory, by a runner that has not heard from NATS
// for the lease's validity; a runner whose fencing were late, stuck behind
// the dead connection, or missing would log it after T or never, and fail
// this. Exceptions, where A could not serve at T: A frozen by docker pause
// at T (it must then log the fencing within 5 s of the unpause; that it
// answers nothing meanwhile is checked by the lease-validity test at
// dispatch and, from outside, by checkIncrements and checkDeposits), or A
// killed. A takeover before the expiry with revisions the watch missed
// between L and T (Gaps: the bucket's, of any key) is unknown history, a
// release may be among them: counted, not judged. (A release cannot
// explain a takeover after the expiry: a holder renews until it
// releases.)
// It returns a summary of the margins and the violations.
func checkLeases(entries []leaselog.Entry, gaps [][2]uint64, logs map[string]stops, hosts map[string]string,
	frozen map[string][]pauseSpan, killed map[string]bool) (string, []string) {
	type put struct {
		at     time.Time
		rev    uint64
		holder string
	}
	missed := func(from, to uint64) bool { // a revision strictly between from and to was not seen
		for _, g := range gaps {
			if max(g[0], from)+1 < min(g[1], to) {
				return true
			}
		}
		return false
	}
	last := map[int]*put{}     // shard -> last put
	released := map[int]bool{} // shard -> a delete came soon after its last put
	var bad []string
	lapsed, beforeT, onWake, dead, unknown := 0, 0, 0, 0, 0
	var margins, wakes []time.Duration
	for _, e := range entries {
		n := e.Shard.N
		p := last[n]
		if !e.Held() {
			// A release comes within a renewal period of the last put; an
			// expiry (the server's marker) a lease after it.
			if p != nil && e.At.Sub(p.at) < leaseExpiry-time.Second {
				released[n] = true
			}
			continue
		}
		last[n] = &put{e.At, e.Rev, e.Holder}
		if p == nil || p.holder == e.Holder || released[n] {
			released[n] = false
			continue
		}
		d := e.At.Sub(p.at)
		if d < leaseExpiry && missed(p.rev, e.Rev) {
			unknown++
			continue
		}
		lapsed++
		name := fmt.Sprintf("shard %d: lease of %s (%s, last renewed %s) taken by %s at %s", n, p.holder, hosts[p.holder],
			p.at.Format("15:04:05.000"), e.Holder, e.At.Format("15:04:05.000"))
		if d < leaseExpiry {
			bad = append(bad, fmt.Sprintf("%s: only %v after the last renewal, before the lease's expiry", name, d))
		}
		if killed[p.holder] {
			dead++
			continue
		}
		host := hosts[p.holder]
		s, ok := logs[host]
		if !ok {
			bad = append(bad, name+": unknown runner")
			continue
		}
		fence, fenced := firstAfter(s.fenced[n], p.at)
		if h, ok := firstAfter(s.handed[n], p.at); ok && h.Before(e.At) && (!fenced || h.Before(fence)) {
			fence, fenced = h, true
		}
		if fenced && fence.Before(e.At) {
			beforeT++
			margins = append(margins, e.At.Sub(fence))
			continue
		}
		wake, isFrozen := time.Time{}, false
		for _, sp := range frozen[host] {
			if !e.At.Before(sp.from) && !e.At.After(sp.to) {
				wake, isFrozen = sp.thaw, true
			}
		}
		switch {
		case isFrozen && fenced && fence.Before(wake.Add(5*time.Second)):
			onWake++
			wakes = append(wakes, fence.Sub(wake))
		case isFrozen && fenced:
			bad = append(bad, fmt.Sprintf("%s: %s was frozen then, but fenced only %v after waking", name, host, fence.Sub(wake)))
		case fenced:
			bad = append(bad, fmt.Sprintf("%s: %s fenced it only at %s, %v after", name, host, fence.Format("15:04:05.000"), fence.Sub(e.At)))
		default:
			bad = append(bad, fmt.Sprintf("%s: %s never logged fencing it", name, host))
		}
	}
	summary := fmt.Sprintf("lapsed:%d,fenced-before-takeover:%d(by %s),fenced-on-waking:%d(after %s),dead:%d,unknown-watch-gap:%d",
		lapsed, beforeT, spread(margins), onWake, spread(wakes), dead, unknown)
	return summary, bad
}

// spread formats the range of ds: "lo-hi".
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	return fmt.Sprintf("%v-%v", slices.Min(ds).Round(time.Millisecond), slices.Max(ds).Round(time.Millisecond))
}

// The load: volatile Increments on one entity per shard (so every shard's
// availability is measured), each entity called by its own goroutine one
// call at a time; persisted Deposits with message ids on other entities,
// depSlots at a time, each slot's deposits one at a time.
const (
	incPeriod    = time.Second
	incTimeout   = 2 * time.Second
	depSlots     = 200
	depPeriod    = 5 * time.Second
	sendTimeout  = 4 * time.Second
	sendAttempts = 4
	// depPerEntity deposits go to each entity before its slot moves on to
	// a new one: deposit k adds 4^k, so that the Counter's state, which is
	// the sum of the deposits its activation applied, says how many times
	// each was applied (one base-4 digit each; 4^29 fits an int64 thrice).
	depPerEntity = 30
)

type incOp struct {
	start, end time.Time
	value      int
	err        error
}

// incEntity is an entity called with Increment; its goroutine alone
// appends to ops until the load stops.
type incEntity struct {
	id  string
	ops []incOp
}

type deposit struct {
	k      int
	msgID  string
	acked  bool // Send returned without error: stored
	stored bool // a reply is stored: handled (fetchReplies)
	reply  int  // the Counter's state after it
	err    error
}

type depEntity struct {
	id       string
	deps     []*deposit // by k; its slot's goroutine alone appends until the load stops
	final    int        // GetValue after the load (fetchReplies)
	finalErr error
}

type depSlot struct{ entities []*depEntity }

type load struct {
	client *mesh.Client
	incs   []*incEntity
	deps   []*depSlot
	quit   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
	began  time.Time
	// stopped is set by stop.
	stopped time.Time

	mu       sync.Mutex
	lastOK   []time.Time // by inc entity: start of its last answered call
	answered []int       // by inc entity
	errs     map[string]int
}

func startLoad(client *mesh.Client, shards int) *load {
	l := &load{client: client, quit: make(chan struct{}), began: time.Now(), errs: map[string]int{},
		lastOK: make([]time.Time, shards), answered: make([]int, shards)}
	for n := range shards {
		id := ""
		for k := 0; id == ""; k++ {
			if cand := fmt.Sprintf("inc-%d-%d", n, k); protocol.ShardOf(cand, shards) == n {
				id = cand
			}
		}
		e := &incEntity{id: id}
		l.incs = append(l.incs, e)
		l.wg.Go(func() { l.increments(n, e, time.Duration(n)*incPeriod/time.Duration(shards)) })
	}
	for i := range depSlots {
		s := &depSlot{}
		l.deps = append(l.deps, s)
		l.wg.Go(func() { l.deposits(i, s, time.Duration(i)*depPeriod/depSlots) })
	}
	return l
}

// every calls f every period after an initial offset (spreading the
// goroutines' calls), until the load stops.
func (l *load) every(offset, period time.Duration, f func()) {
	select {
	case <-time.After(offset): // pacing, not synchronization
	case <-l.quit:
		return
	}
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		f()
		select {
		case <-l.quit:
			return
		case <-tick.C:
		}
	}
}

func (l *load) increments(n int, e *incEntity, offset time.Duration) {
	l.every(offset, incPeriod, func() {
		ctx, cancel := context.WithTimeout(context.Background(), incTimeout)
		op := incOp{start: time.Now()}
		op.value, op.err = mesh.Call(ctx, l.client, counter.Increment, e.id, counter.Amount{Amount: 1})
		op.end = time.Now()
		cancel()
		e.ops = append(e.ops, op)
		if op.err != nil {
			l.failed("Increment", op.err)
			return
		}
		l.mu.Lock()
		l.lastOK[n] = op.start
		l.answered[n]++
		l.mu.Unlock()
	})
}

func (l *load) deposits(i int, s *depSlot, offset time.Duration) {
	l.every(offset, depPeriod, func() {
		if len(s.entities) == 0 || len(s.entities[len(s.entities)-1].deps) == depPerEntity {
			s.entities = append(s.entities, &depEntity{id: fmt.Sprintf("dep-%d-%d", i, len(s.entities))})
		}
		e := s.entities[len(s.entities)-1]
		k := len(e.deps)
		d := &deposit{k: k, msgID: fmt.Sprintf("%s-%d", e.id, k)}
		e.deps = append(e.deps, d)
		// Again with the same id after a failure: stored once (the
		// stream's dedup window), so the deposit is unknown only if every
		// attempt failed.
		for a := range sendAttempts {
			ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
			err := mesh.Send(ctx, l.client, counter.Deposit, e.id, counter.Amount{Amount: 1 << (2 * k)}, mesh.MessageID(d.msgID))
			cancel()
			if err == nil {
				d.acked = true
				return
			}
			l.failed("Deposit", err)
			if a+1 < sendAttempts {
				time.Sleep(250 * time.Millisecond) // retry pacing
			}
		}
	})
}

func (l *load) failed(op string, err error) {
	class := err.Error()
	var me *mesh.Error
	switch {
	case errors.Is(err, mesh.ErrShardUnavailable):
		class = "shard unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		class = "deadline"
	case errors.As(err, &me):
		class = me.Code
	case len(class) > 60:
		class = class[:60]
	}
	l.mu.Lock()
	l.errs[op+": "+class]++
	l.mu.Unlock()
}

// allAnsweredSince reports whether every Increment entity answered a call
// started after t.
func (l *load) allAnsweredSince(t time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, at := range l.lastOK {
		if at.Before(t) {
			return false
		}
	}
	return true
}

func (l *load) minAnswered() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Min(l.answered)
}

func (l *load) stop() {
	l.once.Do(func() {
		close(l.quit)
		l.wg.Wait()
		l.stopped = time.Now()
	})
}

type loadStats struct {
	incs, incsOK, deposits, depositsAcked, errors int
	errs                                          map[string]int
}

// stats counts the operations; call after stop. errors counts failed
// attempts (a deposit may fail some attempts and be acknowledged).
func (l *load) stats() loadStats {
	st := loadStats{errs: l.errs}
	for _, e := range l.incs {
		for _, op := range e.ops {
			st.incs++
			if op.err == nil {
				st.incsOK++
			}
		}
	}
	for _, s := range l.deps {
		for _, e := range s.entities {
			for _, d := range e.deps {
				st.deposits++
				if d.acked {
					st.depositsAcked++
				}
			}
		}
	}
	for _, n := range l.errs {
		st.errors += n
	}
	return st
}

// write writes every operation and its outcome to path, as evidence; call
// after fetchReplies.
func (l *load) write(path string) error {
	var b strings.Builder
	for _, e := range l.incs {
		for _, op := range e.ops {
			res := strconv.Itoa(op.value)
			if op.err != nil {
				res = "error: " + op.err.Error()
			}
			fmt.Fprintf(&b, "%s %s Increment %s %s\n", op.start.Format("15:04:05.000"), op.end.Format("15:04:05.000"), e.id, res)
		}
	}
	for _, s := range l.deps {
		for _, e := range s.entities {
			for _, d := range e.deps {
				fmt.Fprintf(&b, "Deposit %s acked=%v stored=%v reply=%d err=%v\n", d.msgID, d.acked, d.stored, d.reply, d.err)
			}
			fmt.Fprintf(&b, "GetValue %s %d err=%v\n", e.id, e.final, e.finalErr)
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// maxWindow returns the longest time an Increment entity went without an
// answer, over the gaps between answered calls that overlap [from, to];
// call after stop.
func (l *load) maxWindow(from, to time.Time) time.Duration {
	var worst time.Duration
	for _, e := range l.incs {
		var prev time.Time
		for _, op := range e.ops {
			if op.err != nil {
				continue
			}
			if !prev.IsZero() && op.end.After(from) && prev.Before(to) {
				worst = max(worst, op.end.Sub(prev))
			}
			prev = op.end
		}
	}
	return worst
}

// servedAfter returns how long after t every Increment entity had answered
// a call started at t or later; call after stop.
func (l *load) servedAfter(t time.Time) time.Duration {
	var worst time.Duration
	for _, e := range l.incs {
		i := slices.IndexFunc(e.ops, func(op incOp) bool { return op.err == nil && !op.start.Before(t) })
		if i < 0 {
			return -1
		}
		worst = max(worst, e.ops[i].end.Sub(t))
	}
	return worst
}

// drainPersisted waits until every stored persisted message is handled
// and reports whether they were; it fails t if any was dead-lettered or
// the backlog did not drain.
func drainPersisted(ctx context.Context, t testing.TB, nc *nats.Conn, cfg mesh.Config) bool {
	t.Helper()
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	count := func(stream string) (uint64, error) {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		s, err := js.Stream(sctx, stream)
		if err != nil {
			return 0, err
		}
		return s.CachedInfo().State.Msgs, nil
	}
	_, drained := poll(3*time.Minute, 500*time.Millisecond, func() bool {
		n, err := count(cfg.Prefix + "_persist")
		return err == nil && n == 0
	})
	if !drained {
		n, err := count(cfg.Prefix + "_persist")
		t.Errorf("persisted backlog not drained 3 min after the load stopped: %d messages (%v)", n, err)
	}
	if n, err := count(cfg.Prefix + "_deadletters"); err != nil && !errors.Is(err, natsjs.ErrStreamNotFound) {
		t.Fatal(err)
	} else if n > 0 {
		t.Errorf("%d dead letters, want none (a Deposit cannot fail)", n)
	}
	return drained
}

// fetchReplies reads every deposit's stored reply (mesh.Reply: at once if
// stored) and every deposit entity's final value, a few at a time. Once
// the backlog drained, everything stored is handled: an acknowledged
// deposit gets time for its reply to be read; if it did not drain, none.
func fetchReplies(ctx context.Context, t testing.TB, client *mesh.Client, l *load, drained bool) {
	t.Helper()
	var jobs []func()
	for _, s := range l.deps {
		for _, e := range s.entities {
			for _, d := range e.deps {
				jobs = append(jobs, func() {
					// Everything stored is handled by now (drainPersisted):
					// an unacknowledged deposit without a reply was not stored.
					wait := 2 * time.Second
					if d.acked && drained {
						wait = 15 * time.Second
					}
					rctx, cancel := context.WithTimeout(ctx, wait)
					defer cancel()
					v, err := mesh.Reply(rctx, client, counter.Deposit, d.msgID)
					switch {
					case err == nil:
						d.stored, d.reply = true, v
					case errors.Is(err, context.DeadlineExceeded):
					default:
						d.stored, d.err = true, err
					}
				})
			}
			jobs = append(jobs, func() {
				for range 5 {
					rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
					e.final, e.finalErr = mesh.Call(rctx, client, counter.GetValue, e.id, actor.Empty{})
					cancel()
					if e.finalErr == nil {
						return
					}
				}
			})
		}
	}
	work := make(chan func())
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for f := range work {
				f()
			}
		})
	}
	for _, f := range jobs {
		work <- f
	}
	close(work)
	wg.Wait()
}

// checkIncrements checks one entity's Increment replies for a stale
// activation. Calls are sequential and add 1, so an answered call returns
// the previous answer plus one plus at most the calls that failed in
// between (they may have run), or, from a new activation (the shard moved;
// the Counter keeps its state in memory), 1 plus at most those. Anything
// else is an answer from an activation that a newer one had replaced: a
// runner serving a shard it had lost (or a call run twice).
func checkIncrements(e *incEntity) []string {
	var bad []string
	prev, unknown := 0, 0
	for _, op := range e.ops {
		if op.err != nil {
			unknown++
			continue
		}
		v := op.value
		if (v < prev+1 || v > prev+1+unknown) && (v < 1 || v > 1+unknown) {
			bad = append(bad, fmt.Sprintf("%s: Increment at %s answered %d after %d with %d calls failed between: a stale activation answered",
				e.id, op.start.Format("15:04:05.000"), v, prev, unknown))
		}
		prev, unknown = v, 0
	}
	return bad
}

// digits returns v in base 4, least significant first: digit k is how
// many times deposit k is in the state.
func digits(v int) []int {
	var d []int
	for ; v > 0; v /= 4 {
		d = append(d, v%4)
	}
	return d
}

func digit(d []int, k int) int {
	if k < len(d) {
		return d[k]
	}
	return 0
}

// checkDeposits checks one entity's deposits against their stored replies
// and its final state. The Counter keeps its value as durable state, so
// the state is the sum of every deposit applied, and a reply lists them
// (digits). Deposits are sent one at a time and handled in the order
// stored, so:
//
//   - an acknowledged deposit has a stored reply (it was handled, not
//     lost);
//   - every reply holds its own deposit once and none twice;
//   - the reply of an acknowledged deposit k holds every acknowledged
//     deposit before it, and none after k: the effect of an acknowledged
//     deposit is never lost, by a move, a crash or a passivation;
//   - the final state holds every acknowledged deposit.
//
// A deposit whose every send failed may have been stored late, out of
// order, so only its own digit is checked.
func checkDeposits(e *depEntity) []string {
	var bad []string
	fail := func(format string, args ...any) { bad = append(bad, e.id+": "+fmt.Sprintf(format, args...)) }
	for _, d := range e.deps {
		switch {
		case d.err != nil:
			fail("deposit %d: stored reply is an error: %v", d.k, d.err)
			continue
		case !d.stored:
			if d.acked {
				fail("deposit %d (%s) acknowledged, never handled: no stored reply", d.k, d.msgID)
			}
			continue
		}
		dg := digits(d.reply)
		if digit(dg, d.k) != 1 {
			fail("deposit %d in its own reply %d times (reply %d)", d.k, digit(dg, d.k), d.reply)
		}
		for j, x := range dg {
			if x > 1 {
				fail("reply of deposit %d holds deposit %d %d times", d.k, j, x)
			}
		}
		if !d.acked {
			continue
		}
		for j := d.k + 1; j < len(dg); j++ {
			if dg[j] != 0 {
				fail("reply of deposit %d holds the later deposit %d", d.k, j)
			}
		}
		for j := 0; j < d.k; j++ {
			if e.deps[j].acked && dg[j] != 1 {
				fail("reply of deposit %d lacks acknowledged deposit %d: its effect was lost (or applied by another activation)", d.k, j)
			}
		}
	}
	if e.finalErr != nil {
		fail("GetValue after the load: %v", e.finalErr)
		return bad
	}
	final := digits(e.final)
	for _, d := range e.deps {
		switch x := digit(final, d.k); {
		case d.acked && x != 1:
			fail("final state %d holds acknowledged deposit %d %d times, want once", e.final, d.k, x)
		case x > 1:
			fail("final state %d holds deposit %d %d times", e.final, d.k, x)
		}
	}
	return bad
}
