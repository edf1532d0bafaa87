package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

var (
	Ledger  = actor.NewEntity("Ledger")
	Post    = actor.NewRPC[int, int](Ledger, "Post", actor.Persisted())
	Entries = actor.NewRPC[actor.Empty, []int](Ledger, "Entries")
	Shaky   = actor.NewRPC[int, string](Ledger, "Shaky", actor.Persisted())
	Gate    = actor.NewRPC[int, int](Ledger, "Gate", actor.Persisted())
)

// ledgerLog is shared by every activation and runner in a test, so handler
// runs are counted across crashes.
type ledgerLog struct {
	mu      sync.Mutex
	posts   map[string][]int     // entity -> values in handling order
	when    map[string]time.Time // entity -> time of its last Post
	runs    atomic.Int64         // Post handler runs that applied a message
	reruns  atomic.Int64         // Post handler runs for a message applied before
	applied map[string]int       // message id -> Post's answer; stands for state kept with the entity
	shaky   atomic.Int64         // Shaky handler runs
	gate    chan struct{}        // Gate waits on it
	entered chan int
}

func newLedgerLog() *ledgerLog {
	return &ledgerLog{posts: map[string][]int{}, when: map[string]time.Time{}, applied: map[string]int{}, gate: make(chan struct{}), entered: make(chan int, 100)}
}

func (l *ledgerLog) values(id string) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int(nil), l.posts[id]...)
}

func ledgerBehavior(l *ledgerLog) *actor.Behavior {
	return actor.Implement(Ledger, func(self *actor.Instance) ([]actor.Handler, error) {
		id := self.Address().ID
		return []actor.Handler{
			actor.Handle(Post, func(ctx context.Context, v int) (int, error) {
				// Exactly-once effect: the ids applied are kept with the
				// state (here a log shared by every runner, standing for a
				// durable-state entity), so a message run again after a
				// crash is answered without being applied twice.
				msgID, _ := mesh.MessageIDFromContext(ctx)
				l.mu.Lock()
				defer l.mu.Unlock()
				if n, ok := l.applied[msgID]; ok && msgID != "" {
					l.reruns.Add(1)
					return n, nil
				}
				l.runs.Add(1)
				l.posts[id] = append(l.posts[id], v)
				l.when[id] = time.Now()
				n := len(l.posts[id])
				l.applied[msgID] = n
				return n, nil
			}),
			actor.Handle(Entries, func(context.Context, actor.Empty) ([]int, error) { return l.values(id), nil }),
			actor.Handle(Shaky, func(_ context.Context, failures int) (string, error) {
				if int(l.shaky.Add(1)) <= failures {
					panic("not yet")
				}
				return "ok", nil
			}),
			actor.Handle(Gate, func(_ context.Context, v int) (int, error) {
				l.entered <- v
				<-l.gate
				return v, nil
			}),
		}, nil
	})
}

