package jetstream

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// fast is a configuration whose expiries tests can observe: 1 s TTL,
// 250 ms margin (750 ms validity).
var fast = LeaseConfig{Bucket: "fast", TTL: time.Second, Margin: 250 * time.Millisecond}

func TestLeaseConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  LeaseConfig
		ok   bool
	}{
		{"defaults", LeaseConfig{}, true},
		{"fast", fast, true},
		{"bad bucket", LeaseConfig{Bucket: "a.b"}, false},
		{"replicas", LeaseConfig{Replicas: 7}, false},
		{"sub-second TTL", LeaseConfig{TTL: 500 * time.Millisecond, Margin: 100 * time.Millisecond}, false},
		{"fractional TTL", LeaseConfig{TTL: 1500 * time.Millisecond}, false},
		{"margin >= TTL", LeaseConfig{TTL: time.Second, Margin: time.Second}, false},
		{"negative margin", LeaseConfig{Margin: -time.Second}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.ok && err != nil {
				t.Fatalf("Validate(%+v) = %v, want nil", tt.cfg, err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("Validate(%+v) = %v, want ErrInvalidOption", tt.cfg, err)
			}
		})
	}
}

func TestAcquireConflictRelease(t *testing.T) {
	ctx := testCtx(t)
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), LeaseConfig{TTL: 10 * time.Second})

	a, err := ls.Acquire(ctx, "shard.1", "A", WithMeta([]byte(`{"addr":"x"}`)))
	if err != nil {
		t.Fatalf("Acquire(A) = %v", err)
	}
	if !a.Valid(time.Now()) || a.Revision == 0 || string(a.Meta) != `{"addr":"x"}` {
		t.Fatalf("Acquire(A) = %+v, want a valid lease with revision and meta", a)
	}
	if _, err := ls.Acquire(ctx, "shard.1", "B"); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("Acquire(B) while A holds = %v, want ErrLeaseHeld", err)
	}
	if h, rev, err := ls.Holder(ctx, "shard.1"); err != nil || h != "A" || rev != a.Revision {
		t.Fatalf("Holder = %q, %d, %v; want A, %d, nil", h, rev, err, a.Revision)
	}
	if err := ls.Release(ctx, a); err != nil {
		t.Fatalf("Release(A) = %v", err)
	}
	if _, _, err := ls.Holder(ctx, "shard.1"); !errors.Is(err, ErrNoLease) {
		t.Fatalf("Holder after release = %v, want ErrNoLease", err)
	}
	b, err := ls.Acquire(ctx, "shard.1", "B")
	if err != nil {
		t.Fatalf("Acquire(B) after release = %v", err)
	}
	if b.Revision <= a.Revision {
		t.Fatalf("B's revision %d <= A's %d: fencing tokens must increase", b.Revision, a.Revision)
	}
}

func TestAcquireInvalidArguments(t *testing.T) {
	ctx := testCtx(t)
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), LeaseConfig{})
	tests := []struct{ key, holder string }{
		{"", "A"}, {"a.*", "A"}, {"a..b", "A"}, {".a", "A"}, {"a b", "A"},
		{"k", ""}, {"k", "A\nB"},
	}
	for _, tt := range tests {
		if _, err := ls.Acquire(ctx, tt.key, tt.holder); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("Acquire(%q, %q) = %v, want ErrInvalidOption", tt.key, tt.holder, err)
		}
	}
}

// An earlier acquire whose reply was lost (or an earlier acquire by the same
// incarnation) leaves the key naming us: Acquire takes it over by CAS.
func TestAcquireOwnKeyTakesOver(t *testing.T) {
	ctx := testCtx(t)
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), LeaseConfig{TTL: 10 * time.Second})
	first, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	again, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatalf("Acquire by the same holder = %v, want takeover", err)
	}
	if again.Revision <= first.Revision || !again.Valid(time.Now()) {
		t.Fatalf("takeover lease = %+v, want a valid lease after revision %d", again, first.Revision)
	}
}

