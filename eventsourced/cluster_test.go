package eventsourced

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

// On a 3-server NATS cluster with an R3 event stream, under continuous
// load from several clients: a runner crashes (its connection severed:
// nothing released) and its entities continue on the other runner from
// the stream; then the server leading the stream is shut down. Every
// acknowledged deposit is in the stream exactly once, in each writer's
// order; nothing is stored that no caller sent; each entity's live state
// equals the fold of its stream.
func TestClusterRunnerCrashAndServerLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-server NATS cluster")
	}
	servers := natstest.StartCluster(t, 3)
	url := natstest.ClientURLs(servers)
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup = 12
	cfg.StorageReplicas = 3
	// Leases outlast a stream leader election (seconds).
	cfg.ShardLockExpiration = 8 * time.Second
	cfg.ShardLockRefreshInterval = 2 * time.Second
	cfg.RefreshAssignmentsInterval = time.Second
	cfg.CallTimeout = 20 * time.Second
	storeCfg := DefaultConfig()
	storeCfg.Replicas, storeCfg.AppendAttemptTimeout = 3, time.Second

	connect := func() *nats.Conn {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	mgr, err := mesh.NewShardManager(connect(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	mctx, mcancel := context.WithCancel(context.Background())
	mdone := make(chan struct{})
	go func() { defer close(mdone); _ = mgr.Run(mctx) }()
	t.Cleanup(func() { mcancel(); <-mdone })

	start := func(id string) (*mesh.Runner, *nats.Conn) {
		nc := connect()
		store, err := Open(context.Background(), nc, storeCfg)
		if err != nil {
			t.Fatal(err)
		}
		rc := cfg
		rc.RunnerID = id
		return startRunner(t, nc, rc, store, accountSpec(5)), nc
	}
	r1, nc1 := start("r1")
	r2, _ := start("r2")
	natstest.WaitFor(t, 30*time.Second, func() bool { return len(r1.Shards()) == 6 && len(r2.Shards()) == 6 }, "balanced")

	cnc := connect()
	client, err := mesh.NewClient(cnc, cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	const entities, writers = 12, 4
	var mu sync.Mutex
	acked := map[string][]int{} // entity -> amounts acknowledged, in each writer's send order
	unknown := map[int]bool{}   // amounts whose call failed: stored or not
	var total, failed int
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := 1; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprint("acct.", (w+i)%entities)
				amount := (w+1)*1_000_000 + i // unique, increasing per writer
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := mesh.Call(ctx, client, Deposit, id, amount)
				cancel()
				mu.Lock()
				if err == nil {
					acked[id] = append(acked[id], amount)
					total++
				} else {
					unknown[amount] = true
					failed++
				}
				mu.Unlock()
			}
		})
	}
	progress := func(n int, what string) {
		mu.Lock()
		base := total
		mu.Unlock()
		began := time.Now()
		natstest.WaitFor(t, 60*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return total >= base+n
		}, what)
		t.Logf("%s: %d deposits in %v", what, n, time.Since(began).Round(time.Millisecond))
	}
	progress(200, "load flowing")
	nc1.Close() // r1 crashes: its entities must continue on r2 from the stream
	natstest.WaitFor(t, 60*time.Second, func() bool { return len(r2.Shards()) == 12 }, "r2 takes over r1's shards")
	progress(200, "load after the runner crash")
	leader := natstest.StreamLeader(t, servers, cnc, "mesh_events")
	t.Logf("shutting down %s, leader of the event stream", leader.Name())
	leader.Shutdown()
	progress(200, "load after the server loss")
	close(stop)
	wg.Wait()

	// Check every entity's history against what its callers saw.
	store, err := Open(context.Background(), cnc, storeCfg)
	if err != nil {
		t.Fatal(err)
	}
	for e := range entities {
		id := fmt.Sprint("acct.", e)
		stored := rebuild(t, store, accountSpec(5), id, false)
		seen := map[int]bool{}
		last := map[int]int{} // writer -> last amount seen in the stream
		for _, a := range stored.Log {
			if seen[a] {
				t.Fatalf("%s: amount %d stored twice", id, a)
			}
			seen[a] = true
			w := a / 1_000_000
			if a < last[w] {
				t.Fatalf("%s: writer %d's %d stored after its %d", id, w, a, last[w])
			}
			last[w] = a
		}
		mu.Lock()
		for _, a := range acked[id] {
			if !seen[a] {
				t.Fatalf("%s: acknowledged amount %d is not in the stream", id, a)
			}
			delete(seen, a)
		}
		for a := range seen {
			if !unknown[a] {
				t.Fatalf("%s: amount %d stored but never sent", id, a)
			}
		}
		mu.Unlock()
		live, err := mesh.Call(context.Background(), client, Balance, id, actor.Empty{})
		if err != nil {
			t.Fatalf("Balance(%s): %v", id, err)
		}
		if live.Balance != stored.Balance {
			t.Fatalf("%s: live balance %d, stream folds to %d", id, live.Balance, stored.Balance)
		}
	}
	t.Logf("R3 crash and server loss: %d deposits acknowledged, %d calls failed (outcome unknown to their caller)", total, failed)
}
