package prom

import (
	"context"
	"errors"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Streams is a collector of the cluster's persisted-message streams, read
// from JetStream at each scrape: the backlog of persisted messages not yet
// handled and the dead letters kept. The figures are the cluster's, the
// same from every process that collects them: scrape them from one (the
// shard manager, say) or aggregate with max, not sum.
type Streams struct {
	js      natsjs.JetStream
	prefix  string
	timeout time.Duration

	backlog *prometheus.Desc
	pending *prometheus.Desc
	dead    *prometheus.Desc
	up      *prometheus.Desc
}

// NewStreams returns the collector for the streams of the cluster with
// subject prefix prefix ("<prefix>_persist" and "<prefix>_deadletters",
// docs/persistence.md). Register it with a prometheus.Registerer.
func NewStreams(js natsjs.JetStream, prefix string) *Streams {
	return &Streams{
		js: js, prefix: prefix, timeout: 2 * time.Second,
		backlog: prometheus.NewDesc(namespace+"_persisted_backlog", "Persisted messages stored and not yet handled (stream "+prefix+"_persist), cluster-wide.", nil, nil),
		pending: prometheus.NewDesc(namespace+"_persisted_in_flight", "Persisted messages handed to runners and not yet acknowledged, cluster-wide.", nil, nil),
		dead:    prometheus.NewDesc(namespace+"_dead_letters_stored", "Dead letters kept in stream "+prefix+"_deadletters, cluster-wide.", nil, nil),
		up:      prometheus.NewDesc(namespace+"_streams_scrape_ok", "1 if the persisted-message streams could be read at this scrape.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (s *Streams) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.backlog
	ch <- s.pending
	ch <- s.dead
	ch <- s.up
}

// Collect implements prometheus.Collector. A stream not created yet (no
// persisted message sent) counts as empty.
func (s *Streams) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	ok := 1.0
	msgs, inFlight, err := s.persist(ctx)
	if err != nil {
		ok = 0
	} else {
		ch <- prometheus.MustNewConstMetric(s.backlog, prometheus.GaugeValue, float64(msgs))
		ch <- prometheus.MustNewConstMetric(s.pending, prometheus.GaugeValue, float64(inFlight))
	}
	if n, err := s.count(ctx, s.prefix+"_deadletters"); err != nil {
		ok = 0
	} else {
		ch <- prometheus.MustNewConstMetric(s.dead, prometheus.GaugeValue, float64(n))
	}
	ch <- prometheus.MustNewConstMetric(s.up, prometheus.GaugeValue, ok)
}

// persist returns the messages of the persist stream and, over its
// consumers, those delivered and not acknowledged.
func (s *Streams) persist(ctx context.Context) (msgs, inFlight uint64, err error) {
	st, err := s.js.Stream(ctx, s.prefix+"_persist")
	if errors.Is(err, natsjs.ErrStreamNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	consumers := st.ListConsumers(ctx)
	for ci := range consumers.Info() {
		inFlight += uint64(ci.NumAckPending)
	}
	if err := consumers.Err(); err != nil {
		return 0, 0, err
	}
	return info.State.Msgs, inFlight, nil
}

func (s *Streams) count(ctx context.Context, name string) (uint64, error) {
	st, err := s.js.Stream(ctx, name)
	if errors.Is(err, natsjs.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}
