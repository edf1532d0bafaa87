package otel

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Export says where spans go.
type Export struct {
	// Exporter is "none" (no tracing) or "otlp".
	Exporter string
	// Protocol is the OTLP transport: "grpc" or "http/protobuf".
	Protocol string
	// Endpoint is the full URL spans are sent to (as
	// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); empty leaves it to the exporter,
	// which reads the standard OTEL_EXPORTER_OTLP_* variables and defaults
	// to localhost.
	Endpoint string
	// ServiceName is service.name unless OTEL_SERVICE_NAME or
	// OTEL_RESOURCE_ATTRIBUTES set it.
	ServiceName string
}

// Validate reports a bad Exporter or Protocol.
func (e Export) Validate() error {
	switch e.Exporter {
	case "none", "":
	case "otlp":
		if e.Protocol != "grpc" && e.Protocol != "http/protobuf" {
			return fmt.Errorf("otel: protocol %q: want grpc or http/protobuf", e.Protocol)
		}
	default:
		return fmt.Errorf("otel: exporter %q: want none or otlp", e.Exporter)
	}
	return nil
}

// Setup returns a tracer provider exporting as e says, or nil for
// Exporter "none". The SDK reads the standard variables it knows
// (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, OTEL_BSP_*, and the
// exporter's OTEL_EXPORTER_OTLP_* headers, certificates and timeouts).
// Shut the provider down at exit to flush the last spans.
func Setup(ctx context.Context, e Export) (*sdktrace.TracerProvider, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	if e.Exporter == "none" || e.Exporter == "" {
		return nil, nil
	}
	var (
		exp sdktrace.SpanExporter
		err error
	)
	if e.Protocol == "grpc" {
		var opts []otlptracegrpc.Option
		if e.Endpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(e.Endpoint))
		}
		exp, err = otlptracegrpc.New(ctx, opts...)
	} else {
		var opts []otlptracehttp.Option
		if e.Endpoint != "" {
			opts = append(opts, otlptracehttp.WithEndpointURL(e.Endpoint))
		}
		exp, err = otlptracehttp.New(ctx, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("otel: exporter: %w", err)
	}
	// Later detectors win: the environment overrides the default name.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", e.ServiceName)),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithFromEnv(),
	)
	if err != nil {
		return nil, fmt.Errorf("otel: resource: %w", err)
	}
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res)), nil
}
