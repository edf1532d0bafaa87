// Package app turns entity behaviours into deployable binaries: a runner
// that hosts your entity types, a shard manager and an HTTP gateway, each
// with everything production needs, from one line of main.
//
//	func main() {
//		app.Runner{
//			Name:      "orders",
//			Behaviors: []*actor.Behavior{orders.Behavior()},
//		}.Main()
//	}
//
// The binary takes flags, environment variables and a YAML file with the
// same names as natsmesh's own binaries (docs/configuration.md lists them
// all): -print-config shows the resolved configuration with each value's
// source, -version the version, and a bad setting stops it at start with
// one message naming the setting and where it came from. It serves
// /healthz, /readyz (with the reason it is not ready) and Prometheus
// /metrics on -http, exports OpenTelemetry traces when asked, logs with
// slog (-log-format text or json), connects with the NATS credentials or
// TLS it is given (waiting for NATS up to -connect-wait), and on SIGTERM
// stops being ready, hands its shards off and exits.
//
// With -dev the same binary is a whole development cluster in one process:
// an embedded nats-server with JetStream (its data in -data, locked against
// a second -dev), a shard manager, the HTTP gateway and the runner. It
// prints the curl, meshctl and nats commands that call the binary's own
// entity types.
//
// Entity types whose behaviour needs the runner (durable state, event
// sourcing, sagas, reminders, cron jobs: their stores open on the runner's
// NATS connection) are added with Install: see DurableState, EventSourced
// and InstallFunc.
//
// cmd/runner, cmd/shardmgr and cmd/gateway are this package's Runner,
// ShardManager and Gateway with natsmesh's example Counter.
package app
