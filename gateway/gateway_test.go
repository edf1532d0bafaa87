package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/gateway"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Probe is a test entity with RPCs for each kind of outcome the gateway
// maps to a status.
var (
	Probe = actor.NewEntity("Probe")
	// Slow waits for its context to end.
	Slow = actor.NewRPC[actor.Empty, int](Probe, "Slow")
	// Panic panics.
	Panic = actor.NewRPC[string, int](Probe, "Panic")
	// Block blocks until the test releases it (fills the mailbox).
	Block = actor.NewRPC[actor.Empty, int](Probe, "Block")
	// Append is persisted: it counts how often its handler ran.
	Append = actor.NewRPC[string, []string](Probe, "Append", actor.Persisted())
)

type probe struct {
	appends atomic.Int64  // handler runs of Append
	blocked chan struct{} // a Block call started
	release chan struct{} // closed to let Block calls return
}

func (p *probe) behavior() *actor.Behavior {
	return actor.Implement(Probe, func(*actor.Instance) ([]actor.Handler, error) {
		var log []string
		return []actor.Handler{
			actor.Handle(Slow, func(ctx context.Context, _ actor.Empty) (int, error) {
				<-ctx.Done()
				return 0, ctx.Err()
			}),
			actor.Handle(Panic, func(_ context.Context, s string) (int, error) { panic(s) }),
			actor.Handle(Block, func(context.Context, actor.Empty) (int, error) {
				p.blocked <- struct{}{}
				<-p.release
				return 1, nil
			}),
			actor.Handle(Append, func(_ context.Context, s string) ([]string, error) {
				p.appends.Add(1)
				log = append(log, s)
				return log, nil
			}),
		}, nil
	}, actor.MailboxCapacity(1))
}

type env struct {
	url    string // the gateway's base URL
	client *mesh.Client
	probe  *probe
}

func testConfig() mesh.Config {
	cfg := mesh.DefaultConfig()
	cfg.ShardsPerGroup = 4
	cfg.Standalone = true
	cfg.CallTimeout = 5 * time.Second
	return cfg
}

