// Package eventsourced runs event-sourced entities on JetStream: an entity's
// state is the fold of its events, its handlers decide new events from
// commands, and its events live in a JetStream stream, one subject per
// entity. The behaviour New returns is an ordinary actor.Behavior: register
// it with a mesh Runner and call it with mesh.Call like any entity.
//
// # Usage
//
// Declare the entity and its RPCs with package actor, the events as plain
// Go types, and a Spec that ties them together:
//
//	var (
//		Account = actor.NewEntity("Account")
//		Deposit = actor.NewRPC[int, int](Account, "Deposit",
//			actor.Failure[*eventsourced.ConflictError]("Conflict"))
//		Balance = actor.NewRPC[actor.Empty, int](Account, "Balance")
//	)
//
//	type Deposited struct{ Amount int `json:"amount"` }
//
//	spec := eventsourced.Spec[int]{
//		SnapshotEvery: 100,
//		Events: []eventsourced.EventType[int]{
//			eventsourced.Event("Deposited", func(s int, e Deposited) int { return s + e.Amount }),
//		},
//		Handlers: []eventsourced.Handler[int]{
//			eventsourced.Handle(Deposit, func(ctx context.Context, e *eventsourced.Entity[int], n int) (int, error) {
//				if err := e.Persist(ctx, Deposited{n}); err != nil {
//					return 0, err
//				}
//				return e.State(), nil // after Persist: the reply describes stored state
//			}),
//			eventsourced.Handle(Balance, func(_ context.Context, e *eventsourced.Entity[int], _ actor.Empty) (int, error) {
//				return e.State(), nil
//			}),
//		},
//	}
//	cfg := eventsourced.DefaultConfig()
//	cfg.Replicas = 3
//	store, _ := eventsourced.Open(ctx, nc, cfg)
//	behavior, _ := eventsourced.New(store, Account, spec, actor.MaxIdleTime(10*time.Minute))
//	runner.Register(behavior)
//
// # Storage
//
// Events of every entity type go to the stream <Prefix>_events, entity
// (T, id) on the subject <Prefix>.events.T.<token>, where token is the id
// with every byte outside [A-Za-z0-9_-] written as '=' and two hex digits
// ("a.b c" becomes "a=2Eb=20c"): ids with dots, wildcards, spaces or any
// UTF-8 get a subject of their own. Each event is one message: its payload
// is the event encoded with the Store's Codec (JSON by default), its
// headers name its type (Mesh-Event-Type), schema version
// (Mesh-Event-Version), codec (Mesh-Codec) and the Persist call it came
// from (Mesh-Append-Id). A projection in any language reads them with an
// ordinary consumer.
//
// Snapshots go to the KV bucket <Prefix>_snapshots (or an object store of
// that name, Config.Snapshots), one key per entity, each recording the
// stream sequence it folds up to. A snapshot is an optimisation, never the
// truth: one that is missing, unreadable, of another StateVersion, or
// written for an earlier incarnation of the stream is skipped and the
// state rebuilt from the events.
//
// # Schema evolution
//
// An event's stored name (Event's name) is its identity; the Go type may be
// renamed freely. To change an event's fields, raise its Version and
// register an Upcast from each older version to the next: stored events are
// upcast on every replay, in the codec's encoding, and the stream is never
// rewritten. Alias lets events stored under an old name decode as a
// renamed event. A stored event that no declaration accounts for (unknown
// name, a version newer than the declared one, a missing upcaster) fails
// activation with ErrUnknownEvent: an entity is never rebuilt from a
// history it cannot read in full. Bump Spec.StateVersion when the state
// type changes shape, so that old snapshots are ignored.
//
// # Concurrency
//
// Handlers of one entity run one at a time, even with actor.Concurrency
// above 1: each sees the state its predecessor left. The fold steps run on
// the entity's goroutine, in stream order. Snapshots are encoded on the
// entity's goroutine and written in the background, at most one at a time
// per entity; an activation's end waits for its snapshot write.
//
// # Guarantees
//
// Persist returns only after the server stored the events (on R3 streams,
// after a majority of servers did), so a handler's reply always describes
// durable state. The events of one Persist call are stored atomically (one
// message, or an atomic batch of up to MaxEventsPerAppend) and
// consecutively.
//
// Every append carries the sequence of the entity's last event as the
// expected last subject sequence (Nats-Expected-Last-Subject-Sequence). If
// two instances of one entity ever ran at once (two runners that both
// believed they owned its shard), the server stores the first append and
// refuses the other's: the stale instance's handler fails with a
// *ConflictError, nothing of its command is stored, and it rebuilds its
// state from the stream before its next command. The stream therefore
// never holds events decided on a state that missed earlier events. A
// stale instance may still answer a read-only command from its old state
// until it next tries to append; the mesh's single activation (leases and
// fencing) is what keeps that window closed in normal operation.
//
// An append that gets no answer is retried with the same condition until
// the handler's context ends; if the retry is refused because the first
// attempt landed, the append id on the stored event tells, and Persist
// succeeds. If the context ends first, Persist returns ErrUnknownOutcome
// and the instance rebuilds before its next command, from whatever the
// stream holds.
//
// On activation the state is the latest usable snapshot plus every event
// after it, up to the last sequence the stream's leader reports: an
// activation on another runner after a crash continues from every
// acknowledged event. An acknowledged event survives what the stream's
// replication survives: on R1, a restart of the server process (an
// operating-system crash can lose what the server had not yet synced to
// disk, every 2 minutes by default, unless it runs with sync_always); on
// R3, the loss of any one server.
package eventsourced
