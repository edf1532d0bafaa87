// Package actor is natsmesh's in-process entity runtime: virtual actors with
// typed RPCs, run one message at a time, activated on demand and passivated
// when idle. It knows nothing of NATS; the mesh package puts it on the wire.
//
// # Usage
//
// Declare an entity type and its RPCs once, at package level. The payload
// and success types are Go types, checked by the compiler at every handler
// and call site; an RPC without a payload takes Empty:
//
//	var (
//		Counter   = actor.NewEntity("Counter")
//		Increment = actor.NewRPC[Amount, int](Counter, "Increment")
//		GetValue  = actor.NewRPC[actor.Empty, int](Counter, "GetValue")
//	)
//
// Implement it with an init function that runs once per activation. State
// lives in the init's closure; finalizers registered with OnStop run when the
// activation ends:
//
//	live := actor.Implement(Counter, func(self *actor.Instance) ([]actor.Handler, error) {
//		state := 0
//		return []actor.Handler{
//			actor.Handle(Increment, func(ctx context.Context, a Amount) (int, error) {
//				state += a.Amount
//				return state, nil
//			}),
//			actor.Handle(GetValue, func(context.Context, actor.Empty) (int, error) { return state, nil }),
//		}, nil
//	}, actor.MaxIdleTime(5*time.Minute))
//
// Register behaviours with a Runtime (NewTestClient does both) and call
// entities by id with Call, or Stream for a streaming RPC. Failures an RPC
// declares with Failure[E] are returned by handlers as ordinary errors and
// matched by callers with errors.As, here and across the wire.
//
// # Lifecycle
//
// An entity is virtual: the first message to an id activates it (runs init),
// it is passivated after MaxIdleTime without messages (finalizers run) and the
// next message activates it again with fresh state. A new activation of an
// address never starts before the previous one's finalizers have returned.
// KeepAlive holds off passivation while an entity works outside its
// handlers. Shutdown stops taking messages, lets every mailbox drain, and runs
// every finalizer exactly once, within the termination timeout.
//
// A panic in a handler or init is caught and returned to the caller as a
// *Defect carrying the panic message and stack. The runtime and every other
// entity carry on. Unless DisableFatalDefects is set, the panicking activation
// ends (its finalizers run) and the entity is re-created for its next message
// after the DefectRetryPolicy's delay; an init that fails is retried the same
// way.
//
// # Concurrency
//
// An entity's handlers run one at a time, in mailbox order, unless its
// Concurrency option allows more. Init and finalizers never run concurrently
// with the entity's handlers. Handlers of different entities run in
// parallel.
//
// An entity has a goroutine only while its mailbox holds work: an idle entity
// costs a few hundred bytes (no goroutine, no timer), so a runtime can hold
// millions. Passivation is driven by one sweeper goroutine per runtime that
// advances a coarse clock, MaxIdleTime/10 (between 1 ms and 1 s) per tick.
//
// The mailbox is bounded (MailboxCapacity): a message past it fails at once
// with ErrMailboxFull, never blocking its sender.
//
// # Guarantees
//
// Every message accepted by Call, Stream or Deliver is answered exactly once:
// with the handler's result, an error, or the caller's context error. A
// message whose context ended before its handler started is not run. Messages
// from one sender to one entity are handled in the order they were sent. An
// address has at most one activation at a time in a runtime. Nothing is
// persisted: state lives in memory and is lost on passivation unless the
// entity saves it (the mesh adds persisted messages).
package actor