// startUnmanaged starts a runner on its own connection without registering
// its shutdown: for tests that crash it (close nc) or stop it themselves.
func startUnmanaged(t testing.TB, url string, cfg mesh.Config, behaviors ...*actor.Behavior) (*mesh.Runner, *nats.Conn) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	r, err := mesh.NewRunner(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range behaviors {
		if err := r.Register(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r, nc
}

func persistConfig() mesh.Config {
	cfg := testConfig() // standalone, 16 shards
	cfg.PersistMaxAttempts = 3
	cfg.PersistRetryBackoff = 10 * time.Millisecond
	cfg.PersistRetryBackoffMax = 50 * time.Millisecond
	return cfg
}

func TestPersistedCallSendReply(t *testing.T) {
	s := natstest.StartServer(t)
	l := newLedgerLog()
	startRunner(t, s.ClientURL(), persistConfig(), ledgerBehavior(l))
	c, _ := newClient(t, s.ClientURL(), persistConfig())
	ctx := context.Background()
	if n, err := mesh.Call(ctx, c, Post, "acct", 10); err != nil || n != 1 {
		t.Fatalf("Call = %d, %v", n, err)
	}
	if err := mesh.Send(ctx, c, Post, "acct", 20, mesh.MessageID("order-20")); err != nil {
		t.Fatal(err)
	}
	// Re-attach by id, as a restarted caller would.
	if n, err := mesh.Reply(ctx, c, Post, "order-20"); err != nil || n != 2 {
		t.Fatalf("Reply = %d, %v", n, err)
	}
	// The same id again: stored once, answered from the stored reply.
	if n, err := mesh.Call(ctx, c, Post, "acct", 20, mesh.MessageID("order-20")); err != nil || n != 2 {
		t.Fatalf("duplicate Call = %d, %v", n, err)
	}
	if got := l.values("acct"); fmt.Sprint(got) != "[10 20]" {
		t.Fatalf("handled %v, want [10 20]", got)
	}
	// JSON callers share ids and replies with msgpack ones.
	jcfg := persistConfig()
	jcfg.Codec = protocol.CodecJSON
	jc, _ := newClient(t, s.ClientURL(), jcfg)
	if n, err := mesh.Call(ctx, jc, Post, "acct", 30, mesh.MessageID("id with spaces/and:odd*chars")); err != nil || n != 3 {
		t.Fatalf("JSON Call = %d, %v", n, err)
	}
	if n, err := mesh.Reply(ctx, jc, Post, "id with spaces/and:odd*chars"); err != nil || n != 3 {
		t.Fatalf("JSON Reply = %d, %v", n, err)
	}
	// A reply stored in JSON is read by a msgpack client too, when it
	// re-attaches or sends the same id again: decoded in the codec it was
	// stored in ("3" read as msgpack would be 51).
	if n, err := mesh.Reply(ctx, c, Post, "id with spaces/and:odd*chars"); err != nil || n != 3 {
		t.Fatalf("msgpack Reply of a JSON message = %d, %v; want 3", n, err)
	}
	if n, err := mesh.Call(ctx, c, Post, "acct", 30, mesh.MessageID("id with spaces/and:odd*chars")); err != nil || n != 3 {
		t.Fatalf("msgpack duplicate of a JSON message = %d, %v; want 3", n, err)
	}
	// A raw persisted call (the gateway's path) with an idempotency key:
	// handled once, the retry gets the stored reply.
	raw := mesh.RawCall{EntityType: "Ledger", ID: "acct", RPC: "Post", Codec: protocol.CodecJSON, Payload: []byte("40"), Persisted: true, MessageID: "raw-40"}
	for range 2 {
		if got, err := c.CallRaw(ctx, raw); err != nil || string(got) != "4" {
			t.Fatalf("CallRaw persisted = %q, %v", got, err)
		}
	}
	if got := l.values("acct"); fmt.Sprint(got) != "[10 20 30 40]" {
		t.Fatalf("handled %v, want [10 20 30 40]", got)
	}
}

// Persisted messages to one entity are handled in the order stored.
func TestPersistedOrder(t *testing.T) {
	s := natstest.StartServer(t)
	l := newLedgerLog()
	startRunner(t, s.ClientURL(), persistConfig(), ledgerBehavior(l))
	c, _ := newClient(t, s.ClientURL(), persistConfig())
	ctx := context.Background()
	const n = 200
	for i := range n {
		if err := mesh.Send(ctx, c, Post, fmt.Sprint("e", i%3), i); err != nil {
			t.Fatal(err)
		}
	}
	natstest.WaitFor(t, 20*time.Second, func() bool { return l.runs.Load() == n }, "all persisted messages handled")
	for e := range 3 {
		got := l.values(fmt.Sprint("e", e))
		for i := 1; i < len(got); i++ {
			if got[i] < got[i-1] {
				t.Fatalf("entity e%d handled %v out of order", e, got)
			}
		}
	}
}

// A delivery lost in flight (as in a consumer leader change) does not let
// the entity's later messages overtake it: the consumer sees the gap in its
// delivery sequence and restarts from its ack floor. Without that, the
// lost message would come back only after the ack wait, out of order.
func TestPersistedLostDelivery(t *testing.T) {
	s := natstest.StartServer(t)
	var mu sync.Mutex
	lose := map[uint64]bool{5: true, 17: true, 18: true, 40: true}
	lost := 0
	l := newLedgerLog()
	r := startRunner(t, s.ClientURL(), persistConfig(), ledgerBehavior(l))
	defer mesh.LoseDeliveries(r, func(seq, _ uint64) bool {
		mu.Lock()
		defer mu.Unlock()
		if lose[seq] {
			delete(lose, seq)
			lost++
			return true
		}
		return false
	})()
	c, _ := newClient(t, s.ClientURL(), persistConfig())
	ctx := context.Background()
	const n = 60
	for i := range n {
		opts := []mesh.CallOption{}
		if i%2 == 0 { // half with replies stored, half without
			opts = append(opts, mesh.MessageID(fmt.Sprint("m", i)))
		}
		if err := mesh.Send(ctx, c, Post, "e", i, opts...); err != nil {
			t.Fatal(err)
		}
	}
	natstest.WaitFor(t, 20*time.Second, func() bool { return len(l.values("e")) >= n }, "all persisted messages handled")
	got := l.values("e")
	for i, v := range got {
		if v != i {
			t.Fatalf("handled %v, want 0..%d in order, each once", got, n-1)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if lost != 4 {
		t.Fatalf("%d deliveries lost, want 4", lost)
	}
}

// A handler that panics is retried; one that keeps panicking is
// dead-lettered with an error reply, and its entity's later messages go on.
func TestPersistedRetryAndDeadLetter(t *testing.T) {
	s := natstest.StartServer(t)
	l := newLedgerLog()
	startRunner(t, s.ClientURL(), persistConfig(), ledgerBehavior(l))
	c, nc := newClient(t, s.ClientURL(), persistConfig())
	ctx := context.Background()
	if got, err := mesh.Call(ctx, c, Shaky, "x", 2); err != nil || got != "ok" {
		t.Fatalf("Shaky(2) = %q, %v; want ok after two retries", got, err)
	}
	if runs := l.shaky.Load(); runs != 3 {
		t.Fatalf("Shaky ran %d times, want 3", runs)
	}
	l.shaky.Store(0)
	_, err := mesh.Call(ctx, c, Shaky, "x", 100)
	if !errors.Is(err, actor.ErrDefect) {
		t.Fatalf("Shaky(100) = %v, want a defect after the attempts", err)
	}
	if runs := l.shaky.Load(); runs != 3 {
		t.Fatalf("Shaky ran %d times, want PersistMaxAttempts = 3", runs)
	}
	if n, err := mesh.Call(ctx, c, Post, "x", 1); err != nil || n != 1 {
		t.Fatalf("next message to the entity = %d, %v", n, err)
	}
	// The dead letter is in its stream, with the reason.
	js, _ := nc.JetStream()
	m, err := js.GetLastMsg("mesh_deadletters", "mesh.v1.dead.>")
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(protocol.HeaderDeadCode) != protocol.CodeDefect || m.Header.Get(protocol.HeaderAttempts) != "3" {
		t.Fatalf("dead letter headers %v", m.Header)
	}
}

// A persisted message stored before its runner died is handled by the next
// runner (forward recovery), in order, and a message whose reply was stored
// is not handled twice.
func TestPersistedForwardRecovery(t *testing.T) {
	s := natstest.StartServer(t)
	l := newLedgerLog()
	cfg := persistConfig()

	// The first runner, on a connection we will sever (a crash: no
	// graceful shutdown, nothing acknowledged after it).
	r1, nc1 := startUnmanaged(t, s.ClientURL(), cfg, ledgerBehavior(l))
	c, _ := newClient(t, s.ClientURL(), cfg)
	ctx := context.Background()
	if err := mesh.Send(ctx, c, Post, "acct", 1); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool { return l.runs.Load() == 1 }, "first message handled")
	// Block the entity, queue more behind it, then crash the runner.
	if err := mesh.Send(ctx, c, Gate, "acct", 0); err != nil {
		t.Fatal(err)
	}
	<-l.entered
	for i := 2; i <= 5; i++ {
		if err := mesh.Send(ctx, c, Post, "acct", i, mesh.MessageID(fmt.Sprint("post-", i))); err != nil {
			t.Fatal(err)
		}
	}
	nc1.Close()
	close(l.gate) // the old activation's handler returns into a dead connection
	t.Cleanup(func() { _ = r1.Shutdown(context.Background()) })

	startRunner(t, s.ClientURL(), cfg, ledgerBehavior(l))
	for i := 2; i <= 5; i++ {
		if n, err := mesh.Reply(ctx, c, Post, fmt.Sprint("post-", i)); err != nil || n != i {
			t.Fatalf("reply of post-%d = %d, %v", i, n, err)
		}
	}
	if got := l.values("acct"); fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Fatalf("handled %v, want [1 2 3 4 5] exactly once each", got)
	}
}

// DeliverAt holds a message until its time, across a runner restart.
func TestPersistedDeliverAt(t *testing.T) {
	s := natstest.StartServer(t)
	l := newLedgerLog()
	cfg := persistConfig()
	r1, nc1 := startUnmanaged(t, s.ClientURL(), cfg, ledgerBehavior(l))
	defer nc1.Close()
	c, _ := newClient(t, s.ClientURL(), cfg)
	ctx := context.Background()
	at := time.Now().Add(1500 * time.Millisecond)
	if err := mesh.Send(ctx, c, Post, "later", 7, mesh.MessageID("later-7"), mesh.DeliverAt(at)); err != nil {
		t.Fatal(err)
	}
	if err := mesh.Send(ctx, c, Post, "now", 1); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool { return len(l.values("now")) == 1 }, "the undelayed message")
	if got := l.values("later"); len(got) != 0 {
		t.Fatalf("delayed message handled early: %v", got)
	}
	// Restart the runner while the message waits.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := r1.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	startRunner(t, s.ClientURL(), cfg, ledgerBehavior(l))
	n, err := mesh.Reply(ctx, c, Post, "later-7")
	if err != nil || n != 1 {
		t.Fatalf("Reply = %d, %v", n, err)
	}
	l.mu.Lock()
	handled := l.when["later"]
	l.mu.Unlock()
	if handled.Before(at) {
		t.Fatalf("handled %v before its time", at.Sub(handled))
	}
}

// Dead letters can be listed and re-driven once the cause is fixed.
func TestDeadLetterRedrive(t *testing.T) {
	s := natstest.StartServer(t)
	l := newLedgerLog()
	cfg := persistConfig()
	startRunner(t, s.ClientURL(), cfg, ledgerBehavior(l))
	c, nc := newClient(t, s.ClientURL(), cfg)
	ctx := context.Background()
	if _, err := mesh.Call(ctx, c, Shaky, "d", 5, mesh.MessageID("shaky-5")); !errors.Is(err, actor.ErrDefect) {
		t.Fatalf("Shaky(5) = %v, want a defect", err)
	}
	dls, err := mesh.DeadLetters(ctx, nc, cfg.ClientConfig, 0, 10)
	if err != nil || len(dls) != 1 {
		t.Fatalf("DeadLetters = %+v, %v", dls, err)
	}
	dl := dls[0]
	if dl.MsgID != "shaky-5" || dl.EntityType != "Ledger" || dl.EntityID != "d" || dl.RPC != "Shaky" || dl.Code != protocol.CodeDefect || dl.Attempts != 3 {
		t.Fatalf("dead letter = %+v", dl)
	}
	// Two more failures happen on re-drive, then it succeeds (the 6th run).
	if err := mesh.Redrive(ctx, nc, cfg.ClientConfig, dl.Seq); err != nil {
		t.Fatal(err)
	}
	if got, err := mesh.Reply(ctx, c, Shaky, "shaky-5"); err != nil || got != "ok" {
		t.Fatalf("after re-drive: %q, %v", got, err)
	}
	if dls, err := mesh.DeadLetters(ctx, nc, cfg.ClientConfig, 0, 10); err != nil || len(dls) != 0 {
		t.Fatalf("dead letters after re-drive: %+v, %v", dls, err)
	}
}

// Bad input to persisted subjects is dead-lettered, never retried forever.
func TestPersistedBadInput(t *testing.T) {
	s := natstest.StartServer(t)
	cfg := persistConfig()
	startRunner(t, s.ClientURL(), cfg, ledgerBehavior(newLedgerLog()))
	c, nc := newClient(t, s.ClientURL(), cfg)
	ctx := context.Background()
	if _, err := mesh.Call(ctx, c, Post, "warm", 1); err != nil { // creates the stream
		t.Fatal(err)
	}
	js, _ := nc.JetStream()
	shard := protocol.ShardOf("bad", cfg.ShardsPerGroup)
	pub := func(subject string, hdr nats.Header, data string) {
		t.Helper()
		m := &nats.Msg{Subject: subject, Header: hdr, Data: []byte(data)}
		if _, err := js.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	subj := fmt.Sprintf("mesh.v1.persist.default.%d.Ledger.", shard)
	pub(subj+"Post", nats.Header{"Mesh-Id": {"bad"}, "Mesh-Msg-Id": {"m1"}}, "{not json")
	pub(subj+"Nope", nats.Header{"Mesh-Id": {"bad"}, "Mesh-Msg-Id": {"m2"}}, "1")
	pub(subj+"Post", nats.Header{"Mesh-Msg-Id": {"m3"}}, "1")
	pub(subj+"Post", nats.Header{"Mesh-Id": {"bad"}, "Mesh-Msg-Id": {"m4"}, "Mesh-Codec": {"xml"}}, "1")
	want := map[string]string{"m1": protocol.CodeMalformed, "m2": protocol.CodeUnknownRPC, "m3": protocol.CodeBadRequest, "m4": protocol.CodeBadRequest}
	var dls []mesh.DeadLetter
	natstest.WaitFor(t, 10*time.Second, func() bool {
		dls, _ = mesh.DeadLetters(ctx, nc, cfg.ClientConfig, 0, 10)
		return len(dls) == len(want)
	}, "four dead letters")
	for _, dl := range dls {
		if want[dl.MsgID] != dl.Code {
			t.Fatalf("dead letter %s has code %s, want %s (%s)", dl.MsgID, dl.Code, want[dl.MsgID], dl.Reason)
		}
	}
	if n, err := mesh.Call(ctx, c, Post, "bad", 5); err != nil || n != 1 {
		t.Fatalf("entity after bad input = %d, %v", n, err)
	}
}

// On a 3-server NATS cluster with R3 storage, under continuous persisted
// load, a runner crashes (its connection severed: nothing released, nothing
// acknowledged after) and a NATS server is shut down. Every message the
// client saw acknowledged is handled, in order per entity; a message is
// handled twice only if its runner crashed between running it and storing
// its reply.
func TestPersistedR3CrashAndServerLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-server NATS cluster")
	}
	servers := natstest.StartCluster(t, 3)
	url := natstest.ClientURLs(servers)
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup = 12
	cfg.StorageReplicas = 3
	cfg.ShardLockExpiration = 12 * time.Second // outlasts a stream leader election
	cfg.ShardLockRefreshInterval = 2 * time.Second
	cfg.RefreshAssignmentsInterval = time.Second
	cfg.CallTimeout = 30 * time.Second
	l := newLedgerLog()
	c := &testCluster{t: t, url: url, cfg: cfg, obs: newActivations(), runners: map[string]*mesh.Runner{}}
	c.manager()
	start := func(id string) (*mesh.Runner, *nats.Conn) {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		rc := cfg
		rc.RunnerID = id
		opts := []mesh.Option{mesh.WithRuntimeOptions(actor.WithObserver(runnerObserver{c.obs, id}))}
		if os.Getenv("MESH_TEST_LOG") != "" {
			opts = append(opts, mesh.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))))
		}
		r, err := mesh.NewRunner(nc, rc, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Register(ledgerBehavior(l)); err != nil {
			t.Fatal(err)
		}
		if err := r.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_ = r.Shutdown(ctx)
			nc.Close()
		})
		return r, nc
	}
	r1, nc1 := start("r1")
	r2, _ := start("r2")
	natstest.WaitFor(t, 30*time.Second, func() bool { return len(r1.Shards()) == 6 && len(r2.Shards()) == 6 }, "balanced")

	client, cnc := newClient(t, url, cfg)
	const entities = 20
	var mu sync.Mutex
	acked := map[string][]int{} // entity -> values acknowledged, in send order
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				e := fmt.Sprint("acct-", (w*1000+i)%entities)
				v := w*1_000_000 + i // increasing per writer
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := mesh.Send(ctx, client, Post, e, v, mesh.MessageID(fmt.Sprint("r3-", v)))
				cancel()
				if err == nil {
					mu.Lock()
					acked[e] = append(acked[e], v)
					mu.Unlock()
				}
			}
		})
	}
	handled := func() int64 { return l.runs.Load() }
	natstest.WaitFor(t, 30*time.Second, func() bool { return handled() > 300 }, "load flowing")
	nc1.Close() // r1 crashes
	natstest.WaitFor(t, 60*time.Second, func() bool { return len(r2.Shards()) == 12 }, "r2 takes over r1's shards")
	base := handled()
	natstest.WaitFor(t, 30*time.Second, func() bool { return handled() > base+300 }, "load after the crash")
	leader := natstest.StreamLeader(t, servers, cnc, "KV_"+cfg.Prefix+"_leases")
	leader.Shutdown()
	base = handled()
	natstest.WaitFor(t, 60*time.Second, func() bool { return handled() > base+300 }, "load after the server loss")
	close(stop)
	wg.Wait()

	// Every acknowledged message is handled, eventually.
	mu.Lock()
	defer mu.Unlock()
	var total int
	for _, vs := range acked {
		total += len(vs)
	}
	missing := func() []string {
		var out []string
		for e, vs := range acked {
			got := map[int]bool{}
			for _, v := range l.values(e) {
				got[v] = true
			}
			for _, v := range vs {
				if !got[v] {
					out = append(out, fmt.Sprintf("%s:%d", e, v))
				}
			}
		}
		return out
	}
	// The writers ran flat out, so the backlog can be tens of thousands of
	// messages on a loaded machine: wait while it shrinks, and fail only
	// when it stops shrinking for 30 s (a stall), or after 5 minutes.
	left, progress := len(missing()), time.Now()
	for end := time.Now().Add(5 * time.Minute); left > 0 && time.Since(progress) < 30*time.Second && time.Now().Before(end); {
		time.Sleep(100 * time.Millisecond) // poll interval while the backlog drains
		if n := len(missing()); n < left {
			left, progress = n, time.Now()
		}
	}
	if m := missing(); len(m) > 0 {
		t.Logf("r2: %s", mesh.DebugPersisted(r2))
		if js, err := natsjs.New(cnc); err == nil {
			if ci, err := js.Consumer(context.Background(), cfg.Prefix+"_persist", "runner-r2"); err == nil {
				info := ci.CachedInfo()
				t.Logf("consumer runner-r2: pending %d, ack pending %d, redelivered %d, waiting %d, delivered %+v, ack floor %+v",
					info.NumPending, info.NumAckPending, info.NumRedelivered, info.NumWaiting, info.Delivered, info.AckFloor)
			}
		}
		buf := make([]byte, 1<<22)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "persistConsumer") || strings.Contains(g, "coordinator") {
				t.Logf("%s", g)
			}
		}
		t.Fatalf("%d acknowledged messages not handled (no progress for 30 s, or 5 minutes), first: %v", len(m), m[:min(len(m), 10)])
	}
	dups, reordered := 0, 0
	for e := range acked {
		seen := map[int]bool{}
		last := map[int]int{} // writer -> last value handled
		for _, v := range l.values(e) {
			if seen[v] {
				// Each message carries its writer's id: applied twice
				// means the id-based dedup failed.
				t.Errorf("%s: %d applied twice", e, v)
				dups++
				continue
			}
			seen[v] = true
			w := v / 1_000_000
			if prev, ok := last[w]; ok && v < prev {
				// A delivery lost while the consumer's leader changes must
				// not be handled behind the entity's later messages: the
				// consumer restarts from its ack floor on a sequence gap.
				t.Errorf("%s: writer %d's %d handled after %d (out of order)", e, w, v, prev)
				reordered++
			}
			last[w] = v
		}
	}
	t.Logf("PERSIST R3: %d messages acknowledged, all applied exactly once (%d applied twice); %d handled out of order; %d handler runs for a message applied before (crash between handling and storing the reply)", total, dups, reordered, l.reruns.Load())
	c.obs.check(t)
}

