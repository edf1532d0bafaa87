// Command runner hosts natsmesh entities: the example Counter
// (examples/counter), its value kept as durable state.
//
// With -dev it is a whole development cluster in one process: an embedded
// nats-server with JetStream in a local folder, a shard manager, the HTTP
// gateway and a runner that gets every shard through the same leases and
// assignment as in production. Without -dev it connects to the NATS servers
// given by -nats (or NATS_URL) and joins the cluster run by cmd/shardmgr;
// with -standalone it serves every shard itself (one runner only).
//
// It is app.Runner hosting the Counter: a runner for your own entity types
// is the same few lines (README, "Your own entities"). docs/configuration.md
// lists its settings.
package main

import (
	"github.com/natsmesh/natsmesh/app"
	"github.com/natsmesh/natsmesh/examples/counter"
)

var runner = app.Runner{
	Name:    "runner",
	Install: []app.Installer{app.DurableState(counter.Counter, counter.Spec(), counter.Options()...)},
}

func main() { runner.Main() }
