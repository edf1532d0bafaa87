// Package badinput_test feeds a running cluster what it should never get:
// oversized payloads, unknown entity types and RPCs, invalid ids, garbage in
// its KV buckets, its persisted stream deleted under it. Each must be
// answered with a clear, typed error or recovered from: never a crash, a
// hang, or a message lost without a trace.
//
// Clock jumps: no lease depends on a runner's wall clock. Leases' TTLs are
// kept by the NATS server (per-message TTLs, expired by the stream
// leader), and a holder's own validity (jetstream.Lease.Valid) is measured
// on Go's monotonic clock from when its renewal was sent, so a wall-clock
// jump on a runner moves neither. Wall time meets the runner in one place,
// DeliverAt, and there the runner's clock can only shorten the hold that
// the server's clock sets: mesh's TestPersistedDeliverAtWrongRunnerClock
// runs a runner whose wall clock is an hour off in either direction.
package badinput_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Blob's RPCs answer with as many bytes as asked, to overflow replies.
var (
	blob      = actor.NewEntity("Blob")
	make_     = actor.NewRPC[int, string](blob, "Make")
	makeP     = actor.NewRPC[int, string](blob, "MakePersisted", actor.Persisted())
	chunks    = actor.NewStreamRPC[int, string](blob, "Chunks")
	echo      = actor.NewRPC[string, int](blob, "Echo")
	echoP     = actor.NewRPC[string, int](blob, "EchoPersisted", actor.Persisted())
	blobRuns  atomic.Int64               // runs of MakePersisted, across the package's tests
	ghost     = actor.NewEntity("Ghost") // hosted by no runner
	ghostCall = actor.NewRPC[int, int](ghost, "Boo")
	ghostPost = actor.NewRPC[int, int](ghost, "BooPersisted", actor.Persisted())
	// otherCounter declares an RPC the hosted Counter does not have.
	otherCounter = actor.NewEntity("Counter")
	nope         = actor.NewRPC[int, int](otherCounter, "Nope")
	nopePost     = actor.NewRPC[int, int](otherCounter, "NopePersisted", actor.Persisted())
)

func blobBehavior() *actor.Behavior {
	return actor.Implement(blob, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{
			actor.Handle(make_, func(_ context.Context, n int) (string, error) { return strings.Repeat("x", n), nil }),
			actor.Handle(makeP, func(_ context.Context, n int) (string, error) {
				blobRuns.Add(1)
				return strings.Repeat("x", n), nil
			}),
			actor.Handle(echo, func(_ context.Context, s string) (int, error) { return len(s), nil }),
			actor.Handle(echoP, func(_ context.Context, s string) (int, error) { return len(s), nil }),
			actor.HandleStream(chunks, func(_ context.Context, n int, emit func(string) error) error {
				if err := emit("small"); err != nil {
					return err
				}
				return emit(strings.Repeat("x", n))
			}),
		}, nil
	})
}

// maxPayload is the servers' max_payload: small, so that overflowing it is
// cheap.
const maxPayload = 64 << 10

// cluster is an embedded server, a shard manager and runners.
type cluster struct {
	t       *testing.T
	srv     *server.Server
	cfg     mesh.Config
	runners map[string]*mesh.Runner
	conns   map[string]*nats.Conn
	stopMgr context.CancelFunc
	mgrDone chan struct{}
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	cfg := mesh.DefaultConfig().FastFailover()
	cfg.ShardsPerGroup = 4
	cfg.CallTimeout = 10 * time.Second
	cfg.PersistRetryBackoff, cfg.PersistRetryBackoffMax = 20*time.Millisecond, 200*time.Millisecond
	c := &cluster{
		t: t, cfg: cfg, runners: map[string]*mesh.Runner{}, conns: map[string]*nats.Conn{},
		srv: natstest.StartServer(t, func(o *server.Options) { o.MaxPayload = maxPayload }),
	}
	c.startManager()
	t.Cleanup(func() { c.stopManager() })
	return c
}

func (c *cluster) startManager() {
	m, err := mesh.NewShardManager(natstest.Connect(c.t, c.srv), c.cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	c.stopMgr, c.mgrDone = cancel, done
	natstest.WaitFor(c.t, 10*time.Second, m.IsLeader, "the shard manager leading")
}

func (c *cluster) stopManager() {
	if c.stopMgr != nil {
		c.stopMgr()
		<-c.mgrDone
		c.stopMgr = nil
	}
}

func (c *cluster) runner(id string) *mesh.Runner {
	c.t.Helper()
	nc := natstest.Connect(c.t, c.srv)
	cfg := c.cfg
	cfg.RunnerID = id
	r, err := mesh.NewRunner(nc, cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, b := range []*actor.Behavior{meshtest.MemoryCounter(), blobBehavior()} {
		if err := r.Register(b); err != nil {
			c.t.Fatal(err)
		}
	}
	if err := r.Start(context.Background()); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { c.stop(id) })
	c.runners[id], c.conns[id] = r, nc
	return r
}

func (c *cluster) stop(id string) {
	r := c.runners[id]
	if r == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = r.Shutdown(ctx)
	delete(c.runners, id)
}

// served waits until the runners together serve every shard.
func (c *cluster) served(what string) {
	c.t.Helper()
	natstest.WaitFor(c.t, 20*time.Second, func() bool {
		n := 0
		for _, r := range c.runners {
			n += len(r.Shards())
		}
		return n == c.cfg.ShardsPerGroup
	}, what)
}

func (c *cluster) client() (*mesh.Client, *nats.Conn) {
	nc := natstest.Connect(c.t, c.srv)
	cl, err := mesh.NewClient(nc, c.cfg.ClientConfig)
	if err != nil {
		c.t.Fatal(err)
	}
	return cl, nc
}

func (c *cluster) js() natsjs.JetStream {
	js, err := natsjs.New(natstest.Connect(c.t, c.srv))
	if err != nil {
		c.t.Fatal(err)
	}
	return js
}

// started is a cluster with one runner serving every shard, and a client.
func started(t *testing.T) (*cluster, *mesh.Client, *nats.Conn) {
	t.Helper()
	c := newCluster(t)
	c.runner("r1")
	c.served("r1 serving every shard")
	cl, nc := c.client()
	return c, cl, nc
}

// answered calls every shard's entities until each answers, with a
// deadline: the cluster serves.
func (c *cluster) answered(cl *mesh.Client, what string) {
	c.t.Helper()
	for n := range c.cfg.ShardsPerGroup {
		id := idInShard(n, c.cfg.ShardsPerGroup)
		natstest.WaitFor(c.t, 20*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := mesh.Call(ctx, cl, counter.GetValue, id, actor.Empty{})
			return err == nil
		}, fmt.Sprintf("%s: shard %d answers", what, n))
	}
}

// idInShard returns an entity id in shard n.
func idInShard(n, shards int) string {
	for i := 0; ; i++ {
		if id := fmt.Sprint("e-", i); protocol.ShardOf(id, shards) == n {
			return id
		}
	}
}

// errorCode returns a raw reply's error code ("" for a success).
func errorCode(m *nats.Msg) string { return m.Header.Get(protocol.HeaderError) }
