package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/testkit/authtest"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// The gateway reaches a server that requires mutual TLS and a credentials
// file, with its own reply inbox prefix, and calls entities for HTTP
// clients.
func TestSecureServer(t *testing.T) {
	sec := authtest.StartSecure(t)
	meshtest.ServeCounter(t, sec.Connect(t), 8)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, health := natstest.FreeAddr(t), natstest.FreeAddr(t)
	done := make(chan error, 1)
	args := append(append([]string{}, sec.Flags...), "-inbox-prefix", "_INBOX.gateway", "-shards", "8", "-listen", addr, "-http", health, "-log-level", "error")
	go func() { done <- run(ctx, args, io.Discard, io.Discard) }()
	natstest.WaitFor(t, 10*time.Second, func() bool {
		resp, err := http.Get("http://" + health + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "the gateway ready over TLS with credentials")
	resp, err := http.Post("http://"+addr+"/v1/Counter/user-1/Increment", "application/json", strings.NewReader(`{"amount":4}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "4" {
		t.Fatalf("Increment through the gateway = %d %s, want 200 4", resp.StatusCode, b)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
