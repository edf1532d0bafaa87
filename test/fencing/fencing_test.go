// Package fencing_test proves docs/design.md's invariant 1 (single activation)
// when a runner's network fails while its process keeps running: the runner
// must stop serving its shards (fencing) before the server can expire their
// leases, so before any other runner activates one of its entities.
//
// Runner A reaches NATS through a fault-injecting proxy, runner B directly.
// A blackhole (TCP stays up, nothing gets through; neither side notices) and
// a cut (hard disconnect; nats.go reconnects in a loop) are each injected
// under load, then lifted; an observer on both runners records every
// activation and deactivation with its time and order, and the test checks
// the record: A deactivated each of its entities before B activated it, A
// stopped before its leases could expire, the entities recover on B, A
// serves again only through new leases, and no call ran twice.
//
// These tests found three bugs, fixed since and checked strictly here:
// fencing stalled while the runner's socket was full (the lease keeper now
// declares a lease lost by its own timer, and fencing closes the partition
// before touching NATS: TestFencingBlackholeFullSocket); a cut left stale
// shard subscriptions on the server (fencing unsubscribes instead of
// draining: checkSubscriptions); and a call in flight when the network
// healed could run twice (a fenced shard no longer answers NotServing:
// load.check).
package fencing_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/faultproxy"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
	"github.com/natsmesh/natsmesh/test/internal/leaselog"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	runnerA = "runner-a" // behind the proxy
	runnerB = "runner-b" // direct
	// entities are called by workers goroutines, entity e only by worker
	// e % workers, so each entity sees one call at a time, in order.
	entities = 40
	workers  = 4
	// callTimeout bounds each call of the load: a call to a blackholed
	// runner waits for it, then the worker moves on.
	callTimeout = time.Second
	// healWindow is how long after the restore A's stale subscriptions may
	// still deliver calls (a known bug: see load.check): A's backlog, and
	// after a cut the reconnect and the drain's flush.
	healWindow = 2 * time.Second
)

// A partition in which A's TCP connection stays up and nothing gets
// through: A hears nothing, not even that it is cut off.
func TestFencingBlackhole(t *testing.T) {
	runFencing(t, "blackhole", (*faultproxy.Proxy).Blackhole)
}

// A hard disconnect: A's connection closes and nats.go retries every 50 ms,
// refused until the proxy is restored, buffering what A publishes meanwhile.
func TestFencingCut(t *testing.T) {
	runFencing(t, "cut", (*faultproxy.Proxy).Cut)
}

// strict makes the checks of the bugs these tests found errors (they are
// fixed). Set NATSMESH_TOLERATE_KNOWN_BUGS to log them instead, when
// bisecting an old revision, say.
var strict = os.Getenv("NATSMESH_TOLERATE_KNOWN_BUGS") == ""

func config() mesh.Config {
	cfg := mesh.DefaultConfig().FastFailover() // 2 s leases, 0.5 s margin, renewed every 0.5 s
	cfg.ShardsPerGroup = 20
	return cfg
}

// fixture is a NATS server, a shard manager, runner A behind a proxy and
// runner B, with the shards split between them, a client and the lease log.
type fixture struct {
	cfg     mesh.Config
	srv     *server.Server
	proxy   *faultproxy.Proxy
	rec     *recorder
	a, b    *mesh.Runner
	ncA     *nats.Conn
	client  *mesh.Client
	leases  *leaseLog
	oldA    map[mesh.ShardID]bool // A's shards before the fault
	onA     []string              // entities in them
	shardOf func(id string) mesh.ShardID
}

