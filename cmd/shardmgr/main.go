// Command shardmgr runs a natsmesh shard manager: it watches the runners'
// registrations and keeps the shard assignment balanced by weight, moving as
// few shards as possible. Run several for availability: one leads (a KV
// lease), the others take over within the lease expiry if it dies. Runners
// keep serving the shards they hold while no shard manager runs.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/mesh"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "shardmgr:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("shardmgr", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		conn    cli.Conn
		cluster cli.Cluster
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
	if err := cfg.Validate(); err != nil {
		return err
	}
	conn.Name = "natsmesh-shardmgr"
	nc, err := conn.Connect()
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	m, err := mesh.NewShardManager(nc, cfg)
	if err != nil {
		return err
	}
	log.Info("shard manager starting", "id", m.ID(), "nats", conn.URL, "prefix", cfg.Prefix)
	return m.Run(ctx)
}
