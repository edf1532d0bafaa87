// Package natstest starts embedded NATS servers for tests: one JetStream
// server, or an in-process JetStream cluster on loopback, plus the few
// helpers tests of replication need (wait for a condition, find and step down
// a stream leader).
//
// Every helper takes a testing.TB, calls t.Helper, and registers its own
// cleanup with t.Cleanup: servers are shut down and connections closed when
// the test ends, so tests never stop them explicitly (they may, to inject a
// failure: Shutdown is idempotent).
//
// Waiting is always "poll a condition until a deadline" (WaitFor); the
// helpers never sleep to synchronize.
package natstest
