package app_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/app"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A user's own entity type, as a user would write it.
type Greeting struct {
	Name string `json:"name"`
}

var (
	Greeter = actor.NewEntity("Greeter")
	Greet   = actor.NewRPC[Greeting, string](Greeter, "Greet")
	Count   = actor.NewRPC[actor.Empty, int](Greeter, "Count")
)

func greeter() *actor.Behavior {
	return actor.Implement(Greeter, func(self *actor.Instance) ([]actor.Handler, error) {
		n := 0
		return []actor.Handler{
			actor.Handle(Greet, func(_ context.Context, g Greeting) (string, error) {
				n++
				return "hello " + g.Name + " from " + self.Address().ID, nil
			}),
			actor.Handle(Count, func(context.Context, actor.Empty) (int, error) { return n, nil }),
		}, nil
	})
}

var greeterRunner = app.Runner{Name: "greeter", Version: "1.2.3", Behaviors: []*actor.Behavior{greeter()}}

// proc is a Run in a goroutine, stopped at the test's end.
type proc struct {
	out, errs natstest.Buffer
	done      chan error
	cancel    context.CancelFunc
}

func start(t *testing.T, run func(context.Context, []string, io.Writer, io.Writer) error, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{done: make(chan error, 1), cancel: cancel}
	go func() { p.done <- run(ctx, args, &p.out, &p.errs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("run %v: %v\n%s", args, err, p.errs.String())
			}
		case <-time.After(30 * time.Second):
			t.Errorf("run %v did not stop", args)
		}
	})
	return p
}

// waitOut waits for re in the process's output and returns its submatches.
func (p *proc) waitOut(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	var m []string
	natstest.WaitFor(t, 30*time.Second, func() bool {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("exited: %v\nstdout:\n%s\nstderr:\n%s", err, p.out.String(), p.errs.String())
		default:
		}
		m = re.FindStringSubmatch(p.out.String() + p.errs.String())
		return m != nil
	}, fmt.Sprintf("%q in the output", re))
	return m
}

func devArgs(t *testing.T, data string) []string {
	return []string{"-dev", "-dev-listen", natstest.FreeAddr(t), "-dev-gateway", natstest.FreeAddr(t), "-data", data, "-log-level", "warn"}
}

