package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/natsmesh/natsmesh/internal/testkit/authtest"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
)

// meshctl reaches a server that requires mutual TLS and a credentials
// file: it reads the cluster's state and calls an entity.
func TestSecureServer(t *testing.T) {
	sec := authtest.StartSecure(t)
	meshtest.ServeCounter(t, sec.Connect(t), 8)
	for _, args := range [][]string{
		{"status"},
		{"call", "Counter", "user-1", "Increment", `{"amount":4}`},
	} {
		var out, errs bytes.Buffer
		full := append(append([]string{}, sec.Flags...), append([]string{"-shards", "8"}, args...)...)
		if err := run(context.Background(), full, &out, &errs); err != nil {
			t.Fatalf("meshctl %v over TLS with credentials: %v\n%s", args, err, errs.String())
		}
		if args[0] == "call" && strings.TrimSpace(out.String()) != "4" {
			t.Fatalf("meshctl %v = %q, want 4", args, out.String())
		}
	}
}
