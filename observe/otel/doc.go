// Package otel traces natsmesh calls with OpenTelemetry: an Observer for
// mesh.Config.Observer that starts a client span per call and carries its
// context to the runner in the request's NATS headers (W3C traceparent and
// tracestate, names in lower case), where a server span and its two
// children, "mailbox" (the wait in the entity's mailbox) and "handler",
// continue the trace. Setup builds a tracer provider exporting by OTLP
// (gRPC or HTTP) or nothing; HTTPHandler continues a trace from an HTTP
// request (the gateway).
//
// # Usage
//
//	tp, err := otel.Setup(ctx, otel.Export{Exporter: "otlp", Protocol: "grpc", ServiceName: "runner"})
//	defer tp.Shutdown(ctx)
//	cfg.Observer = otel.New(tp, otel.Runner(cfg.RunnerID))
//
// The context the runner gives a handler carries the server span, so spans
// the handler starts are its children (siblings of "handler": the handler
// span begins after the context is made).
//
// # Concurrency
//
// An Observer is safe for concurrent use. Spans are exported in batches by
// the provider Setup returns, off the call path.
//
// # Guarantees
//
// Tracing never fails a call: a missing or malformed traceparent starts a
// new trace. Calls a runner refuses before they reach an entity (unknown
// RPC, malformed request) get no span; they are counted by package prom.
// Sampling follows the provider (OTEL_TRACES_SAMPLER; by default every
// trace whose parent is sampled, and every new one).
package otel
