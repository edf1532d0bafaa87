package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/testkit/authtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

// The shard manager reaches a server that requires mutual TLS and a
// credentials file, and leads.
func TestSecureServer(t *testing.T) {
	sec := authtest.StartSecure(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out, errs bytes.Buffer
	go func() {
		done <- run(ctx, append(sec.Flags, "-shards", "8", "-log-level", "error"), &out, &errs)
	}()
	nc := sec.Connect(t)
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup = 8
	natstest.WaitFor(t, 10*time.Second, func() bool {
		st, err := mesh.Inspect(context.Background(), nc, cfg)
		return err == nil && st.Manager != ""
	}, "the shard manager leading over TLS with credentials")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s", err, errs.String())
	}
}
