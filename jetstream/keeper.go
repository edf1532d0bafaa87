package jetstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// monoEpoch anchors Keeper.until on the monotonic clock.
var monoEpoch = time.Now()

// monoSince returns t on the monotonic clock, in nanoseconds since monoEpoch.
func monoSince(t time.Time) int64 { return int64(t.Sub(monoEpoch)) }

// Keeper keeps one lease alive by renewing it from a goroutine, and says
// when its holder must stop acting on it. Create one with Leases.Keep.
type Keeper struct {
	ls       *Leases
	interval time.Duration
	cancel   context.CancelFunc
	done     chan struct{} // closed when run returns
	lost     chan struct{} // closed once, by lose

	mu    sync.Mutex
	lease Lease // last confirmed lease; after loss, its newest known revision
	err   error // why lost closed; nil while the lease is kept

	// until is the lease's local validity deadline (monoSince), read
	// without the lock on every message a holder dispatches; 0 once the
	// lease is lost (not when it is stopped or released by its holder).
	until atomic.Int64

	releaseOnce sync.Once
	releaseErr  error
}

// Keep starts renewing l every interval (TTL/3 if interval <= 0) until the
// lease is lost, ctx is cancelled, or Stop or Release is called.
//
// Fencing: Lost is closed when a renewal finds the lease lost, and also
// when the lease's local validity passes without a confirmed renewal,
// measured by the local monotonic clock alone, Margin before the server
// could expire the key. The keeper does not wait to hear from the server
// to declare the lease lost, so an unreachable server cannot keep a holder
// acting on a lease someone else may take over.
//
// Keep panics if interval >= TTL - Margin: such a keeper could never renew
// in time.
func (ls *Leases) Keep(ctx context.Context, l Lease, interval time.Duration) *Keeper {
	if interval <= 0 {
		interval = ls.cfg.TTL / 3
	}
	if interval >= ls.cfg.validity() {
		panic(fmt.Sprintf("jetstream: Keep interval %v must be below TTL-Margin %v", interval, ls.cfg.validity()))
	}
	ctx, cancel := context.WithCancel(ctx)
	k := &Keeper{
		ls:       ls,
		interval: interval,
		cancel:   cancel,
		done:     make(chan struct{}),
		lost:     make(chan struct{}),
		lease:    l,
	}
	k.until.Store(monoSince(l.expires))
	go k.run(ctx)
	return k
}

// Lost returns a channel closed when the keeper no longer vouches for the
// lease: it was lost, its local validity passed, or the keeper was stopped.
// Err says which. The holder must stop acting on the lease when it closes.
func (k *Keeper) Lost() <-chan struct{} { return k.lost }

// Err returns nil while the lease is kept, then why Lost was closed:
// ErrLeaseLost, ErrLeaseExpired, ErrStopped, or a connection error.
func (k *Keeper) Err() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.err
}

// Lease returns the last confirmed lease; use its Revision as the fencing
// token. After Lost, it carries the newest revision known to be ours and a
// validity that is never extended.
func (k *Keeper) Lease() Lease {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lease
}

// Stop stops renewing and closes Lost (Err: ErrStopped) without releasing
// the lease, which the server expires after its TTL. It waits for the
// renewal goroutine to exit; it is idempotent.
func (k *Keeper) Stop() {
	k.cancel()
	<-k.done
}

// Release stops renewing (closing Lost first, so the holder stops acting
// on the lease before it is let go), then releases the lease with
// Leases.Release at the newest revision known to be ours. Only the first
// call releases; later calls return its result.
func (k *Keeper) Release(ctx context.Context) error {
	k.releaseOnce.Do(func() {
		k.Stop()
		k.releaseErr = k.ls.Release(ctx, k.Lease())
	})
	return k.releaseErr
}

func (k *Keeper) run(ctx context.Context) {
	defer close(k.done)
	defer k.lose(ErrStopped, nil) // no-op if already lost
	// The watchdog closes Lost at the local validity deadline on its own
	// timer: a renewal can block inside the client library (for example on
	// the connection's lock while a partitioned socket's buffer is full),
	// and fencing must not wait for it.
	watchdog := time.AfterFunc(time.Until(k.Lease().expires), func() {
		k.mu.Lock()
		l := k.lease
		k.mu.Unlock()
		if !l.Valid(time.Now()) {
			k.lose(fmt.Errorf("keep %s: %w", l.Key, ErrLeaseExpired), nil)
		}
	})
	defer watchdog.Stop()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		l := k.Lease()
		// Renew interval after the confirmed write was sent, or wake at the
		// validity deadline if that comes first.
		next := l.expires.Add(-k.ls.cfg.validity()).Add(k.interval)
		if l.expires.Before(next) {
			next = l.expires
		}
		t.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !l.Valid(time.Now()) {
			k.lose(fmt.Errorf("keep %s: %w", l.Key, ErrLeaseExpired), nil)
			return
		}
		nl, err := k.ls.Renew(ctx, l)
		if err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("%w: %w", ErrStopped, err)
			}
			k.lose(err, &nl)
			return
		}
		if !l.Valid(time.Now()) {
			// Confirmed, but only after the old validity passed: Lost must
			// already be true by the local clock, so the new lease is not
			// adopted as valid (its revision is, for Release).
			nl.expires = l.expires
			k.lose(fmt.Errorf("keep %s: %w (renewal confirmed late)", l.Key, ErrLeaseExpired), &nl)
			return
		}
		k.mu.Lock()
		if k.err != nil { // the watchdog already declared it lost
			k.mu.Unlock()
			return
		}
		k.lease = nl
		k.until.Store(monoSince(nl.expires))
		k.mu.Unlock()
		watchdog.Reset(time.Until(nl.expires))
	}
}

// lose records why the lease is no longer vouched for and closes Lost,
// once. latest, if not nil, is the newest lease state known to be ours.
func (k *Keeper) lose(err error, latest *Lease) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if latest != nil && latest.Revision >= k.lease.Revision {
		k.lease = *latest
	}
	if k.err != nil {
		return
	}
	k.err = err
	if !errors.Is(err, ErrStopped) {
		k.until.Store(0)
	}
	close(k.lost)
}

// Valid reports whether the holder may act on the lease at now: the lease
// was not found lost and its local validity deadline has not passed. Unlike
// Lost, which the keeper's own timer closes, it reads the clock at the
// moment of the call, so a holder resumed after a pause (SIGSTOP, a frozen
// VM, a long GC) sees the lease invalid at once, before any timer has run.
// It takes no lock: holders may call it for every message they handle.
// After Stop or Release the validity is no longer extended but is not
// withdrawn either: a graceful hand-off still finishes its work first.
func (k *Keeper) Valid(now time.Time) bool {
	return monoSince(now) < k.until.Load()
}