func setup(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{cfg: config()}
	f.srv = natstest.StartServer(t)
	f.proxy = faultproxy.New(t, f.srv.Addr().String())
	f.rec = newRecorder(f.cfg)
	startManager(t, f.srv.ClientURL(), f.cfg)
	f.a, f.ncA = startRunner(t, f.proxy.URL(), f.cfg, runnerA, f.rec,
		nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	f.b, _ = startRunner(t, f.srv.ClientURL(), f.cfg, runnerB, f.rec)
	f.waitSplit(t)

	nc := connect(t, f.srv.ClientURL(), "client")
	var err error
	if f.client, err = mesh.NewClient(nc, f.cfg.ClientConfig); err != nil {
		t.Fatal(err)
	}
	f.shardOf = func(id string) mesh.ShardID { return f.client.Shard(counter.Counter.Name(), id) }
	f.oldA = shardSet(f.a.Shards())
	for e := range entities {
		if f.oldA[f.shardOf(entityID(e))] {
			f.onA = append(f.onA, entityID(e))
		}
	}
	if len(f.onA) == 0 || len(f.onA) == entities {
		t.Fatalf("%d of %d entities on A's shards %v: want some on each runner", len(f.onA), entities, f.oldA)
	}
	f.leases = watchLeases(t, nc, f.cfg)
	return f
}

// waitSplit waits until each runner serves half the shards.
func (f *fixture) waitSplit(t testing.TB) {
	t.Helper()
	half := f.cfg.ShardsPerGroup / 2
	natstest.WaitFor(t, 30*time.Second, func() bool {
		return len(f.a.Shards()) == half && len(f.b.Shards()) == half
	}, "shards split between the runners")
}

// bServesOldA reports whether B serves every shard A served before the
// fault.
func (f *fixture) bServesOldA() bool {
	bs := shardSet(f.b.Shards())
	for s := range f.oldA {
		if !bs[s] {
			return false
		}
	}
	return true
}

func runFencing(t *testing.T, name string, fault func(*faultproxy.Proxy)) {
	f := setup(t)
	load := startLoad(f.client)
	t.Cleanup(load.stop) // also on failure: before the runners shut down
	load.waitAll(t, time.Time{}, "every entity answering before the fault")
	f.rec.mark("fault")
	faultAt := time.Now()
	fault(f.proxy)
	t.Logf("%s: injected at %s; A serves %d shards, %d of %d entities", name, clock(faultAt), len(f.oldA), len(f.onA), entities)

	// Fencing: A lets go of every shard, and the entities come back on B.
	natstest.WaitFor(t, 10*time.Second, func() bool { return len(f.a.Shards()) == 0 }, "A to stop serving every shard")
	aEmpty := time.Now()
	natstest.WaitFor(t, 20*time.Second, f.bServesOldA, "B to serve A's shards")
	bAll := time.Now()
	load.waitAll(t, bAll, "every entity answering on B")
	recovered := time.Now()

	fenced, bFirstActivation := f.rec.checkFenced(t, faultAt, f.onA)
	bAcquired := f.leases.checkAfterFence(t, fenced, runnerB, faultAt, f.oldA)
	slack := f.leases.checkBeforeExpiry(t, f.rec, f.onA, f.shardOf)
	since := func(at time.Time) time.Duration { return at.Sub(faultAt).Round(time.Millisecond) }
	t.Logf("FENCING %s: fenced after %v, B serving after %v, lease TTL %v",
		name, since(fenced), since(bAcquired), f.cfg.ShardLockExpiration)
	t.Logf("%s: A's Shards() empty (polled) after %v; A's last deactivation %v before the earliest expiry of its lease; first lease of A expired after %v; B's first lease on A's shards after %v (server clock), first activation there after %v, all of A's shards served (polled) after %v; every entity answering again after %v",
		name, since(aEmpty), slack.Round(time.Millisecond), since(f.leases.firstExpiry(f.oldA, faultAt)),
		since(bAcquired), since(bFirstActivation), since(bAll), since(recovered))

	// Heal: A comes back, registers again and gets shards back only through
	// the shard manager and new leases.
	f.rec.mark("restore")
	restoreAt := time.Now()
	f.proxy.Restore()
	natstest.WaitFor(t, 10*time.Second, f.ncA.IsConnected, "A reconnected")
	f.waitSplit(t)
	balanced := time.Now()
	load.waitAll(t, balanced, "every entity answering after A is back")
	t.Logf("%s: restored; shards split again after %v", name, balanced.Sub(restoreAt).Round(time.Millisecond))
	f.leases.checkReacquired(t, restoreAt, shardSet(f.a.Shards()))

	load.stop()
	// Calls in flight at the heal may run twice (it must not: see check).
	healed := load.check(t, restoreAt.Add(-callTimeout), restoreAt.Add(healWindow))
	f.rec.check(t)
	checkSubscriptions(t, f.srv, f.cfg, f.a)
	t.Logf("%s: %d calls answered, %d failed or timed out (all during the fault or the hand-back), %d ran twice at the heal (0 expected); %d activations recorded",
		name, load.answered(), load.failed(), healed, f.rec.activations())
}

// Regression check for a fixed bug (jetstream.Keeper and mesh fencing; runs with
// strict): a partition with outbound data backed up on the
// runner's connection. Anything publishing on that connection (here a
// stand-in for application traffic; Runner.Client() shares it too) fills
// the socket buffers once nothing drains them. nats.go's flusher then holds
// the connection lock inside a blocked write until FlusherTimeout (1 min by
// default), and every publish waits for that lock. The keeper's renewal
// blocks in its publish and no longer checks the lease's local validity,
// so Lost does not close when the validity ends; the fencing path
// (stopShard's Drain) needs the same lock too. A keeps its entities active
// while B activates them.
func TestFencingBlackholeFullSocket(t *testing.T) {
	if !strict {
		t.Skip("NATSMESH_TOLERATE_KNOWN_BUGS is set")
	}
	f := setup(t)
	load := startLoad(f.client)
	t.Cleanup(load.stop)
	load.waitAll(t, time.Time{}, "every entity answering before the fault")
	f.rec.mark("fault")
	faultAt := time.Now()
	f.proxy.Blackhole()
	flood := make(chan struct{})
	var flooded sync.WaitGroup
	flooded.Go(func() {
		data := make([]byte, 64<<10)
		for {
			select {
			case <-flood:
				return
			default:
			}
			_ = f.ncA.Publish("app.events", data)
		}
	})
	t.Cleanup(func() {
		// Restore first: the flood (and all of A) is stuck until the
		// socket drains.
		f.proxy.Restore()
		close(flood)
		flooded.Wait()
	})
	deadline := faultAt.Add(f.cfg.ShardLockExpiration - f.cfg.ShardLockMargin)
	natstest.WaitFor(t, 20*time.Second, f.bServesOldA, "B to serve A's shards")
	t.Logf("full socket: B serves A's shards after %v; A still serves %d shards, %v after its leases' local validity ended",
		time.Since(faultAt).Round(time.Millisecond), len(f.a.Shards()), time.Since(deadline).Round(time.Millisecond))
	load.waitAll(t, time.Now(), "every entity answering on B")
	f.rec.check(t) // fails: B activated entities still active on A
	f.rec.checkFenced(t, faultAt, f.onA)
}

func entityID(e int) string { return fmt.Sprintf("e-%d", e) }

func clock(t time.Time) string { return t.Format("15:04:05.000") }

func shardSet(shards []mesh.ShardID) map[mesh.ShardID]bool {
	set := make(map[mesh.ShardID]bool, len(shards))
	for _, s := range shards {
		set[s] = true
	}
	return set
}

func connect(t testing.TB, url, name string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.Name(name)}, opts...)...)
	if err != nil {
		t.Fatalf("connect %s to %s: %v", name, url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// startManager runs a shard manager until the test ends.
func startManager(t testing.TB, url string, cfg mesh.Config) {
	t.Helper()
	nc := connect(t, url, "manager")
	m, err := mesh.NewShardManager(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.Run(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// startRunner starts a runner whose activations rec records; it shuts down
// gracefully when the test ends.
func startRunner(t testing.TB, url string, cfg mesh.Config, id string, rec *recorder, opts ...nats.Option) (*mesh.Runner, *nats.Conn) {
	t.Helper()
	nc := connect(t, url, id, opts...)
	cfg.RunnerID = id
	r, err := mesh.NewRunner(nc, cfg, mesh.WithRuntimeOptions(actor.WithObserver(observer{rec, id})))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Register(meshtest.MemoryCounter()); err != nil {
		t.Fatal(err)
	}
	rec.addRunner(id, r)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Errorf("shutdown %s: %v", id, err)
		}
	})
	return r, nc
}

// recorder keeps every activation and deactivation of every runner in one
// sequence. Events are appended under one lock, so their order is a real
// order: a Deactivated recorded before an Activated happened before it. An
// entity's Activated is reported before its first message is handled and
// its Deactivated after its last, so two runners' activations of one
// address overlap exactly when an Activated is recorded while the other
// runner's activation is still open.
type recorder struct {
	cfg mesh.Config

	mu         sync.Mutex
	events     []event
	active     map[actor.Address]string // address -> runner with an open activation
	runners    map[string]*mesh.Runner
	violations []string
}

type event struct {
	at     time.Time
	runner string
	addr   actor.Address
	up     bool // activated; else deactivated
	reason actor.StopReason
	mark   string // a phase marker, not an activation (runner and addr empty)
}

func newRecorder(cfg mesh.Config) *recorder {
	return &recorder{cfg: cfg, active: map[actor.Address]string{}, runners: map[string]*mesh.Runner{}}
}

func (rec *recorder) addRunner(id string, r *mesh.Runner) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.runners[id] = r
}

func (rec *recorder) mark(name string) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.events = append(rec.events, event{at: time.Now(), mark: name})
}

