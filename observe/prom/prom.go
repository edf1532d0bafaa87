package prom

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

const namespace = "natsmesh"

// CodeOK is the code label of a call that succeeded.
const CodeOK = "OK"

// Other stands for label values past the limit of distinct values.
const Other = "_other"

// DefaultMaxSeries bounds the distinct (entity type, rpc) pairs an
// Observer labels separately.
const DefaultMaxSeries = 1000

// latencyBuckets spans 100 µs (an in-memory actor call) to 10 s (the
// default call timeout).
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Observer is a mesh.Observer that keeps Prometheus metrics. Create it with
// New and set it as mesh.Config.Observer (with observe.Multi to trace too).
type Observer struct {
	mesh.NopObserver

	limit *limiter

	entitiesActive *prometheus.GaugeVec
	activations    *prometheus.CounterVec
	passivations   *prometheus.CounterVec
	mailboxQueued  *prometheus.GaugeVec
	mailboxWait    *prometheus.HistogramVec
	handlerRunning *prometheus.GaugeVec
	handlerTime    *prometheus.HistogramVec
	callsHandled   *prometheus.CounterVec
	callsRefused   *prometheus.CounterVec
	clientCalls    *prometheus.CounterVec
	clientTime     *prometheus.HistogramVec
	shardsOwned    *prometheus.GaugeVec
	shardAcquired  *prometheus.CounterVec
	shardReleased  *prometheus.CounterVec
	renewFailures  *prometheus.CounterVec
	redeliveries   *prometheus.CounterVec
	deadLetters    *prometheus.CounterVec
	singletonUp    *prometheus.GaugeVec
	singletonRuns  *prometheus.CounterVec
}

// Option configures New; a bad one fails it with an error wrapping
// mesh.ErrInvalidOption.
type Option func(*Observer) error

// MaxSeries bounds the distinct (entity type, rpc) label pairs; calls past
// it are counted under entity_type and rpc "_other". Entity types and RPC
// names come from callers (the HTTP gateway takes them from the URL), so an
// unbounded set would let any caller grow the metrics without limit.
func MaxSeries(n int) Option {
	return func(o *Observer) error {
		if n < 1 {
			return fmt.Errorf("%w: MaxSeries(%d): want at least 1", mesh.ErrInvalidOption, n)
		}
		o.limit.max = int64(n)
		return nil
	}
}

