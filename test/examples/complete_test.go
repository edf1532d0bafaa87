//go:build unix

// Package examples_test runs the examples as their documentation says, as
// processes, and checks what they print.
package examples_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/testkit/cmdtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/test/internal/proctest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	cmdtest.Remove()
	os.Exit(code)
}

var clientLine = regexp.MustCompile(`msg=Client .*?call=(\d) value=(-?\d+)`)

// clientCalls returns the singleton's log lines, as "call:value".
func clientCalls(outputs ...string) []string {
	var out []string
	for _, o := range outputs {
		for _, m := range clientLine.FindAllStringSubmatch(o, -1) {
			out = append(out, m[1]+":"+m[2])
		}
	}
	return out
}

// go run ./examples/complete -dev: one process, the singleton's 1, 2, 1.
func TestCompleteOneProcess(t *testing.T) {
	bin := filepath.Join(cmdtest.Build(t, "./examples/complete", "./cmd/shardmgr"), "complete")
	p := proctest.Start(t, "complete", bin, "-dev", "-dev-listen", natstest.FreeAddr(t), "-dev-gateway", natstest.FreeAddr(t), "-data", filepath.Join(t.TempDir(), "nats"))
	natstest.WaitFor(t, 60*time.Second, func() bool {
		if p.Exited() {
			t.Fatalf("exited: %s\n%s", p.Status(), p.Output())
		}
		return len(clientCalls(p.Output())) == 3
	}, "the singleton's three calls")
	if got := strings.Join(clientCalls(p.Output()), " "); got != "1:1 2:2 3:1" {
		t.Fatalf("the singleton logged %s, want 1:1 2:2 3:1\n%s", got, p.Output())
	}
	if !regexp.MustCompile(`msg="Creating Counter" .*address=Counter/test`).MatchString(p.Output()) {
		t.Fatalf("no activation logged:\n%s", p.Output())
	}
}

// Three runner processes and a shard manager started last: the singleton
// runs on one of them, once, and the logs together show 1, 2, 1 once.
func TestCompleteThreeRunners(t *testing.T) {
	bins := cmdtest.Build(t, "./examples/complete", "./cmd/shardmgr")
	s := natstest.StartServer(t)
	var runners []*proctest.Proc
	for _, id := range []string{"r1", "r2", "r3"} {
		runners = append(runners, proctest.Start(t, id, filepath.Join(bins, "complete"), "-nats", s.ClientURL(), "-id", id, "-shards", "30"))
	}
	nc := natstest.Connect(t, s)
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup = 30
	natstest.WaitFor(t, 30*time.Second, func() bool {
		st, err := mesh.Inspect(context.Background(), nc, cfg)
		return err == nil && len(st.Runners) == 3
	}, "three runners registered")
	proctest.Start(t, "shardmgr", filepath.Join(bins, "shardmgr"), "-nats", s.ClientURL(), "-shards", "30")
	outputs := func() []string {
		var out []string
		for _, r := range runners {
			if r.Exited() {
				t.Fatalf("%s exited: %s\n%s", r.Name(), r.Status(), r.Output())
			}
			out = append(out, r.Output())
		}
		return out
	}
	natstest.WaitFor(t, 60*time.Second, func() bool { return len(clientCalls(outputs()...)) >= 3 }, "the singleton's three calls")
	// Settled: every shard held by its assigned runner, each with a third.
	natstest.WaitFor(t, 30*time.Second, func() bool {
		st, err := mesh.Inspect(context.Background(), nc, cfg)
		if err != nil {
			return false
		}
		for _, sh := range st.Shards {
			if sh.Holder == "" || sh.Holder != sh.Assigned {
				return false
			}
		}
		for _, r := range st.Runners {
			if r.Held != 10 {
				return false
			}
		}
		return true
	}, "the shards settled, ten per runner")
	if got := strings.Join(clientCalls(outputs()...), " "); got != "1:1 2:2 3:1" {
		t.Fatalf("the singleton logged %s across the three runners, want 1:1 2:2 3:1 once", got)
	}
	ran := 0
	for _, o := range outputs() {
		if len(clientCalls(o)) > 0 {
			ran++
		}
	}
	if ran != 1 {
		t.Fatalf("the singleton ran on %d runners", ran)
	}
}