type observer struct {
	rec    *recorder
	runner string
}

func (o observer) Activated(addr actor.Address) {
	rec := o.rec
	// Shard-level check: no other runner may list the entity's shard as
	// served when an entity of it activates here. (Shards() takes the
	// runner's lock only briefly; no runner calls its observer holding it.)
	shard := mesh.ShardID{Group: rec.cfg.ShardGroups[0], N: protocol.ShardOf(addr.ID, rec.cfg.ShardsPerGroup)}
	rec.mu.Lock()
	others := make(map[string]*mesh.Runner, len(rec.runners))
	for id, r := range rec.runners {
		if id != o.runner {
			others[id] = r
		}
	}
	rec.mu.Unlock()
	var serving []string
	for id, r := range others {
		if slices.Contains(r.Shards(), shard) {
			serving = append(serving, id)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	now := time.Now()
	if len(serving) > 0 {
		rec.violations = append(rec.violations, fmt.Sprintf("%s: %s activated %s while %v still served shard %s", clock(now), o.runner, addr, serving, shard))
	}
	if other, ok := rec.active[addr]; ok {
		rec.violations = append(rec.violations, fmt.Sprintf("%s: %s activated %s while active on %s", clock(now), o.runner, addr, other))
	}
	rec.active[addr] = o.runner
	rec.events = append(rec.events, event{at: now, runner: o.runner, addr: addr, up: true})
}

func (o observer) Deactivated(addr actor.Address, reason actor.StopReason) {
	rec := o.rec
	rec.mu.Lock()
	defer rec.mu.Unlock()
	now := time.Now()
	if rec.active[addr] == o.runner {
		delete(rec.active, addr)
	} else {
		rec.violations = append(rec.violations, fmt.Sprintf("%s: %s deactivated %s (%v), which it had not activated", clock(now), o.runner, addr, reason))
	}
	rec.events = append(rec.events, event{at: now, runner: o.runner, addr: addr, reason: reason})
}

// since returns the events after the marker name.
func (rec *recorder) since(name string) []event {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i, e := range rec.events {
		if e.mark == name {
			return slices.Clone(rec.events[i+1:])
		}
	}
	return nil
}

func (rec *recorder) activations() int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	n := 0
	for _, e := range rec.events {
		if e.up {
			n++
		}
	}
	return n
}

// checkFenced checks the fault phase: every entity A had active was
// deactivated by A (its partition closed), and all of those deactivations
// come before B's first activation of any of them. It returns A's last
// such deactivation and B's first such activation.
func (rec *recorder) checkFenced(t testing.TB, faultAt time.Time, onA []string) (fenced, bServing time.Time) {
	t.Helper()
	ids := map[string]bool{}
	for _, id := range onA {
		ids[id] = true
	}
	events := rec.since("fault")
	deactivated := map[string]bool{}
	lastA, firstB := -1, -1
	for i, e := range events {
		if e.mark != "" || !ids[e.addr.ID] {
			continue
		}
		switch {
		case e.runner == runnerA && e.up:
			t.Errorf("A activated %s at %s, after the fault (+%v): it cannot hold a lease", e.addr, clock(e.at), e.at.Sub(faultAt))
		case e.runner == runnerA:
			if e.reason != actor.StopPartitionClosed {
				t.Errorf("A deactivated %s for %v, want %v (fencing)", e.addr, e.reason, actor.StopPartitionClosed)
			}
			deactivated[e.addr.ID] = true
			lastA = i
		case e.runner == runnerB && e.up && firstB < 0:
			firstB = i
		}
	}
	for _, id := range onA {
		if !deactivated[id] {
			t.Errorf("A never deactivated %s after the fault", id)
		}
	}
	if lastA < 0 || firstB < 0 {
		t.Fatalf("no record of A stopping (%d) or B taking over (%d) A's entities", lastA, firstB)
	}
	if lastA > firstB {
		t.Errorf("NOT FENCED: B activated %s at %s before A deactivated %s at %s",
			events[firstB].addr, clock(events[firstB].at), events[lastA].addr, clock(events[lastA].at))
	}
	return events[lastA].at, events[firstB].at
}

// check fails on any overlap of two runners' activations of one address,
// and on any entity activated while another runner served its shard,
// throughout the test.
func (rec *recorder) check(t testing.TB) {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, v := range rec.violations {
		t.Errorf("single activation violated: %s", v)
	}
}

// leaseLog is the lease bucket's writes (leaselog) with the checks on
// them: the server cannot expire a lease earlier than its last write plus
// the TTL.
type leaseLog struct {
	cfg mesh.Config
	*leaselog.Log
}

func watchLeases(t testing.TB, nc *nats.Conn, cfg mesh.Config) *leaseLog {
	t.Helper()
	return &leaseLog{cfg: cfg, Log: leaselog.Watch(t, nc, cfg)}
}

// lastWriteBefore returns the server time of holder's last write of shard
// before t.
func (l *leaseLog) lastWriteBefore(shard mesh.ShardID, holder string, t time.Time) time.Time {
	var last time.Time
	for _, e := range l.Entries() {
		if e.Shard == shard && e.Held() && e.Holder == holder && e.At.Before(t) {
			last = e.At
		}
	}
	return last
}

// firstExpiry returns when the first of shards expired or was released
// after t, by the server's clock.
func (l *leaseLog) firstExpiry(shards map[mesh.ShardID]bool, t time.Time) time.Time {
	for _, e := range l.Entries() {
		if shards[e.Shard] && !e.Held() && e.At.After(t) {
			return e.At
		}
	}
	return time.Time{}
}

// checkAfterFence checks that holder wrote no lease of shards after t
// before fenced (A's last deactivation), and returns its first write
// after t: the moment it could start serving one of them.
func (l *leaseLog) checkAfterFence(tb testing.TB, fenced time.Time, holder string, t time.Time, shards map[mesh.ShardID]bool) time.Time {
	tb.Helper()
	for _, e := range l.Entries() {
		if !shards[e.Shard] || !e.Held() || e.Holder != holder || !e.At.After(t) {
			continue
		}
		if !e.At.After(fenced) {
			tb.Errorf("NOT FENCED: %s acquired shard %s at %s, before A's last deactivation at %s", holder, e.Shard, clock(e.At), clock(fenced))
		}
		return e.At
	}
	tb.Fatalf("no lease write of %s on A's shards after %s", holder, clock(t))
	return time.Time{}
}

// checkBeforeExpiry checks that A deactivated each of its entities after
// the fault before the server could have expired the shard's lease: before
// A's last lease write that reached the server plus the TTL. It returns the
// smallest slack.
func (l *leaseLog) checkBeforeExpiry(t testing.TB, rec *recorder, onA []string, shardOf func(string) mesh.ShardID) time.Duration {
	t.Helper()
	ttl := l.cfg.ShardLockExpiration
	slack := ttl
	for _, e := range rec.since("fault") {
		if e.runner != runnerA || e.up || !slices.Contains(onA, e.addr.ID) {
			continue
		}
		s := shardOf(e.addr.ID)
		last := l.lastWriteBefore(s, runnerA, e.at)
		if last.IsZero() {
			t.Errorf("no lease write of A for shard %s seen", s)
			continue
		}
		earliestExpiry := last.Add(ttl)
		if !e.at.Before(earliestExpiry) {
			t.Errorf("A deactivated %s at %s, not before its lease of %s could expire (last write %s + TTL %v)",
				e.addr, clock(e.at), s, clock(last), ttl)
		}
		slack = min(slack, earliestExpiry.Sub(e.at))
	}
	return slack
}

// checkReacquired checks that every shard A serves after the restore has a
// lease A acquired after the restore: A never resumes an old lease.
func (l *leaseLog) checkReacquired(t testing.TB, restoreAt time.Time, served map[mesh.ShardID]bool) {
	t.Helper()
	acquired := map[mesh.ShardID]bool{}
	prev := map[mesh.ShardID]leaselog.Entry{}
	for _, e := range l.Entries() {
		p, seen := prev[e.Shard]
		prev[e.Shard] = e
		if !e.At.After(restoreAt) || !e.Held() || e.Holder != runnerA {
			continue
		}
		// A new lease is a write after a release or expiry marker (or
		// another holder's write); a renewal follows A's own write.
		if !seen || !p.Held() || p.Holder != runnerA {
			acquired[e.Shard] = true
		}
	}
	for s := range served {
		if !acquired[s] {
			t.Errorf("A serves shard %s after the restore without having acquired its lease again", s)
		}
	}
}

// checkSubscriptions checks that the server holds exactly one shard
// subscription on A's connection per shard A serves, and none for shards it
// does not serve: a leftover one makes the server deliver every call of
// that shard to A as well.
//
// Regression check for a fixed bug (mesh stopShard + nats.go v1.55.0; an error with
// strict, logged otherwise): after a cut, A's connection
// keeps one extra subscription per shard fenced while disconnected. Fencing
// drains the shard subscription (Subscription.Drain) while nats.go is
// reconnecting: nats.go then sends no UNSUB (nats.go unsubscribe: "We will
// send these for all subs when we reconnect"), resendSubscriptions re-sends
// the draining subscription's SUB on reconnect, and checkDrained later
// removes it on the client only (removeSub, no UNSUB). The server keeps
// routing the shard's calls to A for the connection's lifetime; nats.go
// drops them (unknown sid), and each cut adds more. Until checkDrained's
// flush returns, the draining subscription still feeds the runner's inbox,
// so a call to a shard B now owns can also reach A, which answers
// NotServing; if that answer beats B's, the client retries and the call
// runs twice.
func checkSubscriptions(t testing.TB, srv *server.Server, cfg mesh.Config, a *mesh.Runner) {
	t.Helper()
	served := shardSet(a.Shards())
	cz, err := srv.Connz(&server.ConnzOptions{Subscriptions: true})
	if err != nil {
		t.Fatal(err)
	}
	prefix := cfg.Prefix + "." + protocol.Version + ".call." + cfg.ShardGroups[0] + "."
	count := map[mesh.ShardID]int{}
	for _, c := range cz.Conns {
		if c.Name != runnerA {
			continue
		}
		for _, sub := range c.Subs {
			var n int
			if rest, ok := strings.CutPrefix(sub, prefix); ok {
				if _, err := fmt.Sscanf(rest, "%d.>", &n); err == nil {
					count[mesh.ShardID{Group: cfg.ShardGroups[0], N: n}]++
				}
			}
		}
	}
	var bad []string
	for s, n := range count {
		if want := map[bool]int{true: 1}[served[s]]; n != want {
			bad = append(bad, fmt.Sprintf("%s: %d, want %d", s, n, want))
		}
	}
	for s := range served {
		if count[s] == 0 {
			t.Errorf("A serves shard %s but the server has no subscription of A for it", s)
		}
	}
	if len(bad) == 0 {
		return
	}
	slices.Sort(bad)
	msg := fmt.Sprintf("STALE SUBSCRIPTIONS: the server holds shard subscriptions of A that A does not use (%d shards): %s", len(bad), strings.Join(bad, "; "))
	if strict {
		t.Error(msg)
	} else {
		t.Log("known bug: " + msg)
	}
}

// load calls Increment on every entity, entity e from worker e % workers
// only, so each entity's calls are sequential and its replies can be
// checked: a counter's value is at most its previous value plus one plus
// the calls in between that got no answer (they may have run). More means
// a call ran twice.
type load struct {
	client *mesh.Client
	quit   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once

	mu       sync.Mutex
	lastOK   map[string]time.Time // start of the last answered call
	ok, fail int
	errs     []string
	twice    []duplicate
}

// duplicate is a call whose answer shows that a call ran twice.
type duplicate struct {
	start time.Time
	msg   string
}

func startLoad(client *mesh.Client) *load {
	l := &load{client: client, quit: make(chan struct{}), lastOK: map[string]time.Time{}}
	for w := range workers {
		l.wg.Go(func() { l.work(w) })
	}
	return l
}

func (l *load) work(w int) {
	last := map[string]int{}       // last value seen per entity
	unanswered := map[string]int{} // calls without an answer since then
	for {
		for e := w; e < entities; e += workers {
			select {
			case <-l.quit:
				return
			default:
			}
			id := entityID(e)
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			start := time.Now()
			v, err := mesh.Call(ctx, l.client, counter.Increment, id, counter.Amount{Amount: 1})
			cancel()
			l.mu.Lock()
			switch {
			case err != nil:
				l.fail++
				unanswered[id]++
				if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, mesh.ErrShardUnavailable) {
					l.errs = append(l.errs, fmt.Sprintf("%s: Increment(%s): %v", clock(start), id, err))
				}
			default:
				l.ok++
				l.lastOK[id] = start
				if bound := last[id] + 1 + unanswered[id]; v > bound {
					l.twice = append(l.twice, duplicate{start, fmt.Sprintf("%s: Increment(%s) = %d, want at most %d (last %d, %d unanswered since): a call ran twice",
						clock(start), id, v, bound, last[id], unanswered[id])})
				}
				last[id], unanswered[id] = v, 0
			}
			l.mu.Unlock()
		}
	}
}

