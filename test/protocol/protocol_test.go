// Package protocol_test checks that docs/protocol.md is enough to talk to
// natsmesh without the Go library: client.c, written from the document
// alone with the official NATS C client and libxxhash, drives the example
// Counter on a real runner and a real nats-server.
package protocol_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// checks is what client.c must print, check name -> value, in its order.
// The values are in the C program's words: an integer reply, a code, or a
// short summary.
var checks = []struct{ name, want string }{
	{"route-increment", "5"},
	{"hash-user-123", "dc9ac79afcf5aac9 125 9"},
	{"hash-a.b.c", "022a7cd9aee21f27 75 7"},
	{"hash-cjk", "7179a19f3719f5e1 69 1"},
	{"hash-emoji", "a158cad32d6edc71 145 1"},
	{"hash-counter-1", "42b48bc820d80dd9 253 9"},
	{"hash-leading-space", "40b98bb8d60d4d22 130 2"},
	{"hash-empty", "ef46db3751d8e999 21 9"},
	{"hashed-getvalue", "5"},
	{"hashed-getvalue-empty-object", "5"},
	{"timeout-header", "5"},
	{"codec-json", "5"},
	{"unknown-header-ignored", "5"},
	{"route-b64", "5"},
	{"b64-precedence", "5"},
	{"id-dots", "11"},
	{"id-space", "12"},
	{"id-star", "13"},
	{"id-gt", "14"},
	{"id-cjk", "15"},
	{"id-emoji", "16"},
	{"id-leading-space", "17"},
	{"id-newline", "18"},
	{"compact-increment", "21"},
	{"compact-same-entity", "21"},
	{"compact-getvalue", "21"},
	{"err-unknown-rpc", "UnknownRpc"},
	{"err-unknown-rpc-route", "UnknownRpc"},
	{"err-unknown-entity", "UnknownEntity"},
	{"err-malformed", "Malformed"},
	{"err-malformed-hashed", "Malformed"},
	{"err-malformed-type", "Malformed"},
	{"err-missing-id", "BadRequest"},
	{"err-missing-id-route", "BadRequest"},
	{"err-wrong-shard", "BadRequest"},
	{"err-unknown-codec", "BadRequest"},
	{"err-bad-b64", "BadRequest"},
	{"err-bad-timeout", "BadRequest"},
	{"err-zero-timeout", "BadRequest"},
	{"err-id-not-utf8", "InvalidId"},
	{"err-id-too-long", "InvalidId"},
	{"withdraw-setup", "10"},
	{"withdraw-overdrawn", "Overdrawn value=10 wanted=50"},
	{"withdraw-ok", "6"},
	{"fire-and-forget", "7"},
	{"fire-and-forget-order", "1"},
	{"stream-countdown", "200 chunks, 25 acks"},
	{"stream-window", "4"},
	{"stream-cancel", "5"},
	{"stream-cancel-free", "0"},
	{"stream-refused-malformed", "Malformed"},
	{"stream-refused-window-0", "BadRequest"},
	{"stream-refused-unknown-rpc", "UnknownRpc"},
}

// entities is the state client.c leaves behind, read back with the Go
// client: both sides must address the same entity for the same id.
var entities = []struct {
	id   string
	want int
}{
	{"user-123", 5},
	{"a.b.c", 11},
	{"with space", 12},
	{"*", 13},
	{">", 14},
	{"日本語", 15},
	{"emoji 🎉", 16},
	{" leading", 17},
	{"line1\nline2", 18},
	{"compact-c", 21},
	{"wallet", 6},
	{"fire-and-forget", 7},
}