// Storage "memory" keeps every bucket and stream in memory; persisted RPCs
// behave the same.
func TestPersistedMemoryStorage(t *testing.T) {
	s := natstest.StartServer(t)
	cfg := persistConfig()
	cfg.Storage = mesh.StorageMemory
	l := newLedgerLog()
	startRunner(t, s.ClientURL(), cfg, ledgerBehavior(l))
	c, nc := newClient(t, s.ClientURL(), cfg)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if n, err := mesh.Call(ctx, c, Post, "acct", i, mesh.MessageID(fmt.Sprint("mem-", i))); err != nil || n != i {
			t.Fatalf("Call = %d, %v", n, err)
		}
	}
	if n, err := mesh.Reply(ctx, c, Post, "mem-2"); err != nil || n != 2 {
		t.Fatalf("Reply = %d, %v", n, err)
	}
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{cfg.Prefix + "_persist", "KV_" + cfg.Prefix + "_replies", cfg.Prefix + "_deadletters"} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		if got := st.CachedInfo().Config.Storage; got != natsjs.MemoryStorage {
			t.Fatalf("stream %s storage = %v, want memory", name, got)
		}
	}
	bad := cfg
	bad.Storage = "tape"
	if err := bad.Validate(); !errors.Is(err, mesh.ErrInvalidOption) {
		t.Fatalf("Validate(storage tape) = %v", err)
	}
}