// After the key expires the server leaves a marker, and acquiring again is a
// CAS on that marker: of many concurrent acquirers exactly one wins.
func TestReacquireAfterExpiryIsCAS(t *testing.T) {
	ctx := testCtx(t)
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), fast)
	a, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 5*time.Second, func() bool {
		_, _, err := ls.Holder(ctx, "k")
		return errors.Is(err, ErrNoLease)
	}, "lease expires")
	marker, err := ls.read(ctx, "k", time.Time{})
	if err != nil || marker.op != opExpired || marker.rev <= a.Revision {
		t.Fatalf("after expiry, read = %v, %v; want an expiry marker after revision %d", marker, err, a.Revision)
	}

	const n = 5
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = ls.Acquire(ctx, "k", string(rune('B'+i)))
		})
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrLeaseHeld):
			t.Errorf("acquirer %d: %v, want nil or ErrLeaseHeld", i, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d acquirers won after expiry, want exactly 1", won)
	}
}

// THE nats.go#1994 trap: a lease renewed several times must still expire
// once renewals stop. KeyValue.Update would drop the per-key TTL and the key
// would stay forever, failing this test.
func TestRenewKeepsKeyTTL(t *testing.T) {
	ctx := testCtx(t)
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), fast)
	w, err := ls.Watch(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if ev := nextEvent(t, w, 5*time.Second); ev.Kind != EventSynced {
		t.Fatalf("first event = %+v, want synced", ev)
	}

	l, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	acquired := time.Now()
	// Renew across more than two TTLs; pacing, not synchronization.
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for range 10 {
		<-tick.C
		if l, err = ls.Renew(ctx, l); err != nil {
			t.Fatalf("Renew = %v", err)
		}
	}
	if h, rev, err := ls.Holder(ctx, "k"); err != nil || h != "A" || rev != l.Revision {
		t.Fatalf("Holder after %v of renewals = %q, %d, %v; want A, %d", time.Since(acquired), h, rev, err, l.Revision)
	}
	sent := l.Expires().Add(-fast.validity())

	natstest.WaitFor(t, 5*time.Second, func() bool {
		_, _, err := ls.Holder(ctx, "k")
		return errors.Is(err, ErrNoLease)
	}, "renewed lease expires after renewals stop (a renewal without Nats-TTL never expires)")
	if gone := time.Since(sent); gone < fast.TTL {
		t.Fatalf("key expired %v after the last renewal was sent, want >= TTL %v", gone, fast.TTL)
	}
	for {
		ev := nextEvent(t, w, 5*time.Second)
		if ev.Kind == EventExpired {
			break
		}
		if ev.Kind != EventHeld || ev.Holder != "A" {
			t.Fatalf("event = %+v, want held by A until expired", ev)
		}
	}
}

// A lease whose key was released (or deleted) and taken by someone else
// cannot be renewed, and releasing it does not delete the new owner's key.
func TestStaleLeaseCannotRenewOrRelease(t *testing.T) {
	ctx := testCtx(t)
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), LeaseConfig{TTL: 10 * time.Second})
	tests := []struct {
		name   string
		letGo  func(t *testing.T, a Lease)
		reason string
	}{
		{"released", func(t *testing.T, a Lease) {
			if err := ls.Release(ctx, a); err != nil {
				t.Fatal(err)
			}
		}, "A released it"},
		{"deleted by an operator", func(t *testing.T, a Lease) {
			if err := ls.kv.Delete(ctx, a.Key); err != nil {
				t.Fatal(err)
			}
		}, "someone deleted it"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := "k" + string(rune('0'+i))
			a, err := ls.Acquire(ctx, key, "A")
			if err != nil {
				t.Fatal(err)
			}
			tt.letGo(t, a)
			if _, err := ls.Renew(ctx, a); !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("Renew after %s = %v, want ErrLeaseLost", tt.reason, err)
			}
			b, err := ls.Acquire(ctx, key, "B")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ls.Renew(ctx, a); !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("Renew of A's stale lease = %v, want ErrLeaseLost", err)
			}
			if err := ls.Release(ctx, a); !errors.Is(err, ErrLeaseLost) {
				t.Fatalf("Release of A's stale lease = %v, want ErrLeaseLost", err)
			}
			if h, rev, err := ls.Holder(ctx, key); err != nil || h != "B" || rev != b.Revision {
				t.Fatalf("Holder = %q, %d, %v; want B, %d (untouched by A)", h, rev, err, b.Revision)
			}
			if _, err := ls.Renew(ctx, b); err != nil {
				t.Fatalf("Renew(B) = %v", err)
			}
		})
	}
}

