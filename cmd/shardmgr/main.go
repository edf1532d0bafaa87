// Command shardmgr runs a natsmesh shard manager: it watches the runners'
// registrations and keeps the shard assignment balanced by weight, moving as
// few shards as possible. Run several for availability: one leads (a KV
// lease), the others take over within the lease expiry if it dies. Runners
// keep serving the shards they hold while no shard manager runs.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/internal/ops"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/observe/prom"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cli.Exit("shardmgr", run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := cli.NewSettings("shardmgr", stderr)
	s.SetOutput(stdout)
	var (
		conn    cli.Conn
		logging cli.Logging
		web     cli.Ops
	)
	conn.Register(s)
	settings := cli.RegisterMesh(s, cli.Cluster|cli.Coordination)
	logging.Register(s)
	web.Register(s)
	if err := s.Parse(args); err != nil {
		return err
	}
	cfg, err := settings.Config()
	if err != nil {
		return err
	}
	log := logging.Logger(stderr)
	srv, err := ops.Listen(web.HTTP, log)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	conn.Name = "natsmesh-shardmgr"
	nc, err := conn.Connect(ctx, log)
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	m, err := mesh.NewShardManager(nc, cfg, mesh.WithLogger(log))
	if err != nil {
		return err
	}
	log = log.With("manager", m.ID())
	srv.AddCheck(ops.NATS(nc), ops.Ready("shardmgr", m))
	srv.Started()
	// Metrics only: a shard manager takes no calls, so it has no spans.
	tel, err := ops.NewTelemetry(ctx, "shardmgr", m.ID(), cli.Tracing{Exporter: "none"})
	if err != nil {
		return err
	}
	js, err := natsjs.New(nc)
	if err != nil {
		return err
	}
	tel.Registry.MustRegister(prom.NewStreams(js, cfg.Prefix), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "natsmesh_shardmgr_leader",
		Help: "1 while this shard manager leads.",
	}, func() float64 {
		if m.IsLeader() {
			return 1
		}
		return 0
	}))
	tel.Serve(srv, log)
	log.Info("shard manager starting", "nats", conn.URL, "prefix", cfg.Prefix, "http", srv.Addr())
	return m.Run(ctx)
}
