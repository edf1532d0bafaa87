package mesh_test

import (
	"context"
	"errors"
	"fmt"
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

type Amount struct {
	Amount int `json:"amount"`
}

// InsufficientFunds is a declared failure of Withdraw.
type InsufficientFunds struct {
	Balance int `json:"balance"`
	Wanted  int `json:"wanted"`
}

func (e *InsufficientFunds) Error() string {
	return fmt.Sprintf("insufficient funds: balance %d, wanted %d", e.Balance, e.Wanted)
}

var (
	Counter   = actor.NewEntity("Counter")
	Increment = actor.NewRPC[Amount, int](Counter, "Increment")
	GetValue  = actor.NewRPC[actor.Empty, int](Counter, "GetValue")
	Append    = actor.NewRPC[int, actor.Empty](Counter, "Append")
	History   = actor.NewRPC[actor.Empty, []int](Counter, "History")
	Panic     = actor.NewRPC[string, int](Counter, "Panic")
	AwaitCtx  = actor.NewRPC[actor.Empty, int](Counter, "AwaitCtx")
	Echo      = actor.NewRPC[string, string](Counter, "Echo")
	Withdraw  = actor.NewRPC[Amount, int](Counter, "Withdraw", actor.Failure[*InsufficientFunds]("InsufficientFunds"))
	Countdown = actor.NewStreamRPC[int, int](Counter, "Countdown")

	// Busy has a tiny mailbox and an RPC that blocks.
	Busy     = actor.NewEntity("Busy")
	Block    = actor.NewRPC[actor.Empty, int](Busy, "Block")
	BusyPing = actor.NewRPC[actor.Empty, int](Busy, "Ping")

	// Unhosted is an entity type no test runner hosts.
	Unhosted = actor.NewEntity("Unhosted")
	Nothing  = actor.NewRPC[actor.Empty, int](Unhosted, "Nothing")
)

type hooks struct {
	block       chan struct{} // Block waits on it
	blocked     chan struct{} // Block signals it started
	streamEnded chan error    // Countdown reports how it ended
	ctxErr      chan error    // AwaitCtx reports its context's end
}

func newHooks() *hooks {
	return &hooks{block: make(chan struct{}), blocked: make(chan struct{}, 16), streamEnded: make(chan error, 16), ctxErr: make(chan error, 1)}
}

func counterBehavior(h *hooks) *actor.Behavior {
	return actor.Implement(Counter, func(self *actor.Instance) ([]actor.Handler, error) {
		state := 0
		var hist []int
		return []actor.Handler{
			actor.Handle(Increment, func(_ context.Context, a Amount) (int, error) { state += a.Amount; return state, nil }),
			actor.Handle(GetValue, func(context.Context, actor.Empty) (int, error) { return state, nil }),
			actor.Handle(Append, func(_ context.Context, v int) (actor.Empty, error) { hist = append(hist, v); return actor.Empty{}, nil }),
			actor.Handle(History, func(context.Context, actor.Empty) ([]int, error) { return hist, nil }),
			actor.Handle(Panic, func(_ context.Context, msg string) (int, error) { panic(msg) }),
			actor.Handle(AwaitCtx, func(ctx context.Context, _ actor.Empty) (int, error) {
				<-ctx.Done()
				h.ctxErr <- ctx.Err()
				return 0, ctx.Err()
			}),
			actor.Handle(Echo, func(_ context.Context, s string) (string, error) { return self.Address().ID + ":" + s, nil }),
			actor.Handle(Withdraw, func(_ context.Context, a Amount) (int, error) {
				if a.Amount > state {
					return state, &InsufficientFunds{Balance: state, Wanted: a.Amount}
				}
				state -= a.Amount
				return state, nil
			}),
			actor.HandleStream(Countdown, func(ctx context.Context, n int, emit func(int) error) error {
				for i := n; i > 0; i-- {
					if err := emit(i); err != nil {
						h.streamEnded <- err
						return err
					}
				}
				h.streamEnded <- nil
				if n == 13 {
					return errors.New("unlucky")
				}
				return nil
			}),
		}, nil
	})
}

func busyBehavior(h *hooks) *actor.Behavior {
	return actor.Implement(Busy, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{
			actor.Handle(Block, func(context.Context, actor.Empty) (int, error) {
				h.blocked <- struct{}{}
				<-h.block
				return 1, nil
			}),
			actor.Handle(BusyPing, func(context.Context, actor.Empty) (int, error) { return 1, nil }),
		}, nil
	}, actor.MailboxCapacity(2))
}

