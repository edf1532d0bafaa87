package cli

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// signalHandler is a slog handler that reports each record's message.
type signalHandler struct{ msgs chan string }

func (h signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h signalHandler) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.msgs <- r.Message:
	default:
	}
	return nil
}
func (h signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h signalHandler) WithGroup(string) slog.Handler      { return h }

// freePort returns a TCP port on loopback that nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// A process started before its NATS server waits for it: Connect retries
// until the server listens, then returns a working connection.
func TestConnectWaitsForServer(t *testing.T) {
	port := freePort(t)
	msgs := make(chan string, 16)
	c := Conn{URL: "nats://127.0.0.1:" + itoa(port), ConnectWait: time.Minute, Name: t.Name()}
	type result struct {
		err  error
		info string
	}
	done := make(chan result, 1)
	go func() {
		nc, err := c.Connect(context.Background(), slog.New(signalHandler{msgs}))
		if err != nil {
			done <- result{err: err}
			return
		}
		defer nc.Close()
		done <- result{info: nc.ConnectedUrl()}
	}()
	select {
	case m := <-msgs:
		if m != "NATS unreachable; retrying" {
			t.Fatalf("first log record %q, want the retry warning", m)
		}
	case r := <-done:
		t.Fatalf("Connect returned before any server listened: %+v", r)
	}
	natstest.StartServer(t, func(o *server.Options) { o.Port = port })
	r := <-done
	if r.err != nil {
		t.Fatalf("Connect = %v, want a connection once the server started", r.err)
	}
	if !strings.Contains(r.info, itoa(port)) {
		t.Fatalf("connected to %q, want port %d", r.info, port)
	}
}

// Connect gives up when ConnectWait has passed, naming the setting, and
// when its context ends.
func TestConnectGivesUp(t *testing.T) {
	url := "nats://127.0.0.1:" + itoa(freePort(t))
	c := Conn{URL: url, ConnectWait: 300 * time.Millisecond}
	_, err := c.Connect(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "-connect-wait") {
		t.Fatalf("Connect to nothing = %v, want an error naming -connect-wait", err)
	}

	c.ConnectWait = time.Hour
	ctx, cancel := context.WithCancelCause(context.Background())
	stop := errors.New("shutting down")
	cancel(stop)
	_, err = c.Connect(ctx, nil)
	if !errors.Is(err, stop) {
		t.Fatalf("Connect with an ended context = %v, want its cause", err)
	}

	c.ConnectWait = 0
	_, err = c.Connect(context.Background(), nil)
	if err == nil || strings.Contains(err.Error(), "gave up") {
		t.Fatalf("Connect with ConnectWait 0 = %v, want the first attempt's error", err)
	}
}

// Bad credentials fail at once whatever ConnectWait says: retrying
// cannot cure them, and a process that hangs on them hides the mistake.
func TestConnectRefusalIsNotRetried(t *testing.T) {
	s := natstest.StartServer(t, func(o *server.Options) { o.Username, o.Password = "mesh", "s3cret" })
	c := Conn{URL: s.ClientURL(), User: "mesh", Password: "guess", ConnectWait: time.Hour}
	_, err := c.Connect(context.Background(), nil)
	if err == nil || !PermanentConnectError(err) || strings.Contains(err.Error(), "gave up") {
		t.Fatalf("Connect with a wrong password = %v, want the refusal after one attempt", err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
