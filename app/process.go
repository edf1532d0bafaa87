package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/internal/ops"
)

// process is what every binary of this package shares: its settings,
// logger, HTTP endpoints and telemetry.
type process struct {
	name    string
	version string
	stdout  io.Writer
	stderr  io.Writer

	s       *cli.Settings
	conn    cli.Conn
	logging cli.Logging
	web     cli.Ops
	tracing cli.Tracing
	mesh    *cli.Mesh

	log *slog.Logger
	srv *ops.Server
	tel *ops.Telemetry
}

// newProcess registers the settings every binary has: the NATS
// connection, the mesh settings of parts, logging and the HTTP endpoints.
// tracing adds the trace exporter's settings.
func newProcess(name, version string, parts cli.Parts, tracing bool, stdout, stderr io.Writer) *process {
	p := &process{name: name, stdout: stdout, stderr: stderr}
	p.s = cli.NewSettings(name, stderr)
	p.s.SetOutput(stdout)
	fs := p.s.FlagSet()
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s [flags]\n\nEvery flag is also an environment variable and a key of the -config file (docs/configuration.md).\n\nflags:\n", name)
		fs.PrintDefaults()
	}
	p.s.SetVersion(version)
	p.version = cli.Version(version)
	p.conn.Register(p.s)
	p.mesh = cli.RegisterMesh(p.s, parts)
	p.logging.Register(p.s)
	p.web.Register(p.s)
	if tracing {
		p.tracing.Register(p.s)
	} else {
		p.tracing.Exporter = "none"
	}
	return p
}

// parse parses args; a positional argument is an error (a mistyped flag
// value is not silently ignored by a process that then joins a cluster).
func (p *process) parse(args []string) error {
	if err := p.s.Parse(args); err != nil {
		return err
	}
	if rest := p.s.FlagSet().Args(); len(rest) > 0 {
		return fmt.Errorf("unexpected argument %q: %s takes flags only (-h lists them)", rest[0], p.name)
	}
	return nil
}

// start makes the logger, then listens on -http (before connecting, so
// that a port in use fails at start) and sets up the telemetry of the
// instance id.
func (p *process) start(ctx context.Context, id string, attrs ...any) error {
	if err := p.listen(attrs...); err != nil {
		return err
	}
	return p.telemetry(ctx, id)
}

// listen makes the logger and listens on -http.
func (p *process) listen(attrs ...any) error {
	p.log = p.logging.Logger(p.stderr).With(attrs...)
	var err error
	if p.srv, err = ops.Listen(p.web.HTTP, p.log); err != nil {
		return &cli.FieldError{Key: "http", Reason: err.Error(), Err: err}
	}
	return nil
}

// telemetry sets up the metrics and traces of the instance id, served on
// -http.
func (p *process) telemetry(ctx context.Context, id string) error {
	var err error
	if p.tel, err = ops.NewTelemetry(ctx, p.name, id, p.version, p.tracing); err != nil {
		return err
	}
	p.tel.Serve(p.srv, p.log)
	return nil
}

// connect connects to NATS per the connection settings, naming the URL in
// its error.
func (p *process) connect(ctx context.Context) (*nats.Conn, error) {
	p.conn.Name = "natsmesh-" + p.name
	nc, err := p.conn.Connect(ctx, p.log)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", p.conn.URL, err)
	}
	return nc, nil
}

// close flushes the last spans, then stops the HTTP endpoints: last, so
// that probes see the process until it ends.
func (p *process) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if p.tel != nil {
		if err := p.tel.Shutdown(ctx); err != nil {
			p.log.Warn("flush traces", "err", err)
		}
	}
	if err := p.srv.Shutdown(ctx); err != nil {
		p.log.Warn("http shutdown", "err", err)
	}
}

// jsonLogs reports whether the logs are JSON: then nothing but JSON lines
// may reach the output, so what a human would read is logged instead.
func (p *process) jsonLogs() bool { return p.logging.Format == "json" }

// inMain marks the context of a Run called by Main.
type inMain struct{}

// setDefaultLogger makes the process's logger slog's default, so that the
// user's own slog calls (in handlers and singletons) follow -log-level and
// -log-format: only when Run was called by Main, which owns the process.
func (p *process) setDefaultLogger(ctx context.Context) {
	if ctx.Value(inMain{}) != nil {
		slog.SetDefault(p.log)
	}
}

// mainOf runs run with the process's arguments until SIGINT or SIGTERM,
// then exits: status 0 for success, -h, -version and -print-config, else 1
// with the error on stderr after the binary's name.
func mainOf(name string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.WithValue(context.Background(), inMain{}, true), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	cli.Exit(name, err)
}

// binaryName is name, or the executable's base name.
func binaryName(name string) string {
	if name != "" {
		return name
	}
	base := os.Args[0]
	if i := strings.LastIndexAny(base, `/\`); i >= 0 {
		base = base[i+1:]
	}
	base = strings.TrimSuffix(base, ".exe")
	if base == "" {
		return "runner"
	}
	return base
}

// IsHelp reports whether err is what Run returns for -h, -version or
// -print-config: nothing went wrong, and the process should exit 0.
func IsHelp(err error) bool {
	return errors.Is(err, cli.ErrPrinted) || errors.Is(err, flag.ErrHelp)
}
