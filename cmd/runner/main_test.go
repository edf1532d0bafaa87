package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh"
)

// Dev mode starts a server and a runner; the printed URL serves calls.
func TestDevMode(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out, errs natstest.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-dev", "-dev-listen", natstest.FreeAddr(t), "-dev-gateway", natstest.FreeAddr(t), "-data", filepath.Join(t.TempDir(), "nats"), "-log-level", "warn"}, &out, &errs)
	}()
	urlRE := regexp.MustCompile(`NATS on (nats://[^\s,]+)`)
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
	c, err := mesh.NewClient(nc, mesh.DefaultConfig().ClientConfig)
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

func TestBadConfig(t *testing.T) {
	file := filepath.Join(t.TempDir(), "runner.yaml")
	if err := os.WriteFile(file, []byte("prefix: ok\nweight: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"-shards", "0"}, nil, "config: shards: want 1..1048576, got 0 (from -shards)"},
		{nil, map[string]string{"NATSMESH_SHARDS": "0"}, "config: shards: want 1..1048576, got 0 (from env NATSMESH_SHARDS)"},
		{[]string{"-config", file}, nil, "config: weight: must be at least 1, got 0 (from " + file + ":2)"},
		{[]string{"-config", file, "-weight", "2", "-prefix", "a.b"}, nil, "config: prefix:"},
		{[]string{"-log-level", "loud"}, nil, "config: log-level:"},
		{[]string{"-token", "x", "-user", "u"}, nil, "exclusive"},
		{[]string{"-creds", "/does/not/exist"}, nil, "config: creds:"},
		{[]string{"-tls-cert", "c.pem"}, nil, "config: tls-cert:"},
		{nil, map[string]string{"NATSMESH_HTTP": "nohost"}, "config: http:"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.args, tt.env), func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var out, errs natstest.Buffer
			err := run(context.Background(), tt.args, &out, &errs)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run(%v) = %v, want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}

// The process exits 1 with the bad field on stderr, and 0 for -print-config.
func TestExitStatus(t *testing.T) {
	if os.Getenv("NATSMESH_TEST_MAIN") == "1" {
		os.Args = append([]string{"runner"}, strings.Fields(os.Getenv("NATSMESH_TEST_ARGS"))...)
		main()
		return
	}
	tests := []struct {
		args, env  string
		wantStatus int
		wantStderr string
		wantStdout string
	}{
		{"", "NATSMESH_SHARDS=0", 1, "runner: config: shards: want 1..1048576, got 0 (from env NATSMESH_SHARDS)\n", ""},
		{"-print-config -shards 7", "", 0, "", "shards: \"7\"  # -shards"},
	}
	for _, tt := range tests {
		t.Run(tt.args+tt.env, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestExitStatus$")
			cmd.Env = append(os.Environ(), "NATSMESH_TEST_MAIN=1", "NATSMESH_TEST_ARGS="+tt.args)
			if tt.env != "" {
				cmd.Env = append(cmd.Env, tt.env)
			}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			status := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				status = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if status != tt.wantStatus || (tt.wantStderr != "" && stderr.String() != tt.wantStderr) || !strings.Contains(stdout.String(), tt.wantStdout) {
				t.Fatalf("runner %s (%s): status %d, stderr %q, stdout %q", tt.args, tt.env, status, stderr.String(), stdout.String())
			}
		})
	}
}

// /readyz stays 503 while the runner waits for a shard assigned to it (its
// lease held by someone else) and turns 200 once it holds every shard.
func TestReadyzFlips(t *testing.T) {
	s := natstest.StartServer(t)
	nc := natstest.Connect(t, s)
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup = 4

	// Someone else holds shard 0's lease, with the lease settings the mesh uses.
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	leases, err := jetstream.OpenLeases(context.Background(), js, jetstream.LeaseConfig{
		Bucket: cfg.Prefix + "_leases", Replicas: 1, TTL: cfg.ShardLockExpiration, Margin: cfg.ShardLockMargin,
	})
	if err != nil {
		t.Fatal(err)
	}
	held, err := leases.Acquire(context.Background(), "shard.default.0", "intruder")
	if err != nil {
		t.Fatal(err)
	}

	m, err := mesh.NewShardManager(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mctx, stopManager := context.WithCancel(context.Background())
	managerDone := make(chan error, 1)
	go func() { managerDone <- m.Run(mctx) }()
	t.Cleanup(func() { stopManager(); <-managerDone })

	addr := natstest.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out, errs natstest.Buffer
	go func() {
		done <- run(ctx, []string{"-nats", s.ClientURL(), "-shards", "4", "-id", "r1", "-http", addr, "-log-level", "warn"}, &out, &errs)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v\n%s", err, errs.String())
		}
	})
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	natstest.WaitFor(t, 20*time.Second, func() bool {
		st, err := mesh.Inspect(context.Background(), nc, cfg)
		if err != nil {
			return false
		}
		for _, r := range st.Runners {
			if r.ID == "r1" && r.Assigned == 4 && r.Held == 3 {
				return true
			}
		}
		return false
	}, "r1 assigned 4 shards, holding the 3 free ones")
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]runner: not ready") {
		t.Fatalf("/readyz while a shard is held elsewhere = %d %q, want 503", code, body)
	}
	if err := leases.Release(context.Background(), held); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 20*time.Second, func() bool {
		code, _ := readyz()
		return code == http.StatusOK
	}, "/readyz 200 once r1 holds every shard")

	// A call is counted on /metrics, and the shards owned are 4.
	c, err := mesh.NewClient(nc, cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mesh.Call(context.Background(), c, counter.Increment, "x", counter.Amount{Amount: 1}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`natsmesh_calls_handled_total{code="OK",entity_type="Counter",rpc="Increment"} 1` + "\n",
		`natsmesh_shards_owned{group="default"} 4` + "\n",
		`natsmesh_build_info{binary="runner",id="r1",`,
	} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("/metrics lacks %q:\n%s", want, body)
		}
	}
}