// Persisted messages keep flowing while shards move gracefully (a runner
// joins, another leaves): every stored message is handled exactly once (no
// crash, so no handler re-run), in order per entity, never on two runners
// at once.
func TestPersistedHandoff(t *testing.T) {
	cfg := clusterConfig()
	cfg.CallTimeout = 20 * time.Second
	c := newTestCluster(t, cfg)
	c.manager()
	l := newLedgerLog()
	start := func(id string) *mesh.Runner {
		nc, err := nats.Connect(c.url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		rc := cfg
		rc.RunnerID = id
		r, err := mesh.NewRunner(nc, rc, mesh.WithRuntimeOptions(actor.WithObserver(runnerObserver{c.obs, id})))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Register(ledgerBehavior(l)); err != nil {
			t.Fatal(err)
		}
		if err := r.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_ = r.Shutdown(ctx)
		})
		return r
	}
	n := cfg.ShardsPerGroup
	r1, r2 := start("r1"), start("r2")
	natstest.WaitFor(t, 30*time.Second, func() bool { return len(r1.Shards()) == n/2 && len(r2.Shards()) == n/2 }, "two runners share the shards")

	client, _ := newClient(t, c.url, cfg)
	const entities = 40
	var mu sync.Mutex
	acked := map[string][]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				e := fmt.Sprint("h-", w*entities/4+i%(entities/4)) // disjoint entities per writer
				v := w*1_000_000 + i
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := mesh.Send(ctx, client, Post, e, v, mesh.MessageID(fmt.Sprint("h", v)))
				cancel()
				if err != nil {
					t.Errorf("Send: %v", err)
					return
				}
				mu.Lock()
				acked[e] = append(acked[e], v)
				mu.Unlock()
			}
		})
	}
	handled := func() int64 { return l.runs.Load() }
	natstest.WaitFor(t, 30*time.Second, func() bool { return handled() > 200 }, "load flowing")
	r3 := start("r3")
	natstest.WaitFor(t, 30*time.Second, func() bool {
		return len(r1.Shards()) == n/3 && len(r2.Shards()) == n/3 && len(r3.Shards()) == n/3
	}, "three runners share the shards")
	base := handled()
	natstest.WaitFor(t, 30*time.Second, func() bool { return handled() > base+200 }, "load after the scale-out")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	if err := r1.Shutdown(ctx); err != nil {
		t.Errorf("r1 Shutdown: %v", err)
	}
	cancel()
	natstest.WaitFor(t, 30*time.Second, func() bool { return len(r2.Shards()) == n/2 && len(r3.Shards()) == n/2 }, "r2 and r3 take r1's shards")
	base = handled()
	natstest.WaitFor(t, 30*time.Second, func() bool { return handled() > base+200 }, "load after the scale-in")
	close(stop)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	natstest.WaitFor(t, 30*time.Second, func() bool {
		for e, vs := range acked {
			if len(l.values(e)) < len(vs) {
				return false
			}
		}
		return true
	}, "every stored message handled")
	total := 0
	for e, vs := range acked {
		total += len(vs)
		if got := l.values(e); fmt.Sprint(got) != fmt.Sprint(vs) {
			t.Errorf("%s handled %v, want %v (each once, in send order)", e, got, vs)
		}
	}
	c.obs.check(t)
	t.Logf("PERSIST HANDOFF: %d messages, each handled once in order across a scale-out and a scale-in", total)
}

