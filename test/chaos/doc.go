// Package chaos is the chaos and soak suite (build tag chaos; make chaos,
// make chaos-short): a 3-server NATS cluster (R3), two shard managers and
// three to five runners as OS processes (test/chaos/node), a load
// generator calling volatile and persisted RPCs on thousands of accounts,
// and a fault schedule drawn from a seed: runners killed and restarted,
// paused past their leases' expiry, blackholed or cut off from NATS through
// fault-injecting proxies while they keep running, NATS servers restarted
// or killed, shard managers killed, runners added and gracefully removed.
//
// Every runner records each activation, handler run and singleton run with
// its time (one clock: one machine); after the faults the suite heals the
// cluster, lets the persisted backlog drain, reads every account's state
// and checks, with package check: no acknowledged persisted message lost,
// no account active on two runners at once, every counter equal to its
// acknowledged increments, no singleton run twice at once, no state write
// fenced off except by the documented in-flight-handler limit. It prints
// operations, faults, violations and the longest unavailability window.
//
// docs/reliability.md describes the suite, its checks and its results.
package chaos
