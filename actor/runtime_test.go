package actor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/natsmesh/natsmesh/actor"
)

func newRuntime(t testing.TB, behaviors ...*actor.Behavior) *actor.Runtime {
	t.Helper()
	rt, err := actor.NewTestClient(behaviors...)
	if err != nil {
		t.Fatalf("NewTestClient: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rt.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return rt
}

func mustCall[Req, Resp any](t testing.TB, rt *actor.Runtime, rpc actor.RPC[Req, Resp], id string, req Req) Resp {
	t.Helper()
	v, err := actor.Call(context.Background(), rt, rpc, id, req)
	if err != nil {
		t.Fatalf("Call(%s, %s, %v): %v", rpc.Info().Name(), id, req, err)
	}
	return v
}

func TestCounter(t *testing.T) {
	rt := newRuntime(t, counterBehavior(nil))
	tests := []struct {
		name string
		call func() int
		want int
	}{
		{"increment 5", func() int { return mustCall(t, rt, Increment, "a", Amount{5}) }, 5},
		{"increment 3", func() int { return mustCall(t, rt, Increment, "a", Amount{3}) }, 8},
		{"decrement 1", func() int { return mustCall(t, rt, Decrement, "a", Amount{1}) }, 7},
		{"get", func() int { return mustCall(t, rt, GetValue, "a", actor.Empty{}) }, 7},
		{"other entity is separate", func() int { return mustCall(t, rt, GetValue, "b", actor.Empty{}) }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.call(); got != tt.want {
				t.Fatalf("got %d, want %d", got, tt.want)
			}
		})
	}
}

// Many concurrent callers to one entity: no update is lost and, with
// concurrency 1, no two handlers ever overlap.
func TestSequentialUnderContention(t *testing.T) {
	ent := actor.NewEntity("Seq")
	inc := actor.NewRPC[actor.Empty, int](ent, "Inc")
	var inFlight, maxInFlight atomic.Int32
	rt := newRuntime(t, actor.Implement(ent, func(*actor.Instance) ([]actor.Handler, error) {
		n := 0
		return []actor.Handler{actor.Handle(inc, func(context.Context, actor.Empty) (int, error) {
			cur := inFlight.Add(1)
			for {
				m := maxInFlight.Load()
				if cur <= m || maxInFlight.CompareAndSwap(m, cur) {
					break
				}
			}
			n++ // unsynchronized on purpose: the race detector checks the actor guarantee
			inFlight.Add(-1)
			return n, nil
		})}, nil
	}))
	const callers, each = 16, 200
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range each {
				if _, err := actor.Call(context.Background(), rt, inc, "x", actor.Empty{}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := mustCall(t, rt, inc, "x", actor.Empty{}); got != callers*each+1 {
		t.Fatalf("final count = %d, want %d", got, callers*each+1)
	}
	if m := maxInFlight.Load(); m != 1 {
		t.Fatalf("max handlers in flight = %d, want 1", m)
	}
}

// jsonCodec lets tests use Deliver, which queues without waiting: the way
// to send many messages in a known order from one goroutine.
type jsonCodec struct{}

func (jsonCodec) Name() string                    { return "json" }
func (jsonCodec) Marshal(v any) ([]byte, error)   { return json.Marshal(v) }
func (jsonCodec) Unmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
func payload(v any) []byte                        { b, _ := json.Marshal(v); return b }

type replies struct {
	mu   sync.Mutex
	got  []string
	errs []error
	done chan struct{}
	n    int
}

func newReplies(n int) *replies { return &replies{done: make(chan struct{}), n: n} }

func (r *replies) Chunk(ctx context.Context, b []byte) error {
	r.mu.Lock()
	r.got = append(r.got, string(b))
	r.mu.Unlock()
	return nil
}

func (r *replies) Reply(b []byte, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, string(b))
	r.errs = append(r.errs, err)
	if len(r.errs) == r.n {
		close(r.done)
	}
}

func (r *replies) wait(t testing.TB) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("replies did not arrive")
	}
}

// Messages queued by one sender are handled in send order.
func TestOrder(t *testing.T) {
	ent := actor.NewEntity("Order")
	add := actor.NewRPC[int, int](ent, "Add")
	var mu sync.Mutex
	var seen []int
	rt := newRuntime(t, actor.Implement(ent, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.Handle(add, func(_ context.Context, v int) (int, error) {
			mu.Lock()
			seen = append(seen, v)
			mu.Unlock()
			return v, nil
		})}, nil
	}))
	const n = 2000
	r := newReplies(n)
	for i := range n {
		if err := rt.Deliver(context.Background(), "Order", "o", "Add", jsonCodec{}, payload(i), r); err != nil {
			t.Fatalf("Deliver(%d): %v", i, err)
		}
	}
	r.wait(t)
	for i, v := range seen {
		if v != i {
			t.Fatalf("message %d handled at position %d", v, i)
		}
	}
}

