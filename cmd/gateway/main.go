// Command gateway serves natsmesh entities over HTTP (package gateway):
//
//	POST /v1/{type}/{id}/{rpc}   call an entity with a JSON body, get its JSON reply (-listen)
//	GET  /healthz, /readyz       liveness, and readiness (connected to NATS, not shutting down) (-http)
//	GET  /metrics                Prometheus metrics, docs/operations.md (-http)
//
//	curl localhost:8080/v1/Counter/user-123/Increment -H 'Content-Type: application/json' -d '{"amount":5}'
//
// It hosts no entity: list the RPCs declared persisted with -persisted so
// their calls go through the persisted-message stream (and Idempotency-Key
// works for them). On SIGTERM it stops being ready, finishes the requests in
// flight (up to -drain), then drains its NATS connection.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/natsmesh/natsmesh/gateway"
	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/internal/ops"
	"github.com/natsmesh/natsmesh/mesh"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cli.Exit("gateway", run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := cli.NewSettings("gateway", stderr)
	s.SetOutput(stdout)
	def := gateway.DefaultConfig()
	var (
		conn      cli.Conn
		logging   cli.Logging
		web       cli.Ops
		tracing   cli.Tracing
		listen    string
		persisted string
		maxBody   int
		drain     time.Duration
		delay     time.Duration
		gcfg      = def
	)
	conn.Register(s)
	// Coordination for -replicas: a persisted call opens the persisted
	// stream, creating it if no runner has yet.
	settings := cli.RegisterMesh(s, cli.Cluster|cli.Coordination|cli.Calls)
	s.String(&listen, ":8080", cli.Spec{Name: "listen", Usage: "HTTP listen address of the API"})
	s.String(&persisted, "", cli.Spec{Name: "persisted", Usage: "RPCs declared persisted, as Type.Rpc,... (their calls go through the persisted stream; Idempotency-Key works only for them)"})
	s.Duration(&gcfg.DefaultTimeout, def.DefaultTimeout, cli.Spec{Name: "timeout", Usage: "time limit of a call without a Mesh-Timeout header"})
	s.Duration(&gcfg.MaxTimeout, def.MaxTimeout, cli.Spec{Name: "max-timeout", Usage: "cap on Mesh-Timeout"})
	s.Int(&maxBody, int(def.MaxBodyBytes), cli.Spec{Name: "max-body", Usage: "request body limit in bytes"})
	s.Duration(&drain, 30*time.Second, cli.Spec{Name: "drain", Usage: "on SIGTERM, how long requests in flight may take to finish"})
	s.Duration(&delay, 0, cli.Spec{Name: "shutdown-delay", Usage: "on SIGTERM, how long to keep serving while /readyz fails, so load balancers stop sending first"})
	logging.Register(s)
	web.Register(s)
	tracing.Register(s)
	s.Check(func() error {
		if _, _, err := net.SplitHostPort(listen); err != nil {
			return cli.Bad("listen", "want host:port or :port, got %q", listen)
		}
		if persisted != "" {
			gcfg.Persisted = strings.Split(persisted, ",")
		}
		gcfg.MaxBodyBytes = int64(maxBody)
		if err := gcfg.Validate(); err != nil {
			// Name the setting rather than gateway.Config's field.
			keys := map[string]string{"Persisted": "persisted", "DefaultTimeout": "timeout", "MaxTimeout": "max-timeout", "MaxBodyBytes": "max-body"}
			var fe *mesh.FieldError
			if errors.As(err, &fe) && keys[fe.Field] != "" {
				return cli.Bad(keys[fe.Field], "%s, got %v", fe.Reason, fe.Value)
			}
			return err
		}
		switch {
		case drain <= 0:
			return cli.Bad("drain", "want > 0, got %v", drain)
		case delay < 0:
			return cli.Bad("shutdown-delay", "want >= 0, got %v", delay)
		}
		return nil
	})
	if err := s.Parse(args); err != nil {
		return err
	}
	if s.FlagSet().NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", s.FlagSet().Args())
	}
	cfg, err := settings.Config()
	if err != nil {
		return err
	}
	log := logging.Logger(stderr)

	// Listen before connecting, so that a port in use fails at start.
	srv, err := ops.Listen(web.HTTP, log)
	if err != nil {
		return err
	}
	defer shutdownHTTP(srv, log)
	tel, err := ops.NewTelemetry(ctx, "gateway", "", tracing)
	if err != nil {
		return err
	}
	defer func() {
		fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(fctx)
	}()
	tel.Serve(srv, log)
	conn.Name = "natsmesh-gateway"
	nc, err := conn.Connect(ctx, log)
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	client, err := mesh.NewClient(nc, cfg.ClientConfig, mesh.WithLogger(log), mesh.WithObserver(tel.Observer()))
	if err != nil {
		return err
	}
	gw, err := gateway.New(client, gcfg, gateway.WithLogger(log))
	if err != nil {
		return err
	}

	srv.AddCheck(ops.NATS(nc))
	api := &http.Server{
		// The gateway is the whole handler, with no ServeMux in front:
		// ServeMux cleans paths, which would redirect an entity id of "..".
		Handler:           tel.Trace(gw),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return &cli.FieldError{Key: "listen", Reason: err.Error(), Err: err}
	}
	served := make(chan error, 1)
	go func() { served <- api.Serve(ln) }()
	srv.Started()
	log.Info("gateway listening", "addr", ln.Addr().String(), "nats", conn.URL, "prefix", cfg.Prefix, "persisted", gcfg.Persisted, "http", srv.Addr())
	fmt.Fprintf(stdout, "gateway listening on %s\n", ln.Addr())

	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	srv.Drain()
	if delay > 0 {
		log.Info("shutting down: not ready, still serving", "for", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case err := <-served:
			t.Stop()
			return err
		}
	}
	log.Info("shutting down: finishing requests in flight", "drain", drain)
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := api.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nc.Drain()
}

// shutdownHTTP stops the health endpoints last, so that probes see the
// process until it ends.
func shutdownHTTP(srv *ops.Server, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
}
