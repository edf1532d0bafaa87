// Package reminder gives entities durable reminders: named wake-ups, once
// or repeating (a period or a cron expression), that survive runner crashes
// and full cluster restarts, activate a passivated entity, and can be
// cancelled. Idle reminders cost no goroutine and no timer on any runner:
// each pending tick is a JetStream scheduled message.
//
// # Usage
//
// Declare the entity's reminder RPC, open a Service per process, and handle
// the RPC with Service.Handle among the entity's handlers:
//
//	var (
//		Account = actor.NewEntity("Account")
//		Remind  = reminder.NewRPC(Account) // persisted RPC "Remind"
//	)
//
//	rem, err := reminder.New(ctx, nc, cfg)
//	live := actor.Implement(Account, func(self *actor.Instance) ([]actor.Handler, error) {
//		return []actor.Handler{
//			rem.Handle(Remind, self, func(ctx context.Context, t reminder.Tick) error {
//				// t.Name, t.Due
//				return nil
//			}),
//		}, nil
//	})
//
//	err = rem.Register(ctx, Remind, "alice", "interest", firstDue, reminder.Every(24*time.Hour))
//	err = rem.Register(ctx, Remind, "alice", "report", time.Time{}, reminder.Cron("0 9 * * MON", loc))
//	err = rem.Cancel(ctx, Remind, "alice", "interest")
//
// Register and Cancel work from anywhere, the entity's own handlers
// included: they are persisted messages to the entity, applied in its
// message order.
//
// # How it works
//
// A reminder is a record in the KV bucket <prefix>_reminders (key: entity
// type, id and name) holding its schedule, a generation (new at each
// registration that changes it) and the armed tick's time. The armed tick is
// a persisted message to the entity's reminder RPC sent with mesh.DeliverAt,
// so it waits in JetStream as a scheduled message and is handled by whichever
// runner owns the entity when it falls due. Handling a tick reads the record
// from the bucket's leader: a tick of another generation, or of a cancelled
// reminder, is dropped; for a repeating reminder the next tick is stored
// first, the record advanced (compare-and-set), and then the handler runs;
// a one-shot reminder's record is deleted after its handler ran. Register
// and Cancel change the record from the entity's mailbox, so they never race
// a tick.
//
// # Concurrency
//
// The handler runs in the entity's mailbox like any handler, never
// concurrently with registrations, cancellations or other ticks of the same
// entity. A Service is safe for concurrent use.
//
// # Guarantees
//
//   - Each tick is delivered at least once, at or after its due time. It is
//     delivered twice only when a runner dies (or is fenced) after the
//     record advanced and before the tick's reply was stored: the next owner
//     runs it again.
//   - A repeating reminder never forks: exactly one successor is armed per
//     generation, whatever crashes and redeliveries happen.
//   - Ticks keep their schedule's phase. Ticks that fell due while nobody
//     could run them (every runner down, say) are not replayed one by one:
//     one late tick stands for them and the next is the schedule's first time
//     after now. CatchUp delivers each of them in order instead.
//   - Registering a name again with the same due time and options changes
//     nothing (it re-arms the pending tick, which restores a tick whose
//     message was lost and is otherwise deduplicated); with others it
//     replaces the reminder. To register idempotently at every start, give
//     a fixed due time (or a cron expression and no due time).
//   - After Cancel returns, no tick due after that moment runs the handler;
//     a tick due before it may still be delivered.
//   - A handler's error is the tick's reply and counts as delivered; a panic
//     retries the tick as any persisted message (Config.PersistMaxAttempts,
//     then a dead letter).
//   - Schedules fire on whole seconds; the runner holds each tick until its
//     exact due time. MinPeriod is one second.
package reminder