// With Concurrency(n), n handlers of one entity run at once.
func TestConcurrencyN(t *testing.T) {
	for _, n := range []int{1, 3, actor.Unbounded} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ent := actor.NewEntity("Par")
			work := actor.NewRPC[actor.Empty, int](ent, "Work")
			release := make(chan struct{})
			var inFlight, peak atomic.Int32
			rt := newRuntime(t, actor.Implement(ent, func(*actor.Instance) ([]actor.Handler, error) {
				return []actor.Handler{actor.Handle(work, func(context.Context, actor.Empty) (int, error) {
					cur := inFlight.Add(1)
					for m := peak.Load(); cur > m && !peak.CompareAndSwap(m, cur); m = peak.Load() {
					}
					<-release
					inFlight.Add(-1)
					return 0, nil
				})}, nil
			}, actor.Concurrency(n)))
			const calls = 5
			want := int32(min(n, calls))
			var wg sync.WaitGroup
			for range calls {
				wg.Go(func() { _, _ = actor.Call(context.Background(), rt, work, "p", actor.Empty{}) })
			}
			waitFor(t, func() bool { return inFlight.Load() == want }, "handlers in flight")
			close(release)
			wg.Wait()
			if got := peak.Load(); got != want {
				t.Fatalf("peak in flight = %d, want %d", got, want)
			}
		})
	}
}

func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // poll interval of a wait with a deadline
	}
}

// A burst past the mailbox capacity gets ErrMailboxFull at once.
func TestMailboxFull(t *testing.T) {
	ent := actor.NewEntity("Box")
	work := actor.NewRPC[actor.Empty, int](ent, "Work")
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	rt := newRuntime(t, actor.Implement(ent, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.Handle(work, func(context.Context, actor.Empty) (int, error) {
			select {
			case started <- struct{}{}:
			default:
			}
			<-release
			return 1, nil
		})}, nil
	}, actor.MailboxCapacity(3)))
	r := newReplies(4)
	deliver := func() error {
		return rt.Deliver(context.Background(), "Box", "b", "Work", jsonCodec{}, nil, r)
	}
	if err := deliver(); err != nil { // runs, blocks
		t.Fatal(err)
	}
	<-started
	for i := range 3 { // fills the mailbox
		if err := deliver(); err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}
	if err := deliver(); !errors.Is(err, actor.ErrMailboxFull) {
		t.Fatalf("delivery past capacity: %v, want ErrMailboxFull", err)
	}
	if _, err := actor.Call(context.Background(), rt, work, "b", actor.Empty{}); !errors.Is(err, actor.ErrMailboxFull) {
		t.Fatalf("Call past capacity: %v, want ErrMailboxFull", err)
	}
	// Another entity of the same type is not affected.
	go func() { _, _ = actor.Call(context.Background(), rt, work, "other", actor.Empty{}) }()
	close(release)
	r.wait(t)
}

// After maxIdleTime without messages the entity is passivated (finalizer runs
// once); the next message re-creates it with fresh state.
func TestPassivation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &counterProbe{}
		rt := newRuntime(t, counterBehavior(p, actor.MaxIdleTime(time.Second)))
		addr := actor.Address{Type: "Counter", ID: "idle"}
		mustCall(t, rt, Increment, "idle", Amount{7})
		time.Sleep(500 * time.Millisecond) // fake clock: still within maxIdleTime
		synctest.Wait()
		if got := p.finals(addr); got != 0 {
			t.Fatalf("finalized %d times before maxIdleTime", got)
		}
		if got := mustCall(t, rt, GetValue, "idle", actor.Empty{}); got != 7 {
			t.Fatalf("value before passivation = %d, want 7", got)
		}
		time.Sleep(1200 * time.Millisecond) // fake clock: past maxIdleTime + one sweep
		synctest.Wait()
		if got := p.finals(addr); got != 1 {
			t.Fatalf("finalized %d times after idle, want 1", got)
		}
		if got := mustCall(t, rt, GetValue, "idle", actor.Empty{}); got != 0 {
			t.Fatalf("value after re-activation = %d, want fresh 0", got)
		}
		if got := p.inits.Load(); got != 2 {
			t.Fatalf("inits = %d, want 2", got)
		}
	})
}