// -dev on the user's own binary: the banner prints commands for the user's
// types, and each works as printed.
func TestDevOwnTypes(t *testing.T) {
	p := start(t, greeterRunner.Run, devArgs(t, filepath.Join(t.TempDir(), "nats"))...)
	m := p.waitOut(t, regexp.MustCompile(`NATS on (nats://[^\s,]+), HTTP gateway on (http://\S+)`))
	natsURL, gw := m[1], m[2]
	p.waitOut(t, regexp.MustCompile(`Press Ctrl-C`))
	out := p.out.String()
	for _, want := range []string{
		"entity types: Greeter",
		"curl -s " + gw + `/v1/Greeter/id-1/Greet -H 'Content-Type: application/json' -d '{"name":""}'`,
		"curl -s " + gw + "/v1/Greeter/id-1/Count -H 'Content-Type: application/json' -d '{}'",
		"go run github.com/natsmesh/natsmesh/cmd/meshctl -nats " + natsURL + ` -prefix mesh call Greeter id-1 Greet '{"name":""}'`,
		"nats -s " + natsURL + ` req mesh.v1.entity.Greeter.Greet '{"name":""}' -H Mesh-Id:id-1`,
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("the banner lacks %q:\n%s", want, out)
		}
	}
	// The curl line, as an HTTP request.
	resp, err := http.Post(gw+"/v1/Greeter/id-1/Greet", "application/json", strings.NewReader(`{"name":"ann"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != `"hello ann from id-1"` {
		t.Fatalf("gateway: %d %s", resp.StatusCode, body)
	}
	// The nats line, as a request.
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	msg := nats.NewMsg("mesh.v1.entity.Greeter.Count")
	msg.Header.Set("Mesh-Id", "id-1")
	reply, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil || string(reply.Data) != "1" {
		t.Fatalf("nats req: %v %q", err, reply.Data)
	}
	// The runner registered its version, and describes its types.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	types, err := mesh.Types(ctx, nc, mesh.DefaultConfig())
	if err != nil || len(types) != 1 || len(types[0].Versions) != 1 || !types[0].Versions[0].Described {
		t.Fatalf("types: %+v, %v", types, err)
	}
	var greet mesh.RPCDesc
	for _, r := range types[0].Versions[0].RPCs {
		if r.Name == "Greet" {
			greet = r
		}
	}
	if greet.Kind != "unary" || !strings.Contains(string(greet.Payload.Schema), `"name"`) {
		t.Fatalf("Greet's description: %+v", greet)
	}
	st, err := mesh.Inspect(ctx, nc, mesh.DefaultConfig())
	if err != nil || len(st.Runners) != 1 || st.Runners[0].Version != "1.2.3" || !strings.HasPrefix(st.Runners[0].ID, "greeter-") {
		t.Fatalf("status: %+v, %v", st, err)
	}
}

// A second -dev on the same data folder fails at once, naming the folder;
// a busy port fails at once, naming the setting.
func TestDevFailsFast(t *testing.T) {
	data := filepath.Join(t.TempDir(), "nats")
	first := start(t, greeterRunner.Run, devArgs(t, data)...)
	first.waitOut(t, regexp.MustCompile(`Press Ctrl-C`))

	began := time.Now()
	err := greeterRunner.Run(context.Background(), devArgs(t, data), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "config: data: ") || !strings.Contains(err.Error(), "in use by another -dev process") {
		t.Fatalf("a second -dev on %s: %v", data, err)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, flag := range []string{"-dev-listen", "-dev-gateway", "-http"} {
		args := append(devArgs(t, filepath.Join(t.TempDir(), "nats")), flag, busy.Addr().String())
		err := greeterRunner.Run(context.Background(), args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "config: "+strings.TrimPrefix(flag, "-")+": ") || !strings.Contains(err.Error(), "address already in use") {
			t.Fatalf("%s on a busy port: %v", flag, err)
		}
	}
	// Each failed at once: well within the embedded server's own start
	// timeout (10 s) that a busy port used to wait out. A bound, not a
	// measurement: the 3 runs take milliseconds.
	if took := time.Since(began); took > 8*time.Second {
		t.Fatalf("failing took %v", took)
	}
}

// Every binary refuses positional arguments and a runner hosting nothing,
// prints its version, and labels build_info with the same version.
func TestArgumentsAndVersion(t *testing.T) {
	for _, run := range []func(context.Context, []string, io.Writer, io.Writer) error{
		greeterRunner.Run, app.ShardManager{Name: "sm"}.Run, app.Gateway{Name: "gw"}.Run,
	} {
		err := run(context.Background(), []string{"-nats", "nats://127.0.0.1:1", "join"}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), `unexpected argument "join"`) {
			t.Fatalf("a positional argument: %v", err)
		}
	}
	err := app.Runner{Name: "empty"}.Run(context.Background(), []string{"-nats", "nats://127.0.0.1:1", "-connect-wait", "0s"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "connect to NATS at nats://127.0.0.1:1") {
		t.Fatalf("connecting to nothing: %v", err)
	}

	var out bytes.Buffer
	err = greeterRunner.Run(context.Background(), []string{"-version"}, &out, io.Discard)
	if !app.IsHelp(err) || !strings.HasPrefix(out.String(), "greeter 1.2.3 go1.") {
		t.Fatalf("-version: %v %q", err, out.String())
	}

	s := natstest.StartServer(t)
	web := natstest.FreeAddr(t)
	p := start(t, greeterRunner.Run, "-nats", s.ClientURL(), "-standalone", "-http", web, "-id", "g1", "-log-level", "warn")
	natstest.WaitFor(t, 20*time.Second, func() bool {
		resp, err := http.Get("http://" + web + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "ready")
	resp, err := http.Get("http://" + web + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `natsmesh_build_info{binary="greeter",id="g1",version="1.2.3"} 1`) {
		t.Fatalf("/metrics has no build_info with -version's version:\n%s", body)
	}
	if p.out.String() != "" {
		t.Fatalf("a production runner printed to stdout: %q", p.out.String())
	}
}

// With -log-format json, nothing but JSON reaches the output: the dev
// banner is a log line.
func TestJSONLogsOnly(t *testing.T) {
	args := append(devArgs(t, filepath.Join(t.TempDir(), "nats")), "-log-format", "json", "-log-level", "info")
	p := start(t, greeterRunner.Run, args...)
	p.waitOut(t, regexp.MustCompile(`"msg":"runner started"`))
	if p.out.String() != "" {
		t.Fatalf("plain text on stdout with -log-format json: %q", p.out.String())
	}
	sc := bufio.NewScanner(strings.NewReader(p.errs.String()))
	sawCommands := false
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("a line that is not JSON: %q", sc.Text())
		}
		if line["msg"] == "dev cluster ready" {
			cmds, _ := line["commands"].([]any)
			sawCommands = len(cmds) > 0
		}
	}
	if !sawCommands {
		t.Fatalf("no dev commands logged:\n%s", p.errs.String())
	}
}

// A runner that starts beside a cluster it must not join fails with the
// reason, as from Start.
func TestStandaloneBesideCluster(t *testing.T) {
	s := natstest.StartServer(t)
	solo := start(t, greeterRunner.Run, "-nats", s.ClientURL(), "-standalone")
	solo.waitOut(t, regexp.MustCompile(`msg="runner started"`))
	err := greeterRunner.Run(context.Background(), []string{"-nats", s.ClientURL(), "-log-level", "warn"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "standalone runner") {
		t.Fatalf("a cluster's runner beside a standalone one: %v", err)
	}
}