// A runner whose consumer is deleted under it (by an operator, or by
// another runner that took shards from it), or whose filters an operator
// changed, notices and rebuilds it: messages keep being handled.
func TestPersistedConsumerDeleted(t *testing.T) {
	s := natstest.StartServer(t)
	cfg := persistConfig()
	cfg.RunnerID = "solo"
	l := newLedgerLog()
	startRunner(t, s.ClientURL(), cfg, ledgerBehavior(l))
	c, nc := newClient(t, s.ClientURL(), cfg)
	ctx := context.Background()
	if _, err := mesh.Call(ctx, c, Post, "acct", 1); err != nil {
		t.Fatal(err)
	}
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteConsumer(ctx, cfg.Prefix+"_persist", "runner-solo"); err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= 5; i++ {
		if err := mesh.Send(ctx, c, Post, "acct", i); err != nil {
			t.Fatal(err)
		}
	}
	natstest.WaitFor(t, 30*time.Second, func() bool { return len(l.values("acct")) == 5 }, "messages sent after the deletion handled")
	if got := l.values("acct"); fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Fatalf("handled %v, want [1 2 3 4 5]", got)
	}
	// Its filters edited by someone else: found by the periodic check.
	cons, err := js.Consumer(ctx, cfg.Prefix+"_persist", "runner-solo")
	if err != nil {
		t.Fatal(err)
	}
	cc := cons.CachedInfo().Config
	cc.FilterSubject, cc.FilterSubjects = cfg.Prefix+".v1.persist.elsewhere.>", nil
	if _, err := js.UpdateConsumer(ctx, cfg.Prefix+"_persist", cc); err != nil {
		t.Fatal(err)
	}
	if err := mesh.Send(ctx, c, Post, "acct", 6); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 30*time.Second, func() bool { return len(l.values("acct")) == 6 }, "a message sent after the filters changed handled")
}

