package prom_test

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
	"github.com/natsmesh/natsmesh/observe/prom"
)

// Job has a persisted RPC whose handler panics for "boom", so that it is
// retried and dead-lettered.
var (
	job = actor.NewEntity("Job")
	run = actor.NewRPC[string, string](job, "Run", actor.Persisted())
)

func jobBehavior() *actor.Behavior {
	return actor.Implement(job, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.Handle(run, func(_ context.Context, s string) (string, error) {
			if s == "boom" {
				panic("boom")
			}
			return s, nil
		})}, nil
	})
}

// scrape reads a /metrics endpoint into "name{labels}" -> value, labels in
// the exposition's (sorted) order.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func serve(t *testing.T, reg *prometheus.Registry) string {
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// Real calls through a real NATS server show up in the runner's and the
// client's /metrics.
func TestMetricsAfterCalls(t *testing.T) {
	s := natstest.StartServer(t)
	runnerReg := prometheus.NewRegistry()
	obs, err := prom.New(runnerReg)
	if err != nil {
		t.Fatal(err)
	}
	nc := natstest.Connect(t, s)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	runnerReg.MustRegister(prom.NewStreams(js, "mesh"))
	cfg := meshtest.Standalone()
	cfg.PersistMaxAttempts = 2
	singletonUp := make(chan struct{})
	r := meshtest.StartRunner(t, s.ClientURL(), cfg, func(_ *nats.Conn, r *mesh.Runner) {
		for _, b := range []*actor.Behavior{meshtest.MemoryCounter(), jobBehavior()} {
			if err := r.Register(b); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.RegisterSingleton("reporter", func(ctx context.Context) error {
			close(singletonUp)
			<-ctx.Done()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}, mesh.WithObserver(obs))
	runnerURL := serve(t, runnerReg)

	clientReg := prometheus.NewRegistry()
	cobs, err := prom.New(clientReg)
	if err != nil {
		t.Fatal(err)
	}
	ccfg := meshtest.Standalone()
	c, err := mesh.NewClient(nc, ccfg.ClientConfig, mesh.WithObserver(cobs))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 2 {
		if _, err := mesh.Call(ctx, c, counter.Increment, "a", counter.Amount{Amount: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := mesh.Call(ctx, c, counter.Withdraw, "b", counter.Amount{Amount: 1}); err == nil {
		t.Fatal("Withdraw from 0 succeeded")
	}
	if got, err := mesh.Call(ctx, c, run, "j1", "ok"); err != nil || got != "ok" {
		t.Fatalf("Run = %q, %v", got, err)
	}
	var defect *actor.Defect
	if _, err := mesh.Call(ctx, c, run, "j2", "boom"); !errors.As(err, &defect) && !errors.Is(err, actor.ErrDefect) {
		t.Fatalf("Run(boom) = %v, want a defect", err)
	}
	<-singletonUp

	var m map[string]float64
	natstest.WaitFor(t, 10*time.Second, func() bool {
		m = scrape(t, runnerURL)
		return m[`natsmesh_dead_letters_total{code="Defect",entity_type="Job",rpc="Run"}`] == 1 &&
			m[`natsmesh_dead_letters_stored`] == 1 && m[`natsmesh_persisted_backlog`] == 0
	}, "the dead letter counted, stored and acknowledged")
	want := map[string]float64{
		`natsmesh_calls_handled_total{code="OK",entity_type="Counter",rpc="Increment"}`:     2,
		`natsmesh_calls_handled_total{code="Failure",entity_type="Counter",rpc="Withdraw"}`: 1,
		`natsmesh_calls_handled_total{code="OK",entity_type="Job",rpc="Run"}`:               1,
		`natsmesh_calls_handled_total{code="Defect",entity_type="Job",rpc="Run"}`:           2,
		`natsmesh_handler_duration_seconds_count{entity_type="Counter",rpc="Increment"}`:    2,
		`natsmesh_mailbox_wait_seconds_count{entity_type="Counter",rpc="Increment"}`:        2,
		`natsmesh_mailbox_queued{entity_type="Counter"}`:                                    0,
		`natsmesh_handlers_running{entity_type="Counter"}`:                                  0,
		`natsmesh_entities_active{entity_type="Counter"}`:                                   2,
		`natsmesh_entity_activations_total{entity_type="Counter"}`:                          2,
		`natsmesh_shards_owned{group="default"}`:                                            8,
		`natsmesh_shard_acquisitions_total{group="default"}`:                                8,
		`natsmesh_persisted_redeliveries_total{entity_type="Job",rpc="Run"}`:                1,
		`natsmesh_singleton_running{singleton="reporter"}`:                                  1,
		`natsmesh_singleton_starts_total{singleton="reporter"}`:                             1,
		`natsmesh_dead_letters_stored`:                                                      1,
		`natsmesh_persisted_backlog`:                                                        0,
		`natsmesh_streams_scrape_ok`:                                                        1,
		`natsmesh_entity_passivations_total{entity_type="Job",reason="defect"}`:             2,
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("runner %s = %v (present %v), want %v", k, got, ok, v)
		}
	}

	cm := scrape(t, serve(t, clientReg))
	for k, v := range map[string]float64{
		`natsmesh_client_calls_total{code="OK",entity_type="Counter",rpc="Increment"}`: 2,
		// A declared failure is "Error": mesh does not tell an observer
		// which errors an RPC declares (see Code).
		`natsmesh_client_calls_total{code="Failure",entity_type="Counter",rpc="Withdraw"}`:   1,
		`natsmesh_client_calls_total{code="Defect",entity_type="Job",rpc="Run"}`:             1,
		`natsmesh_client_call_duration_seconds_count{entity_type="Counter",rpc="Increment"}`: 2,
	} {
		if got := cm[k]; got != v {
			t.Errorf("client %s = %v, want %v", k, got, v)
		}
	}

	// (shards_owned is not checked after Stop: a runner's shutdown does not
	// report the shards it still held as released; NEEDS-ops.md.)
	r.Stop()
	m = scrape(t, runnerURL)
	if m[`natsmesh_entities_active{entity_type="Counter"}`] != 0 || m[`natsmesh_singleton_running{singleton="reporter"}`] != 0 {
		t.Errorf("after Stop: entities %v, singleton %v, want 0",
			m[`natsmesh_entities_active{entity_type="Counter"}`], m[`natsmesh_singleton_running{singleton="reporter"}`])
	}
}

// Names that come from callers get no series of their own past the limit,
// nor when the runner refused them as unknown.
func TestSeriesBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	obs, err := prom.New(reg, prom.MaxSeries(2))
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"A", "B", "C", "D"} {
		obs.CallSent(context.Background(), typ, "X", nil)(nil)
	}
	obs.CallRefused("Nope", "Nada", protocol.CodeUnknownEntity)
	m := scrape(t, serve(t, reg))
	for k, v := range map[string]float64{
		`natsmesh_client_calls_total{code="OK",entity_type="A",rpc="X"}`:                       1,
		`natsmesh_client_calls_total{code="OK",entity_type="B",rpc="X"}`:                       1,
		`natsmesh_client_calls_total{code="OK",entity_type="_other",rpc="_other"}`:             2,
		`natsmesh_calls_refused_total{code="UnknownEntity",entity_type="_other",rpc="_other"}`: 1,
	} {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if _, err := prom.New(reg); err == nil {
		t.Error("registering the metrics twice succeeded")
	}
}

func TestCode(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{nil, "OK"},
		{actor.ErrMailboxFull, "MailboxFull"},
		{&mesh.Error{Code: "NotServing"}, "NotServing"},
		{context.DeadlineExceeded, "Timeout"},
		{errors.New("x"), "Error"},
	} {
		if got := prom.Code(tt.err); got != tt.want {
			t.Errorf("Code(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}
