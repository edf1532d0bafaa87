package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/gateway"
	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/internal/devnats"
	"github.com/natsmesh/natsmesh/mesh"
)

// devSettings are the settings of -dev.
type devSettings struct {
	on      bool
	listen  string // the embedded nats-server's client address
	gateway string // the gateway's address; empty: none
	data    string // JetStream's folder
}

func (d *devSettings) register(s *cli.Settings) {
	s.Bool(&d.on, false, cli.Spec{Name: "dev", Usage: "development mode: an embedded nats-server, a shard manager, the HTTP gateway and this runner in one process"})
	s.String(&d.listen, "127.0.0.1:4222", cli.Spec{Name: "dev-listen", Usage: "with -dev: where the embedded nats-server listens for clients"})
	s.String(&d.gateway, "127.0.0.1:8080", cli.Spec{Name: "dev-gateway", Usage: "with -dev: where the HTTP gateway listens (empty: no gateway)"})
	s.String(&d.data, ".data/nats", cli.Spec{Name: "data", Usage: "with -dev: JetStream data folder (one -dev process at a time)"})
	s.Check(func() error {
		if _, _, err := net.SplitHostPort(d.listen); err != nil {
			return cli.Bad("dev-listen", "want host:port, got %q", d.listen)
		}
		if d.gateway != "" {
			if _, _, err := net.SplitHostPort(d.gateway); err != nil {
				return cli.Bad("dev-gateway", "want host:port or empty, got %q", d.gateway)
			}
		}
		if d.data == "" {
			return cli.Bad("data", "want a folder")
		}
		return nil
	})
}

// devCluster is what -dev runs besides the runner: the embedded
// nats-server, and once the runner is made, a shard manager and the
// gateway.
type devCluster struct {
	ns      *server.Server
	unlock  func()
	url     string
	gwLn    net.Listener // bound at start, served once the runner runs
	gwAddr  string
	stopped []func()
}

// startDev locks the data folder, checks the addresses are free (so that a
// second -dev or a busy port fails at once, naming it), and starts the
// embedded nats-server.
func startDev(d devSettings) (_ *devCluster, err error) {
	if err := os.MkdirAll(d.data, 0o755); err != nil {
		return nil, &cli.FieldError{Key: "data", Reason: err.Error(), Err: err}
	}
	abs, _ := filepath.Abs(d.data)
	unlock, err := lockDir(abs)
	if err != nil {
		return nil, &cli.FieldError{Key: "data", Reason: err.Error(), Err: err}
	}
	dc := &devCluster{unlock: unlock}
	defer func() {
		if err != nil {
			dc.stop()
		}
	}()
	if d.gateway != "" {
		if dc.gwLn, err = net.Listen("tcp", d.gateway); err != nil {
			return nil, &cli.FieldError{Key: "dev-gateway", Reason: err.Error(), Err: err}
		}
		dc.gwAddr = dc.gwLn.Addr().String()
	}
	// The embedded server binds its own listener: check the port first, so
	// that one in use fails at once rather than after the server's start
	// timeout.
	probe, err := net.Listen("tcp", d.listen)
	if err != nil {
		return nil, &cli.FieldError{Key: "dev-listen", Reason: err.Error() + " (another -dev, or a nats-server, runs there?)", Err: err}
	}
	_ = probe.Close()
	if dc.ns, err = devnats.Start(devnats.Options{Listen: d.listen, StoreDir: abs}); err != nil {
		return nil, err
	}
	dc.url = dc.ns.ClientURL()
	return dc, nil
}

// connect connects in-process to the embedded server: no TCP on the hot
// path.
func (dc *devCluster) connect(name string) (*nats.Conn, error) {
	return nats.Connect(dc.url, nats.InProcessServer(dc.ns), nats.Name("natsmesh-"+name))
}

// runManager runs a shard manager on nc, the same code as cmd/shardmgr,
// until stop.
func (dc *devCluster) runManager(nc *nats.Conn, cfg mesh.Config, log *slog.Logger) error {
	m, err := mesh.NewShardManager(nc, cfg, mesh.WithLogger(log))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	dc.stopped = append(dc.stopped, func() { cancel(); <-done })
	return nil
}

// serveGateway serves the HTTP gateway on the address bound at start.
func (dc *devCluster) serveGateway(client *mesh.Client, cfg mesh.Config, gcfg gateway.Config, log *slog.Logger) error {
	if dc.gwLn == nil {
		return nil
	}
	gw, err := gateway.New(client, gcfg, gateway.WithLogger(log), gateway.WithTypes(typesOf(client.Conn(), cfg)))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: gw, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	ln := dc.gwLn
	dc.gwLn = nil
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("dev gateway stopped", "err", err)
		}
	}()
	dc.stopped = append(dc.stopped, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	return nil
}

// stop stops what runs, newest first, then the server, then unlocks the
// data folder.
func (dc *devCluster) stop() {
	for i := len(dc.stopped) - 1; i >= 0; i-- {
		dc.stopped[i]()
	}
	dc.stopped = nil
	if dc.gwLn != nil {
		_ = dc.gwLn.Close()
	}
	if dc.ns != nil {
		dc.ns.Shutdown()
		dc.ns.WaitForShutdown()
	}
	if dc.unlock != nil {
		dc.unlock()
	}
}

// errLocked is a data folder another -dev process holds.
var errLocked = errors.New("in use by another -dev process")

func lockError(dir string, err error) error {
	return fmt.Errorf("%s: %w (%v); stop it, or give this one another -data folder", dir, errLocked, err)
}
