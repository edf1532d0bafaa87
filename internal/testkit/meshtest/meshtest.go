// Package meshtest starts runners and shard managers for the tests of the
// packages built on the mesh (reminder, cron, saga, examples), each on its
// own connection so that a test can crash one (close its connection: no
// graceful hand-off, nothing acknowledged after) or stop it gracefully.
package meshtest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/mesh"
)

// Standalone returns a configuration for one standalone runner with few
// shards and quick persisted retries.
func Standalone() mesh.Config {
	// Short leases: a standalone runner holds every shard's lease, and one
	// restarted after a crash waits for its predecessor's to expire.
	cfg := mesh.DefaultConfig().FastFailover()
	cfg.ShardsPerGroup = 8
	cfg.CallTimeout = 10 * time.Second
	cfg.Standalone = true
	cfg.PersistRetryBackoff = 20 * time.Millisecond
	cfg.PersistRetryBackoffMax = 200 * time.Millisecond
	return cfg
}

// Cluster returns a configuration for managed runners that fail over in
// about two seconds, with storage replicated replicas times.
func Cluster(replicas int) mesh.Config {
	cfg := mesh.DefaultConfig().FastFailover()
	cfg.ShardsPerGroup = 12
	cfg.CallTimeout = 20 * time.Second
	cfg.EntityTerminationTimeout = 5 * time.Second
	cfg.StorageReplicas = replicas
	cfg.PersistRetryBackoff = 20 * time.Millisecond
	cfg.PersistRetryBackoffMax = 200 * time.Millisecond
	return cfg
}

// Client returns a client on nc for the cluster cfg describes.
func Client(t testing.TB, nc *nats.Conn, cfg mesh.Config) *mesh.Client {
	t.Helper()
	c, err := mesh.NewClient(nc, cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Runner is a started runner a test may crash or stop.
type Runner struct {
	*mesh.Runner
	NC   *nats.Conn
	t    testing.TB
	once sync.Once
}

// StartRunner connects to url, builds a runner with cfg and opts, lets
// setup register behaviours and singletons (setup may be nil), and starts
// it. The runner is stopped gracefully at cleanup unless the test crashed
// or stopped it.
func StartRunner(t testing.TB, url string, cfg mesh.Config, setup func(nc *nats.Conn, r *mesh.Runner), opts ...mesh.Option) *Runner {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	r, err := mesh.NewRunner(nc, cfg, opts...)
	if err != nil {
		nc.Close()
		t.Fatal(err)
	}
	if setup != nil {
		setup(nc, r)
	}
	if err := r.Start(context.Background()); err != nil {
		nc.Close()
		t.Fatal(err)
	}
	h := &Runner{Runner: r, NC: nc, t: t}
	t.Cleanup(h.Stop)
	return h
}

// Crash severs the runner's connection: what it had not acknowledged is
// redelivered to the next owner, and its leases expire. Its local
// resources are released at cleanup.
func (h *Runner) Crash() {
	h.once.Do(func() {
		h.NC.Close()
		h.t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = h.Shutdown(ctx) // against a closed connection: errors expected
		})
	})
}

// Stop shuts the runner down gracefully and closes its connection.
func (h *Runner) Stop() {
	h.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := h.Shutdown(ctx); err != nil {
			h.t.Errorf("runner %s shutdown: %v", h.ID(), err)
		}
		h.NC.Close()
	})
}

// StartManager runs a shard manager until cleanup.
func StartManager(t testing.TB, url string, cfg mesh.Config) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.NewShardManager(nc, cfg)
	if err != nil {
		nc.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := m.Run(ctx); err != nil {
			t.Errorf("shard manager: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done; nc.Close() })
}

// WaitServing waits until the runners together serve all n shards of the
// default group.
func WaitServing(t testing.TB, n int, runners ...*Runner) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		total := 0
		for _, r := range runners {
			total += len(r.Shards())
		}
		if total == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("meshtest: runners serve %d of %d shards after 30s", total, n)
		}
		time.Sleep(10 * time.Millisecond) // poll interval of a wait with a deadline
	}
}

// Connect connects to url (servers' URLs joined by commas) and closes the
// connection at cleanup.
func Connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name(t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// ServeCounter starts a standalone runner on nc serving every one of
// shards shards with the example Counter, and shuts it down at cleanup:
// the entity the binaries' tests call.
func ServeCounter(t testing.TB, nc *nats.Conn, shards int) *mesh.Runner {
	t.Helper()
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup, cfg.Standalone = shards, true
	r, err := mesh.NewRunner(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Register(MemoryCounter()); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
	})
	return r
}
