package mesh_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

// startStandalone starts a standalone runner of cfg's prefix on url,
// returning Start's error; the runner is shut down at the test's end.
func startStandalone(t *testing.T, url string, cfg mesh.Config) (*mesh.Runner, *nats.Conn, error) {
	t.Helper()
	cfg.Standalone = true
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	r, err := mesh.NewRunner(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Register(counterBehavior(newHooks())); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		return nil, nc, err
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
	})
	return r, nc, nil
}

// A standalone runner refuses to start where a cluster of its prefix is
// live (a registered runner, a leading shard manager, held shard leases),
// and says what it found; the cluster keeps serving.
func TestStandaloneRefusesLiveCluster(t *testing.T) {
	cfg := clusterConfig()
	c := newTestCluster(t, cfg)
	c.manager()
	c.runner("r1", 1, nil)
	c.waitBalanced(map[string]int{"r1": cfg.ShardsPerGroup})

	_, _, err := startStandalone(t, c.url, cfg)
	if err == nil {
		t.Fatal("a standalone runner started beside a live cluster")
	}
	for _, want := range []string{"cluster of prefix " + cfg.Prefix + " is live", "runner r1 is registered", "shard manager"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not say %q", err, want)
		}
	}
	client, _ := newClient(t, c.url, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := mesh.Call(ctx, client, Increment, "a", Amount{Amount: 1}); err != nil {
		t.Fatalf("the cluster after a refused standalone runner: %v", err)
	}
	nc, _ := c.jetStream()
	st, err := mesh.Inspect(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Standalone != "" {
		t.Fatalf("status names a standalone runner: %q", st.Standalone)
	}
	c.obs.check(t)
}

// A cluster's runner refuses to start where a standalone runner serves;
// once that one shuts down (releasing its leases), a cluster starts at
// once.
func TestClusterRunnerRefusesStandalone(t *testing.T) {
	cfg := clusterConfig()
	c := newTestCluster(t, cfg)
	solo, nc, err := startStandalone(t, c.url, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := mesh.Inspect(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Standalone == "" {
		t.Fatal("status does not name the standalone runner")
	}

	_, err = c.tryRunner("r1", 1, nil, nil, counterBehavior(newHooks()))
	if err == nil || !strings.Contains(err.Error(), "standalone runner") || !strings.Contains(err.Error(), "serves every shard") {
		t.Fatalf("a cluster's runner beside a standalone one: %v", err)
	}
	client, _ := newClient(t, c.url, cfg)
	if _, err := mesh.Call(ctx, client, Increment, "a", Amount{Amount: 1}); err != nil {
		t.Fatalf("the standalone runner after refusing a cluster's: %v", err)
	}
	st, err = mesh.Inspect(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Runners {
		if r.ID == "r1" {
			t.Fatalf("the refused runner is still registered: %+v", st.Runners)
		}
	}

	if err := solo.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	c.manager()
	c.runner("r1", 1, nil)
	c.waitBalanced(map[string]int{"r1": cfg.ShardsPerGroup})
	if _, err := mesh.Call(ctx, client, Increment, "a", Amount{Amount: 1}); err != nil {
		t.Fatalf("the cluster after the standalone runner: %v", err)
	}
}

// A standalone runner restarted after a crash (its leases left to expire)
// waits for them rather than failing, then serves.
func TestStandaloneRestartAfterCrash(t *testing.T) {
	cfg := clusterConfig()
	s := natstest.StartServer(t)
	start := func(id string, log *natstest.Buffer) (*mesh.Runner, *nats.Conn) {
		c := cfg
		c.Standalone, c.RunnerID = true, id
		nc, err := nats.Connect(s.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		r, err := mesh.NewRunner(nc, c, mesh.WithLogger(slog.New(slog.NewTextHandler(log, nil))))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Register(counterBehavior(newHooks())); err != nil {
			t.Fatal(err)
		}
		if err := r.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return r, nc
	}
	first, firstNC := start("first", &natstest.Buffer{})
	client, _ := newClient(t, s.ClientURL(), cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := mesh.Call(ctx, client, Increment, "a", Amount{Amount: 1}); err != nil {
		t.Fatal(err)
	}
	// The crash: the connection goes, the runner never shuts down.
	firstNC.Close()
	var log natstest.Buffer
	second, _ := start("second", &log)
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = second.Shutdown(sctx)
		_ = first.Shutdown(sctx)
	})
	if !strings.Contains(log.String(), "waiting for the lease of the previous standalone runner") {
		t.Fatalf("the second standalone runner did not wait for the first's lease; its log:\n%s", log.String())
	}
	if _, err := mesh.Call(ctx, client, Increment, "a", Amount{Amount: 1}); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
}

// A standalone runner and a cluster's runner started at once: each writes
// its claim before it reads the other's, so they never both start.
func TestStandaloneAndClusterRace(t *testing.T) {
	s := natstest.StartServer(t)
	for i := range 4 {
		cfg := clusterConfig()
		cfg.Prefix = fmt.Sprintf("race%d", i)
		c := &testCluster{t: t, url: s.ClientURL(), cfg: cfg, obs: newActivations(), runners: map[string]*mesh.Runner{}}
		var soloErr, clusterErr error
		var wg sync.WaitGroup
		wg.Go(func() { _, _, soloErr = startStandalone(t, c.url, cfg) })
		wg.Go(func() { _, clusterErr = c.tryRunner("r1", 1, nil, nil, counterBehavior(newHooks())) })
		wg.Wait()
		if soloErr == nil && clusterErr == nil {
			t.Fatalf("round %d: a standalone runner and a cluster's runner both started", i)
		}
		t.Logf("round %d: standalone: %v; cluster: %v", i, soloErr, clusterErr)
	}
}
