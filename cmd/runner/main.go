// Command runner hosts natsmesh entities (the example Counter).
//
// With -dev it is a whole development cluster in one process: an embedded
// nats-server with JetStream in a local folder, a shard manager, and a runner
// that gets every shard through the same leases and assignment as in
// production. Without -dev it connects to the NATS servers given by -nats (or
// NATS_URL) and joins the cluster run by cmd/shardmgr; with -standalone it
// serves every shard itself, with no coordination (one runner only).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/internal/devnats"
	"github.com/natsmesh/natsmesh/mesh"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "runner:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("runner", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		conn       cli.Conn
		dev        = fs.Bool("dev", false, "development mode: embedded nats-server, one runner owning every shard")
		devListen  = fs.String("dev-listen", "127.0.0.1:4222", "with -dev: where the embedded server listens for clients")
		dataDir    = fs.String("data", ".data/nats", "with -dev: JetStream data folder")
		standalone = fs.Bool("standalone", false, "serve every shard with no shard manager (one runner only)")
		id         = fs.String("id", "", "runner id, unique per process (default: generated)")
		weight     = fs.Int("weight", 1, "share of shards relative to other runners")
		cluster    cli.Cluster
	)
	conn.Register(fs)
	cluster.Register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, log, err := cluster.Config()
	if err != nil {
		return err
	}
	cfg.Standalone, cfg.RunnerID, cfg.RunnerWeight = *standalone, *id, *weight
	if err := cfg.Validate(); err != nil {
		return err
	}

	var (
		nc  *nats.Conn
		srv *server.Server
		url string
	)
	if *dev {
		if err := os.MkdirAll(*dataDir, 0o755); err != nil {
			return fmt.Errorf("-data: %w", err)
		}
		srv, err = devnats.Start(devnats.Options{Listen: *devListen, StoreDir: *dataDir})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		url = srv.ClientURL()
		// The runner talks to its own server in-process: no TCP on the hot path.
		nc, err = nats.Connect(url, nats.InProcessServer(srv), nats.Name("natsmesh-runner"))
	} else {
		conn.Name = "natsmesh-runner"
		nc, err = conn.Connect()
		url = conn.URL
	}
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()

	if *dev && !cfg.Standalone {
		// The shard manager runs in this process, on the same code as
		// cmd/shardmgr.
		m, err := mesh.NewShardManager(nc, cfg)
		if err != nil {
			return err
		}
		mctx, stopManager := context.WithCancel(context.Background())
		managerDone := make(chan error, 1)
		go func() { managerDone <- m.Run(mctx) }()
		defer func() { stopManager(); <-managerDone }()
	}
	r, err := mesh.NewRunner(nc, cfg)
	if err != nil {
		return err
	}
	if err := r.Register(counter.Behavior(log)); err != nil {
		return err
	}
	if err := r.Start(ctx); err != nil {
		return err
	}
	if *dev {
		// Wait for the first assignment so the printed commands work at once.
		deadline := time.Now().Add(30 * time.Second)
		for len(r.Shards()) < cfg.ShardsPerGroup*len(cfg.ShardGroups) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond) // poll interval of a wait with a deadline
		}
	}
	log.Info("runner ready", "id", r.ID(), "nats", url, "shards", len(r.Shards()), "prefix", cfg.Prefix, "standalone", cfg.Standalone)
	printHelp(stdout, url, cfg)

	<-ctx.Done()
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.EntityTerminationTimeout+5*time.Second)
	defer cancel()
	if err := r.Shutdown(sctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

func printHelp(w io.Writer, url string, cfg mesh.Config) {
	id := "user-123"
	shard := mesh.ShardOf(id, cfg.ShardsPerGroup)
	fmt.Fprintf(w, `natsmesh runner is serving on %s (entity type Counter).
Call it with the nats CLI (JSON payloads; docs/protocol.md has the details):

  nats -s %s req %s.v1.entity.Counter.Increment '{"amount":5}' -H Mesh-Id:%s
  nats -s %s req %s.v1.call.default.%d.Counter.GetValue '' -H Mesh-Id:%s
  nats -s %s req %s.v1.entity.Counter.Withdraw '{"amount":100}' -H Mesh-Id:%s

or from Go with mesh.Call(ctx, client, counter.Increment, %q, counter.Amount{Amount: 5}).
Press Ctrl-C to stop.
`, url, url, cfg.Prefix, id, url, cfg.Prefix, shard, id, url, cfg.Prefix, id, id)
}
