package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/gateway"
	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/internal/ops"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/schema"
)

// Runner is a runner binary: the entity types and singletons it hosts.
type Runner struct {
	// Name names the binary in its usage, its logs, its metrics
	// (natsmesh_build_info's binary label), its NATS connection and its
	// generated runner ids. Empty: the executable's name.
	Name string
	// Version is what -version prints and what the runner registers
	// (meshctl status shows it). Empty: the main module's version from
	// the build information.
	Version string
	// Behaviors are the entity types the runner hosts.
	Behaviors []*actor.Behavior
	// Singletons run on one runner of the cluster at a time (see
	// mesh.Runner.RegisterSingleton).
	Singletons []Singleton
	// Install runs, in order, once the runner is made and before it
	// starts: for what needs the runner (DurableState, EventSourced,
	// sagas, reminders and cron jobs through InstallFunc).
	Install []Installer
}

// Singleton is a function that runs on one runner of the cluster at a
// time, restarted elsewhere when that runner goes (mesh.Runner.
// RegisterSingleton has the details). Run gets the runner's client, to call
// entities.
type Singleton struct {
	Name string
	Run  func(ctx context.Context, client *mesh.Client) error
}

// Main runs the runner with the process's arguments until SIGINT or
// SIGTERM, then exits (status 1 with the error on stderr if it failed).
func (rb Runner) Main() { mainOf(binaryName(rb.Name), rb.Run) }

// Run runs the runner with args (without the program name) until ctx
// ends, then shuts it down gracefully: it stops being ready, hands its
// shards off and returns nil. Output meant for a person (the -dev banner,
// -h, -version, -print-config) goes to stdout, logs to stderr. For -h,
// -version and -print-config it returns an error for which IsHelp is true.
func (rb Runner) Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	name := binaryName(rb.Name)
	p := newProcess(name, rb.Version, cli.Cluster|cli.Coordination|cli.Entities|cli.Calls|cli.Runner, true, stdout, stderr)
	var dev devSettings
	dev.register(p.s)
	if err := p.parse(args); err != nil {
		return err
	}
	cfg, err := p.mesh.Config()
	if err != nil {
		return err
	}
	if cfg.RunnerID == "" {
		// Named here rather than by mesh, so that every line and span of
		// this process carries it from the start.
		cfg.RunnerID = name + "-" + nuid.Next()
	}
	if err := p.start(ctx, cfg.RunnerID, "runner", cfg.RunnerID); err != nil {
		return err
	}
	defer p.close()
	p.setDefaultLogger(ctx)

	var (
		nc *nats.Conn
		dc *devCluster
	)
	if dev.on {
		if dc, err = startDev(dev); err != nil {
			return err
		}
		defer dc.stop()
		nc, err = dc.connect(name)
	} else {
		nc, err = p.connect(ctx)
	}
	if err != nil {
		return err
	}
	defer nc.Close()
	p.srv.AddCheck(ops.NATS(nc))
	if dc != nil && !cfg.Standalone {
		if err := dc.runManager(nc, cfg, p.logging.Logger(p.stderr)); err != nil {
			return err
		}
	}
	r, err := rb.start(ctx, nc, cfg, p)
	if err != nil {
		if ctx.Err() != nil {
			p.log.Info("stopped while starting", "err", err)
			return nil // asked to stop (SIGTERM) before it served
		}
		return err
	}
	// Only now: the runner's readiness holds from the start of Start,
	// while it still opens its streams and has not registered.
	p.srv.Started()
	url := p.conn.URL
	if dc != nil {
		url = dc.url
		if err := rb.devReady(ctx, r, dc, cfg, p); err != nil {
			return err
		}
	}
	p.log.Info("runner started", "nats", url, "shards", len(r.Shards()), "prefix", cfg.Prefix, "standalone", cfg.Standalone,
		"version", p.version, "http", p.srv.Addr())

	<-ctx.Done()
	p.log.Info("shutting down")
	p.srv.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.EntityTerminationTimeout+5*time.Second)
	defer cancel()
	if err := r.Shutdown(sctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// start makes the runner, registers and installs what it hosts, and
// starts it.
func (rb Runner) start(ctx context.Context, nc *nats.Conn, cfg mesh.Config, p *process) (*mesh.Runner, error) {
	if len(rb.Behaviors) == 0 && len(rb.Install) == 0 && len(rb.Singletons) == 0 {
		return nil, fmt.Errorf("%w: the runner hosts nothing: give app.Runner Behaviors, Install or Singletons", mesh.ErrInvalidOption)
	}
	// mesh adds the runner attribute to its own lines.
	r, err := mesh.NewRunner(nc, cfg,
		mesh.WithLogger(p.logging.Logger(p.stderr)),
		mesh.WithObserver(p.tel.Observer()),
		mesh.WithVersion(p.version),
		mesh.WithSchemas(schema.Of))
	if err != nil {
		return nil, err
	}
	p.srv.AddCheck(ops.Ready("runner", r))
	for _, b := range rb.Behaviors {
		if err := r.Register(b); err != nil {
			return nil, err
		}
	}
	for _, s := range rb.Singletons {
		if s.Run == nil {
			return nil, fmt.Errorf("%w: singleton %q has no Run", mesh.ErrInvalidOption, s.Name)
		}
		client := r.Client()
		if err := r.RegisterSingleton(s.Name, func(ctx context.Context) error { return s.Run(ctx, client) }); err != nil {
			return nil, err
		}
	}
	for _, in := range rb.Install {
		if err := in.Install(ctx, r); err != nil {
			return nil, err
		}
	}
	if err := r.Start(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// devReady waits for the runner to serve its shards, starts the gateway
// and tells the person at the terminal how to call the entities.
func (rb Runner) devReady(ctx context.Context, r *mesh.Runner, dc *devCluster, cfg mesh.Config, p *process) error {
	// Wait for the first assignment so that the printed commands work at
	// once.
	deadline := time.Now().Add(30 * time.Second)
	for (!r.Ready() || len(r.Shards()) == 0) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond) // poll interval of a wait with a deadline
	}
	gcfg := gateway.DefaultConfig()
	gcfg.Persisted = gateway.PersistedRPCs(r.Entities()...)
	if err := dc.serveGateway(r.Client(), cfg, gcfg, p.log); err != nil {
		return err
	}
	b := banner{url: dc.url, gateway: dc.gwAddr, prefix: cfg.Prefix, entities: r.Entities()}
	if p.jsonLogs() {
		p.log.Info("dev cluster ready", "nats", dc.url, "gateway", dc.gwAddr, "commands", b.commands())
		return nil
	}
	b.print(p.stdout)
	return nil
}