// KeepAlive holds off passivation until disabled.
func TestKeepAlive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ent := actor.NewEntity("Keep")
		hold := actor.NewRPC[bool, int](ent, "Hold")
		var stops atomic.Int32
		rt := newRuntime(t, actor.Implement(ent, func(self *actor.Instance) ([]actor.Handler, error) {
			self.OnStop(func(context.Context) { stops.Add(1) })
			return []actor.Handler{actor.Handle(hold, func(_ context.Context, on bool) (int, error) {
				self.KeepAlive(on)
				return 0, nil
			})}, nil
		}, actor.MaxIdleTime(time.Second)))
		mustCall(t, rt, hold, "k", true)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if n := stops.Load(); n != 0 {
			t.Fatalf("passivated %d times while kept alive", n)
		}
		mustCall(t, rt, hold, "k", false)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := stops.Load(); n != 1 {
			t.Fatalf("stops after releasing keep-alive = %d, want 1", n)
		}
	})
}

// Shutdown handles what is queued, then runs every finalizer exactly once,
// and refuses new messages.
func TestShutdownDrainsAndFinalizesOnce(t *testing.T) {
	p := &counterProbe{}
	rt, err := actor.NewTestClient(counterBehavior(p))
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	for i := range n {
		mustCall(t, rt, Increment, fmt.Sprint("e", i), Amount{1})
	}
	// Queue work behind a slow message on one entity; Shutdown must run it.
	r := newReplies(50)
	for range 50 {
		if err := rt.Deliver(context.Background(), "Counter", "e0", "Increment", jsonCodec{}, payload(Amount{1}), r); err != nil {
			t.Fatal(err)
		}
	}
	if err := rt.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.wait(t)
	for _, e := range r.errs {
		if e != nil {
			t.Fatalf("queued message failed at shutdown: %v", e)
		}
	}
	if last := r.got[len(r.got)-1]; last != "51" {
		t.Fatalf("last queued reply = %s, want 51", last)
	}
	for i := range n {
		if got := p.finals(actor.Address{Type: "Counter", ID: fmt.Sprint("e", i)}); got != 1 {
			t.Fatalf("entity e%d finalized %d times, want 1", i, got)
		}
	}
	if _, err := actor.Call(context.Background(), rt, GetValue, "e1", actor.Empty{}); !errors.Is(err, actor.ErrShuttingDown) {
		t.Fatalf("Call after Shutdown: %v, want ErrShuttingDown", err)
	}
	if err := rt.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
}

var (
	Fragile = actor.NewEntity("Fragile")
	Boom    = actor.NewRPC[string, int](Fragile, "Boom")
	Count   = actor.NewRPC[actor.Empty, int](Fragile, "Count")
)

func fragile(inits *atomic.Int32, opts ...actor.Option) *actor.Behavior {
	return actor.Implement(Fragile, func(self *actor.Instance) ([]actor.Handler, error) {
		if !self.Probe() {
			inits.Add(1)
		}
		n := 0
		return []actor.Handler{
			actor.Handle(Boom, func(_ context.Context, msg string) (int, error) {
				n++
				if msg != "" {
					panic(msg)
				}
				return n, nil
			}),
			actor.Handle(Count, func(context.Context, actor.Empty) (int, error) { return n, nil }),
		}, nil
	}, opts...)
}

// A panic becomes a *Defect for its caller, neighbours keep working, and the
// entity is re-created with fresh state.
func TestDefect(t *testing.T) {
	var inits atomic.Int32
	rt := newRuntime(t, fragile(&inits, actor.DefectRetryPolicy(actor.ExponentialBackoff(time.Millisecond, time.Millisecond))), counterBehavior(nil))
	mustCall(t, rt, Boom, "f", "")
	mustCall(t, rt, Increment, "neighbour", Amount{2})
	_, err := actor.Call(context.Background(), rt, Boom, "f", "kaboom")
	var d *actor.Defect
	if !errors.As(err, &d) || !errors.Is(err, actor.ErrDefect) {
		t.Fatalf("Call that panics: %v, want *Defect", err)
	}
	if d.Message != "kaboom" || !strings.Contains(d.Stack, "runtime_test.go") {
		t.Fatalf("defect = %q, stack mentions test file: %v", d.Message, strings.Contains(d.Stack, "runtime_test.go"))
	}
	if got := mustCall(t, rt, Increment, "neighbour", Amount{2}); got != 4 {
		t.Fatalf("neighbour = %d, want 4", got)
	}
	if got := mustCall(t, rt, Count, "f", actor.Empty{}); got != 0 {
		t.Fatalf("after defect count = %d, want fresh 0", got)
	}
	if got := inits.Load(); got != 2 {
		t.Fatalf("inits = %d, want 2", got)
	}
}

