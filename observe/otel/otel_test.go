package otel_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
	meshotel "github.com/natsmesh/natsmesh/observe/otel"
)

// tracer records spans in memory, as a process with its own exporter.
func tracer(t *testing.T) (*sdktrace.TracerProvider, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, exp
}

func byName(spans tracetest.SpanStubs, name string) (tracetest.SpanStub, bool) {
	for _, s := range spans {
		if s.Name == name {
			return s, true
		}
	}
	return tracetest.SpanStub{}, false
}

// echo has a persisted RPC.
var (
	echo    = actor.NewEntity("Echo")
	echoRun = actor.NewRPC[string, string](echo, "Run", actor.Persisted())
)

// startRunner starts a standalone runner tracing into its own exporter.
func startRunner(t *testing.T, url string) *tracetest.InMemoryExporter {
	tp, exp := tracer(t)
	cfg := meshtest.Standalone()
	cfg.RunnerID = "r1"
	obs, err := meshotel.New(tp, meshotel.Runner("r1"))
	if err != nil {
		t.Fatal(err)
	}
	meshtest.StartRunner(t, url, cfg, func(_ *nats.Conn, r *mesh.Runner) {
		if err := r.Register(meshtest.MemoryCounter()); err != nil {
			t.Fatal(err)
		}
		if err := r.Register(actor.Implement(echo, func(*actor.Instance) ([]actor.Handler, error) {
			return []actor.Handler{actor.Handle(echoRun, func(_ context.Context, s string) (string, error) { return s, nil })}, nil
		})); err != nil {
			t.Fatal(err)
		}
	}, mesh.WithObserver(obs))
	return exp
}