// A runner whose wall clock is wrong by an hour, either way (a host
// without NTP, or a clock that jumped), delivers a DeliverAt message when
// the server's schedule fires it: not an hour late, and not before its
// time. Only the server's clock decides.
func TestPersistedDeliverAtWrongRunnerClock(t *testing.T) {
	for _, offset := range []time.Duration{-time.Hour, time.Hour} {
		t.Run(offset.String(), func(t *testing.T) {
			s := natstest.StartServer(t)
			l := newLedgerLog()
			cfg := persistConfig()
			nc := natstest.Connect(t, s)
			r, err := mesh.NewRunner(nc, cfg)
			if err != nil {
				t.Fatal(err)
			}
			mesh.SetWallClock(r, offset)
			if err := r.Register(ledgerBehavior(l)); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if err := r.Start(ctx); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				_ = r.Shutdown(sctx)
			})
			c, _ := newClient(t, s.ClientURL(), cfg)
			at := time.Now().Add(1500 * time.Millisecond)
			if err := mesh.Send(ctx, c, Post, "later", 7, mesh.MessageID("later-7"), mesh.DeliverAt(at)); err != nil {
				t.Fatal(err)
			}
			natstest.WaitFor(t, 20*time.Second, func() bool { return len(l.values("later")) == 1 }, "the delayed message, handled")
			l.mu.Lock()
			handled := l.when["later"]
			l.mu.Unlock()
			if handled.Before(at) {
				t.Fatalf("handled %v before its time", at.Sub(handled))
			}
		})
	}
}