func testConfig() mesh.Config {
	// Short leases: a standalone runner holds every shard's lease, and one
	// restarted after a crash waits for its predecessor's to expire.
	cfg := mesh.DefaultConfig().FastFailover()
	cfg.ShardsPerGroup = 16
	cfg.CallTimeout = 5 * time.Second
	cfg.Standalone = true
	return cfg
}

// startRunner starts a standalone runner (all shards) on its own connection.
func startRunner(t testing.TB, url string, cfg mesh.Config, behaviors ...*actor.Behavior) *mesh.Runner {
	t.Helper()
	return startRunnerWith(t, url, cfg, nil, behaviors...)
}

// startRunnerWith is startRunner with options besides the test hooks.
func startRunnerWith(t testing.TB, url string, cfg mesh.Config, opts []mesh.Option, behaviors ...*actor.Behavior) *mesh.Runner {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	r, err := mesh.NewRunner(nc, cfg, append([]mesh.Option{mesh.WithTestHooks()}, opts...)...)
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
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Errorf("runner Shutdown: %v", err)
		}
	})
	return r
}

func newClient(t testing.TB, url string, cfg mesh.Config, opts ...mesh.Option) (*mesh.Client, *nats.Conn) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c, err := mesh.NewClient(nc, cfg.ClientConfig, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c, nc
}

type env struct {
	url   string
	hooks *hooks
	c     *mesh.Client
	json  *mesh.Client
	nc    *nats.Conn // the msgpack client's connection, for raw requests
}

func setup(t *testing.T) *env {
	t.Helper()
	s := natstest.StartServer(t)
	e := &env{url: s.ClientURL(), hooks: newHooks()}
	startRunner(t, e.url, testConfig(), counterBehavior(e.hooks), busyBehavior(e.hooks))
	e.c, e.nc = newClient(t, e.url, testConfig())
	jcfg := testConfig()
	jcfg.Codec = protocol.CodecJSON
	e.json, _ = newClient(t, e.url, jcfg)
	return e
}

func TestCallsAcrossShards(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	shards := map[mesh.ShardID]bool{}
	for i := range 200 {
		id := fmt.Sprintf("user-%d", i)
		shards[e.c.Shard("Counter", id)] = true
		for _, c := range []*mesh.Client{e.c, e.json} {
			if _, err := mesh.Call(ctx, c, Increment, id, Amount{i}); err != nil {
				t.Fatalf("Increment(%s): %v", id, err)
			}
		}
	}
	if len(shards) != 16 {
		t.Fatalf("ids covered %d shards, want all 16", len(shards))
	}
	for i := range 200 {
		id := fmt.Sprintf("user-%d", i)
		if got, err := mesh.Call(ctx, e.json, GetValue, id, actor.Empty{}); err != nil || got != 2*i {
			t.Fatalf("GetValue(%s) = %d, %v; want %d", id, got, err, 2*i)
		}
	}
}

// Ids that cannot be subject tokens, or even header values, work.
func TestAwkwardIDs(t *testing.T) {
	e := setup(t)
	for _, id := range []string{"a.b.c", "with space", "*", ">", "a.*.>", "日本語-ünïcödé", "emoji 🎉", " leading", "trailing ", "line\nbreak", "tab\tin", strings.Repeat("x", actor.MaxIDLength)} {
		got, err := mesh.Call(context.Background(), e.c, Echo, id, "hi")
		if err != nil || got != id+":hi" {
			t.Fatalf("Echo on %q = %q, %v", id, got, err)
		}
	}
}

// Messages from one client to one entity are handled in send order.
func TestOrderPerEntity(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	const n = 300
	for i := range n {
		if err := mesh.Send(ctx, e.c, Append, "ordered", i); err != nil {
			t.Fatal(err)
		}
	}
	var hist []int
	natstest.WaitFor(t, 10*time.Second, func() bool {
		var err error
		hist, err = mesh.Call(ctx, e.c, History, "ordered", actor.Empty{})
		return err == nil && len(hist) == n
	}, "all sends handled")
	for i, v := range hist {
		if v != i {
			t.Fatalf("position %d holds %d", i, v)
		}
	}
}