// With DisableFatalDefects the entity keeps its state.
func TestDisableFatalDefects(t *testing.T) {
	var inits atomic.Int32
	rt := newRuntime(t, fragile(&inits, actor.DisableFatalDefects()))
	mustCall(t, rt, Boom, "f", "")
	if _, err := actor.Call(context.Background(), rt, Boom, "f", "ouch"); !errors.Is(err, actor.ErrDefect) {
		t.Fatalf("got %v, want defect", err)
	}
	if got := mustCall(t, rt, Count, "f", actor.Empty{}); got != 2 {
		t.Fatalf("count = %d, want 2 (state kept)", got)
	}
	if inits.Load() != 1 {
		t.Fatalf("inits = %d, want 1", inits.Load())
	}
}

// A failing init answers the triggering message with the error and is
// retried, after the policy's backoff, for the next.
func TestInitFailureBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ent := actor.NewEntity("Flaky")
		ping := actor.NewRPC[actor.Empty, string](ent, "Ping")
		var attempts atomic.Int32
		rt := newRuntime(t, actor.Implement(ent, func(self *actor.Instance) ([]actor.Handler, error) {
			hs := []actor.Handler{actor.Handle(ping, func(context.Context, actor.Empty) (string, error) { return "pong", nil })}
			if self.Probe() {
				return hs, nil // an init that needs a database is probed without it
			}
			switch attempts.Add(1) {
			case 1:
				return nil, errors.New("database down")
			case 2:
				panic("init exploded")
			}
			return hs, nil
		}, actor.DefectRetryPolicy(actor.ExponentialBackoff(time.Second, time.Minute))))
		start := time.Now()
		_, err := actor.Call(context.Background(), rt, ping, "x", actor.Empty{})
		if !errors.Is(err, actor.ErrActivation) || !strings.Contains(err.Error(), "database down") {
			t.Fatalf("first call: %v, want activation error", err)
		}
		if _, err := actor.Call(context.Background(), rt, ping, "x", actor.Empty{}); !errors.Is(err, actor.ErrDefect) {
			t.Fatalf("second call: %v, want defect", err)
		}
		if waited := time.Since(start); waited < time.Second {
			t.Fatalf("re-created after %v, want the 1s backoff", waited)
		}
		if got, err := actor.Call(context.Background(), rt, ping, "x", actor.Empty{}); err != nil || got != "pong" {
			t.Fatalf("third call: %q, %v", got, err)
		}
		if waited := time.Since(start); waited < 3*time.Second {
			t.Fatalf("third activation after %v, want 1s + 2s backoff", waited)
		}
	})
}

// The caller's cancellation reaches a running handler.
func TestCancellationReachesHandler(t *testing.T) {
	ent := actor.NewEntity("Slow")
	wait := actor.NewRPC[actor.Empty, int](ent, "Wait")
	sawCancel := make(chan error, 1)
	started := make(chan struct{})
	rt := newRuntime(t, actor.Implement(ent, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.Handle(wait, func(ctx context.Context, _ actor.Empty) (int, error) {
			close(started)
			<-ctx.Done()
			sawCancel <- ctx.Err()
			return 0, ctx.Err()
		})}, nil
	}))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := actor.Call(ctx, rt, wait, "s", actor.Empty{}); errc <- err }()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Call: %v, want context.Canceled", err)
	}
	if err := <-sawCancel; !errors.Is(err, context.Canceled) {
		t.Fatalf("handler saw %v", err)
	}
}

// A call whose context ended while it waited in the mailbox is never run.
func TestCancelledBeforeStartIsNotRun(t *testing.T) {
	ent := actor.NewEntity("Gate")
	step := actor.NewRPC[string, int](ent, "Step")
	release := make(chan struct{})
	started := make(chan struct{})
	var ran sync.Map
	rt := newRuntime(t, actor.Implement(ent, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.Handle(step, func(_ context.Context, name string) (int, error) {
			ran.Store(name, true)
			if name == "first" {
				close(started)
				<-release
			}
			return 0, nil
		})}, nil
	}))
	go func() { _, _ = actor.Call(context.Background(), rt, step, "g", "first") }()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := actor.Call(ctx, rt, step, "g", "second"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Call: %v, want deadline exceeded", err)
	}
	close(release)
	mustCall(t, rt, step, "g", "third")
	if _, ok := ran.Load("second"); ok {
		t.Fatal("a call cancelled before it started was run")
	}
}

var (
	Ticker = actor.NewEntity("Ticker")
	Count3 = actor.NewStreamRPC[int, int](Ticker, "Count")
)

