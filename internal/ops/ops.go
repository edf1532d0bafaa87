package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// Check is one condition of readiness: Ready returns nil when it holds, or
// why it does not.
type Check struct {
	Name  string
	Ready func() error
}

// NATS is ready while nc is connected.
func NATS(nc *nats.Conn) Check {
	return Check{Name: "nats", Ready: func() error {
		if nc.IsConnected() {
			return nil
		}
		return fmt.Errorf("not connected (%s)", nc.Status())
	}}
}

// Readier is what mesh.Runner and mesh.ShardManager implement.
type Readier interface{ Ready() bool }

// Ready is ready while r.Ready() is true. If r also says why it is not
// ready (a NotReady() error method, as mesh.Runner has), /readyz shows
// the reason.
func Ready(name string, r Readier) Check {
	why, _ := r.(interface{ NotReady() error })
	return Check{Name: name, Ready: func() error {
		if why != nil {
			if err := why.NotReady(); err != nil {
				return fmt.Errorf("not ready: %w", err)
			}
			return nil
		}
		if r.Ready() {
			return nil
		}
		return errors.New("not ready")
	}}
}

// Server serves /healthz, /readyz and any other handler (such as /metrics)
// on one listener. A nil *Server does nothing, so that a binary run without
// an HTTP address needs no special case.
type Server struct {
	ln       net.Listener
	srv      *http.Server
	mux      *http.ServeMux
	mu       sync.Mutex
	checks   []Check
	started  atomic.Bool
	draining atomic.Bool
	done     chan struct{}
	err      error
}

// Listen binds addr at once, so that a port in use fails the binary at
// start, and serves /healthz and /readyz until Shutdown. Add handlers with
// Handle and checks with AddCheck before traffic matters; both are safe at
// any time.
//
// An empty addr returns a nil *Server and no error.
func Listen(addr string, log *slog.Logger) (*Server, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{ln: ln, mux: http.NewServeMux(), done: make(chan struct{})}
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.srv = &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.err = err
			log.Error("http server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return s, nil
}

// Addr returns the address the server listens on (the port chosen for
// ":0"), or "" for a nil Server.
func (s *Server) Addr() string {
	if s == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Handle serves h at pattern (http.ServeMux syntax).
func (s *Server) Handle(pattern string, h http.Handler) {
	if s != nil {
		s.mux.Handle(pattern, h)
	}
}

// AddCheck adds conditions of readiness.
func (s *Server) AddCheck(c ...Check) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = append(s.checks, c...)
}

// Started ends the start-up: until it is called /readyz fails, so that a
// probe never sees a process ready before its checks are all added.
func (s *Server) Started() {
	if s != nil {
		s.started.Store(true)
	}
}

// Drain makes /readyz fail from now on, so that load balancers stop
// sending work while the process finishes what it has; /healthz still
// answers.
func (s *Server) Drain() {
	if s != nil {
		s.draining.Store(true)
	}
}

// Shutdown stops serving, waiting for requests in flight until ctx ends.
// It is idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	if s == nil {
		return nil
	}
	err := s.srv.Shutdown(ctx)
	<-s.done
	if err == nil {
		err = s.err
	}
	return err
}

// healthz answers 200 while the process serves HTTP: liveness must not
// depend on NATS, because restarting a process cut off from NATS does not
// bring NATS back.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// readyz answers 200 when every check passes, else 503, with one line per
// check ("[+]nats ok", "[-]runner: not ready") as Kubernetes components do.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	checks := append([]Check(nil), s.checks...)
	s.mu.Unlock()
	var b strings.Builder
	ready := true
	if !s.started.Load() {
		ready = false
		b.WriteString("[-]startup: starting\n")
	}
	if s.draining.Load() {
		ready = false
		b.WriteString("[-]shutdown: draining\n")
	}
	for _, c := range checks {
		if err := c.Ready(); err != nil {
			ready = false
			fmt.Fprintf(&b, "[-]%s: %v\n", c.Name, err)
		} else {
			fmt.Fprintf(&b, "[+]%s ok\n", c.Name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = w.Write([]byte(b.String()))
}
