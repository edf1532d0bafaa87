package ops_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/natsmesh/natsmesh/internal/ops"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func listen(t testing.TB) *ops.Server {
	t.Helper()
	srv, err := ops.Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return srv
}

// /readyz follows the runner: not ready before it starts and after NATS
// goes away, ready while it serves; /healthz answers throughout.
func TestReadyzFollowsRunner(t *testing.T) {
	s := natstest.StartServer(t)
	nc := natstest.Connect(t, s)
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup, cfg.Standalone = 4, true
	r, err := mesh.NewRunner(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Register(meshtest.MemoryCounter()); err != nil {
		t.Fatal(err)
	}
	srv := listen(t)
	base := "http://" + srv.Addr()
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || body != "[-]startup: starting\n" {
		t.Fatalf("/readyz before Started = %d %q, want 503", code, body)
	}
	srv.AddCheck(ops.NATS(nc), ops.Ready("runner", r))
	srv.Started()

	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[+]nats ok\n[-]runner: not ready: not started\n") {
		t.Fatalf("/readyz before Start = %d %q, want 503 naming the runner", code, body)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// NATS is gone by then: close the connection so that Shutdown does
		// not wait on it.
		nc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
	})
	natstest.WaitFor(t, 10*time.Second, func() bool {
		code, _ := get(t, base+"/readyz")
		return code == http.StatusOK
	}, "/readyz 200 once the runner serves")
	if _, body := get(t, base+"/readyz"); body != "[+]nats ok\n[+]runner ok\n" {
		t.Fatalf("/readyz = %q", body)
	}

	s.Shutdown()
	natstest.WaitFor(t, 10*time.Second, func() bool {
		code, body := get(t, base+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "[-]nats: not connected")
	}, "/readyz 503 naming NATS once the server is gone")
	if code, body := get(t, base+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz without NATS = %d %q, want 200", code, body)
	}
}

// Drain fails /readyz at once, whatever the checks say.
func TestDrain(t *testing.T) {
	srv := listen(t)
	srv.AddCheck(ops.Check{Name: "always", Ready: func() error { return nil }})
	srv.Started()
	base := "http://" + srv.Addr()
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d, want 200", code)
	}
	srv.Drain()
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "[-]shutdown: draining\n") {
		t.Fatalf("/readyz after Drain = %d %q, want 503", code, body)
	}
}

// A port in use fails at Listen, so the binary exits at start.
func TestListenFailsAtOnce(t *testing.T) {
	srv := listen(t)
	if _, err := ops.Listen(srv.Addr(), nil); err == nil || !strings.Contains(err.Error(), "http:") {
		t.Fatalf("Listen(%s) twice = %v, want an error", srv.Addr(), err)
	}
}

// Handlers added with Handle are served beside the probes.
func TestHandle(t *testing.T) {
	srv := listen(t)
	srv.Handle("GET /metrics", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "m 1\n") }))
	if code, body := get(t, "http://"+srv.Addr()+"/metrics"); code != http.StatusOK || body != "m 1\n" {
		t.Fatalf("/metrics = %d %q", code, body)
	}
}
