package jetstream

import (
	"errors"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// With the server gone, the keeper must declare the lease lost by its own
// clock when its local validity passes: after the last confirmed renewal's
// Expires, and before the server could have expired the key (Margin later).
func TestKeeperLostByLocalClockWhenServerGone(t *testing.T) {
	cfg := LeaseConfig{Bucket: "k", TTL: 2 * time.Second, Margin: 500 * time.Millisecond}
	s := natstest.StartServer(t)
	ls := openLeases(t, natstest.Connect(t, s), cfg)
	ctx := testCtx(t)
	l, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	k := ls.Keep(ctx, l, 200*time.Millisecond)
	defer k.Stop()
	natstest.WaitFor(t, 5*time.Second, func() bool { return k.Lease().Revision > l.Revision }, "a renewal")

	s.Shutdown()
	lostAt := waitClosed(t, k.Lost(), 2*cfg.TTL, "Lost after the server shut down")
	last := k.Lease()
	if !errors.Is(k.Err(), ErrLeaseExpired) {
		t.Fatalf("Err = %v, want ErrLeaseExpired", k.Err())
	}
	if lostAt.Before(last.Expires()) {
		t.Fatalf("lost %v before the local deadline: the lease was still valid", last.Expires().Sub(lostAt))
	}
	// Sent + TTL is the earliest the server could expire the key.
	if serverExpiry := last.Expires().Add(cfg.Margin); !lostAt.Before(serverExpiry) {
		t.Fatalf("lost %v after the server could expire the key: not fenced", lostAt.Sub(serverExpiry))
	}
	if last.Valid(time.Now()) {
		t.Fatal("Lease() is valid after Lost")
	}
}

func TestKeeperLostWhenConnectionCloses(t *testing.T) {
	s := natstest.StartServer(t)
	nc := natstest.Connect(t, s)
	ls := openLeases(t, nc, LeaseConfig{Bucket: "k", TTL: 10 * time.Second})
	ctx := testCtx(t)
	l, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	k := ls.Keep(ctx, l, 100*time.Millisecond)
	defer k.Stop()
	nc.Close()
	waitClosed(t, k.Lost(), 5*time.Second, "Lost after the connection closed")
	if k.Err() == nil || errors.Is(k.Err(), ErrStopped) {
		t.Fatalf("Err = %v, want the connection error", k.Err())
	}
}

// Another holder taking the key (here after an operator deleted it) is seen
// at the next renewal.
func TestKeeperLostToAnotherHolder(t *testing.T) {
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), LeaseConfig{Bucket: "k", TTL: 10 * time.Second})
	ctx := testCtx(t)
	l, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	k := ls.Keep(ctx, l, 100*time.Millisecond)
	defer k.Stop()
	if err := ls.kv.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := ls.Acquire(ctx, "k", "B"); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, k.Lost(), 5*time.Second, "Lost after B took the key")
	if !errors.Is(k.Err(), ErrLeaseLost) {
		t.Fatalf("Err = %v, want ErrLeaseLost", k.Err())
	}
	if err := k.Release(ctx); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Release = %v, want ErrLeaseLost (B's key untouched)", err)
	}
	if h, _, err := ls.Holder(ctx, "k"); h != "B" || err != nil {
		t.Fatalf("Holder = %q, %v; want B", h, err)
	}
}

func TestKeeperRelease(t *testing.T) {
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), LeaseConfig{Bucket: "k", TTL: 10 * time.Second})
	ctx := testCtx(t)
	l, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	k := ls.Keep(ctx, l, 100*time.Millisecond)
	natstest.WaitFor(t, 5*time.Second, func() bool { return k.Lease().Revision > l.Revision }, "a renewal")
	select {
	case <-k.Lost():
		t.Fatalf("Lost while renewing: %v", k.Err())
	default:
	}
	if err := k.Release(ctx); err != nil {
		t.Fatalf("Release = %v", err)
	}
	waitClosed(t, k.Lost(), time.Second, "Lost after Release")
	if !errors.Is(k.Err(), ErrStopped) {
		t.Fatalf("Err = %v, want ErrStopped", k.Err())
	}
	if _, _, err := ls.Holder(ctx, "k"); !errors.Is(err, ErrNoLease) {
		t.Fatalf("Holder after Release = %v, want ErrNoLease", err)
	}
	if err := k.Release(ctx); err != nil {
		t.Fatalf("second Release = %v, want the first result", err)
	}
	k.Stop() // idempotent
	if _, err := ls.Acquire(ctx, "k", "B"); err != nil {
		t.Fatalf("Acquire(B) after release = %v", err)
	}
}

func TestKeeperStopsWithContext(t *testing.T) {
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), LeaseConfig{Bucket: "k", TTL: 10 * time.Second})
	l, err := ls.Acquire(testCtx(t), "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithCancel(t)
	k := ls.Keep(ctx, l, 0)
	cancel()
	waitClosed(t, k.Lost(), time.Second, "Lost after the context was cancelled")
	if !errors.Is(k.Err(), ErrStopped) {
		t.Fatalf("Err = %v, want ErrStopped", k.Err())
	}
	k.Stop()
}

func TestKeepPanicsOnIntervalBeyondValidity(t *testing.T) {
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), fast)
	defer func() {
		if recover() == nil {
			t.Fatal("Keep with interval >= TTL-Margin did not panic")
		}
	}()
	ls.Keep(testCtx(t), Lease{Key: "k", Holder: "A"}, fast.TTL)
}

// Keeper.Valid reads the clock at each call: true while the lease is
// kept, false at any instant past the local deadline (whether or not the
// watchdog has run), false at once when the lease is found lost, and still
// true until the deadline after Stop (a graceful hand-off finishes first).
func TestKeeperValid(t *testing.T) {
	cfg := LeaseConfig{Bucket: "k", TTL: 10 * time.Second, Margin: time.Second}
	ls := openLeases(t, natstest.Connect(t, natstest.StartServer(t)), cfg)
	ctx := testCtx(t)
	l, err := ls.Acquire(ctx, "k", "A")
	if err != nil {
		t.Fatal(err)
	}
	k := ls.Keep(ctx, l, 100*time.Millisecond)
	if !k.Valid(time.Now()) {
		t.Fatal("Valid = false right after Keep")
	}
	natstest.WaitFor(t, 5*time.Second, func() bool { return k.Lease().Revision > l.Revision }, "a renewal")
	exp := k.Lease().Expires()
	if !k.Valid(exp.Add(-time.Millisecond)) || k.Valid(exp) {
		t.Fatalf("Valid around the deadline %v: want true just before, false at it", exp)
	}
	if k.Valid(time.Now().Add(cfg.TTL)) {
		t.Fatal("Valid a TTL from now: want false (as after a long pause)")
	}
	k.Stop()
	if !k.Valid(time.Now()) {
		t.Fatal("Valid = false right after Stop: a graceful hand-off keeps the lease until it releases it")
	}

	l2, err := ls.Acquire(ctx, "k2", "A")
	if err != nil {
		t.Fatal(err)
	}
	k2 := ls.Keep(ctx, l2, 100*time.Millisecond)
	defer k2.Stop()
	if err := ls.kv.Delete(ctx, "k2"); err != nil {
		t.Fatal(err)
	}
	if _, err := ls.Acquire(ctx, "k2", "B"); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, k2.Lost(), 5*time.Second, "Lost after B took the key")
	if k2.Valid(time.Now()) {
		t.Fatal("Valid = true after the lease was lost to B")
	}
}