func TestRenewExpiredLeaseRefused(t *testing.T) {
	ctx := testCtx(t)
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), LeaseConfig{TTL: 10 * time.Second})
	l, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	l.expires = time.Now().Add(-time.Millisecond)
	if _, err := ls.Renew(ctx, l); !errors.Is(err, ErrLeaseExpired) {
		t.Fatalf("Renew of a locally expired lease = %v, want ErrLeaseExpired", err)
	}
	if h, rev, _ := ls.Holder(ctx, "k"); h != "A" || rev != l.Revision {
		t.Fatalf("Holder = %q, %d; want A, %d (no write)", h, rev, l.Revision)
	}
}

func TestWatchEvents(t *testing.T) {
	ctx := testCtx(t)
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), fast)
	old, err := ls.Acquire(ctx, "a", "A", WithMeta([]byte("m")))
	if err != nil {
		t.Fatal(err)
	}
	w, err := ls.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	want := []Event{
		{Kind: EventHeld, Key: "a", Holder: "A", Meta: []byte("m"), Revision: old.Revision},
		{Kind: EventSynced},
	}
	for _, we := range want {
		if ev := nextEvent(t, w, 5*time.Second); !sameEvent(ev, we) {
			t.Fatalf("event = %+v, want %+v", ev, we)
		}
	}
	if err := ls.Release(ctx, old); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, w, 5*time.Second); ev.Kind != EventReleased || ev.Key != "a" {
		t.Fatalf("event after release = %+v, want released a", ev)
	}
	b, err := ls.Acquire(ctx, "b", "B")
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, w, 5*time.Second); !sameEvent(ev, Event{Kind: EventHeld, Key: "b", Holder: "B", Revision: b.Revision}) {
		t.Fatalf("event after acquire = %+v, want held b by B", ev)
	}
	if ev := nextEvent(t, w, 5*time.Second); ev.Kind != EventExpired || ev.Key != "b" || ev.Revision <= b.Revision {
		t.Fatalf("event after TTL = %+v, want expired b", ev)
	}
	w.Stop()
	if _, ok := <-w.Events(); ok {
		t.Fatal("Events open after Stop")
	}
	w.Stop() // idempotent
}

func TestWatchEndsWithContext(t *testing.T) {
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), fast)
	ctx, cancel := contextWithCancel(t)
	w, err := ls.Watch(ctx, "x.>")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if ev := nextEvent(t, w, 5*time.Second); ev.Kind != EventSynced {
		t.Fatalf("first event = %+v, want synced", ev)
	}
	cancel()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-w.Events():
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("Events not closed after the context was cancelled")
		}
	}
}

func sameEvent(a, b Event) bool {
	return a.Kind == b.Kind && a.Key == b.Key && a.Holder == b.Holder &&
		string(a.Meta) == string(b.Meta) && a.Revision == b.Revision
}

// The bucket must be configured so that per-key TTLs and expiry markers
// work; check what OpenLeases asked the server for.
func TestOpenLeasesBucketConfig(t *testing.T) {
	ctx := testCtx(t)
	nc := natstest.Connect(t, natstest.StartServer(t))
	ls := openLeases(t, nc, LeaseConfig{Bucket: "cfg", TTL: 3 * time.Second})
	js, _ := natsjs.New(nc)
	s, err := js.Stream(ctx, "KV_cfg")
	if err != nil {
		t.Fatal(err)
	}
	c := s.CachedInfo().Config
	if c.MaxMsgsPerSubject != 1 || !c.AllowMsgTTL || c.SubjectDeleteMarkerTTL < ls.Config().TTL {
		t.Fatalf("stream config: history %d, AllowMsgTTL %v, marker TTL %v; want 1, true, >= %v",
			c.MaxMsgsPerSubject, c.AllowMsgTTL, c.SubjectDeleteMarkerTTL, ls.Config().TTL)
	}
	// Opening again (another runner starting) is fine.
	openLeases(t, nc, LeaseConfig{Bucket: "cfg", TTL: 3 * time.Second})
}