var (
	Racer  = actor.NewEntity("Racer")
	Answer = actor.NewRPC[string, string](Racer, "Answer", actor.Persisted())
)

// A reply stored for a message stands: a second answer to the same message
// (a fenced runner's handler that finished after the next owner had run
// the message again and stored its reply) does not replace it, and every
// Call and Reply for the id gets the first. Here the handler itself plays
// the other runner: it stores a reply for its message before it returns
// its own.
func TestPersistedReplyFirstWriterWins(t *testing.T) {
	s := natstest.StartServer(t)
	cfg := persistConfig()
	c, nc := newClient(t, s.ClientURL(), cfg)
	ctx := context.Background()
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	racer := actor.Implement(Racer, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.Handle(Answer, func(ctx context.Context, v string) (string, error) {
			if v != "race" {
				return v, nil
			}
			// The other runner's reply: the stored form of "first", taken
			// from the message answered so.
			kv, err := js.KeyValue(ctx, cfg.Prefix+"_replies")
			if err != nil {
				return "", err
			}
			e, err := kv.Get(ctx, protocol.ReplyKey("seed-1"))
			if err != nil {
				return "", err
			}
			msgID, _ := mesh.MessageIDFromContext(ctx)
			if _, err := kv.Put(ctx, protocol.ReplyKey(msgID), e.Value()); err != nil {
				return "", err
			}
			return "late", nil
		})}, nil
	})
	startRunner(t, s.ClientURL(), cfg, racer)
	if got, err := mesh.Call(ctx, c, Answer, "r", "first", mesh.MessageID("seed-1")); err != nil || got != "first" {
		t.Fatalf("seed call = %q, %v", got, err)
	}
	if got, err := mesh.Call(ctx, c, Answer, "r", "race", mesh.MessageID("race-1")); err != nil || got != "first" {
		t.Fatalf("Call answered by two = %q, %v; want the reply stored first, %q", got, err, "first")
	}
	if got, err := mesh.Reply(ctx, c, Answer, "race-1"); err != nil || got != "first" {
		t.Fatalf("Reply = %q, %v; want %q", got, err, "first")
	}
}

