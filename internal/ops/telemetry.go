package ops

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/observe"
	"github.com/natsmesh/natsmesh/observe/otel"
	"github.com/natsmesh/natsmesh/observe/prom"
)

// Telemetry is what a binary reports: Prometheus metrics on its own
// registry (process, Go runtime, natsmesh_build_info and the mesh
// observer's) and, when configured, OpenTelemetry traces.
type Telemetry struct {
	Registry *prometheus.Registry
	Metrics  *prom.Observer
	Tracer   *sdktrace.TracerProvider // nil without an exporter
	tracing  *otel.Observer
}

// NewTelemetry sets up the metrics and the tracer of the binary named
// binary (service.name "natsmesh-<binary>") whose instance is id (a runner
// or manager id).
//
// version labels natsmesh_build_info: the binary's -version
// (cli.Version).
func NewTelemetry(ctx context.Context, binary, id, version string, tr cli.Tracing) (*Telemetry, error) {
	t := &Telemetry{Registry: prometheus.NewRegistry()}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "natsmesh_build_info",
		Help:        "1, labelled with the binary, its instance id and its version.",
		ConstLabels: prometheus.Labels{"binary": binary, "id": id, "version": version},
	})
	info.Set(1)
	t.Registry.MustRegister(info, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var err error
	if t.Metrics, err = prom.New(t.Registry); err != nil {
		return nil, err
	}
	t.Tracer, err = otel.Setup(ctx, otel.Export{Exporter: tr.Exporter, Protocol: tr.Protocol, Endpoint: tr.Endpoint, ServiceName: "natsmesh-" + binary})
	if err != nil {
		return nil, err
	}
	if t.Tracer != nil {
		var opts []otel.Option
		if binary == "runner" {
			opts = append(opts, otel.Runner(id))
		}
		if t.tracing, err = otel.New(t.Tracer, opts...); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// Observer returns the mesh observer to give with mesh.WithObserver.
func (t *Telemetry) Observer() mesh.Observer {
	if t.tracing == nil {
		return t.Metrics
	}
	return observe.Multi(t.Metrics, t.tracing)
}

// Serve adds /metrics to srv (a nil srv is fine).
func (t *Telemetry) Serve(srv *Server, log *slog.Logger) {
	srv.Handle("GET /metrics", t.Handler(log))
}

// Handler serves the registry in the Prometheus text or OpenMetrics format.
func (t *Telemetry) Handler(log *slog.Logger) http.Handler {
	return promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		EnableOpenMetrics: true,
	})
}

// Trace wraps h to continue the traces of HTTP requests, or returns h
// without a tracer.
func (t *Telemetry) Trace(h http.Handler) http.Handler {
	if t.Tracer == nil {
		return h
	}
	return otel.HTTPHandler(t.Tracer, h)
}

// Shutdown flushes the spans not yet exported.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t.Tracer == nil {
		return nil
	}
	return t.Tracer.Shutdown(ctx)
}