// A renewal whose reply was lost (unknown outcome) left the key at a newer
// revision naming us. We simulate it with a raw CAS: Renew must find its own
// write with a leader read, adopt the revision, and renew again at it for a
// confirmed write; Release must release at it.
func TestOwnLandedWriteIsAdopted(t *testing.T) {
	ctx := testCtx(t)
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), LeaseConfig{TTL: 10 * time.Second})

	l, err := ls.Acquire(ctx, "renew", "A")
	if err != nil {
		t.Fatal(err)
	}
	landed, err := ls.cas(ctx, "renew", encodeValue("A", nil), l.Revision)
	if err != nil {
		t.Fatal(err)
	}
	nl, err := ls.Renew(ctx, l)
	if err != nil {
		t.Fatalf("Renew after our own write landed = %v, want adoption", err)
	}
	if nl.Revision <= landed || !nl.Expires().After(l.Expires()) {
		t.Fatalf("Renew = revision %d, expires +%v; want a confirmed write after %d",
			nl.Revision, nl.Expires().Sub(l.Expires()), landed)
	}
	if _, rev, _ := ls.Holder(ctx, "renew"); rev != nl.Revision {
		t.Fatalf("Holder revision = %d, want %d", rev, nl.Revision)
	}

	l, err = ls.Acquire(ctx, "release", "A")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ls.cas(ctx, "release", encodeValue("A", nil), l.Revision); err != nil {
		t.Fatal(err)
	}
	if err := ls.Release(ctx, l); err != nil {
		t.Fatalf("Release after our own write landed = %v, want nil", err)
	}
	if _, _, err := ls.Holder(ctx, "release"); !errors.Is(err, ErrNoLease) {
		t.Fatalf("Holder after Release = %v, want ErrNoLease", err)
	}
}

// Holder (and every read that decides what to do next) must be a
// leader-only $JS.API.STREAM.MSG.GET, never the Direct Get behind
// KeyValue.Get, which any replica may answer stale. A spy connection sees
// which API subject the read goes to.
func TestHolderUsesLeaderOnlyRead(t *testing.T) {
	ctx := testCtx(t)
	s := natstest.StartServer(t)
	ls := openLeases(t, natstest.Connect(t, s), LeaseConfig{Bucket: "spy", TTL: 10 * time.Second})
	spy := natstest.Connect(t, s)
	var leaderGets, directGets atomic.Int32
	if _, err := spy.Subscribe("$JS.API.STREAM.MSG.GET.KV_spy", func(*nats.Msg) { leaderGets.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if _, err := spy.Subscribe("$JS.API.DIRECT.GET.KV_spy.>", func(*nats.Msg) { directGets.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if _, err := spy.Subscribe("$JS.API.DIRECT.GET.KV_spy", func(*nats.Msg) { directGets.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := ls.Acquire(ctx, "k", "A"); err != nil {
		t.Fatal(err)
	}
	if h, _, err := ls.Holder(ctx, "k"); h != "A" || err != nil {
		t.Fatalf("Holder = %q, %v; want A", h, err)
	}
	natstest.WaitFor(t, 5*time.Second, func() bool { return leaderGets.Load() >= 1 }, "Holder sends a leader-only message get")
	if n := directGets.Load(); n != 0 {
		t.Fatalf("%d Direct Gets seen, want 0", n)
	}
}

// A lease key the server failed to expire (K5 in docs/reliability.md: seen
// after server restarts) must not block its shard forever: once its last
// write is more than twice the TTL older than the bucket's newest write, by
// the server's clock, another holder takes it over; not before.
func TestAcquireTakesOverOutlivedLease(t *testing.T) {
	cfg := LeaseConfig{Bucket: "k", TTL: time.Second, Margin: 200 * time.Millisecond}
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), cfg)
	ctx := testCtx(t)
	// A holder's record with an hour-long TTL: the server will not expire
	// it during the test, as it did not in K5.
	if _, err := ls.kv.Create(ctx, "ghost", encodeValue("G", nil), natsjs.KeyTTL(time.Hour)); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	if _, err := ls.Acquire(ctx, "ghost", "B"); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("Acquire of a fresh lease = %v, want ErrLeaseHeld", err)
	}
	// Another holder's renewals keep the bucket's newest write current.
	l, err := ls.Acquire(ctx, "live", "A")
	if err != nil {
		t.Fatal(err)
	}
	k := ls.Keep(ctx, l, 100*time.Millisecond)
	defer k.Stop()
	var got Lease
	natstest.WaitFor(t, 10*time.Second, func() bool {
		got, err = ls.Acquire(ctx, "ghost", "B")
		if err != nil && !errors.Is(err, ErrLeaseHeld) {
			t.Fatalf("Acquire = %v", err)
		}
		return err == nil
	}, "B taking the outlived lease over")
	if age := time.Since(written); age < 2*cfg.TTL {
		t.Fatalf("taken over %v after the last write, before twice the TTL", age)
	}
	if h, _, err := ls.Holder(ctx, "ghost"); h != "B" || err != nil {
		t.Fatalf("Holder = %q, %v; want B", h, err)
	}
	if !got.Valid(time.Now()) {
		t.Fatal("the taken-over lease is not valid")
	}
	// The live lease, renewed all along, is never outlived.
	if _, err := ls.Acquire(ctx, "live", "C"); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("Acquire of a renewed lease = %v, want ErrLeaseHeld", err)
	}
}

// A holder id names a process, not one acquisition. A lease released (or
// renewed) late, after the same process acquired the key again, must not
// take the newer acquisition's revision for one of its own writes: found
// by the chaos suite, where a hand-off's release that had waited out a
// network cut deleted the runner's fresh lease on the same shard.
func TestLateReleaseSparesNewerAcquisition(t *testing.T) {
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), LeaseConfig{Bucket: "k", TTL: 10 * time.Second})
	ctx := testCtx(t)
	old, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	// The old lease lapses (an operator's delete stands in for its expiry),
	// and the same process acquires the key again.
	if err := ls.kv.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	fresh, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ls.Renew(ctx, old); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("late Renew of the old lease = %v, want ErrLeaseLost", err)
	}
	if err := ls.Release(ctx, old); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("late Release of the old lease = %v, want ErrLeaseLost", err)
	}
	h, rev, err := ls.Holder(ctx, "k")
	if err != nil || h != "A" || rev != fresh.Revision {
		t.Fatalf("Holder = %q at %d, %v; want the fresh lease (A at %d) untouched", h, rev, err, fresh.Revision)
	}
	if _, err := ls.Renew(ctx, fresh); err != nil {
		t.Fatalf("Renew of the fresh lease = %v", err)
	}
}

