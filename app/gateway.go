package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/gateway"
	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/internal/ops"
	"github.com/natsmesh/natsmesh/mesh"
)

// Gateway is an HTTP gateway binary (cmd/gateway): it calls entities for
// HTTP clients (package gateway) and hosts none.
type Gateway struct {
	// Name and Version as for Runner; Name defaults to the executable's
	// name.
	Name    string
	Version string
}

// Main runs the gateway with the process's arguments until SIGINT or
// SIGTERM, then exits.
func (g Gateway) Main() { mainOf(binaryName(g.Name), g.Run) }

// gatewaySettings are the gateway's own settings.
type gatewaySettings struct {
	cfg       gateway.Config
	listen    string
	persisted string
	maxBody   int
	drain     time.Duration
	delay     time.Duration
}

func (gs *gatewaySettings) register(s *cli.Settings) {
	def := gateway.DefaultConfig()
	gs.cfg = def
	s.String(&gs.listen, ":8080", cli.Spec{Name: "listen", Usage: "HTTP listen address of the API"})
	s.String(&gs.persisted, "", cli.Spec{Name: "persisted", Usage: "RPCs declared persisted, as Type.Rpc,..., besides those the runners' type descriptions declare (their calls go through the persisted stream; Idempotency-Key works only for them)"})
	s.Duration(&gs.cfg.DefaultTimeout, def.DefaultTimeout, cli.Spec{Name: "timeout", Usage: "time limit of a call without a Mesh-Timeout header"})
	s.Duration(&gs.cfg.MaxTimeout, def.MaxTimeout, cli.Spec{Name: "max-timeout", Usage: "cap on Mesh-Timeout"})
	s.Int(&gs.maxBody, int(def.MaxBodyBytes), cli.Spec{Name: "max-body", Usage: "request body limit in bytes"})
	s.Duration(&gs.drain, 30*time.Second, cli.Spec{Name: "drain", Usage: "on SIGTERM, how long requests in flight may take to finish"})
	s.Duration(&gs.delay, 0, cli.Spec{Name: "shutdown-delay", Usage: "on SIGTERM, how long to keep serving while /readyz fails, so load balancers stop sending first"})
	s.Check(gs.check)
}

func (gs *gatewaySettings) check() error {
	if _, _, err := net.SplitHostPort(gs.listen); err != nil {
		return cli.Bad("listen", "want host:port or :port, got %q", gs.listen)
	}
	if gs.persisted != "" {
		gs.cfg.Persisted = strings.Split(gs.persisted, ",")
	}
	gs.cfg.MaxBodyBytes = int64(gs.maxBody)
	if err := gs.cfg.Validate(); err != nil {
		// Name the setting rather than gateway.Config's field.
		keys := map[string]string{"Persisted": "persisted", "DefaultTimeout": "timeout", "MaxTimeout": "max-timeout", "MaxBodyBytes": "max-body"}
		var fe *mesh.FieldError
		if errors.As(err, &fe) && keys[fe.Field] != "" {
			return cli.Bad(keys[fe.Field], "%s, got %v", fe.Reason, fe.Value)
		}
		return err
	}
	switch {
	case gs.drain <= 0:
		return cli.Bad("drain", "want > 0, got %v", gs.drain)
	case gs.delay < 0:
		return cli.Bad("shutdown-delay", "want >= 0, got %v", gs.delay)
	}
	return nil
}

// Run runs the gateway until ctx ends. On the end of ctx it stops being
// ready, keeps serving for -shutdown-delay, finishes the requests in
// flight (up to -drain), then drains its NATS connection.
func (g Gateway) Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	name := binaryName(g.Name)
	// Coordination for -replicas: a persisted call opens the persisted
	// stream, creating it if no runner has yet.
	p := newProcess(name, g.Version, cli.Cluster|cli.Coordination|cli.Calls, true, stdout, stderr)
	var gs gatewaySettings
	gs.register(p.s)
	if err := p.parse(args); err != nil {
		return err
	}
	cfg, err := p.mesh.Config()
	if err != nil {
		return err
	}
	if err := p.start(ctx, ""); err != nil {
		return err
	}
	defer p.close()
	// The API's port too, before connecting.
	ln, err := net.Listen("tcp", gs.listen)
	if err != nil {
		return &cli.FieldError{Key: "listen", Reason: err.Error(), Err: err}
	}
	defer ln.Close()
	nc, err := p.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	client, err := mesh.NewClient(nc, cfg.ClientConfig, mesh.WithLogger(p.log), mesh.WithObserver(p.tel.Observer()))
	if err != nil {
		return err
	}
	gw, err := gateway.New(client, gs.cfg, gateway.WithLogger(p.log), gateway.WithTypes(typesOf(nc, cfg)))
	if err != nil {
		return err
	}
	p.srv.AddCheck(ops.NATS(nc))
	api := &http.Server{
		// The gateway is the whole handler, with no ServeMux in front:
		// ServeMux cleans paths, which would redirect an entity id of "..".
		Handler:           p.tel.Trace(gw),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- api.Serve(ln) }()
	p.srv.Started()
	p.log.Info("gateway listening", "addr", ln.Addr().String(), "nats", p.conn.URL, "prefix", cfg.Prefix, "persisted", gs.cfg.Persisted,
		"version", p.version, "http", p.srv.Addr())
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	return drainAPI(api, served, gs, p, nc.Drain)
}

// drainAPI is the gateway's graceful end.
func drainAPI(api *http.Server, served chan error, gs gatewaySettings, p *process, drainNATS func() error) error {
	p.srv.Drain()
	if gs.delay > 0 {
		p.log.Info("shutting down: not ready, still serving", "for", gs.delay)
		t := time.NewTimer(gs.delay)
		select {
		case <-t.C:
		case err := <-served:
			t.Stop()
			return err
		}
	}
	p.log.Info("shutting down: finishing requests in flight", "drain", gs.drain)
	sctx, cancel := context.WithTimeout(context.Background(), gs.drain)
	defer cancel()
	if err := api.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return drainNATS()
}

// typesOf reads the entity types the live runners of cfg's cluster host.
func typesOf(nc *nats.Conn, cfg mesh.Config) gateway.TypesFunc {
	return func(ctx context.Context) ([]mesh.ClusterType, error) { return mesh.Types(ctx, nc, cfg) }
}
