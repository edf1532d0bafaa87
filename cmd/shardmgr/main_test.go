package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

func TestBadConfig(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-shards", "-1"}, "ShardsPerGroup"},
		{[]string{"-replicas", "9"}, "StorageReplicas"},
		{[]string{"-prefix", "has space"}, "Prefix"},
		{[]string{"-log-level", "chatty"}, "-log-level"},
		{[]string{"-nats", "nats://127.0.0.1:1", "-password", "p"}, "-password needs -user"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var errs bytes.Buffer
			err := run(context.Background(), tt.args, &errs)
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
	var errs bytes.Buffer
	go func() {
		done <- run(ctx, []string{"-nats", s.ClientURL(), "-shards", "8", "-log-level", "error"}, &errs)
	}()
	nc := natstest.Connect(t, s)
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup = 8
	natstest.WaitFor(t, 10*time.Second, func() bool {
		st, err := mesh.Inspect(context.Background(), nc, cfg)
		return err == nil && st.Manager != ""
	}, "the shard manager leading")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}