func TestStream(t *testing.T) {
	stopped := make(chan error, 1)
	rt := newRuntime(t, actor.Implement(Ticker, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.HandleStream(Count3, func(ctx context.Context, n int, emit func(int) error) error {
			for i := range n {
				if err := emit(i); err != nil {
					stopped <- err
					return err
				}
			}
			if n == 3 {
				return errors.New("three is a bad number")
			}
			return nil
		})}, nil
	}))
	t.Run("all chunks then end", func(t *testing.T) {
		var got []int
		for v, err := range actor.Stream(context.Background(), rt, Count3, "t", 5) {
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, v)
		}
		if fmt.Sprint(got) != "[0 1 2 3 4]" {
			t.Fatalf("chunks = %v", got)
		}
	})
	t.Run("error marker", func(t *testing.T) {
		var last error
		n := 0
		for _, err := range actor.Stream(context.Background(), rt, Count3, "t", 3) {
			if err != nil {
				last = err
			} else {
				n++
			}
		}
		if n != 3 || last == nil || last.Error() != "three is a bad number" {
			t.Fatalf("chunks %d, err %v", n, last)
		}
	})
	t.Run("caller stops reading", func(t *testing.T) {
		for v := range actor.Stream(context.Background(), rt, Count3, "t", 1_000_000) {
			if v == 2 {
				break
			}
		}
		select {
		case err := <-stopped:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("handler's emit returned %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("handler not stopped after the caller stopped reading")
		}
		// The entity is free again.
		for range actor.Stream(context.Background(), rt, Count3, "t", 1) {
		}
	})
}

func TestBadInput(t *testing.T) {
	rt := newRuntime(t, counterBehavior(nil))
	other := actor.NewEntity("Unregistered")
	otherRPC := actor.NewRPC[actor.Empty, int](other, "X")
	r := newReplies(1)
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"empty id", func() error { _, err := actor.Call(context.Background(), rt, GetValue, "", actor.Empty{}); return err }(), actor.ErrInvalidID},
		{"long id", func() error {
			_, err := actor.Call(context.Background(), rt, GetValue, strings.Repeat("x", actor.MaxIDLength+1), actor.Empty{})
			return err
		}(), actor.ErrInvalidID},
		{"invalid utf-8 id", func() error {
			_, err := actor.Call(context.Background(), rt, GetValue, "a\xffb", actor.Empty{})
			return err
		}(), actor.ErrInvalidID},
		{"unregistered type", func() error { _, err := actor.Call(context.Background(), rt, otherRPC, "a", actor.Empty{}); return err }(), actor.ErrUnknownEntity},
		{"unknown type by name", rt.Deliver(context.Background(), "Nope", "a", "X", jsonCodec{}, nil, r), actor.ErrUnknownEntity},
		{"unknown rpc", rt.Deliver(context.Background(), "Counter", "a", "Nope", jsonCodec{}, nil, r), actor.ErrUnknownRPC},
		{"malformed payload", rt.Deliver(context.Background(), "Counter", "a", "Increment", jsonCodec{}, []byte("{nope"), r), actor.ErrMalformed},
		{"wrong payload type", rt.Deliver(context.Background(), "Counter", "a", "Increment", jsonCodec{}, []byte(`"str"`), r), actor.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !errors.Is(tt.err, tt.want) {
				t.Fatalf("got %v, want %v", tt.err, tt.want)
			}
		})
	}
	// Ids with any UTF-8 work.
	for _, id := range []string{"a.b", "with space", "*", ">", "日本語", "a/b\\c"} {
		if got := mustCall(t, rt, Increment, id, Amount{1}); got != 1 {
			t.Fatalf("id %q: %d", id, got)
		}
	}
	// The runtime still serves.
	if got := mustCall(t, rt, Increment, "a", Amount{1}); got != 1 {
		t.Fatalf("after bad input: %d", got)
	}
}