func TestCClient(t *testing.T) {
	bin := buildClient(t)
	s := natstest.StartServer(t)
	startRunner(t, s.ClientURL())

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, s.ClientURL())
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	t.Logf("client ran in %v", time.Since(start).Round(time.Millisecond))
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run client: %v (stderr %q)", err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Logf("client stderr:\n%s", stderr.String())
	}

	got, failed := parse(t, out)
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if reason, ok := failed[c.name]; ok {
				t.Fatalf("client: %s", reason)
			}
			v, ok := got[c.name]
			if !ok {
				t.Fatalf("client printed no line for %s", c.name)
			}
			if v != c.want {
				t.Fatalf("client %s = %q, want %q", c.name, v, c.want)
			}
		})
	}
	known := map[string]bool{}
	for _, c := range checks {
		known[c.name] = true
	}
	for name, reason := range failed {
		if !known[name] {
			t.Errorf("client: unlisted check %s failed: %s", name, reason)
		}
	}
	for name := range got {
		if !known[name] {
			t.Errorf("client printed unlisted check %s", name)
		}
	}
	if err != nil && len(failed) == 0 {
		t.Errorf("client exited with %v but reported no failed check", err)
	}
	if err == nil && len(failed) > 0 {
		t.Errorf("client reported failures but exited 0")
	}

	// The Go client sees what the C client did to the same ids.
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	c, err := mesh.NewClient(nc, mesh.DefaultConfig().ClientConfig)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	for _, e := range entities {
		t.Run("go/"+e.id, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			v, err := mesh.Call(ctx, c, counter.GetValue, e.id, actor.Empty{})
			if err != nil || v != e.want {
				t.Fatalf("Call(GetValue, %q) = %v, %v; want %d", e.id, v, err, e.want)
			}
		})
	}
}

// parse splits the client's output into values of passed checks and
// reasons of failed ones.
func parse(t *testing.T, out []byte) (got, failed map[string]string) {
	t.Helper()
	got, failed = map[string]string{}, map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "ok "):
			name, value, _ := strings.Cut(strings.TrimPrefix(line, "ok "), " ")
			if _, dup := got[name]; dup {
				t.Errorf("client printed %s twice", name)
			}
			got[name] = value
		case strings.HasPrefix(line, "FAIL "):
			name, reason, _ := strings.Cut(strings.TrimPrefix(line, "FAIL "), ": ")
			failed[name] = reason
		default:
			t.Errorf("client printed unexpected line %q", line)
		}
	}
	return got, failed
}

// startRunner starts a standalone runner (every shard of DefaultConfig)
// hosting the example Counter.
func startRunner(t *testing.T, url string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	cfg := mesh.DefaultConfig()
	cfg.Standalone = true
	r, err := mesh.NewRunner(nc, cfg)
	if err != nil {
		t.Fatalf("NewRunner: %v", err)
	}
	if err := r.Register(meshtest.MemoryCounter()); err != nil {
		t.Fatalf("Register: %v", err)
	}
	// Cleanups run last-registered first: the runner stops before its
	// connection closes.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

// buildClient compiles client.c into t.TempDir. Without gcc, the NATS C
// client or libxxhash the test is skipped, except in CI, which installs
// them.
func buildClient(t *testing.T) string {
	t.Helper()
	missing := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("CI") == "true" {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		missing("gcc not found: %v", err)
	}
	dir := t.TempDir()

	// A probe tells missing libraries apart from a broken client.c.
	probe := filepath.Join(dir, "probe.c")
	const probeSrc = "#include <nats/nats.h>\n#include <xxhash.h>\n" +
		"int main(void) { nats_Close(); return (int)XXH64(\"\", 0, 0) & 0; }\n"
	if err := os.WriteFile(probe, []byte(probeSrc), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(gcc, "-o", filepath.Join(dir, "probe"), probe,
		"-lnats", "-lxxhash").CombinedOutput(); err != nil {
		missing("NATS C client or libxxhash not usable (Debian: libnats-dev libxxhash-dev): %v\n%s", err, out)
	}

	bin := filepath.Join(dir, "client")
	out, err := exec.Command(gcc, "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror",
		"-o", bin, "client.c", "-lnats", "-lxxhash").CombinedOutput()
	if err != nil {
		t.Fatalf("gcc client.c: %v\n%s", err, out)
	}
	return bin
}
