//go:build unix

// Package ownservice_test runs a user's own service as a user would build
// it: greeter/ is a module of its own (its go.mod takes natsmesh by a
// replace directive, as it would take a release) whose main is app.Runner
// hosting its own entity type. The test builds it, runs it as a process
// beside the example Counter's runner (cmd/runner), a shard manager and
// the gateway, in a mixed cluster (each type in its own shard group), and
// calls both types by every route: the Go client, the gateway, meshctl and
// plain NATS requests; meshctl types and the OpenAPI document describe
// both.
package ownservice_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/nats-io/nats.go"
	"go.yaml.in/yaml/v3"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
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

// The protocol of greeter/'s entity type, as a Go client of another module
// declares it: the same names and payloads.
type Greeting struct {
	Name string `json:"name"`
}

var (
	Greeter = actor.NewEntity("Greeter")
	Greet   = actor.NewRPC[Greeting, string](Greeter, "Greet")
	Count   = actor.NewRPC[actor.Empty, int](Greeter, "Count")
	Echo    = actor.NewStreamRPC[Greeting, string](Greeter, "Echo")
)

// buildGreeter builds greeter/ as its own module into dir.
func buildGreeter(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "greeter")
	cmd := exec.Command("go", "build", "-mod=mod", "-o", bin, ".")
	cmd.Dir = "greeter"
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the out-of-tree module: %v\n%s", err, out)
	}
	return bin
}

