// Package prom keeps Prometheus metrics of a natsmesh process: an Observer
// for mesh.Config.Observer (entities, mailboxes, calls, shards, leases,
// persisted messages, singletons) and Streams, a collector of the
// cluster's persisted-message backlog and dead letters read from
// JetStream. docs/operations.md lists every metric.
//
// # Usage
//
//	reg := prometheus.NewRegistry()
//	obs, err := prom.New(reg)
//	cfg.Observer = obs                      // or observe.Multi(obs, tracing)
//	reg.MustRegister(prom.NewStreams(js, cfg.Prefix))
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// # Concurrency
//
// An Observer is safe for concurrent use; its methods never block on I/O.
// Streams reads JetStream during a scrape, with a 2 s limit.
//
// # Guarantees
//
// Labels are bounded: entity types and RPC names come from callers (the
// HTTP gateway takes them from URLs), so past MaxSeries distinct pairs, and
// for calls refused as unknown or malformed, they are counted under
// "_other". The code label is "OK" or a wire code (docs/protocol.md); a
// handler's declared failure counts as "Failure". Mailbox depth is the number
// of calls received and not yet started, per entity type: the runtime
// does not expose per-entity queue lengths.
package prom