// waitAll waits until every entity answered a call that started after t.
func (l *load) waitAll(tb testing.TB, t time.Time, what string) {
	tb.Helper()
	natstest.WaitFor(tb, 30*time.Second, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for e := range entities {
			if at, ok := l.lastOK[entityID(e)]; !ok || at.Before(t) {
				return false
			}
		}
		return true
	}, what)
}

func (l *load) stop() {
	l.once.Do(func() { close(l.quit) })
	l.wg.Wait()
}

func (l *load) answered() int { l.mu.Lock(); defer l.mu.Unlock(); return l.ok }
func (l *load) failed() int   { l.mu.Lock(); defer l.mu.Unlock(); return l.fail }

// check fails on calls that failed other than by finding no runner in
// time, and on calls that ran twice, except those started in [from, to)
// while strict is off: it returns how many it excused.
//
// Regression check for a fixed bug (mesh: retry on NotServing; an error with strict,
// logged otherwise): a call in flight when A's network heals can run twice
// on B. While A is cut off the server keeps A's shard subscriptions (A's
// UNSUBs cannot reach it; after a cut nats.go even re-sends them, see
// checkSubscriptions), so every call to A's old shards goes to B and to
// A's connection. When the network heals, A's draining subscriptions
// deliver that backlog and A, fenced, answers each call NotServing. A
// caller whose call B ran but whose answer from B has not arrived yet gets
// A's NotServing first and retries (the client takes NotServing to mean
// "not run"), and B runs the call again. Seen with monitor subscriptions:
// call sent 04.194 to shard 8 (B's); A's NotServing 04.222; B's answer (3)
// 04.222, after it; the retry runs and answers 4.
func (l *load) check(t testing.TB, from, to time.Time) (excused int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.errs {
		t.Error(e)
	}
	for _, d := range l.twice {
		switch {
		case !strict && !d.start.Before(from) && d.start.Before(to):
			t.Log("known bug: " + d.msg)
			excused++
		default:
			t.Error(d.msg)
		}
	}
	return excused
}
