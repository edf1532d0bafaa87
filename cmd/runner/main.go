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
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/internal/devnats"
	"github.com/natsmesh/natsmesh/internal/ops"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cli.Exit("runner", run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := cli.NewSettings("runner", stderr)
	s.SetOutput(stdout)
	var (
		conn      cli.Conn
		logging   cli.Logging
		web       cli.Ops
		tracing   cli.Tracing
		dev       bool
		devListen string
		dataDir   string
	)
	conn.Register(s)
	settings := cli.RegisterMesh(s, cli.Cluster|cli.Coordination|cli.Entities|cli.Calls|cli.Runner)
	s.Bool(&dev, false, cli.Spec{Name: "dev", Usage: "development mode: embedded nats-server, a shard manager and this runner in one process"})
	s.String(&devListen, "127.0.0.1:4222", cli.Spec{Name: "dev-listen", Usage: "with -dev: where the embedded server listens for clients"})
	s.String(&dataDir, ".data/nats", cli.Spec{Name: "data", Usage: "with -dev: JetStream data folder"})
	logging.Register(s)
	web.Register(s)
	tracing.Register(s)
	if err := s.Parse(args); err != nil {
		return err
	}
	cfg, err := settings.Config()
	if err != nil {
		return err
	}
	if cfg.RunnerID == "" {
		// Named here rather than by mesh, so that every line and span of
		// this process carries it from the start.
		cfg.RunnerID = "runner-" + nuid.Next()
	}
	log := logging.Logger(stderr).With("runner", cfg.RunnerID)
	// Listen before connecting, so that a port in use fails at start.
	srv, err := ops.Listen(web.HTTP, log)
	if err != nil {
		return err
	}
	defer shutdownHTTP(srv, log)
	tel, err := ops.NewTelemetry(ctx, "runner", cfg.RunnerID, tracing)
	if err != nil {
		return err
	}
	defer flush(tel, log)
	tel.Serve(srv, log)
	// mesh adds the runner attribute to its own lines.
	meshOpts := []mesh.Option{mesh.WithLogger(logging.Logger(stderr)), mesh.WithObserver(tel.Observer())}

	var (
		nc  *nats.Conn
		ns  *server.Server
		url string
	)
	if dev {
		if err := os.MkdirAll(dataDir, 0o755); err != nil {
			return &cli.FieldError{Key: "data", Reason: err.Error(), Err: err}
		}
		ns, err = devnats.Start(devnats.Options{Listen: devListen, StoreDir: dataDir})
		if err != nil {
			return err
		}
		defer ns.Shutdown()
		url = ns.ClientURL()
		// The runner talks to its own server in-process: no TCP on the hot path.
		nc, err = nats.Connect(url, nats.InProcessServer(ns), nats.Name("natsmesh-runner"))
	} else {
		conn.Name = "natsmesh-runner"
		nc, err = conn.Connect(ctx, log)
		url = conn.URL
	}
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	srv.AddCheck(ops.NATS(nc))

	if dev && !cfg.Standalone {
		// The shard manager runs in this process, on the same code as
		// cmd/shardmgr.
		m, err := mesh.NewShardManager(nc, cfg, meshOpts[0])
		if err != nil {
			return err
		}
		mctx, stopManager := context.WithCancel(context.Background())
		managerDone := make(chan error, 1)
		go func() { managerDone <- m.Run(mctx) }()
		defer func() { stopManager(); <-managerDone }()
	}
	r, err := mesh.NewRunner(nc, cfg, meshOpts...)
	if err != nil {
		return err
	}
	srv.AddCheck(ops.Ready("runner", r))
	if err := r.Register(counter.Behavior(log)); err != nil {
		return err
	}
	if err := r.Start(ctx); err != nil {
		return err
	}
	// Only now: Runner.Ready holds from the start of Start, while it still
	// opens its streams and has not registered.
	srv.Started()
	if dev {
		// Wait for the first assignment so the printed commands work at once.
		deadline := time.Now().Add(30 * time.Second)
		for (!r.Ready() || len(r.Shards()) == 0) && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond) // poll interval of a wait with a deadline
		}
	}
	log.Info("runner started", "nats", url, "shards", len(r.Shards()), "prefix", cfg.Prefix, "standalone", cfg.Standalone, "http", srv.Addr())
	printHelp(stdout, url, cfg)

	<-ctx.Done()
	log.Info("shutting down")
	srv.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.EntityTerminationTimeout+5*time.Second)
	defer cancel()
	if err := r.Shutdown(sctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// flush exports the last spans.
func flush(tel *ops.Telemetry, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		log.Warn("flush traces", "err", err)
	}
}

// shutdownHTTP stops the health and metrics endpoints last, so that probes
// see the process until it ends.
func shutdownHTTP(srv *ops.Server, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
}

func printHelp(w io.Writer, url string, cfg mesh.Config) {
	id := "user-123"
	shard := protocol.ShardOf(id, cfg.ShardsPerGroup)
	fmt.Fprintf(w, `natsmesh runner is serving on %s (entity type Counter).
Call it with the nats CLI (JSON payloads; docs/protocol.md has the details):

  nats -s %s req %s.v1.entity.Counter.Increment '{"amount":5}' -H Mesh-Id:%s
  nats -s %s req %s.v1.call.default.%d.Counter.GetValue '' -H Mesh-Id:%s
  nats -s %s req %s.v1.entity.Counter.Withdraw '{"amount":100}' -H Mesh-Id:%s

or from Go with mesh.Call(ctx, client, counter.Increment, %q, counter.Amount{Amount: 5}).
Press Ctrl-C to stop.
`, url, url, cfg.Prefix, id, url, cfg.Prefix, shard, id, url, cfg.Prefix, id, id)
}
