// Package ops serves what an orchestrator asks of every natsmesh binary:
// /healthz (the process is alive), /readyz (it does its job: connected to
// NATS and, for a runner, holding every shard assigned to it) and, through
// Handle, /metrics.
//
// # Usage
//
//	srv, err := ops.Listen(":8080", log)
//	srv.Handle("GET /metrics", promHandler)
//	srv.AddCheck(ops.NATS(nc), ops.Ready("runner", runner))
//	srv.Started()            // /readyz fails until then
//	...
//	srv.Drain()              // on SIGTERM: /readyz fails from now on
//	srv.Shutdown(ctx)
//
// /readyz answers 200 or 503 with one line per check, "[+]nats ok" or
// "[-]runner: not ready", so a failing probe says why in `kubectl describe`.
//
// # Concurrency
//
// Checks run on each /readyz request, concurrently with everything else:
// they must be cheap and safe for concurrent use (mesh's Ready methods are).
// AddCheck, Handle and Drain may be called at any time.
//
// # Guarantees
//
// /healthz depends on nothing but the HTTP server, so a liveness probe never
// restarts a process for a NATS outage that a restart cannot fix. /readyz is
// never cached.
package ops