func TestTypedErrors(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	mustOK := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := mesh.Call(ctx, e.c, Increment, "acct", Amount{10})
	mustOK(err)

	for _, c := range []*mesh.Client{e.c, e.json} {
		t.Run("declared failure", func(t *testing.T) {
			_, err := mesh.Call(ctx, c, Withdraw, "acct", Amount{50})
			var f *InsufficientFunds
			if !errors.As(err, &f) || f.Balance != 10 || f.Wanted != 50 {
				t.Fatalf("Withdraw = %v (%T), want *InsufficientFunds{10, 50}", err, err)
			}
		})
		t.Run("defect", func(t *testing.T) {
			_, err := mesh.Call(ctx, c, Panic, "p", "boom")
			var d *actor.Defect
			if !errors.As(err, &d) || d.Message != "boom" || !strings.Contains(d.Stack, "mesh_test.go") {
				t.Fatalf("Panic = %v", err)
			}
		})
	}
	t.Run("unknown entity", func(t *testing.T) {
		_, err := mesh.Call(ctx, e.c, Nothing, "x", actor.Empty{})
		if !errors.Is(err, actor.ErrUnknownEntity) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("invalid id", func(t *testing.T) {
		_, err := mesh.Call(ctx, e.c, GetValue, "bad\xff", actor.Empty{})
		if !errors.Is(err, actor.ErrInvalidID) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("payload too large", func(t *testing.T) {
		_, err := mesh.Call(ctx, e.c, Echo, "big", strings.Repeat("x", int(e.nc.MaxPayload())+1))
		if !errors.Is(err, mesh.ErrPayloadTooLarge) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("mailbox full", func(t *testing.T) {
		// Capacity 2: one call runs and blocks; pings queue behind it (those
		// that time out stay queued until drained) until one is refused.
		errc := make(chan error, 1)
		go func() { _, err := mesh.Call(ctx, e.c, Block, "busy", actor.Empty{}); errc <- err }()
		<-e.hooks.blocked
		natstest.WaitFor(t, 5*time.Second, func() bool {
			pctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			_, err := mesh.Call(pctx, e.c, BusyPing, "busy", actor.Empty{})
			return errors.Is(err, actor.ErrMailboxFull)
		}, "mailbox full")
		close(e.hooks.block)
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("deadline reaches the handler", func(t *testing.T) {
		tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		if _, err := mesh.Call(tctx, e.c, AwaitCtx, "slow", actor.Empty{}); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("caller got %v, want deadline exceeded", err)
		}
		if err := <-e.hooks.ctxErr; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("handler's context ended with %v", err)
		}
	})
	// The runner still serves after all of it.
	if v, err := mesh.Call(ctx, e.c, GetValue, "acct", actor.Empty{}); err != nil || v != 10 {
		t.Fatalf("after errors: %d, %v", v, err)
	}
}

// Raw NATS requests that break the protocol get typed error replies.
func TestBadRequests(t *testing.T) {
	e := setup(t)
	cfg := testConfig()
	call := func(subject string, hdr nats.Header, data []byte) (string, string) {
		t.Helper()
		m := &nats.Msg{Subject: subject, Header: hdr, Data: data}
		reply, err := e.nc.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatalf("request %s: %v", subject, err)
		}
		return reply.Header.Get(protocol.HeaderError), string(reply.Data)
	}
	shard := func(id string) int { return protocol.ShardOf(id, cfg.ShardsPerGroup) }
	subj := func(id, typ, rpc string) string {
		return fmt.Sprintf("mesh.v1.call.default.%d.%s.%s", shard(id), typ, rpc)
	}
	tests := []struct {
		name    string
		subject string
		hdr     nats.Header
		data    string
		want    string
	}{
		{"unknown rpc", subj("a", "Counter", "Nope"), nats.Header{"Mesh-Id": {"a"}}, "", protocol.CodeUnknownRPC},
		{"unknown type", subj("a", "Nope", "X"), nats.Header{"Mesh-Id": {"a"}}, "", protocol.CodeUnknownEntity},
		{"malformed json", subj("a", "Counter", "Increment"), nats.Header{"Mesh-Id": {"a"}}, "{oops", protocol.CodeMalformed},
		{"malformed msgpack", subj("a", "Counter", "Increment"), nats.Header{"Mesh-Id": {"a"}, "Mesh-Codec": {"msgpack"}}, "\xc1\xc1", protocol.CodeMalformed},
		{"unknown codec", subj("a", "Counter", "Increment"), nats.Header{"Mesh-Id": {"a"}, "Mesh-Codec": {"xml"}}, "", protocol.CodeBadRequest},
		{"missing id", subj("a", "Counter", "Increment"), nats.Header{}, "", protocol.CodeBadRequest},
		{"bad base64 id", subj("a", "Counter", "Increment"), nats.Header{"Mesh-Id-B64": {"!!"}}, "", protocol.CodeBadRequest},
		{"wrong shard", fmt.Sprintf("mesh.v1.call.default.%d.Counter.GetValue", (shard("a")+1)%cfg.ShardsPerGroup), nats.Header{"Mesh-Id": {"a"}}, "", protocol.CodeBadRequest},
		{"bad timeout", subj("a", "Counter", "GetValue"), nats.Header{"Mesh-Id": {"a"}, "Mesh-Timeout": {"soon"}}, "", protocol.CodeBadRequest},
		{"route: unknown rpc", "mesh.v1.entity.Counter.Nope", nats.Header{"Mesh-Id": {"a"}}, "", protocol.CodeUnknownRPC},
		{"route: missing id", "mesh.v1.entity.Counter.GetValue", nats.Header{}, "", protocol.CodeBadRequest},
		{"compact: unknown codec", subj("a", "Counter", "Increment") + ".xml.a", nil, "", protocol.CodeBadRequest},
		{"compact: id header too", subj("a", "Counter", "Increment") + ".json.a", nats.Header{"Mesh-Id": {"a"}}, "", protocol.CodeBadRequest},
		{"compact: codec header too", subj("a", "Counter", "Increment") + ".json.a", nats.Header{"Mesh-Codec": {"json"}}, "", protocol.CodeBadRequest},
		{"compact: wrong shard", fmt.Sprintf("mesh.v1.call.default.%d.Counter.GetValue.json.a", (shard("a")+1)%cfg.ShardsPerGroup), nil, "", protocol.CodeBadRequest},
		{"compact: missing id token", subj("a", "Counter", "Increment") + ".json", nil, "", protocol.CodeBadRequest},
		{"compact: non-ASCII id token", subj("日本", "Counter", "Increment") + ".json.日本", nil, "", protocol.CodeBadRequest},
		{"compact: malformed json", subj("a", "Counter", "Increment") + ".json.a", nil, "{oops", protocol.CodeMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := call(tt.subject, tt.hdr, []byte(tt.data))
			if code != tt.want {
				t.Fatalf("error code %q (body %s), want %q", code, body, tt.want)
			}
			if !strings.Contains(body, `"code":"`+tt.want+`"`) && !strings.Contains(tt.hdr.Get("Mesh-Codec"), "msgpack") {
				t.Fatalf("body %s lacks code %s", body, tt.want)
			}
		})
	}
	// The compact form: the id and codec in the subject, no header at all.
	for _, codec := range []string{"json", "msgpack"} {
		m := &nats.Msg{Subject: subj("compact-1", "Counter", "Increment") + "." + codec + ".compact-1", Data: []byte(`{"amount":2}`)}
		if codec == "msgpack" {
			m.Data = []byte{0x81, 0xa6, 'a', 'm', 'o', 'u', 'n', 't', 0x02} // {"amount": 2}
		}
		reply, err := e.nc.RequestMsg(m, 5*time.Second)
		if err != nil || reply.Header.Get(protocol.HeaderError) != "" {
			t.Fatalf("compact %s call: %v %q %v", codec, err, reply.Data, reply.Header)
		}
	}
	if v, err := mesh.Call(context.Background(), e.c, GetValue, "compact-1", actor.Empty{}); err != nil || v != 4 {
		t.Fatalf("after two compact calls: %d, %v; want 4", v, err)
	}
	// A JSON caller on the route subject needs no hashing.
	m := &nats.Msg{Subject: "mesh.v1.entity.Counter.Increment", Header: nats.Header{"Mesh-Id": {"routed.id"}}, Data: []byte(`{"amount":4}`)}
	reply, err := e.nc.RequestMsg(m, 5*time.Second)
	if err != nil || string(reply.Data) != "4" || reply.Header.Get(protocol.HeaderError) != "" {
		t.Fatalf("route call: %v %q %v", err, reply.Data, reply.Header)
	}
	if v, err := mesh.Call(context.Background(), e.c, GetValue, "routed.id", actor.Empty{}); err != nil || v != 4 {
		t.Fatalf("after route call: %d, %v", v, err)
	}
}

// A call made while no runner serves its shard is retried until one does;
// with none before the deadline it fails with ErrShardUnavailable.
func TestRetryUntilRunner(t *testing.T) {
	s := natstest.StartServer(t)
	c, nc := newClient(t, s.ClientURL(), testConfig())
	ctx := context.Background()

	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := mesh.Call(short, c, GetValue, "x", actor.Empty{}); !errors.Is(err, mesh.ErrShardUnavailable) {
		t.Fatalf("no runner: %v, want ErrShardUnavailable", err)
	}

	start := nc.Stats().OutMsgs
	type result struct {
		v   int
		err error
	}
	res := make(chan result, 1)
	go func() {
		v, err := mesh.Call(ctx, c, Increment, "late", Amount{3})
		res <- result{v, err}
	}()
	natstest.WaitFor(t, 5*time.Second, func() bool { return nc.Stats().OutMsgs >= start+3 }, "client retries")
	startRunner(t, s.ClientURL(), testConfig(), counterBehavior(newHooks()), busyBehavior(newHooks()))
	r := <-res
	if r.err != nil || r.v != 3 {
		t.Fatalf("late call = %d, %v", r.v, r.err)
	}
}

// A client-only process hosts nothing and reaches entities on runners.
func TestClientOnly(t *testing.T) {
	e := setup(t)
	c, nc := newClient(t, e.url, testConfig())
	if v, err := mesh.Call(context.Background(), c, Increment, "co", Amount{2}); err != nil || v != 2 {
		t.Fatalf("got %d, %v", v, err)
	}
	if n := nc.NumSubscriptions(); n > 1 { // the request mux inbox only
		t.Fatalf("client-only connection has %d subscriptions", n)
	}
}

func TestStream(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	t.Run("all chunks", func(t *testing.T) {
		var got []int
		for v, err := range mesh.Stream(ctx, e.c, Countdown, "s", 200) {
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, v)
		}
		if len(got) != 200 || got[0] != 200 || got[199] != 1 {
			t.Fatalf("got %d chunks: first %v", len(got), got[:min(3, len(got))])
		}
		if err := <-e.hooks.streamEnded; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("error marker", func(t *testing.T) {
		var last error
		n := 0
		for _, err := range mesh.Stream(ctx, e.json, Countdown, "s", 13) {
			if err != nil {
				last = err
				continue
			}
			n++
		}
		<-e.hooks.streamEnded
		if n != 13 || last == nil || !strings.Contains(last.Error(), "unlucky") {
			t.Fatalf("chunks %d, err %v", n, last)
		}
	})
	t.Run("caller stops reading", func(t *testing.T) {
		for v, err := range mesh.Stream(ctx, e.c, Countdown, "s", 1_000_000) {
			if err != nil {
				t.Fatal(err)
			}
			if v == 1_000_000-5 {
				break
			}
		}
		select {
		case err := <-e.hooks.streamEnded:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("runner's emit returned %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("handler kept running after the caller left")
		}
		// The entity serves again.
		if _, err := mesh.Call(ctx, e.c, GetValue, "s", actor.Empty{}); err != nil {
			t.Fatal(err)
		}
	})
}

// Several clients hammer several entities concurrently: totals add up.
func TestConcurrentClients(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				if _, err := mesh.Call(ctx, e.c, Increment, fmt.Sprintf("c%d", i%5), Amount{1}); err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	for i := range 5 {
		if v, err := mesh.Call(ctx, e.c, GetValue, fmt.Sprintf("c%d", i), actor.Empty{}); err != nil || v != 80 {
			t.Fatalf("c%d = %d, %v; want 80", i, v, err)
		}
	}
}

// The Go client uses the compact subject, with no header, for ids that fit
// in a subject token, and the header form for the others.
func TestClientSubjectForms(t *testing.T) {
	e := setup(t)
	seen := make(chan *nats.Msg, 4)
	sub, err := e.nc.ChanSubscribe("mesh.v1.call.>", seen)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		id      string
		compact bool
	}{{"plain-id_1", true}, {"a.b", false}, {"日本", false}, {"sp ace", false}} {
		if _, err := mesh.Call(context.Background(), e.c, GetValue, tt.id, actor.Empty{}); err != nil {
			t.Fatalf("call %q: %v", tt.id, err)
		}
		m := <-seen
		if got := strings.HasSuffix(m.Subject, ".msgpack."+tt.id); got != tt.compact {
			t.Errorf("id %q: subject %q, compact form %v, want %v", tt.id, m.Subject, got, tt.compact)
		}
		if tt.compact && len(m.Header) != 0 {
			t.Errorf("id %q: compact call with headers %v", tt.id, m.Header)
		}
		if !tt.compact && m.Header.Get(protocol.HeaderCodec) != "msgpack" {
			t.Errorf("id %q: header form without its codec header: %v", tt.id, m.Header)
		}
	}
}