// A message whose stored-reply look-up fails across the loss of its shard
// (a pause: the runner wakes, fences the shard, then the look-up fails)
// waits for a retry; at the retry the shard is no longer served, and the
// message is let go for the shard's next owner. It must not stay at the
// head of its entity's queue: when the shard came back, that entity's
// later messages queued behind it for good, acknowledged to their senders
// and never run (container run 6, docs/reliability.md). Nor may a later
// message of the entity, delivered by the consumer from before the loss,
// run before it once the shard is back.
func TestPersistedRetryAcrossShardLoss(t *testing.T) {
	s := natstest.StartServer(t)
	l := newLedgerLog()
	r := startRunner(t, s.ClientURL(), persistConfig(), ledgerBehavior(l))
	c, _ := newClient(t, s.ClientURL(), persistConfig())
	ctx := context.Background()
	looking := make(chan struct{})
	fail := make(chan struct{})
	var once sync.Once
	defer mesh.FailReplyLookups(r, func(msgID string) error {
		if msgID != "first" {
			return nil
		}
		stalled := false
		once.Do(func() { stalled = true })
		if !stalled {
			return nil
		}
		close(looking)
		<-fail
		return errors.New("injected: the reply store is unreachable")
	})()
	shard := mesh.ShardOfEntity(r, "Ledger", "e")
	if err := mesh.Send(ctx, c, Post, "e", 1, mesh.MessageID("first")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-looking:
	case <-time.After(20 * time.Second):
		t.Fatal("the message's stored reply was never looked up")
	}
	// The consumer keeps its filters until its rebuild, held here so that
	// the shard comes back before it.
	release := mesh.HoldRebuilds(r)
	defer release()
	mesh.DropPersistedShard(r, shard) // fenced while the look-up is stuck
	close(fail)
	natstest.WaitFor(t, 20*time.Second, func() bool { return mesh.PersistedHeld(r) == 0 },
		"the message, retried after its shard was lost, let go for the shard's next owner")
	mesh.AddPersistedShard(r, shard) // the shard comes back
	if err := mesh.Send(ctx, c, Post, "e", 2, mesh.MessageID("second")); err != nil {
		t.Fatal(err)
	}
	// The consumer from before the loss delivers the second message; it
	// must not run before the first, which only the rebuilt consumer
	// delivers again.
	natstest.WaitFor(t, 20*time.Second, func() bool { return mesh.PersistedDeliveries(r) == 2 }, "the second message delivered")
	release()
	natstest.WaitFor(t, 20*time.Second, func() bool { return len(l.values("e")) == 2 }, "both messages handled once the shard is back")
	if got := l.values("e"); fmt.Sprint(got) != "[1 2]" {
		t.Fatalf("handled %v, want [1 2]", got)
	}
}
