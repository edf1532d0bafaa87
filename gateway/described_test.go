package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/gateway"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/schema"
)

// setupDescribed starts a runner that describes its types with schemas
// and a gateway that learns them (WithTypes), with no Persisted list.
func setupDescribed(t *testing.T) *env {
	t.Helper()
	srv := natstest.StartServer(t)
	cfg := testConfig()
	p := &probe{blocked: make(chan struct{}, 16), release: make(chan struct{})}
	r, err := mesh.NewRunner(natstest.Connect(t, srv), cfg, mesh.WithSchemas(schema.Of))
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
	t.Cleanup(func() { close(p.release) })
	nc := natstest.Connect(t, srv)
	c, err := mesh.NewClient(nc, cfg.ClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(c, gateway.DefaultConfig(), gateway.WithTypes(func(ctx context.Context) ([]mesh.ClusterType, error) {
		return mesh.Types(ctx, nc, cfg)
	}))
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(gw)
	t.Cleanup(hs.Close)
	return &env{url: hs.URL, client: c, probe: p}
}

// Persisted RPCs are learned from the runners' descriptions: no
// Config.Persisted needed for Idempotency-Key to work.
func TestPersistedFromTypes(t *testing.T) {
	e := setupDescribed(t)
	url := e.url + "/v1/Probe/log/Append"
	first := do(t, http.MethodPost, url, `"a"`, "Idempotency-Key", "k1")
	again := do(t, http.MethodPost, url, `"b"`, "Idempotency-Key", "k1")
	if first.status != 200 || again.body != `["a"]` || first.header.Get(gateway.HeaderMsgID) == "" || e.probe.appends.Load() != 1 {
		t.Fatalf("persisted by description: %d %s, then %s; %d runs", first.status, first.body, again.body, e.probe.appends.Load())
	}
}

// A streaming RPC answers NDJSON by default, Server-Sent Events when asked;
// a failure after chunks ends the stream with an error line; a refusal
// before any chunk is an ordinary error response.
func TestStreams(t *testing.T) {
	e := setupDescribed(t)
	read := func(accept, body string) (int, string, []string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, e.url+"/v1/Counter/s/Countdown", strings.NewReader(body))
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var lines []string
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines = append(lines, sc.Text())
		}
		return resp.StatusCode, resp.Header.Get("Content-Type"), lines
	}
	status, ct, lines := read("", "3")
	if status != 200 || ct != gateway.MediaNDJSON || strings.Join(lines, "|") != `{"chunk":3}|{"chunk":2}|{"chunk":1}|{"end":true}` {
		t.Fatalf("NDJSON: %d %s %q", status, ct, lines)
	}
	status, ct, lines = read(gateway.MediaSSE, "2")
	if status != 200 || ct != gateway.MediaSSE || strings.Join(lines, "|") != "data: 2||data: 1||event: end|data: {}|" {
		t.Fatalf("SSE: %d %s %q", status, ct, lines)
	}
	status, _, lines = read("", `"x"`)
	if status != http.StatusBadRequest || !strings.Contains(strings.Join(lines, ""), `"code":"Malformed"`) {
		t.Fatalf("a malformed stream request: %d %q", status, lines)
	}
	// Asking a unary RPC for a stream is refused by the runner.
	r := do(t, http.MethodPost, e.url+"/v1/Counter/s/Increment", `{"amount":1}`, "Accept", gateway.MediaSSE)
	if r.status != http.StatusBadRequest || r.err.Code != "BadRequest" {
		t.Fatalf("a stream of a unary RPC: %d %s", r.status, r.body)
	}
	// Many chunks, past the stream window, all arrive in order.
	_, _, lines = read("", "500")
	if len(lines) != 501 || lines[0] != `{"chunk":500}` || lines[499] != `{"chunk":1}` {
		t.Fatalf("a long stream: %d lines, first %q", len(lines), lines[0])
	}
}

// GET /openapi.json is a valid OpenAPI 3.1 document, as a real parser and
// validator read it, describing every hosted RPC with its schemas; the
// gateway's real answers match the document's schemas.
func TestOpenAPI(t *testing.T) {
	e := setupDescribed(t)
	resp, err := http.Get(e.url + gateway.OpenAPIPath)
	if err != nil {
		t.Fatal(err)
	}
	var raw json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(raw)
	if err != nil {
		t.Fatalf("load: %v\n%s", err, raw)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("validate: %v\n%s", err, raw)
	}
	if os.Getenv("DUMP") != "" {
		t.Log(string(raw))
	}
	if !doc.IsOpenAPI31OrLater() {
		t.Fatalf("version %s", doc.OpenAPI)
	}
	for _, path := range []string{"/v1/Counter/{id}/Increment", "/v1/Counter/{id}/Countdown", "/v1/Counter/{id}/Withdraw", "/v1/Probe/{id}/Append"} {
		if doc.Paths.Find(path) == nil || doc.Paths.Find(path).Post == nil {
			t.Fatalf("no POST %s in:\n%s", path, raw)
		}
	}
	op := func(path string) *openapi3.Operation { return doc.Paths.Find(path).Post }
	if op("/v1/Probe/{id}/Append").Parameters.GetByInAndName("header", gateway.HeaderIdempotencyKey) == nil {
		t.Fatal("the persisted RPC has no Idempotency-Key parameter")
	}
	if op("/v1/Counter/{id}/Increment").Parameters.GetByInAndName("header", gateway.HeaderIdempotencyKey) != nil {
		t.Fatal("a volatile RPC has an Idempotency-Key parameter")
	}
	if op("/v1/Counter/{id}/Countdown").Responses.Value("200").Value.Content.Get(gateway.MediaSSE) == nil {
		t.Fatal("the stream has no text/event-stream response")
	}

	// Real requests and answers against the document's schemas.
	schemaOf := func(path, status string) *openapi3.Schema {
		t.Helper()
		if status == "" {
			return op(path).RequestBody.Value.Content.Get("application/json").Schema.Value
		}
		return op(path).Responses.Value(status).Value.Content.Get("application/json").Schema.Value
	}
	check := func(s *openapi3.Schema, body string, valid bool) {
		t.Helper()
		var v any
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatal(err)
		}
		if err := s.VisitJSON(v, openapi3.EnableJSONSchema2020()); (err == nil) != valid {
			t.Fatalf("%s against the schema: %v (want valid %v)", body, err, valid)
		}
	}
	check(schemaOf("/v1/Counter/{id}/Increment", ""), `{"amount":5}`, true)
	check(schemaOf("/v1/Counter/{id}/Increment", ""), `{"amount":"five"}`, false)
	check(schemaOf("/v1/Counter/{id}/Increment", ""), `{"amount":5,"extra":1}`, false)
	ok := do(t, http.MethodPost, e.url+"/v1/Counter/w/Increment", `{"amount":5}`)
	check(schemaOf("/v1/Counter/{id}/Increment", "200"), ok.body, true)
	failed := do(t, http.MethodPost, e.url+"/v1/Counter/w/Withdraw", `{"amount":50}`)
	if failed.status != http.StatusUnprocessableEntity {
		t.Fatalf("Withdraw: %d %s", failed.status, failed.body)
	}
	check(schemaOf("/v1/Counter/{id}/Withdraw", "422"), failed.body, true)
	check(schemaOf("/v1/Counter/{id}/Withdraw", "422"), `{"code":"Failure","message":"m","failure":"Other","detail":{}}`, false)
	bad := do(t, http.MethodPost, e.url+"/v1/Counter/w/Nope", `{}`)
	check(schemaOf("/v1/Counter/{id}/Increment", "default"), bad.body, true)
}
