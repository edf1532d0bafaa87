//go:build unix

package failover_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// TestPersistedFailover kills a runner process holding persisted messages
// on a 3-server NATS cluster (every bucket and stream R3), and checks and
// measures forward recovery (issue 5, docs/design.md invariants 3 and 5):
//
//   - Eight senders store Deposit messages (persisted) for the 300 counters,
//     each with its own message id, and record when JetStream acknowledged
//     each one. A KV watcher on the reply bucket records when each reply is
//     stored, which is when a runner has handled the message.
//   - r1 is paused (SIGSTOP) until at least 20 messages for its shards were
//     stored meanwhile, then killed (SIGKILL): those messages were stored
//     before the kill and never handled by r1.
//   - Checked: every acknowledged message gets a stored reply (none lost),
//     and a Deposit's reply never goes backwards for an entity that stayed
//     put (order); the cluster settles on the survivors.
//   - Measured: kill -> the first of r1's messages handled elsewhere
//     ("first-redelivered"), and kill -> the last of them ("backlog").
//
// It logs one greppable line starting with "FAILOVER persisted".
func TestPersistedFailover(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = s.ClientURL()
	}
	cfg := mesh.DefaultConfig().FastFailover()
	cfg.ShardsPerGroup = shards
	cfg.StorageReplicas = 3
	cfg.CallTimeout = 20 * time.Second
	c := startProcesses(t, cfg, true, urls, "-replicas", "3")
	before := c.waitStatus(t, 90*time.Second, allRunners, "three runners share every shard")
	victimShards := map[int]bool{}
	for _, s := range before.Shards {
		if s.Holder == victim {
			victimShards[s.Shard.N] = true
		}
	}
	onVictim := func(e int) bool { return victimShards[protocol.ShardOf(entityID(e), shards)] }

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The runners create the reply bucket when they start.
	js, err := natsjs.New(c.nc)
	if err != nil {
		t.Fatal(err)
	}
	var kv natsjs.KeyValue
	natstest.WaitFor(t, 30*time.Second, func() bool {
		kv, err = js.KeyValue(ctx, cfg.Prefix+"_replies")
		return err == nil
	}, "the reply bucket exists")
	w, err := kv.WatchAll(ctx, natsjs.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()

	var mu sync.Mutex
	replied := map[string]time.Time{} // message id -> reply stored
	values := map[string]int{}        // message id -> Deposit's reply
	go func() {
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			now := time.Now()
			id := strings.TrimPrefix(e.Key(), "k.")
			v := -1
			if b := e.Value(); len(b) > 2 && b[0] == '0' {
				// A stored success: status, codec, empty code, newline, body.
				var n int
				if protocol.Msgpack.Unmarshal(b[3:], &n) == nil {
					v = n
				}
			}
			mu.Lock()
			if _, ok := replied[id]; !ok {
				replied[id] = now
				values[id] = v
			}
			mu.Unlock()
		}
	}()

	type sent struct {
		id     string
		entity int
		at     time.Time
	}
	var (
		stored   []sent
		failures []error
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	for s := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				e := s*37 + i%37 // disjoint entities per sender: per-entity order is send order
				id := fmt.Sprintf("w%d-%d", s, i)
				sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
				err := mesh.Send(sctx, c.client, counter.Deposit, entityID(e), counter.Amount{Amount: 1}, mesh.MessageID(id))
				scancel()
				mu.Lock()
				if err != nil {
					failures = append(failures, fmt.Errorf("Send %s: %w", id, err))
				} else {
					stored = append(stored, sent{id: id, entity: e, at: time.Now()})
				}
				mu.Unlock()
			}
		})
	}
	countStored := func(since time.Time, victimOnly bool) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range stored {
			if s.at.After(since) && (!victimOnly || onVictim(s.entity)) {
				n++
			}
		}
		return n
	}
	natstest.WaitFor(t, 60*time.Second, func() bool {
		c.mustRun(t)
		mu.Lock()
		defer mu.Unlock()
		return len(replied) >= 300
	}, "300 persisted messages handled")

	p := c.procs[victim]
	paused := time.Now()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 30*time.Second, func() bool { return countStored(paused, true) >= 20 }, "20 messages for the paused runner's shards")
	kill := time.Now()
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	c.waitStatus(t, 60*time.Second, survivors, "the survivors hold every shard")
	natstest.WaitFor(t, 60*time.Second, func() bool { return countStored(kill, true) >= 100 }, "load on the moved shards after the kill")
	close(stop)
	wg.Wait()

	// Durability: every acknowledged message is handled (its reply stored).
	mu.Lock()
	all := slices.Clone(stored)
	mu.Unlock()
	natstest.WaitFor(t, 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range all {
			if _, ok := replied[s.id]; !ok {
				return false
			}
		}
		return true
	}, fmt.Sprintf("every one of %d acknowledged messages handled", len(all)))

	mu.Lock()
	defer mu.Unlock()
	var first, last time.Duration
	backlog := 0
	for _, s := range all {
		if !onVictim(s.entity) || !s.at.Before(kill) {
			continue
		}
		r := replied[s.id]
		if !r.After(kill) {
			continue
		}
		backlog++
		d := r.Sub(kill)
		if first == 0 || d < first {
			first = d
		}
		last = max(last, d)
	}
	if backlog == 0 {
		t.Fatal("no message stored before the kill was left for the survivors")
	}
	// Order: per entity, replies in send order never go backwards (the
	// Counter's value is durable state: it survives the move).
	perEntity := map[int][]int{}
	for _, s := range all { // in store order per sender; merge by entity
		perEntity[s.entity] = append(perEntity[s.entity], values[s.id])
	}
	for e, vs := range perEntity {
		drops := 0
		for i := 1; i < len(vs); i++ {
			if vs[i] >= 0 && vs[i-1] >= 0 && vs[i] <= vs[i-1] {
				drops++
			}
		}
		if drops > 0 {
			t.Errorf("%s (on the killed runner: %v): replies %v go backwards %d times", entityID(e), onVictim(e), vs, drops)
		}
	}
	for _, err := range failures {
		t.Errorf("a send failed: %v", err)
	}
	t.Logf("FAILOVER persisted (R3, fast timings): kill->first-redelivered=%v kill->backlog-handled=%v backlog=%d paused=%v stored=%d all-handled",
		ms(first), ms(last), backlog, ms(kill.Sub(paused)), len(all))
}