// clientAndRunner starts a server, a traced runner and a traced client,
// each process with its own exporter.
func clientAndRunner(t *testing.T) (runnerSpans *tracetest.InMemoryExporter, tp *sdktrace.TracerProvider, clientSpans *tracetest.InMemoryExporter, c *mesh.Client) {
	s := natstest.StartServer(t)
	runnerSpans = startRunner(t, s.ClientURL())
	tp, clientSpans = tracer(t)
	cfg := meshtest.Standalone()
	obs, err := meshotel.New(tp)
	if err != nil {
		t.Fatal(err)
	}
	c, err = mesh.NewClient(natstest.Connect(t, s), cfg.ClientConfig, mesh.WithObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	return runnerSpans, tp, clientSpans, c
}

// A call made by a client in one process and handled by a runner in
// another, over a real NATS server, is one trace: client span -> runner
// call span -> mailbox and handler spans.
func TestTraceAcrossNATS(t *testing.T) {
	runnerSpans, tp, clientSpans, c := clientAndRunner(t)
	ctx, root := tp.Tracer("test").Start(context.Background(), "request")
	if _, err := mesh.Call(ctx, c, counter.Increment, "a", counter.Amount{Amount: 1}); err != nil {
		t.Fatal(err)
	}
	root.End()

	natstest.WaitFor(t, 10*time.Second, func() bool { return len(runnerSpans.GetSpans()) >= 3 }, "the runner's three spans")
	client, ok := byName(clientSpans.GetSpans(), "Counter/Increment")
	if !ok || client.SpanKind != trace.SpanKindClient || client.Parent.SpanID() != root.SpanContext().SpanID() {
		t.Fatalf("client span = %+v, want a client span under the caller's", client)
	}
	rs := runnerSpans.GetSpans()
	server, _ := byName(rs, "Counter/Increment")
	mailbox, _ := byName(rs, "mailbox")
	handler, _ := byName(rs, "handler Counter/Increment")
	traceID := root.SpanContext().TraceID()
	for _, tt := range []struct {
		name   string
		span   tracetest.SpanStub
		parent trace.SpanID
	}{
		{"runner call", server, client.SpanContext.SpanID()},
		{"mailbox", mailbox, server.SpanContext.SpanID()},
		{"handler", handler, server.SpanContext.SpanID()},
	} {
		if tt.span.SpanContext.TraceID() != traceID || tt.span.Parent.SpanID() != tt.parent {
			t.Errorf("%s span: trace %s parent %s, want trace %s parent %s", tt.name,
				tt.span.SpanContext.TraceID(), tt.span.Parent.SpanID(), traceID, tt.parent)
		}
	}
	if server.SpanKind != trace.SpanKindServer || !server.Parent.IsRemote() {
		t.Errorf("runner call span: kind %v, remote parent %v", server.SpanKind, server.Parent.IsRemote())
	}
	if handler.StartTime.Before(mailbox.EndTime) {
		t.Errorf("handler started %v before the mailbox wait ended %v", handler.StartTime, mailbox.EndTime)
	}
	attrs := map[string]string{}
	for _, a := range server.Attributes {
		attrs[string(a.Key)] = a.Value.String()
	}
	if attrs["natsmesh.entity.id"] != "a" || attrs["natsmesh.runner"] != "r1" || attrs["rpc.method"] != "Increment" || attrs["natsmesh.shard"] == "" {
		t.Errorf("runner call span attributes = %v", attrs)
	}
}

// A persisted message carries its trace through the stream.
func TestTracePersisted(t *testing.T) {
	runnerSpans, _, clientSpans, c := clientAndRunner(t)
	if got, err := mesh.Call(context.Background(), c, echoRun, "e", "hi"); err != nil || got != "hi" {
		t.Fatalf("Run = %q, %v", got, err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool { _, ok := byName(runnerSpans.GetSpans(), "handler Echo/Run"); return ok }, "the handler span")
	client, ok := byName(clientSpans.GetSpans(), "Echo/Run")
	server, _ := byName(runnerSpans.GetSpans(), "Echo/Run")
	if !ok || server.SpanContext.TraceID() != client.SpanContext.TraceID() || server.Parent.SpanID() != client.SpanContext.SpanID() {
		t.Fatalf("persisted runner call span under %s/%s, want the client span %s/%s", server.SpanContext.TraceID(), server.Parent.SpanID(),
			client.SpanContext.TraceID(), client.SpanContext.SpanID())
	}
}

// A client in any language joins the trace with a lower-case W3C
// traceparent header; a failed call marks the spans as errors.
func TestTraceparentFromAnyClient(t *testing.T) {
	s := natstest.StartServer(t)
	runnerSpans := startRunner(t, s.ClientURL())
	nc := natstest.Connect(t, s)
	m := nats.NewMsg("mesh.v1.entity.Counter.Withdraw")
	m.Header.Set(protocol.HeaderID, "b")
	m.Header.Set(protocol.HeaderCodec, protocol.CodecJSON)
	m.Header["traceparent"] = []string{"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	m.Data = []byte(`{"amount":5}`)
	reply, err := nc.RequestMsg(m, 10*time.Second)
	if err != nil || reply.Header.Get(protocol.HeaderError) != protocol.CodeFailure {
		t.Fatalf("Withdraw = %v %v, want an error reply", reply, err)
	}
	natstest.WaitFor(t, 10*time.Second, func() bool { return len(runnerSpans.GetSpans()) >= 3 }, "the runner's spans")
	server, _ := byName(runnerSpans.GetSpans(), "Counter/Withdraw")
	if got := server.SpanContext.TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" || server.Parent.SpanID().String() != "00f067aa0ba902b7" {
		t.Fatalf("runner call span in trace %s under %s, want the caller's", got, server.Parent.SpanID())
	}
	if server.Status.Code.String() != "Error" {
		t.Fatalf("failed call's span status = %v, want Error", server.Status)
	}
}

// Export "none" sets nothing up; bad settings are refused.
func TestSetup(t *testing.T) {
	if tp, err := meshotel.Setup(context.Background(), meshotel.Export{Exporter: "none"}); tp != nil || err != nil {
		t.Fatalf("Setup(none) = %v, %v", tp, err)
	}
	for _, e := range []meshotel.Export{{Exporter: "zipkin"}, {Exporter: "otlp", Protocol: "udp"}} {
		if _, err := meshotel.Setup(context.Background(), e); err == nil {
			t.Fatalf("Setup(%+v) accepted", e)
		}
	}
	// An OTLP exporter needs no collector to start: it connects lazily.
	tp, err := meshotel.Setup(context.Background(), meshotel.Export{Exporter: "otlp", Protocol: "http/protobuf", Endpoint: "http://127.0.0.1:1/v1/traces", ServiceName: "x"})
	if err != nil || tp == nil {
		t.Fatalf("Setup(otlp) = %v, %v", tp, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = tp.Shutdown(ctx)
}
