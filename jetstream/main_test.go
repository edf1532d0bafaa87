package jetstream

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestImports keeps the layering of docs/design.md: jetstream imports nats.go and
// the standard library only, and nothing of natsmesh.
func TestImports(t *testing.T) {
	const pkg = "github.com/natsmesh/natsmesh/jetstream"
	out, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, imp := range strings.Fields(string(out)) {
		if strings.Contains(imp, ".") && !strings.HasPrefix(imp, "github.com/nats-io/nats.go") {
			t.Errorf("jetstream imports %s: want nats.go and the standard library only", imp)
		}
	}
	out, err = exec.Command("go", "list", "-deps", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/natsmesh/natsmesh/") && dep != pkg {
			t.Errorf("jetstream depends on %s: it must know nothing of natsmesh", dep)
		}
	}
}

// testCtx returns a context that bounds one test.
func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openLeases(t testing.TB, nc *nats.Conn, cfg LeaseConfig) *Leases {
	t.Helper()
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := OpenLeases(testCtx(t), js, cfg)
	if err != nil {
		t.Fatalf("OpenLeases(%+v) = %v", cfg, err)
	}
	return ls
}

// waitClosed waits for ch to close, failing the test after timeout, and
// returns when it was seen closed.
func waitClosed(t testing.TB, ch <-chan struct{}, timeout time.Duration, what string) time.Time {
	t.Helper()
	select {
	case <-ch:
		return time.Now()
	case <-time.After(timeout):
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
		return time.Time{}
	}
}

// nextEvent returns the watcher's next event, failing after timeout.
func nextEvent(t testing.TB, w *Watcher, timeout time.Duration) Event {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatal("watcher closed")
		}
		return ev
	case <-time.After(timeout):
		t.Fatalf("no watch event within %v", timeout)
		return Event{}
	}
}

// contextWithCancel returns a cancellable context that is also cancelled
// when the test ends.
func contextWithCancel(t testing.TB) (context.Context, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx, cancel
}
