package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

func TestBadConfig(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-persisted", "Counter"}, "config: persisted: "},
		{[]string{"-timeout", "0s"}, "config: timeout: "},
		{[]string{"-timeout", "2m"}, "config: max-timeout: "},
		{[]string{"-max-body", "0"}, "config: max-body: "},
		{[]string{"-drain", "0s"}, "config: drain: "},
		{[]string{"-shutdown-delay", "-1s"}, "config: shutdown-delay: "},
		{[]string{"-listen", "8080"}, "config: listen: "},
		{[]string{"-shards", "0"}, "config: shards: "},
		{[]string{"-log-level", "chatty"}, "log-level"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"-listen", "nowhere:port", "-nats", "nats://127.0.0.1:1"}, "config: listen: "},
		{[]string{"-listen", "127.0.0.1:0", "-nats", "nats://127.0.0.1:1", "-connect-wait", "0s"}, "connect to NATS at nats://127.0.0.1:1"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			err := run(context.Background(), tt.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run(%v) = %v, want an error naming %s", tt.args, err, tt.want)
			}
		})
	}
}

// The binary serves calls, health and readiness, and stops cleanly.
func TestServes(t *testing.T) {
	srv := natstest.StartServer(t)
	meshtest.ServeCounter(t, natstest.Connect(t, srv), 8)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, health := natstest.FreeAddr(t), natstest.FreeAddr(t)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-nats", srv.ClientURL(), "-shards", "8", "-listen", addr, "-http", health, "-log-level", "error"}, io.Discard, io.Discard)
	}()
	base := "http://" + addr
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool {
		resp, err := http.Get("http://" + health + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "the gateway ready")
	if status, body := get("http://" + health + "/healthz"); status != http.StatusOK {
		t.Fatalf("GET /healthz = %d %s", status, body)
	}
	resp, err := http.Post(base+"/v1/Counter/a%2Fb/Increment", "application/json", strings.NewReader(`{"amount":4}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "4" {
		t.Fatalf("Increment = %d %s, want 200 4", resp.StatusCode, b)
	}
	if status, body := get("http://" + health + "/metrics"); status != http.StatusOK || !strings.Contains(body, `natsmesh_client_calls_total{code="OK",entity_type="Counter",rpc="Increment"} 1`+"\n") {
		t.Fatalf("GET /metrics = %d, want the call counted:\n%s", status, body)
	}
	// An id of ".." reaches the gateway, not ServeMux's path cleaning.
	if status, body := get(base + "/v1/Counter/%2E%2E/GetValue"); status != http.StatusMethodNotAllowed {
		t.Fatalf("GET on the API = %d %s, want 405", status, body)
	}
	if status, _ := get(base + "/nope"); status != http.StatusNotFound {
		t.Fatalf("GET /nope = %d, want 404", status)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