func TestOwnService(t *testing.T) {
	bins := cmdtest.Build(t, "./cmd/runner", "./cmd/shardmgr", "./cmd/gateway", "./cmd/meshctl")
	greeter := buildGreeter(t, t.TempDir())
	s := natstest.StartServer(t)
	url := s.ClientURL()
	// Every process of the cluster agrees on the groups: the new type has
	// a group of its own (docs/operations.md, "Rolling out a new entity
	// type").
	common := []string{"-nats", url, "-shards", "16", "-shard-groups", "default,greetings", "-entity-groups", "Greeter=greetings"}
	args := func(extra ...string) []string { return append(append([]string{"-fast-failover"}, common...), extra...) }
	web := map[string]string{"shardmgr": natstest.FreeAddr(t), "counter": natstest.FreeAddr(t), "greeter": natstest.FreeAddr(t), "gateway": natstest.FreeAddr(t)}
	gwAddr := natstest.FreeAddr(t)
	procs := map[string]*proctest.Proc{
		"shardmgr": proctest.Start(t, "shardmgr", filepath.Join(bins, "shardmgr"), args("-http", web["shardmgr"])...),
		"counter":  proctest.Start(t, "counter", filepath.Join(bins, "runner"), args("-id", "counter-1", "-http", web["counter"])...),
		"greeter":  proctest.Start(t, "greeter", greeter, args("-id", "greeter-1", "-http", web["greeter"])...),
		"gateway":  proctest.Start(t, "gateway", filepath.Join(bins, "gateway"), args("-listen", gwAddr, "-http", web["gateway"])...),
	}
	for name, addr := range web {
		natstest.WaitFor(t, 60*time.Second, func() bool {
			if procs[name].Exited() {
				t.Fatalf("%s exited: %s\n%s", name, procs[name].Status(), procs[name].Output())
			}
			resp, err := http.Get("http://" + addr + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}, name+" ready")
	}
	nc := natstest.Connect(t, s)
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup, cfg.ShardGroups, cfg.EntityGroups = 16, []string{"default", "greetings"}, map[string]string{"Greeter": "greetings"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The cluster: each runner serves its type's group, nobody is refused.
	st, err := mesh.Inspect(ctx, nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]map[string]int{}
	for _, sh := range st.Shards {
		if held[sh.Holder] == nil {
			held[sh.Holder] = map[string]int{}
		}
		held[sh.Holder][sh.Shard.Group]++
	}
	if len(st.Refused) != 0 || held["counter-1"]["default"] != 16 || held["greeter-1"]["greetings"] != 16 || len(held) != 2 {
		t.Fatalf("shards held %v, refused %v", held, st.Refused)
	}

	// The Go client.
	client, err := mesh.NewClient(nc, cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := mesh.Call(ctx, client, counter.Increment, "c-1", counter.Amount{Amount: 2}); err != nil || v != 2 {
		t.Fatalf("Counter.Increment: %d, %v", v, err)
	}
	if v, err := mesh.Call(ctx, client, Greet, "g-1", Greeting{Name: "ann"}); err != nil || v != "hello ann, greeting 1 from g-1" {
		t.Fatalf("Greeter.Greet: %q, %v", v, err)
	}
	var letters []string
	for l, err := range mesh.Stream(ctx, client, Echo, "g-1", Greeting{Name: "bob"}) {
		if err != nil {
			t.Fatalf("Greeter.Echo: %v", err)
		}
		letters = append(letters, l)
	}
	if strings.Join(letters, "") != "bob" {
		t.Fatalf("Greeter.Echo: %q", letters)
	}

	// The gateway.
	post := func(path, body string) (int, string) {
		t.Helper()
		resp, err := http.Post("http://"+gwAddr+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post("/v1/Greeter/g-1/Greet", `{"name":"cy"}`); code != 200 || body != `"hello cy, greeting 2 from g-1"` {
		t.Fatalf("gateway Greet: %d %s", code, body)
	}
	if code, body := post("/v1/Greeter/g-1/Greet", `{"name":""}`); code != http.StatusUnprocessableEntity || !strings.Contains(body, `"failure":"NoName"`) {
		t.Fatalf("gateway Greet without a name: %d %s", code, body)
	}
	if code, body := post("/v1/Greeter/g-1/Echo", `{"name":"di"}`); code != 200 || body != "{\"chunk\":\"d\"}\n{\"chunk\":\"i\"}\n{\"end\":true}\n" {
		t.Fatalf("gateway Echo: %d %q", code, body)
	}
	if code, body := post("/v1/Counter/c-1/Increment", `{"amount":3}`); code != 200 || body != "5" {
		t.Fatalf("gateway Counter: %d %s", code, body)
	}

	// meshctl.
	meshctl := func(cmd ...string) string {
		t.Helper()
		var out, errs bytes.Buffer
		c := exec.Command(filepath.Join(bins, "meshctl"), append(cmd, common...)...)
		c.Stdout, c.Stderr = &out, &errs
		if err := c.Run(); err != nil {
			t.Fatalf("meshctl %v: %v\n%s%s", cmd, err, out.String(), errs.String())
		}
		return out.String()
	}
	if out := meshctl("call", "Greeter", "g-1", "Count"); strings.TrimSpace(out) != "2" {
		t.Fatalf("meshctl call Greeter Count: %q", out)
	}
	if out := meshctl("call", "Greeter", "g-2", "Echo", `{"name":"ed"}`); out != "\"e\"\n\"d\"\n" {
		t.Fatalf("meshctl call Greeter Echo: %q", out)
	}
	if out := meshctl("call", "Counter", "c-1", "GetValue"); strings.TrimSpace(out) != "5" {
		t.Fatalf("meshctl call Counter GetValue: %q", out)
	}
	out := meshctl("types")
	for _, want := range []string{"Counter (shard group default)", "hosted by counter-1", "Greeter (shard group greetings)", "hosted by greeter-1", "Echo   stream", "NoName (*main.NoName)"} {
		if !strings.Contains(out, want) {
			t.Fatalf("meshctl types lacks %q:\n%s", want, out)
		}
	}
	var types []mesh.ClusterType
	if err := json.Unmarshal([]byte(meshctl("types", "Greeter", "-o", "json")), &types); err != nil || len(types) != 1 ||
		!strings.Contains(string(types[0].Versions[0].RPCs[0].Payload.Schema), `"name"`) {
		t.Fatalf("meshctl types Greeter -o json: %+v, %v", types, err)
	}
	if out := meshctl("status"); !strings.Contains(out, "greeter-1  0.3.0") || strings.Contains(out, "refused") {
		t.Fatalf("meshctl status:\n%s", out)
	}

	// Plain NATS requests on the route subject.
	for subject, want := range map[string]string{"mesh.v1.entity.Greeter.Count": "2", "mesh.v1.entity.Counter.GetValue": "5"} {
		m := nats.NewMsg(subject)
		m.Header.Set("Mesh-Id", map[bool]string{true: "g-1", false: "c-1"}[strings.Contains(subject, "Greeter")])
		reply, err := nc.RequestMsg(m, 10*time.Second)
		if err != nil || string(reply.Data) != want {
			t.Fatalf("nats req %s: %v %q", subject, err, reply.Data)
		}
	}

	// The OpenAPI document describes both types, as a real parser reads it.
	resp, err := http.Get("http://" + gwAddr + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	doc, err := openapi3.NewLoader().LoadFromData(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(ctx); err != nil {
		t.Fatalf("the OpenAPI document: %v", err)
	}
	for _, path := range []string{"/v1/Greeter/{id}/Greet", "/v1/Greeter/{id}/Echo", "/v1/Counter/{id}/Deposit"} {
		if doc.Paths.Find(path) == nil {
			t.Fatalf("OpenAPI lacks %s", path)
		}
	}

	// A graceful stop: SIGTERM, and every process exits 0.
	for _, name := range []string{"gateway", "greeter", "counter", "shardmgr"} {
		p := procs[name]
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-p.Done():
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not stop on SIGTERM", name)
		}
		if err := p.Err(); err != nil {
			t.Fatalf("%s on SIGTERM: %v\n%s", name, err, p.Output())
		}
	}

}

// greeter/Dockerfile, as docs/own-service.md tells to build it, makes an
// image whose binary runs (Docker is required in CI, which has it).
func TestOwnImage(t *testing.T) {
	docker, err := exec.LookPath("docker")
	if err == nil {
		err = exec.Command(docker, "info").Run()
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("docker: %v", err)
		}
		t.Skipf("no usable docker: %v", err)
	}
	dist := t.TempDir()
	build := exec.Command("go", "build", "-mod=mod", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dist, "greeter"), ".")
	build.Dir = "greeter"
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	tag := "natsmesh-test-greeter:" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	dockerfile, _ := filepath.Abs("greeter/Dockerfile")
	if out, err := exec.Command(docker, "build", "-q", "-t", tag, "-f", dockerfile, dist).CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command(docker, "rmi", "-f", tag).Run() })
	out, err := exec.Command(docker, "run", "--rm", tag, "-version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "greeter 0.3.0 go") {
		t.Fatalf("docker run %s -version: %v %q", tag, err, out)
	}
	// No positional argument gets past it, in the image either.
	if out, err := exec.Command(docker, "run", "--rm", tag, "oops").CombinedOutput(); err == nil || !strings.Contains(string(out), `unexpected argument "oops"`) {
		t.Fatalf("docker run %s oops: %v %q", tag, err, out)
	}
}

// greeter/deployment.yaml is a Deployment that runs the image with the
// cluster's shared settings, probes the ops port and gives the hand-off
// its time.
func TestOwnDeployment(t *testing.T) {
	b, err := os.ReadFile("greeter/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Kind string `yaml:"kind"`
		Spec struct {
			Template struct {
				Spec struct {
					Grace      int `yaml:"terminationGracePeriodSeconds"`
					Containers []struct {
						EnvFrom []struct {
							ConfigMapRef struct{ Name string } `yaml:"configMapRef"`
						} `yaml:"envFrom"`
						Ports []struct {
							Name          string `yaml:"name"`
							ContainerPort int    `yaml:"containerPort"`
						} `yaml:"ports"`
						Readiness struct {
							HTTPGet struct{ Path, Port string } `yaml:"httpGet"`
						} `yaml:"readinessProbe"`
						Liveness struct {
							HTTPGet struct{ Path, Port string } `yaml:"httpGet"`
						} `yaml:"livenessProbe"`
					} `yaml:"containers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	c := d.Spec.Template.Spec.Containers
	if d.Kind != "Deployment" || len(c) != 1 || d.Spec.Template.Spec.Grace < 60 || len(c[0].EnvFrom) != 1 || c[0].EnvFrom[0].ConfigMapRef.Name != "natsmesh" ||
		len(c[0].Ports) != 1 || c[0].Ports[0].ContainerPort != 8081 || c[0].Readiness.HTTPGet.Path != "/readyz" || c[0].Liveness.HTTPGet.Path != "/healthz" ||
		c[0].Readiness.HTTPGet.Port != c[0].Ports[0].Name {
		t.Fatalf("deployment.yaml: %+v", d)
	}
	// The ops port is the one the shared ConfigMap sets (NATSMESH_HTTP).
	cm, err := os.ReadFile("../../deploy/k8s/config.yaml")
	if err != nil || !strings.Contains(string(cm), `NATSMESH_HTTP: ":8081"`) {
		t.Fatalf("deploy/k8s/config.yaml does not set the ops port 8081: %v", err)
	}
}