// setup starts a NATS server, a standalone runner hosting Counter and Probe,
// and a gateway in front of it.
func setup(t *testing.T) *env {
	t.Helper()
	srv := natstest.StartServer(t)
	cfg := testConfig()
	p := &probe{blocked: make(chan struct{}, 16), release: make(chan struct{})}

	rnc := natstest.Connect(t, srv)
	r, err := mesh.NewRunner(rnc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []*actor.Behavior{meshtest.MemoryCounter(), p.behavior()} {
		if err := r.Register(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
	})
	t.Cleanup(func() { close(p.release) }) // before the runner's shutdown waits for Block calls

	c, err := mesh.NewClient(natstest.Connect(t, srv), cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	gcfg := gateway.DefaultConfig()
	gcfg.MaxBodyBytes = 1024
	gcfg.Persisted = gateway.PersistedRPCs(counter.Counter, Probe)
	gw, err := gateway.New(c, gcfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(gw)
	t.Cleanup(hs.Close)
	return &env{url: hs.URL, client: c, probe: p}
}

type response struct {
	status int
	header http.Header
	body   string
	err    struct {
		Code    string          `json:"code"`
		Message string          `json:"message"`
		Failure string          `json:"failure"`
		Detail  json.RawMessage `json:"detail"`
	}
}

// do sends a request to the gateway; path is sent as is (already escaped).
func do(t *testing.T, method, url, body string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, body: string(b)}
	if r.status != http.StatusOK {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s %s: error with Content-Type %q: %s", method, url, ct, b)
		}
		if err := json.Unmarshal(b, &r.err); err != nil || r.err.Code == "" || r.err.Message == "" {
			t.Fatalf("%s %s: error body %q is not a JSON error (%v)", method, url, b, err)
		}
	}
	return r
}

func TestIDs(t *testing.T) {
	e := setup(t)
	for _, id := range []string{
		"user-123", "a/b", "/leading/slash/", "a.b.c", "with space", " leading", "日本語", "emoji 🎉",
		".", "..", "../..", "%", "%2F", "?x=1#frag", "*", ">", "a+b", "a;b=c", strings.Repeat("x", 1024),
	} {
		t.Run(id[:min(len(id), 20)], func(t *testing.T) {
			r := do(t, http.MethodPost, e.url+gateway.Path("Counter", id, "Increment"), `{"amount":7}`)
			if r.status != http.StatusOK || r.body != "7" {
				t.Fatalf("Increment %q = %d %q, want 200 7", id, r.status, r.body)
			}
			// The id reached the entity exactly: the typed client finds it.
			v, err := mesh.Call(context.Background(), e.client, counter.GetValue, id, actor.Empty{})
			if err != nil || v != 7 {
				t.Fatalf("GetValue(%q) = %d, %v, want 7", id, v, err)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	e := setup(t)
	for _, tt := range []struct {
		name   string
		method string
		path   string
		body   string
		header []string
		status int
		code   string
	}{
		{name: "failure", path: "/v1/Counter/f/Withdraw", body: `{"amount":100}`, status: 422, code: protocol.CodeFailure},
		{name: "unknown entity", path: "/v1/Nope/x/Increment", body: `{}`, status: 404, code: protocol.CodeUnknownEntity},
		{name: "unknown rpc", path: "/v1/Counter/x/Nope", body: `{}`, status: 404, code: protocol.CodeUnknownRPC},
		{name: "no such route", path: "/v1/Counter/x", status: 404, code: gateway.CodeNotFound},
		{name: "too many segments", path: "/v1/Counter/a/b/Increment", status: 404, code: gateway.CodeNotFound},
		{name: "other version", path: "/v2/Counter/x/Increment", status: 404, code: gateway.CodeNotFound},
		{name: "GET", method: http.MethodGet, path: "/v1/Counter/x/GetValue", status: 405, code: gateway.CodeMethodNotAllowed},
		{name: "not JSON", path: "/v1/Counter/x/Increment", body: `amount=5`, status: 400, code: protocol.CodeMalformed},
		{name: "wrong shape", path: "/v1/Counter/x/Increment", body: `{"amount":"five"}`, status: 400, code: protocol.CodeMalformed},
		{name: "bad type name", path: "/v1/Coun.ter/x/Increment", body: `{}`, status: 400, code: protocol.CodeBadRequest},
		{name: "id not UTF-8", path: "/v1/Counter/%ff/Increment", body: `{}`, status: 400, code: protocol.CodeInvalidID},
		{name: "id too long", path: gateway.Path("Counter", strings.Repeat("x", 1025), "Increment"), body: `{}`, status: 400, code: protocol.CodeInvalidID},
		{name: "empty id", path: "/v1/Counter//Increment", body: `{}`, status: 400, code: protocol.CodeInvalidID},
		{name: "too large", path: "/v1/Counter/x/Increment", body: `{"amount":1,"pad":"` + strings.Repeat("x", 2000) + `"}`, status: 413, code: protocol.CodePayloadTooLarge},
		{name: "content type", path: "/v1/Counter/x/Increment", body: `{}`, header: []string{"Content-Type", "text/plain"}, status: 415, code: gateway.CodeUnsupportedMediaType},
		{name: "bad timeout", path: "/v1/Counter/x/Increment", body: `{}`, header: []string{"Mesh-Timeout", "soon"}, status: 400, code: protocol.CodeBadRequest},
		{name: "timeout", path: "/v1/Probe/slow/Slow", header: []string{"Mesh-Timeout", "100"}, status: 504, code: protocol.CodeTimeout},
		{name: "defect", path: "/v1/Probe/p/Panic", body: `"boom"`, status: 500, code: protocol.CodeDefect},
		{name: "key on volatile rpc", path: "/v1/Counter/x/Increment", body: `{}`, header: []string{"Idempotency-Key", "k1"}, status: 400, code: protocol.CodeBadRequest},
		{name: "bad key", path: "/v1/Probe/x/Append", body: `"a"`, header: []string{"Idempotency-Key", strings.Repeat("k", 257)}, status: 400, code: protocol.CodeBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodPost
			}
			r := do(t, method, e.url+tt.path, tt.body, tt.header...)
			if r.status != tt.status || r.err.Code != tt.code {
				t.Fatalf("%s %s = %d %s, want %d %s", method, tt.path, r.status, r.body, tt.status, tt.code)
			}
			if tt.status == 405 && r.header.Get("Allow") != http.MethodPost {
				t.Fatalf("405 with Allow %q, want POST", r.header.Get("Allow"))
			}
		})
	}
}

func TestFailureDetail(t *testing.T) {
	e := setup(t)
	do(t, http.MethodPost, e.url+"/v1/Counter/acct/Increment", `{"amount":3}`)
	r := do(t, http.MethodPost, e.url+"/v1/Counter/acct/Withdraw", `{"amount":10}`)
	var d counter.Overdrawn
	if err := json.Unmarshal(r.err.Detail, &d); err != nil {
		t.Fatalf("detail %q: %v", r.err.Detail, err)
	}
	if r.status != 422 || r.err.Failure != "Overdrawn" || d != (counter.Overdrawn{Value: 3, Wanted: 10}) {
		t.Fatalf("Withdraw = %d %s, want 422 Overdrawn {3 10}", r.status, r.body)
	}
}

func TestMailboxFull(t *testing.T) {
	e := setup(t)
	// One call runs (blocked) and one waits in the mailbox of capacity 1:
	// the next is refused. Calls that find room wait and time out.
	path := e.url + "/v1/Probe/busy/Block"
	first := make(chan int, 1)
	go func() {
		resp, err := http.Post(path, "", nil)
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-e.probe.blocked
	var r response
	natstest.WaitFor(t, 10*time.Second, func() bool {
		r = do(t, http.MethodPost, path, "", "Mesh-Timeout", "300")
		return r.status != http.StatusGatewayTimeout
	}, "a call refused")
	if r.status != http.StatusTooManyRequests || r.err.Code != protocol.CodeMailboxFull || r.header.Get("Retry-After") == "" {
		t.Fatalf("call to a full mailbox = %d %s (Retry-After %q), want 429 MailboxFull", r.status, r.body, r.header.Get("Retry-After"))
	}
	e.probe.release <- struct{}{}
	if status := <-first; status != http.StatusOK {
		t.Fatalf("blocked call = %d, want 200", status)
	}
}

func TestShardUnavailable(t *testing.T) {
	srv := natstest.StartServer(t)
	c, err := mesh.NewClient(natstest.Connect(t, srv), testConfig().ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(c, gateway.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(gw)
	t.Cleanup(hs.Close)
	r := do(t, http.MethodPost, hs.URL+"/v1/Counter/x/Increment", `{"amount":1}`, "Mesh-Timeout", "200")
	if r.status != http.StatusServiceUnavailable || r.err.Code != gateway.CodeShardUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("call with no runner = %d %s, want 503 ShardUnavailable with Retry-After", r.status, r.body)
	}
}

func TestIdempotencyKey(t *testing.T) {
	e := setup(t)
	url := e.url + "/v1/Probe/log/Append"
	first := do(t, http.MethodPost, url, `"a"`, "Idempotency-Key", "order-1")
	if first.status != http.StatusOK || first.body != `["a"]` {
		t.Fatalf("Append a = %d %s", first.status, first.body)
	}
	msgID := first.header.Get(gateway.HeaderMsgID)
	if msgID == "" {
		t.Fatal("persisted call without Mesh-Msg-Id")
	}
	// The same key again, even with another body: the stored reply, no
	// second run.
	again := do(t, http.MethodPost, url, `"b"`, "Idempotency-Key", "order-1")
	if again.status != http.StatusOK || again.body != `["a"]` || again.header.Get(gateway.HeaderMsgID) != msgID {
		t.Fatalf("Append with the same key = %d %s (%s), want the first reply", again.status, again.body, again.header.Get(gateway.HeaderMsgID))
	}
	if n := e.probe.appends.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	// The same key on another entity is another message.
	other := do(t, http.MethodPost, e.url+"/v1/Probe/log2/Append", `"c"`, "Idempotency-Key", "order-1")
	if other.status != http.StatusOK || other.body != `["c"]` || other.header.Get(gateway.HeaderMsgID) == msgID {
		t.Fatalf("same key, other entity = %d %s", other.status, other.body)
	}
	// Without a key: a new message each time, with a generated id.
	a := do(t, http.MethodPost, url, `"d"`)
	b := do(t, http.MethodPost, url, `"e"`)
	if a.body != `["a","d"]` || b.body != `["a","d","e"]` || a.header.Get(gateway.HeaderMsgID) == b.header.Get(gateway.HeaderMsgID) {
		t.Fatalf("keyless calls = %s (%s), %s (%s)", a.body, a.header.Get(gateway.HeaderMsgID), b.body, b.header.Get(gateway.HeaderMsgID))
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		edit func(*gateway.Config)
	}{
		{"body limit", func(c *gateway.Config) { c.MaxBodyBytes = 0 }},
		{"default timeout", func(c *gateway.Config) { c.DefaultTimeout = 0 }},
		{"max below default", func(c *gateway.Config) { c.MaxTimeout = time.Second }},
		{"persisted form", func(c *gateway.Config) { c.Persisted = []string{"Counter"} }},
		{"persisted dots", func(c *gateway.Config) { c.Persisted = []string{"Counter.Increment.x"} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := gateway.DefaultConfig()
			tt.edit(&cfg)
			if _, err := gateway.New(&mesh.Client{}, cfg); !errors.Is(err, gateway.ErrInvalidOption) {
				t.Fatalf("New = %v, want ErrInvalidOption", err)
			}
		})
	}
	if _, err := gateway.New(nil, gateway.DefaultConfig()); !errors.Is(err, gateway.ErrInvalidOption) {
		t.Fatalf("New(nil) = %v, want ErrInvalidOption", err)
	}
}

func TestNoNATS(t *testing.T) {
	srv := natstest.StartServer(t)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	c, err := mesh.NewClient(nc, testConfig().ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	gw, err := gateway.New(c, gateway.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(gw)
	t.Cleanup(hs.Close)
	r := do(t, http.MethodPost, hs.URL+"/v1/Counter/x/Increment", `{}`)
	if r.status != http.StatusServiceUnavailable || r.err.Code != gateway.CodeUnavailable {
		t.Fatalf("call on a closed connection = %d %s, want 503 Unavailable", r.status, r.body)
	}
}

func ExamplePath() {
	fmt.Println(gateway.Path("Counter", "user-123", "Increment"))
	fmt.Println(gateway.Path("Counter", "a/b c", "Increment"))
	fmt.Println(gateway.Path("Counter", "..", "GetValue"))
	// Output:
	// /v1/Counter/user-123/Increment
	// /v1/Counter/a%2Fb%20c/Increment
	// /v1/Counter/%2E%2E/GetValue
}