// New registers the metrics with reg and returns the observer. It fails if
// reg already holds metrics of the same names.
func New(reg prometheus.Registerer, opts ...Option) (*Observer, error) {
	o := &Observer{limit: &limiter{max: DefaultMaxSeries}}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	histogram := func(name, help string, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: name, Help: help, Buckets: latencyBuckets,
			// Native histograms too, for servers that scrape them: finer
			// quantiles at the same cost.
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, labels)
	}
	o.entitiesActive = gauge("entities_active", "Entities active on this runner.", "entity_type")
	o.activations = counter("entity_activations_total", "Entity activations on this runner.", "entity_type")
	o.passivations = counter("entity_passivations_total", "Entity deactivations on this runner, by reason (idle, shutdown, partition-closed, defect).", "entity_type", "reason")
	o.mailboxQueued = gauge("mailbox_queued", "Calls waiting in entity mailboxes on this runner.", "entity_type")
	o.mailboxWait = histogram("mailbox_wait_seconds", "Time a call waited in its entity's mailbox before its handler began.", "entity_type", "rpc")
	o.handlerRunning = gauge("handlers_running", "Handlers running on this runner.", "entity_type")
	o.handlerTime = histogram("handler_duration_seconds", "Handler run time, from its start to its reply.", "entity_type", "rpc")
	o.callsHandled = counter("calls_handled_total", "Calls that reached an entity on this runner, by outcome (OK or the error code).", "entity_type", "rpc", "code")
	o.callsRefused = counter("calls_refused_total", "Calls this runner answered with an error before they reached an entity.", "entity_type", "rpc", "code")
	o.clientCalls = counter("client_calls_total", "Calls made by this process, by outcome (OK or the error code).", "entity_type", "rpc", "code")
	o.clientTime = histogram("client_call_duration_seconds", "Calls made by this process, from send to reply (persisted sends: until stored).", "entity_type", "rpc")
	o.shardsOwned = gauge("shards_owned", "Shards this runner serves.", "group")
	o.shardAcquired = counter("shard_acquisitions_total", "Shards this runner started serving.", "group")
	o.shardReleased = counter("shard_releases_total", "Shards this runner stopped serving (handed off or fenced).", "group")
	o.renewFailures = counter("lease_renew_failures_total", "Failed renewals of shard leases held by this runner.", "group")
	o.redeliveries = counter("persisted_redeliveries_total", "Persisted messages delivered again on this runner (after a failure, a crash or a move).", "entity_type", "rpc")
	o.deadLetters = counter("dead_letters_total", "Persisted messages this runner moved to the dead-letter stream, by error code.", "entity_type", "rpc", "code")
	o.singletonUp = gauge("singleton_running", "1 while the singleton runs on this runner.", "singleton")
	o.singletonRuns = counter("singleton_starts_total", "Starts of the singleton on this runner.", "singleton")
	for _, c := range []prometheus.Collector{
		o.entitiesActive, o.activations, o.passivations, o.mailboxQueued, o.mailboxWait,
		o.handlerRunning, o.handlerTime, o.callsHandled, o.callsRefused, o.clientCalls, o.clientTime,
		o.shardsOwned, o.shardAcquired, o.shardReleased, o.renewFailures, o.redeliveries,
		o.deadLetters, o.singletonUp, o.singletonRuns,
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// Activated implements actor.Observer.
func (o *Observer) Activated(a actor.Address) {
	t := o.limit.typ(a.Type)
	o.entitiesActive.WithLabelValues(t).Inc()
	o.activations.WithLabelValues(t).Inc()
}

// Deactivated implements actor.Observer.
func (o *Observer) Deactivated(a actor.Address, r actor.StopReason) {
	t := o.limit.typ(a.Type)
	o.entitiesActive.WithLabelValues(t).Dec()
	o.passivations.WithLabelValues(t, r.String()).Inc()
}

// CallSent implements mesh.Observer.
func (o *Observer) CallSent(_ context.Context, entityType, rpc string, _ nats.Header) func(error) {
	start := time.Now()
	return func(err error) {
		code := Code(err)
		t, r := o.limit.pair(entityType, rpc, code)
		o.clientCalls.WithLabelValues(t, r, code).Inc()
		o.clientTime.WithLabelValues(t, r).Observe(time.Since(start).Seconds())
	}
}

// CallReceived implements mesh.Observer.
func (o *Observer) CallReceived(ctx context.Context, a actor.Address, rpc string, _ mesh.ShardID, _ nats.Header) (context.Context, mesh.CallObservation) {
	t, r := o.limit.pair(a.Type, rpc, "")
	o.mailboxQueued.WithLabelValues(t).Inc()
	return ctx, &call{o: o, typ: t, rpc: r, received: time.Now()}
}

// call follows one call on the runner; Started and Done are called by the
// entity's goroutine, Done once, Started at most once and before Done.
type call struct {
	o        *Observer
	typ, rpc string
	received time.Time
	started  time.Time
}

func (c *call) Started() {
	c.started = time.Now()
	c.o.mailboxQueued.WithLabelValues(c.typ).Dec()
	c.o.mailboxWait.WithLabelValues(c.typ, c.rpc).Observe(c.started.Sub(c.received).Seconds())
	c.o.handlerRunning.WithLabelValues(c.typ).Inc()
}

func (c *call) Done(err error) {
	if c.started.IsZero() {
		c.o.mailboxQueued.WithLabelValues(c.typ).Dec() // never ran: left the mailbox unhandled
	} else {
		c.o.handlerRunning.WithLabelValues(c.typ).Dec()
		c.o.handlerTime.WithLabelValues(c.typ, c.rpc).Observe(time.Since(c.started).Seconds())
	}
	c.o.callsHandled.WithLabelValues(c.typ, c.rpc, Code(err)).Inc()
}

// CallRefused implements mesh.Observer.
func (o *Observer) CallRefused(entityType, rpc, code string) {
	t, r := o.limit.pair(entityType, rpc, code)
	o.callsRefused.WithLabelValues(t, r, code).Inc()
}

// ShardAcquired implements mesh.Observer.
func (o *Observer) ShardAcquired(s mesh.ShardID) {
	o.shardsOwned.WithLabelValues(s.Group).Inc()
	o.shardAcquired.WithLabelValues(s.Group).Inc()
}

// ShardReleased implements mesh.Observer.
func (o *Observer) ShardReleased(s mesh.ShardID) {
	o.shardsOwned.WithLabelValues(s.Group).Dec()
	o.shardReleased.WithLabelValues(s.Group).Inc()
}

// LeaseRenewFailed implements mesh.Observer.
func (o *Observer) LeaseRenewFailed(s mesh.ShardID, _ error) {
	o.renewFailures.WithLabelValues(s.Group).Inc()
}

// Redelivered implements mesh.Observer.
func (o *Observer) Redelivered(a actor.Address, rpc string) {
	t, r := o.limit.pair(a.Type, rpc, "")
	o.redeliveries.WithLabelValues(t, r).Inc()
}

// DeadLettered implements mesh.Observer; reason is the wire code.
func (o *Observer) DeadLettered(a actor.Address, rpc, reason string) {
	t, r := o.limit.pair(a.Type, rpc, "")
	o.deadLetters.WithLabelValues(t, r, reason).Inc()
}

// SingletonStarted implements mesh.Observer.
func (o *Observer) SingletonStarted(name string) {
	o.singletonUp.WithLabelValues(name).Set(1)
	o.singletonRuns.WithLabelValues(name).Inc()
}

// SingletonStopped implements mesh.Observer.
func (o *Observer) SingletonStopped(name string) {
	o.singletonUp.WithLabelValues(name).Set(0)
}

// Code returns the code label of an outcome: CodeOK for nil, else its wire
// code (mesh.CodeOf: a declared failure is "Failure", an actor error its
// code), and "Error" for an error that stands for no code.
func Code(err error) string {
	if err == nil {
		return CodeOK
	}
	if code := mesh.CodeOf(err); code != "" {
		return code
	}
	return protocol.CodeError
}

// limiter bounds the distinct (entity type, rpc) pairs, and entity types,
// used as labels.
type limiter struct {
	max   int64
	n     atomic.Int64
	seen  sync.Map // "type\x00rpc" or "type" -> struct{}
	mu    sync.Mutex
	dummy struct{}
}

// invalid codes mean the names came from a caller and name nothing: never
// give them series of their own.
func invalid(code string) bool {
	switch code {
	case protocol.CodeUnknownEntity, protocol.CodeUnknownRPC, protocol.CodeMalformed, protocol.CodeBadRequest, protocol.CodeInvalidID:
		return true
	}
	return false
}

func (l *limiter) pair(typ, rpc, code string) (string, string) {
	if invalid(code) {
		return Other, Other
	}
	if l.admit(typ + "\x00" + rpc) {
		return typ, rpc
	}
	return Other, Other
}

func (l *limiter) typ(t string) string {
	if l.admit(t) {
		return t
	}
	return Other
}

func (l *limiter) admit(key string) bool {
	if _, ok := l.seen.Load(key); ok {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.seen.Load(key); ok {
		return true
	}
	if l.n.Load() >= l.max {
		return false
	}
	l.seen.Store(key, l.dummy)
	l.n.Add(1)
	return true
}