// Remove deletes a key at its revision, refuses to delete a newer one, and
// marks deleted a key that a reader saw but that has no message left (the
// watch's view of K5: removed by its TTL without a marker).
func TestRemove(t *testing.T) {
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), LeaseConfig{Bucket: "k", TTL: 10 * time.Second})
	ctx := testCtx(t)
	l, err := ls.Acquire(ctx, "a", "A")
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.Remove(ctx, "a", l.Revision+1); err == nil {
		t.Fatal("Remove at another revision succeeded")
	}
	if err := ls.Remove(ctx, "a", 0); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("Remove at revision 0 = %v, want ErrInvalidOption", err)
	}
	if err := ls.Remove(ctx, "a", l.Revision); err != nil {
		t.Fatalf("Remove at the key's revision = %v", err)
	}
	if _, _, err := ls.Holder(ctx, "a"); !errors.Is(err, ErrNoLease) {
		t.Fatalf("Holder after Remove = %v, want ErrNoLease", err)
	}
	// A key with no message at all (purged here, as the server's expiry
	// without a marker leaves it): Remove writes the delete marker.
	l2, err := ls.Acquire(ctx, "b", "B")
	if err != nil {
		t.Fatal(err)
	}
	w, err := ls.Watch(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	stream, err := ls.js.Stream(ctx, "KV_k")
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx, natsjs.WithPurgeSubject("$KV.k.b")); err != nil {
		t.Fatal(err)
	}
	if err := ls.Remove(ctx, "b", l2.Revision); err != nil {
		t.Fatalf("Remove of a key with no message = %v", err)
	}
	for ev := range w.Events() {
		if ev.Kind == EventReleased {
			return // watchers learn it is gone
		}
	}
	t.Fatal("watch ended without a release event")
}