// Register checks a behaviour's handlers against the entity's RPCs, by
// probing its init: a declared RPC without a handler, a handler for
// another type's RPC, two handlers for one RPC, and an init that fails or
// panics when probed each fail Register, naming the cause; the probe is
// never activated and its finalizers do not run.
func TestRegisterChecksHandlers(t *testing.T) {
	getValue := actor.Handle(GetValue, func(context.Context, actor.Empty) (int, error) { return 42, nil })
	increment := actor.Handle(Increment, func(_ context.Context, a Amount) (int, error) { return a.Amount, nil })
	decrement := actor.Handle(Decrement, func(_ context.Context, a Amount) (int, error) { return -a.Amount, nil })
	foreign := actor.Handle(Boom, func(context.Context, string) (int, error) { return 0, nil })
	behavior := func(hs ...actor.Handler) *actor.Behavior {
		return actor.Implement(Counter, func(*actor.Instance) ([]actor.Handler, error) { return hs, nil })
	}
	tests := []struct {
		name string
		b    *actor.Behavior
		want string // "" for a valid behaviour
	}{
		{"complete", behavior(getValue, increment, decrement), ""},
		{"missing rpc", behavior(getValue, decrement), "no handler for rpc Increment"},
		{"another type's rpc", behavior(getValue, increment, decrement, foreign), "handler for rpc Boom of entity Fragile"},
		{"two handlers for one rpc", behavior(getValue, increment, decrement, getValue), "two handlers for rpc GetValue"},
		{"init fails when probed", actor.Implement(Counter, func(*actor.Instance) ([]actor.Handler, error) {
			return nil, errors.New("database down")
		}), "init failed when probed"},
		{"init panics when probed", actor.Implement(Counter, func(*actor.Instance) ([]actor.Handler, error) {
			panic("no database")
		}), "init failed when probed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, err := actor.New()
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = rt.Shutdown(context.Background()) }()
			err = rt.Register(tt.b)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Register = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, actor.ErrInvalidOption) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Register = %v, want ErrInvalidOption naming %q", err, tt.want)
			}
		})
	}
	t.Run("probe", func(t *testing.T) {
		var probes, inits, finals atomic.Int32
		var probedID atomic.Value
		rt := newRuntime(t, actor.Implement(Counter, func(self *actor.Instance) ([]actor.Handler, error) {
			self.OnStop(func(context.Context) { finals.Add(1) })
			if self.Probe() {
				probes.Add(1)
				probedID.Store(self.Address().ID)
			} else {
				inits.Add(1)
			}
			return []actor.Handler{getValue, increment, decrement}, nil
		}))
		if probes.Load() != 1 || inits.Load() != 0 || finals.Load() != 0 || probedID.Load() != "" {
			t.Fatalf("after Register: %d probes (id %q), %d inits, %d finalizers; want 1 probe with an empty id, no init, no finalizer", probes.Load(), probedID.Load(), inits.Load(), finals.Load())
		}
		if got := mustCall(t, rt, GetValue, "x", actor.Empty{}); got != 42 {
			t.Fatalf("GetValue = %d", got)
		}
		if probes.Load() != 1 || inits.Load() != 1 {
			t.Fatalf("after a call: %d probes, %d inits; want 1 and 1", probes.Load(), inits.Load())
		}
	})
}

func TestInvalidOptions(t *testing.T) {
	tests := []struct {
		name string
		opt  actor.Option
	}{
		{"zero concurrency", actor.Concurrency(0)},
		{"zero mailbox", actor.MailboxCapacity(0)},
		{"negative idle", actor.MaxIdleTime(-time.Second)},
		{"nil policy", actor.DefectRetryPolicy(nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt, err := actor.New()
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Shutdown(context.Background())
			if err := rt.Register(counterBehavior(nil, tt.opt)); !errors.Is(err, actor.ErrInvalidOption) {
				t.Fatalf("Register: %v, want ErrInvalidOption", err)
			}
		})
	}
	if _, err := actor.New(actor.WithTerminationTimeout(0)); !errors.Is(err, actor.ErrInvalidOption) {
		t.Fatalf("New: %v", err)
	}
	rt := newRuntime(t, counterBehavior(nil))
	if err := rt.Register(counterBehavior(nil)); !errors.Is(err, actor.ErrInvalidOption) {
		t.Fatalf("second Register of Counter: %v", err)
	}
}

// observer records activation intervals per address and fails on overlap.
type observer struct {
	mu      sync.Mutex
	active  map[actor.Address]bool
	events  []string
	overlap error
}

func (o *observer) Activated(a actor.Address) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.active[a] {
		o.overlap = fmt.Errorf("%s activated twice", a)
	}
	o.active[a] = true
	o.events = append(o.events, "+"+a.ID)
}

func (o *observer) Deactivated(a actor.Address, r actor.StopReason) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.active[a] {
		o.overlap = fmt.Errorf("%s deactivated while inactive", a)
	}
	o.active[a] = false
	o.events = append(o.events, "-"+a.ID+":"+r.String())
}

