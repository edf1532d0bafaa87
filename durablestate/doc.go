// Package durablestate runs durable-state entities on JetStream KV: each
// entity's state is one value in a bucket of its entity type, written with
// a revision check, so the state survives passivation, runner crashes and
// moves. The behaviour New returns is an ordinary actor.Behavior: register
// it with a mesh Runner and call it with mesh.Call like any entity.
//
// Use it when the current state is all that matters (a cart, a session, a
// device's settings); use package eventsourced when the history matters
// too, or when other programs react to changes.
//
// # Usage
//
//	var (
//		Cart = actor.NewEntity("Cart")
//		Add  = actor.NewRPC[string, int](Cart, "Add",
//			actor.Failure[*durablestate.ConflictError]("Conflict"))
//	)
//
//	type cart struct{ Items []string `json:"items"` }
//
//	cfg := durablestate.DefaultConfig()
//	cfg.Replicas = 3
//	store, _ := durablestate.Open(nc, cfg)
//	behavior, _ := durablestate.New(ctx, store, Cart, durablestate.Spec[cart]{
//		Handlers: []durablestate.Handler[cart]{
//			durablestate.Handle(Add, func(ctx context.Context, e *durablestate.Entity[cart], item string) (int, error) {
//				s := e.State()
//				s.Items = append(slices.Clone(s.Items), item)
//				if err := e.Save(ctx, s); err != nil {
//					return 0, err
//				}
//				return len(s.Items), nil
//			}),
//		},
//	})
//	runner.Register(behavior)
//
// # Storage
//
// Entity type T lives in the KV bucket <Prefix>_state_T (History 1), entity
// id under the key made of the id with every byte outside [A-Za-z0-9_-]
// written as '=' and two hex digits, so any id has a key of its own. The
// value is the state encoded with the Store's Codec (JSON by default),
// with headers naming the codec (Mesh-Codec) and the state's version
// (Mesh-State-Version). Delete leaves a KV delete marker.
//
// # Write-through and write-behind
//
// By default Save writes before it returns: a reply sent after Save
// describes stored state, and a crash loses nothing acknowledged. With
// Spec.WriteBehind, Save only changes the state in memory and the entity
// writes it later: WriteBehind.Interval after the first unsaved change, at
// once when WriteBehind.MaxChanges changes are unsaved, and when the
// activation ends (passivation, shutdown, its shard moving away). A crash
// of the runner loses the changes not yet written: those of at most the
// last Interval, and fewer than MaxChanges; callers may have had replies
// for them. Write-behind turns many changes into one write; use it for
// state that can be recomputed or whose recent changes may be lost.
//
// # Concurrency
//
// Handlers of one entity run one at a time, even with actor.Concurrency
// above 1, and never at the same time as a write-behind flush. A
// write-behind entity holds a timer only while it has unsaved changes.
//
// # Guarantees
//
// Every write carries the revision this instance last read or wrote as the
// expected last subject sequence. If two instances of one entity ever ran
// at once (two runners that both believed they owned its shard), the server
// stores the first write and refuses the other: the stale instance's
// handler fails with a *ConflictError (a write-behind flush logs the loss
// of its unsaved changes), and the instance reloads the stored state before
// its next command. A stale instance may answer read-only commands from its
// old state until it next writes; the mesh's single activation keeps that
// window closed in normal operation.
//
// A write that gets no answer is retried with the same revision until the
// handler's context ends; a retry refused because the first attempt landed
// is recognised (each write carries an id in Mesh-Write-Id) and succeeds.
// If the context ends first, Save returns ErrUnknownOutcome and the
// instance reloads before its next command.
//
// Activation loads the state from the bucket stream's leader, which has
// applied every acknowledged write (a plain KV Get may be answered by a
// replica that has not yet): an entity activated on another runner after a
// crash continues from the last acknowledged write. An acknowledged write
// survives what the bucket's replication survives: on R1, a restart of the
// server process; on R3, the loss of any one server.
package durablestate
