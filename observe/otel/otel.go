package otel

import (
	"context"
	"fmt"
	"net/textproto"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh"
)

// ScopeName is the instrumentation scope of the spans.
const ScopeName = "github.com/natsmesh/natsmesh/observe/otel"

// Observer is a mesh.Observer that traces calls: a client span per call
// sent, whose context travels in the request's NATS headers (W3C
// traceparent and tracestate), and on the runner a server span per call
// received with two children, the wait in the mailbox and the handler.
type Observer struct {
	mesh.NopObserver
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	runner string
}

// Option configures New; a bad one fails it with an error wrapping
// mesh.ErrInvalidOption.
type Option func(*Observer) error

// Propagator replaces the default propagator (W3C trace context and
// baggage).
func Propagator(p propagation.TextMapPropagator) Option {
	return func(o *Observer) error {
		if p == nil {
			return fmt.Errorf("%w: Propagator(nil)", mesh.ErrInvalidOption)
		}
		o.prop = p
		return nil
	}
}

// Runner names the runner in the spans it records (attribute
// natsmesh.runner).
func Runner(id string) Option { return func(o *Observer) error { o.runner = id; return nil } }

// New returns an observer recording spans with tp.
func New(tp trace.TracerProvider, opts ...Option) (*Observer, error) {
	if tp == nil {
		return nil, fmt.Errorf("%w: no TracerProvider", mesh.ErrInvalidOption)
	}
	o := &Observer{
		tracer: tp.Tracer(ScopeName),
		prop:   propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
	}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// Attribute keys beside OpenTelemetry's rpc.* conventions.
const (
	AttrEntityID = attribute.Key("natsmesh.entity.id")
	AttrShard    = attribute.Key("natsmesh.shard")
	AttrRunner   = attribute.Key("natsmesh.runner")
	AttrCode     = attribute.Key("natsmesh.error.code")
)

func rpcAttrs(entityType, rpc string) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("rpc.system", "natsmesh"),
		attribute.String("rpc.service", entityType),
		attribute.String("rpc.method", rpc),
		attribute.String("messaging.system", "nats"),
	}
}

// CallSent starts the client span and writes its context into h.
func (o *Observer) CallSent(ctx context.Context, entityType, rpc string, h nats.Header) func(error) {
	ctx, span := o.tracer.Start(ctx, entityType+"/"+rpc,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(rpcAttrs(entityType, rpc)...))
	o.prop.Inject(ctx, headerCarrier(h))
	return func(err error) { end(span, err) }
}

// CallReceived starts the server span, a child of the caller's span when
// the request carries one, and its mailbox span. The handler's context
// carries the server span: spans the handler starts are its children.
func (o *Observer) CallReceived(ctx context.Context, addr actor.Address, rpc string, shard mesh.ShardID, h nats.Header) (context.Context, mesh.CallObservation) {
	ctx = o.prop.Extract(ctx, headerCarrier(h))
	attrs := append(rpcAttrs(addr.Type, rpc), AttrEntityID.String(addr.ID), AttrShard.String(shard.String()))
	if o.runner != "" {
		attrs = append(attrs, AttrRunner.String(o.runner))
	}
	ctx, server := o.tracer.Start(ctx, addr.Type+"/"+rpc,
		trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
	_, mailbox := o.tracer.Start(ctx, "mailbox", trace.WithSpanKind(trace.SpanKindInternal))
	return ctx, &call{o: o, ctx: ctx, server: server, mailbox: mailbox, name: addr.Type + "/" + rpc}
}

type call struct {
	o       *Observer
	ctx     context.Context // the server span's, kept only until Done
	name    string
	server  trace.Span
	mailbox trace.Span
	handler trace.Span
}

func (c *call) Started() {
	c.mailbox.End()
	_, c.handler = c.o.tracer.Start(c.ctx, "handler "+c.name, trace.WithSpanKind(trace.SpanKindInternal))
}

func (c *call) Done(err error) {
	if c.handler != nil {
		end(c.handler, err)
	} else {
		end(c.mailbox, err) // never ran
	}
	end(c.server, err)
	c.ctx = nil
}

func end(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		if code := mesh.CodeOf(err); code != "" {
			span.SetAttributes(AttrCode.String(code))
		}
	}
	span.End()
}

// headerCarrier adapts NATS headers to the propagator. It writes the W3C
// names in lower case, as the specification spells them and as clients in
// other languages look them up (NATS header names are case-sensitive), and
// reads them in any case.
type headerCarrier nats.Header

func (c headerCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	if v := c[textproto.CanonicalMIMEHeaderKey(key)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c headerCarrier) Set(key, value string) { c[key] = []string{value} }

func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
