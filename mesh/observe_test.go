package mesh_test

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

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// recorder is an Observer that logs every event as a line and passes a
// header from CallSent to CallReceived, as a tracer passes its context.
type recorder struct {
	mesh.NopObserver
	mu     sync.Mutex
	events []string
}

func (o *recorder) add(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, fmt.Sprintf(format, args...))
}

func (o *recorder) has(e string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Contains(o.events, e)
}

func (o *recorder) count(e string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, x := range o.events {
		if x == e {
			n++
		}
	}
	return n
}

type ctxKey struct{}

func (o *recorder) Activated(a actor.Address) { o.add("activated %s", a) }
func (o *recorder) CallSent(_ context.Context, typ, rpc string, h nats.Header) func(error) {
	h.Set("X-Test-Trace", typ+"."+rpc)
	return func(err error) { o.add("sent %s.%s %s", typ, rpc, mesh.CodeOf(err)) }
}

func (o *recorder) CallReceived(ctx context.Context, a actor.Address, rpc string, _ mesh.ShardID, h nats.Header) (context.Context, mesh.CallObservation) {
	trace := h.Get("X-Test-Trace")
	o.add("received %s.%s trace=%s", a.Type, rpc, trace)
	return context.WithValue(ctx, ctxKey{}, trace), &callRec{o: o, name: a.Type + "." + rpc}
}
func (o *recorder) CallRefused(typ, rpc, code string) { o.add("refused %s.%s %s", typ, rpc, code) }
func (o *recorder) ShardAcquired(s mesh.ShardID)      { o.add("acquired") }
func (o *recorder) Redelivered(a actor.Address, rpc string) {
	o.add("redelivered %s.%s", a.Type, rpc)
}
func (o *recorder) DeadLettered(a actor.Address, rpc, code string) {
	o.add("dead %s.%s %s", a.Type, rpc, code)
}

type callRec struct {
	o       *recorder
	name    string
	started bool
}

func (c *callRec) Started() { c.started = true }
func (c *callRec) Done(err error) {
	c.o.add("done %s started=%v %s", c.name, c.started, mesh.CodeOf(err))
}

func TestObserver(t *testing.T) {
	s := natstest.StartServer(t)
	rec := &recorder{}
	cfg := persistConfig()
	l := newLedgerLog()
	traced := make(chan any, 1)
	echo := actor.NewEntity("Traced")
	ping := actor.NewRPC[actor.Empty, int](echo, "Ping")
	startRunnerWith(t, s.ClientURL(), cfg, []mesh.Option{mesh.WithObserver(rec)}, counterBehavior(newHooks()), ledgerBehavior(l),
		actor.Implement(echo, func(*actor.Instance) ([]actor.Handler, error) {
			return []actor.Handler{actor.Handle(ping, func(ctx context.Context, _ actor.Empty) (int, error) {
				traced <- ctx.Value(ctxKey{})
				return 1, nil
			})}, nil
		}))
	c, _ := newClient(t, s.ClientURL(), cfg, mesh.WithObserver(rec))
	ctx := context.Background()

	if _, err := mesh.Call(ctx, c, ping, "a", actor.Empty{}); err != nil {
		t.Fatal(err)
	}
	if got := <-traced; got != "Traced.Ping" {
		t.Fatalf("handler context carries %v, want the trace set by CallSent", got)
	}
	if _, err := mesh.Call(ctx, c, Withdraw, "b", Amount{5}); err == nil {
		t.Fatal("Withdraw from an empty counter succeeded")
	}
	if _, err := c.CallRaw(ctx, mesh.RawCall{EntityType: "Counter", ID: "b", RPC: "Nope", Codec: protocol.CodecJSON}); !errors.Is(err, actor.ErrUnknownRPC) {
		t.Fatalf("unknown rpc: %v", err)
	}
	if _, err := mesh.Call(ctx, c, Post, "acct", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := mesh.Call(ctx, c, Shaky, "acct", 99); err == nil {
		t.Fatal("Shaky never succeeds, yet Call did")
	}
	want := []string{
		"acquired",
		"activated Traced/a",
		"received Traced.Ping trace=Traced.Ping",
		"done Traced.Ping started=true ",
		"sent Traced.Ping ",
		"received Counter.Withdraw trace=Counter.Withdraw",
		"done Counter.Withdraw started=true Failure",
		"sent Counter.Withdraw Failure",
		"refused Counter.Nope UnknownRpc",
		"sent Counter.Nope UnknownRpc",
		"received Ledger.Post trace=Ledger.Post",
		"done Ledger.Post started=true ",
		"sent Ledger.Post ",
		"redelivered Ledger.Shaky",
		"dead Ledger.Shaky Defect",
		"sent Ledger.Shaky Defect",
	}
	ok := waitUntil(5*time.Second, func() bool {
		for _, e := range want {
			if !rec.has(e) {
				return false
			}
		}
		return true
	})
	if !ok {
		rec.mu.Lock()
		t.Log(strings.Join(rec.events, "\n"))
		rec.mu.Unlock()
		t.Fatal("not every event observed")
	}
	if n := rec.count("done Ledger.Shaky started=true Defect"); n != cfg.PersistMaxAttempts {
		t.Fatalf("Shaky ran %d times, want %d", n, cfg.PersistMaxAttempts)
	}
}

func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cond()
}

// A call on the route subject, forwarded by the runner that takes it to
// the one that serves its shard, is counted by the forwarding runner's
// client as any call it sends.
func TestRouteCallsObserved(t *testing.T) {
	cfg := clusterConfig()
	c := newTestCluster(t, cfg)
	c.manager()
	recs := []*recorder{{}, {}}
	c.runnerWith("r1", 1, nil, recs[0])
	c.runnerWith("r2", 1, nil, recs[1])
	c.waitBalanced(map[string]int{"r1": cfg.ShardsPerGroup / 2, "r2": cfg.ShardsPerGroup / 2})
	nc, _ := c.jetStream()
	// Each call is taken by either runner (a queue group), so about half
	// are forwarded: that none is, of 64, has a chance of 2^-64.
	const calls = 64
	for i := range calls {
		m := nats.NewMsg(protocol.Subjects{Prefix: cfg.Prefix}.Route("Counter", "Increment"))
		m.Data = []byte(`{"amount":2}`)
		protocol.SetID(m.Header, fmt.Sprint("routed-", i))
		m.Header.Set(protocol.HeaderCodec, protocol.CodecJSON)
		reply, err := nc.RequestMsg(m, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if code := reply.Header.Get(protocol.HeaderError); code != "" || string(reply.Data) != "2" {
			t.Fatalf("route call %d: %q (error %q)", i, reply.Data, code)
		}
	}
	sent := func() int { return recs[0].count("sent Counter.Increment ") + recs[1].count("sent Counter.Increment ") }
	received := func() int {
		return recs[0].count("received Counter.Increment trace=Counter.Increment") + recs[1].count("received Counter.Increment trace=Counter.Increment")
	}
	// A forwarded call carries the trace its CallSent set; a call taken by
	// its shard's runner has none.
	if !waitUntil(5*time.Second, func() bool { return sent() > 0 && sent() == received() }) || sent() > calls {
		t.Fatalf("%d forwarded calls observed as sent, %d received with their trace", sent(), received())
	}
	t.Logf("%d of %d route calls forwarded", sent(), calls)
}