// Closing a partition fences it: queued messages fail with the abort error,
// new ones with ErrNotServing, finalizers run; reopening re-creates entities
// only after the old activation finished.
func TestPartitions(t *testing.T) {
	obs := &observer{active: map[actor.Address]bool{}}
	ent := actor.NewEntity("Part")
	work := actor.NewRPC[string, string](ent, "Work")
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	rt, err := actor.New(actor.WithObserver(obs), actor.WithPartitions(2, func(a actor.Address) int {
		if strings.HasPrefix(a.ID, "p1-") {
			return 1
		}
		return 0
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
	if err := rt.Register(actor.Implement(ent, func(self *actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.Handle(work, func(_ context.Context, s string) (string, error) {
			if s == "block" {
				started <- struct{}{}
				<-release
			}
			return s, nil
		})}, nil
	})); err != nil {
		t.Fatal(err)
	}
	mustCall(t, rt, work, "p0-a", "x")
	mustCall(t, rt, work, "p1-a", "x")
	go func() { _, _ = actor.Call(context.Background(), rt, work, "p1-a", "block") }()
	<-started
	r := newReplies(1)
	if err := rt.Deliver(context.Background(), "Part", "p1-a", "Work", jsonCodec{}, payload("queued"), r); err != nil {
		t.Fatal(err)
	}
	moved := errors.New("shard moved")
	closed := make(chan error, 1)
	go func() { closed <- rt.ClosePartition(context.Background(), 1, moved) }()
	r.wait(t)
	if !errors.Is(r.errs[0], moved) {
		t.Fatalf("queued message: %v, want abort error", r.errs[0])
	}
	if _, err := actor.Call(context.Background(), rt, work, "p1-b", "x"); !errors.Is(err, actor.ErrNotServing) {
		t.Fatalf("call to closed partition: %v", err)
	}
	if got := mustCall(t, rt, work, "p0-a", "y"); got != "y" {
		t.Fatalf("open partition: %q", got)
	}
	close(release) // the running handler finishes, then the entity stops
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := rt.OpenPartition(1); err != nil {
		t.Fatal(err)
	}
	mustCall(t, rt, work, "p1-a", "back")
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.overlap != nil {
		t.Fatal(obs.overlap)
	}
	want := "[+p0-a +p1-a -p1-a:partition-closed +p1-a]"
	if got := fmt.Sprint(obs.events); got != want {
		t.Fatalf("events = %s, want %s", got, want)
	}
}

// Instance.Stop ends the activation after the current message: its
// finalizer runs once, and the next message re-creates the entity.
func TestInstanceStop(t *testing.T) {
	e := actor.NewEntity("Stoppable")
	add := actor.NewRPC[int, int](e, "Add")
	reset := actor.NewRPC[actor.Empty, int](e, "Reset")
	var inits, finals atomic.Int32
	var reasons []actor.StopReason
	var mu sync.Mutex
	b := actor.Implement(e, func(self *actor.Instance) ([]actor.Handler, error) {
		if !self.Probe() {
			inits.Add(1)
		}
		self.OnStop(func(context.Context) { finals.Add(1) })
		n := 0
		return []actor.Handler{
			actor.Handle(add, func(_ context.Context, v int) (int, error) { n += v; return n, nil }),
			actor.Handle(reset, func(context.Context, actor.Empty) (int, error) {
				self.Stop()
				self.Stop() // twice: no effect
				return n, nil
			}),
		}, nil
	})
	rt, err := actor.New(actor.WithObserver(stopRecorder(func(r actor.StopReason) {
		mu.Lock()
		reasons = append(reasons, r)
		mu.Unlock()
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
	if err := rt.Register(b); err != nil {
		t.Fatal(err)
	}
	mustCall(t, rt, add, "s", 5)
	if got := mustCall(t, rt, reset, "s", actor.Empty{}); got != 5 {
		t.Fatalf("Reset answered %d, want 5 (the stopping activation's state)", got)
	}
	if got := mustCall(t, rt, add, "s", 1); got != 1 {
		t.Fatalf("Add after Stop = %d, want 1 (fresh state)", got)
	}
	if inits.Load() != 2 || finals.Load() != 1 {
		t.Fatalf("inits %d, finalizers %d; want 2 and 1", inits.Load(), finals.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reasons) != 1 || reasons[0] != actor.StopRequested {
		t.Fatalf("observer heard %v, want [requested]", reasons)
	}
}

type stopRecorder func(actor.StopReason)

func (stopRecorder) Activated(actor.Address)                           {}
func (f stopRecorder) Deactivated(_ actor.Address, r actor.StopReason) { f(r) }

// A gate is consulted right before each message runs: a message queued
// while the gate was open does not run once it closes, and the handler
// never sees it; an activation is not started for a refused message.
func TestGate(t *testing.T) {
	obs := &observer{active: map[actor.Address]bool{}}
	ent := actor.NewEntity("Gated")
	work := actor.NewRPC[string, string](ent, "Work")
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	var ran []string
	var mu sync.Mutex
	var shut atomic.Bool
	lapsed := errors.New("lease lapsed")
	rt, err := actor.New(actor.WithObserver(obs),
		actor.WithPartitions(2, func(a actor.Address) int {
			if strings.HasPrefix(a.ID, "p1-") {
				return 1
			}
			return 0
		}),
		actor.WithGate(func(p int) error {
			if p == 1 && shut.Load() {
				return lapsed
			}
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
	if err := rt.Register(actor.Implement(ent, func(self *actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.Handle(work, func(_ context.Context, s string) (string, error) {
			mu.Lock()
			ran = append(ran, self.Address().ID+":"+s)
			mu.Unlock()
			if s == "block" {
				started <- struct{}{}
				<-release
			}
			return s, nil
		})}, nil
	})); err != nil {
		t.Fatal(err)
	}
	blocked := make(chan error, 1)
	go func() { _, err := actor.Call(context.Background(), rt, work, "p1-a", "block"); blocked <- err }()
	<-started
	r := newReplies(1)
	if err := rt.Deliver(context.Background(), "Gated", "p1-a", "Work", jsonCodec{}, payload("queued"), r); err != nil {
		t.Fatal(err)
	}
	shut.Store(true)
	close(release)
	if err := <-blocked; err != nil {
		t.Fatalf("running handler: %v (a gate does not stop what already runs)", err)
	}
	r.wait(t)
	if !errors.Is(r.errs[0], lapsed) {
		t.Fatalf("queued message: %v, want the gate's error", r.errs[0])
	}
	if _, err := actor.Call(context.Background(), rt, work, "p1-b", "new"); !errors.Is(err, lapsed) {
		t.Fatalf("message to a new entity: %v, want the gate's error", err)
	}
	if got := mustCall(t, rt, work, "p0-a", "x"); got != "x" {
		t.Fatalf("other partition: %q", got)
	}
	shut.Store(false)
	if got := mustCall(t, rt, work, "p1-a", "again"); got != "again" {
		t.Fatalf("gate open again: %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := "[p1-a:block p0-a:x p1-a:again]"; fmt.Sprint(ran) != want {
		t.Fatalf("handlers ran %v, want %s", ran, want)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	for _, e := range obs.events {
		if strings.Contains(e, "p1-b") {
			t.Fatalf("p1-b was activated (%v) though its only message was refused", obs.events)
		}
	}
}

// The gate is consulted again once init returns: a message whose gate
// closed while its entity's init waited (for storage, say, across a pause
// of the process) does not run, and the activation is abandoned before any
// observer hears of it. Before this check (K6, docs/reliability.md) a
// runner resumed after a pause ran the handler of a message whose init had
// started before the pause, on a shard whose lease had moved.
func TestGateAfterInit(t *testing.T) {
	obs := &observer{active: map[actor.Address]bool{}}
	ent := actor.NewEntity("GatedInit")
	work := actor.NewRPC[string, string](ent, "Work")
	initEntered := make(chan struct{}, 1)
	initRelease := make(chan struct{})
	var ran, finals atomic.Int32
	var inits atomic.Int32
	var shut atomic.Bool
	lapsed := errors.New("lease lapsed")
	rt, err := actor.New(actor.WithObserver(obs),
		actor.WithGate(func(int) error {
			if shut.Load() {
				return lapsed
			}
			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Shutdown(context.Background()) })
	if err := rt.Register(actor.Implement(ent, func(self *actor.Instance) ([]actor.Handler, error) {
		if !self.Probe() && inits.Add(1) == 1 {
			initEntered <- struct{}{}
			<-initRelease
		}
		self.OnStop(func(context.Context) { finals.Add(1) })
		return []actor.Handler{actor.Handle(work, func(_ context.Context, s string) (string, error) {
			ran.Add(1)
			return s, nil
		})}, nil
	})); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := actor.Call(context.Background(), rt, work, "a", "stale"); done <- err }()
	<-initEntered // the gate was open when the message was taken
	shut.Store(true)
	close(initRelease)
	if err := <-done; !errors.Is(err, lapsed) {
		t.Fatalf("message whose gate closed during init: %v, want the gate's error", err)
	}
	if n := ran.Load(); n != 0 {
		t.Fatalf("handler ran %d times after its gate closed", n)
	}
	if n := finals.Load(); n != 1 {
		t.Fatalf("finalizers of the abandoned activation ran %d times, want 1", n)
	}
	obs.mu.Lock()
	if len(obs.events) != 0 {
		t.Fatalf("observer heard %v of an abandoned activation", obs.events)
	}
	obs.mu.Unlock()
	shut.Store(false)
	if got := mustCall(t, rt, work, "a", "fresh"); got != "fresh" {
		t.Fatalf("gate open again: %q", got)
	}
	if n := inits.Load(); n != 2 {
		t.Fatalf("init ran %d times, want 2 (the abandoned activation, then a fresh one)", n)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if want := "[+a]"; fmt.Sprint(obs.events) != want || obs.overlap != nil {
		t.Fatalf("observer heard %v (%v), want %s", obs.events, obs.overlap, want)
	}
}