// examples/inventory's own runner beside cmd/runner's in a mixed cluster,
// as its documentation runs them: each serves its type's shard group, and
// the gateway calls both.
func TestInventoryMixedCluster(t *testing.T) {
	bins := cmdtest.Build(t, "./examples/inventory", "./cmd/runner", "./cmd/shardmgr", "./cmd/gateway")
	s := natstest.StartServer(t)
	common := []string{"-nats", s.ClientURL(), "-shards", "12", "-shard-groups", "default,inventory", "-entity-groups", "Inventory=inventory"}
	gw := natstest.FreeAddr(t)
	procs := []*proctest.Proc{
		proctest.Start(t, "shardmgr", filepath.Join(bins, "shardmgr"), common...),
		proctest.Start(t, "runner", filepath.Join(bins, "runner"), append([]string{"-id", "counter-1"}, common...)...),
		proctest.Start(t, "inventory", filepath.Join(bins, "inventory"), append([]string{"-id", "inventory-1"}, common...)...),
		proctest.Start(t, "gateway", filepath.Join(bins, "gateway"), append([]string{"-listen", gw}, common...)...),
	}
	post := func(path, body string, header ...string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+gw+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	natstest.WaitFor(t, 60*time.Second, func() bool {
		for _, p := range procs {
			if p.Exited() {
				t.Fatalf("%s exited: %s\n%s", p.Name(), p.Status(), p.Output())
			}
		}
		code, _ := post("/v1/Inventory/sku-1/Stock", "")
		code2, _ := post("/v1/Counter/c/GetValue", "")
		return code == 200 && code2 == 200
	}, "both types served")
	for _, c := range []struct{ path, body, key, want string }{
		{"/v1/Inventory/sku-1/Restock", `{"units":5}`, "r1", "5"},
		{"/v1/Inventory/sku-1/Restock", `{"units":5}`, "r1", "5"}, // the same delivery again: deduplicated
		{"/v1/Inventory/sku-1/Reserve", `{"units":2}`, "", "3"},
		{"/v1/Counter/c/Increment", `{"amount":4}`, "", "4"},
	} {
		var hdr []string
		if c.key != "" {
			hdr = []string{"Idempotency-Key", c.key}
		}
		if code, body := post(c.path, c.body, hdr...); code != 200 || body != c.want {
			t.Fatalf("POST %s %s: %d %s, want %s", c.path, c.body, code, body, c.want)
		}
	}
	if code, body := post("/v1/Inventory/sku-1/Reserve", `{"units":9}`); code != http.StatusUnprocessableEntity || !strings.Contains(body, `"inStock":3`) {
		t.Fatalf("Reserve past the stock: %d %s", code, body)
	}
	nc := natstest.Connect(t, s)
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup, cfg.ShardGroups, cfg.EntityGroups = 12, []string{"default", "inventory"}, map[string]string{"Inventory": "inventory"}
	st, err := mesh.Inspect(context.Background(), nc, cfg)
	if err != nil || len(st.Refused) != 0 {
		t.Fatalf("status: %v, refused %v", err, st.Refused)
	}
	for _, sh := range st.Shards {
		if want := map[string]string{"default": "counter-1", "inventory": "inventory-1"}[sh.Shard.Group]; sh.Holder != want {
			t.Fatalf("shard %s held by %q, want %s", sh.Shard, sh.Holder, want)
		}
	}
}

// The README's "In 20 lines" (examples/quickstart) runs with -dev and
// answers the curl command it prints.
func TestQuickstart(t *testing.T) {
	bin := filepath.Join(cmdtest.Build(t, "./examples/quickstart"), "quickstart")
	p := proctest.Start(t, "quickstart", bin, "-dev", "-dev-listen", natstest.FreeAddr(t), "-dev-gateway", natstest.FreeAddr(t), "-data", filepath.Join(t.TempDir(), "nats"))
	curl := regexp.MustCompile(`curl -s (http://\S+/v1/Counter/id-1/Increment) -H 'Content-Type: application/json' -d '(\{"amount":0\})'`)
	var m []string
	natstest.WaitFor(t, 60*time.Second, func() bool {
		if p.Exited() {
			t.Fatalf("exited: %s\n%s", p.Status(), p.Output())
		}
		m = curl.FindStringSubmatch(p.Output())
		return m != nil
	}, "the printed curl command")
	resp, err := http.Post(m[1], "application/json", strings.NewReader(`{"amount":5}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "5" {
		t.Fatalf("the printed curl, with amount 5: %d %s", resp.StatusCode, b)
	}
}
