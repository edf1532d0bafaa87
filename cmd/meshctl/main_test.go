package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

func TestMeshctl(t *testing.T) {
	s := natstest.StartServer(t)
	url := s.ClientURL()
	cfg := mesh.DefaultConfig().FastFailover()
	cfg.ShardsPerGroup = 8
	nc := natstest.Connect(t, s)
	m, err := mesh.NewShardManager(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	rnc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rnc.Close)
	rcfg := cfg
	rcfg.RunnerID = "r1"
	r, err := mesh.NewRunner(rnc, rcfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Register(counter.Behavior(nil)); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterSingleton("reporter", func(ctx context.Context) error { <-ctx.Done(); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		_ = r.Shutdown(sctx)
	})
	natstest.WaitFor(t, 10*time.Second, func() bool { return len(r.Shards()) == 8 }, "runner serving")

	meshctl := func(args ...string) (string, error) {
		var out, errs bytes.Buffer
		err := run(context.Background(), append([]string{"-nats", url, "-shards", "8"}, args...), &out, &errs)
		return out.String(), err
	}
	out, err := meshctl("status")
	if err != nil || !strings.Contains(out, "r1") || !strings.Contains(out, m.ID()) || !strings.Contains(out, "0 moving") {
		t.Fatalf("status: %v\n%s", err, out)
	}
	out, err = meshctl("-o", "json", "shards")
	var shards []mesh.ShardStatus
	if err != nil || json.Unmarshal([]byte(out), &shards) != nil || len(shards) != 8 || shards[0].Holder != "r1" {
		t.Fatalf("shards: %v\n%s", err, out)
	}
	out, err = meshctl("singletons")
	if err != nil || !strings.Contains(out, "reporter") || !strings.Contains(out, "r1") {
		t.Fatalf("singletons: %v\n%s", err, out)
	}
	out, err = meshctl("call", "Counter", "a b.c", "Increment", `{"amount":3}`)
	if err != nil || strings.TrimSpace(out) != "3" {
		t.Fatalf("call: %v %q", err, out)
	}
	if _, err = meshctl("call", "Counter", "a", "Withdraw", `{"amount":9}`); err == nil || !strings.Contains(err.Error(), "Failure") {
		t.Fatalf("failing call: %v", err)
	}
	out, err = meshctl("deadletters")
	if err != nil || !strings.Contains(out, "SEQ") {
		t.Fatalf("deadletters: %v\n%s", err, out)
	}
	if _, err = meshctl("deadletters", "redrive", "x"); err == nil {
		t.Fatal("redrive of a non-number accepted")
	}
	if _, err = meshctl("nope"); err == nil {
		t.Fatal("unknown command accepted")
	}
	if _, err = meshctl("-o", "yaml", "status"); err == nil {
		t.Fatal("bad -o accepted")
	}
}
