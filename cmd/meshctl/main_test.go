package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
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
	if err := r.Register(meshtest.MemoryCounter()); err != nil {
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
	// Flags after the command.
	out, err = meshctl("call", "Counter", "a", "Withdraw", `{"amount":9}`, "-o", "json")
	if err == nil || !strings.Contains(err.Error(), "Failure") || !strings.Contains(out, `"failure": "Overdrawn"`) {
		t.Fatalf("failing call: %v\n%s", err, out)
	}
	// A streaming RPC prints its chunks, a persisted one is stored and
	// answered once per message id.
	out, err = meshctl("call", "Counter", "s", "Countdown", "3")
	if err != nil || out != "3\n2\n1\n" {
		t.Fatalf("stream call: %v %q", err, out)
	}
	for range 2 {
		out, err = meshctl("call", "Counter", "p", "Deposit", `{"amount":5}`, "-msg-id", "dep-1")
		if err != nil || strings.TrimSpace(out) != "5" {
			t.Fatalf("persisted call: %v %q", err, out)
		}
	}
	out, err = meshctl("types")
	for _, want := range []string{"Counter (shard group default)", "hosted by r1", "Countdown  stream", "Deposit    unary, persisted", "Overdrawn (*counter.Overdrawn)"} {
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("types lacks %q: %v\n%s", want, err, out)
		}
	}
	out, err = meshctl("-o", "json", "types", "Counter")
	var types []mesh.ClusterType
	if err != nil || json.Unmarshal([]byte(out), &types) != nil || len(types) != 1 || len(types[0].Versions[0].RPCs) != 6 {
		t.Fatalf("types -o json: %v\n%s", err, out)
	}
	if _, err = meshctl("types", "Nope"); err == nil {
		t.Fatal("types of an unhosted type succeeded")
	}
	out, err = meshctl("deadletters")
	if err != nil || !strings.Contains(out, "SEQ") {
		t.Fatalf("deadletters: %v\n%s", err, out)
	}
	out, err = meshctl("deadletters", "-o", "json")
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("no dead letters in JSON: %v %q", err, out)
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
	var errs bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, io.Discard, &errs); !errors.Is(err, flag.ErrHelp) || !strings.Contains(errs.String(), "types [TYPE]") {
		t.Fatalf("-h: %v\n%s", err, errs.String())
	}
	err = run(context.Background(), []string{"-nats", "nats://127.0.0.1:1", "status"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "connect to NATS at nats://127.0.0.1:1") {
		t.Fatalf("no server: %v", err)
	}
}
