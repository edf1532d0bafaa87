package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

// syncBuffer is a bytes.Buffer safe for the runner and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Dev mode starts a server and a runner; the printed URL serves calls.
func TestDevMode(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out, errs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-dev", "-dev-listen", freeAddr(t), "-data", filepath.Join(t.TempDir(), "nats"), "-log-level", "warn"}, &out, &errs)
	}()
	urlRE := regexp.MustCompile(`serving on (nats://\S+)`)
	var url string
	natstest.WaitFor(t, 20*time.Second, func() bool {
		select {
		case err := <-done:
			t.Fatalf("runner exited: %v\n%s", err, errs.String())
		default:
		}
		m := urlRE.FindStringSubmatch(out.String())
		if m != nil {
			url = m[1]
		}
		return m != nil
	}, "the runner's ready message")

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c, err := mesh.NewClient(nc, mesh.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if v, err := mesh.Call(context.Background(), c, counter.Increment, "user-123", counter.Amount{Amount: 5}); err != nil || v != 5 {
		t.Fatalf("Increment = %d, %v", v, err)
	}
	var over *counter.Overdrawn
	if _, err := mesh.Call(context.Background(), c, counter.Withdraw, "user-123", counter.Amount{Amount: 100}); !errors.As(err, &over) || over.Value != 5 {
		t.Fatalf("Withdraw = %v", err)
	}
	// The same through the route subject, as printed for the nats CLI.
	reply, err := nc.RequestMsg(&nats.Msg{
		Subject: "mesh.v1.entity.Counter.GetValue",
		Header:  nats.Header{"Mesh-Id": {"user-123"}},
	}, 5*time.Second)
	if err != nil || string(reply.Data) != "5" {
		t.Fatalf("route GetValue = %v %q", err, reply.Data)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v\n%s", err, errs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("runner did not stop")
	}
}

func TestBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-shards", "0"}, "ShardsPerGroup"},
		{[]string{"-prefix", "a.b"}, "Prefix"},
		{[]string{"-log-level", "loud"}, "-log-level"},
		{[]string{"-nats", "nats://127.0.0.1:1", "-token", "x", "-user", "u"}, "exclusive"},
		{[]string{"-nats", "nats://127.0.0.1:1", "-creds", "/does/not/exist"}, "-creds"},
		{[]string{"-nats", "nats://127.0.0.1:1", "-tls-cert", "c.pem"}, "-tls-cert"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.args), func(t *testing.T) {
			var out, errs syncBuffer
			err := run(context.Background(), tt.args, &out, &errs)
			if err == nil || !regexp.MustCompile(regexp.QuoteMeta(tt.want)).MatchString(err.Error()) {
				t.Fatalf("run(%v) = %v, want an error naming %s", tt.args, err, tt.want)
			}
		})
	}
}
