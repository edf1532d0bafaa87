package jetstream

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// On a 3-server cluster with an R3 bucket, a kept lease survives a stream
// leader step-down and a hard shutdown of the leader's server: renewals
// continue, Lost never closes, and a rival never acquires the key.
func TestClusterLeaseSurvivesLeaderChange(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	nc := natstest.Connect(t, servers...)
	// Server.Shutdown steps its Raft leaders down first, so a new stream
	// leader is usually elected within a few hundred ms. When that hand-off
	// does not happen, followers wait for the Raft election timeout (4-9 s
	// in nats-server 2.15): the lease's validity must outlast it.
	cfg := LeaseConfig{Bucket: "r3", Replicas: 3, TTL: 12 * time.Second, Margin: time.Second}
	ls := openLeases(t, nc, cfg)
	ctx := testCtx(t)
	const stream = "KV_r3"

	t.Run("holder reads from the leader", func(t *testing.T) {
		l, err := ls.Acquire(ctx, "read", "A")
		if err != nil {
			t.Fatal(err)
		}
		for range 50 {
			if l, err = ls.Renew(ctx, l); err != nil {
				t.Fatal(err)
			}
			if h, rev, err := ls.Holder(ctx, "read"); err != nil || h != "A" || rev != l.Revision {
				t.Fatalf("Holder right after a renewal = %q, %d, %v; want A, %d (a stale read?)", h, rev, err, l.Revision)
			}
		}
		if err := ls.Release(ctx, l); err != nil {
			t.Fatal(err)
		}
	})

	l, err := ls.Acquire(ctx, "singleton", "A")
	if err != nil {
		t.Fatal(err)
	}
	k := ls.Keep(ctx, l, 250*time.Millisecond)
	defer k.Stop()

	// A rival keeps trying to acquire the key; it must never succeed.
	rivalCtx, stopRival := context.WithCancel(ctx)
	var rivalWon atomic.Bool
	var rival sync.WaitGroup
	rival.Go(func() {
		for rivalCtx.Err() == nil {
			actx, cancel := context.WithTimeout(rivalCtx, time.Second)
			if _, err := ls.Acquire(actx, "singleton", "B"); err == nil {
				rivalWon.Store(true)
			}
			cancel()
			select { // pacing, so the rival does not starve the keeper
			case <-rivalCtx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	defer func() {
		stopRival()
		rival.Wait()
	}()

	// A second holder renews another key back to back, so that some
	// renewals are in flight when the leader changes (unknown outcomes).
	hammered, err := ls.Acquire(ctx, "hammer", "H")
	if err != nil {
		t.Fatal(err)
	}
	hammerCtx, stopHammer := context.WithCancel(ctx)
	var hammer sync.WaitGroup
	var hammerErr error
	var renewals int
	var longest time.Duration
	hammer.Go(func() {
		last := time.Now()
		for hammerCtx.Err() == nil {
			l, err := ls.Renew(hammerCtx, hammered)
			if err != nil {
				if hammerCtx.Err() == nil {
					hammerErr = err
				}
				return
			}
			hammered = l
			renewals++
			longest = max(longest, time.Since(last))
			last = time.Now()
		}
	})
	defer func() {
		stopHammer()
		hammer.Wait()
	}()

	renewedPast := func(what string) {
		t.Helper()
		rev := k.Lease().Revision
		// Two confirmed renewals after the event: renewals continue.
		for range 2 {
			natstest.WaitFor(t, 10*time.Second, func() bool { return k.Lease().Revision > rev || k.Err() != nil }, "renewal after "+what)
			if err := k.Err(); err != nil {
				t.Fatalf("lease lost after %s: %v", what, err)
			}
			rev = k.Lease().Revision
		}
	}

	renewedPast("start")
	natstest.StepDownStream(t, nc, stream)
	renewedPast("stream leader step-down")

	leader := natstest.StreamLeader(t, servers, nc, stream)
	leader.Shutdown()
	renewedPast("shutdown of the leader's server " + leader.Name())

	if rivalWon.Load() {
		t.Fatal("rival acquired the key while the keeper held it: double holder")
	}
	select {
	case <-k.Lost():
		t.Fatalf("Lost: %v", k.Err())
	default:
	}
	stopRival()
	rival.Wait()
	stopHammer()
	hammer.Wait()
	if hammerErr != nil {
		t.Fatalf("back-to-back renewals failed across leader changes after %d renewals: %v", renewals, hammerErr)
	}
	t.Logf("back-to-back renewals: %d, longest gap between confirmed renewals %v", renewals, longest)
	if err := k.Release(ctx); err != nil {
		t.Fatalf("Release = %v", err)
	}
	if _, err := ls.Acquire(ctx, "singleton", "B"); err != nil {
		t.Fatalf("Acquire(B) after release = %v", err)
	}
}
