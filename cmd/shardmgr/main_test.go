package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

func TestBadConfig(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-shards", "-1"}, "config: shards: want 1..1048576, got -1 (from -shards)"},
		{[]string{"-replicas", "9"}, "config: replicas: want 1 to 5, got 9"},
		{[]string{"-prefix", "has space"}, "config: prefix:"},
		{[]string{"-log-level", "chatty"}, "config: log-level:"},
		{[]string{"-nats", "nats://127.0.0.1:1", "-password", "p"}, "config: password: password needs user"},
		{[]string{"-shard-lock-expiration", "1500ms"}, "config: shard-lock-expiration: want whole seconds"},
		{[]string{"-weight", "2"}, "flag provided but not defined: -weight"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errs bytes.Buffer
			err := run(context.Background(), tt.args, &out, &errs)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run(%v) = %v, want an error naming %s", tt.args, err, tt.want)
			}
		})
	}
}

// The binary's manager leads and stops when its context ends.
func TestRuns(t *testing.T) {
	s := natstest.StartServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out, errs bytes.Buffer
	// Settings from a file and the environment, as a container would get them.
	file := filepath.Join(t.TempDir(), "shardmgr.yaml")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if err := os.WriteFile(file, []byte("shards: 8\nlog-level: error\nhttp: "+addr+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NATS_URL", s.ClientURL())
	t.Setenv("NATSMESH_CONFIG", file)
	go func() {
		done <- run(ctx, nil, &out, &errs)
	}()
	nc := natstest.Connect(t, s)
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup = 8
	natstest.WaitFor(t, 10*time.Second, func() bool {
		st, err := mesh.Inspect(context.Background(), nc, cfg)
		return err == nil && st.Manager != ""
	}, "the shard manager leading")
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "[+]nats ok\n[+]shardmgr ok\n" {
		t.Fatalf("/readyz = %d %q, want 200", resp.StatusCode, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
