package app

import (
	"context"
	"io"

	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/internal/ops"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/observe/prom"
)

// ShardManager is a shard manager binary (cmd/shardmgr): it keeps the
// shard assignment balanced over the live runners. Run two or more; one
// leads, the others take over within a lease expiry if it dies. Runners
// keep serving the shards they hold while no shard manager runs.
type ShardManager struct {
	// Name and Version as for Runner; Name defaults to the executable's
	// name.
	Name    string
	Version string
}

// Main runs the shard manager with the process's arguments until SIGINT
// or SIGTERM, then exits.
func (sm ShardManager) Main() { mainOf(binaryName(sm.Name), sm.Run) }

// Run runs the shard manager until ctx ends (see Runner.Run).
func (sm ShardManager) Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	name := binaryName(sm.Name)
	// No tracing: a shard manager takes no calls, so it has no spans.
	p := newProcess(name, sm.Version, cli.Cluster|cli.Coordination, false, stdout, stderr)
	if err := p.parse(args); err != nil {
		return err
	}
	cfg, err := p.mesh.Config()
	if err != nil {
		return err
	}
	if err := p.listen(); err != nil {
		return err
	}
	defer p.close()
	nc, err := p.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	m, err := mesh.NewShardManager(nc, cfg, mesh.WithLogger(p.log))
	if err != nil {
		return err
	}
	p.log = p.log.With("manager", m.ID())
	if err := p.telemetry(ctx, m.ID()); err != nil {
		return err
	}
	js, err := natsjs.New(nc)
	if err != nil {
		return err
	}
	p.tel.Registry.MustRegister(prom.NewStreams(js, cfg.Prefix), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "natsmesh_shardmgr_leader",
		Help: "1 while this shard manager leads.",
	}, func() float64 {
		if m.IsLeader() {
			return 1
		}
		return 0
	}))
	p.srv.AddCheck(ops.NATS(nc), ops.Ready("shardmgr", m))
	p.srv.Started()
	p.log.Info("shard manager starting", "nats", p.conn.URL, "prefix", cfg.Prefix, "version", p.version, "http", p.srv.Addr())
	return m.Run(ctx)
}
