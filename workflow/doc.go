// Package workflow runs durable workflows written as ordinary Go code, on
// the mesh's own entities, persisted messages and JetStream: code that
// survives crashes, waits for days holding nothing, and can change while
// its executions are in flight.
//
// # Usage
//
// Define the same workflows on every runner, install the engine, start
// executions from anywhere:
//
//	eng, err := workflow.New(ctx, runner.Client(), workflow.DefaultConfig())
//	transfer, err := workflow.Define(eng, "transfer", func(c *workflow.Context, t Transfer) (Receipt, error) {
//		if _, err := workflow.Activity(c, "debit", func(ctx context.Context, a workflow.ActivityInfo) (int, error) {
//			return mesh.Call(ctx, client, Withdraw, t.From, t.Amount, mesh.MessageID(a.Key))
//		}, workflow.Compensate(func(ctx context.Context, a workflow.ActivityInfo) error {
//			_, err := mesh.Call(ctx, client, Deposit, t.From, t.Amount, mesh.MessageID(a.Key+"/undo"))
//			return err
//		})); err != nil {
//			return Receipt{}, err
//		}
//		ok, err := workflow.Await[bool](c, "approval", workflow.Within(48*time.Hour))
//		...
//	}, workflow.Failure[*Refused]("Refused"))
//	err = eng.Install(runner) // before runner.Start
//
//	receipt, err := transfer.Run(ctx, "tx-42", Transfer{From: "alice", To: "bob", Amount: 30})
//	err = workflow.Signal(ctx, eng, "transfer", "tx-42", "approval", true) // from anywhere
//
// # How it works
//
// An execution is an entity of type Workflow (id "<workflow>/<execution
// id>"), event-sourced (package eventsourced): its journal is its stream
// subject, appended with the expected last sequence, so that a runner that
// lost the execution cannot append to it. Every command (a start, a
// signal, a timer's wake-up, a child's end, an interrupt, a resume) is a
// persisted message to that entity: stored before it is handled, handled
// at least once, on whichever runner owns the execution's shard. Handling
// one replays the workflow function from its start against the journal:
// each step (Activity, Sleep, Await, Child, Now) takes the next sequence
// number and returns what the journal recorded for it; past the journal's
// end the step runs and its result is appended. The run stops at a wait
// (a long sleep, a signal not yet sent, a child running): the function's
// goroutine ends, and once the entity passivates the execution holds no
// memory on the runner. It resumes when the awaited command arrives.
//
// The execution's status and outcome are a record in the KV bucket
// <prefix>_workflows, which Result watches and Poll reads.
//
// # Determinism
//
// The function must take the same steps in the same order on every
// replay: decide only from the input and the steps' results, read the time
// with Now, do everything else (I/O, random numbers, the clock) in
// activities, and start no goroutine that takes steps. A replay that asks
// for something else than the journal holds (another step, or steps in
// another order) stops the execution as Stuck with a *NonDeterminismError
// naming the step: it never runs a path its journal does not match. To
// change code with executions in flight, branch on Version.
//
// # Guarantees
//
//   - A started execution ends Completed, Failed (after its compensations)
//     or Interrupted, or is Stuck for an operator (an activity that keeps
//     failing, a non-determinism, a panic); Resume continues it.
//   - It is driven on at most one runner at a time: its commands are
//     handled in its entity's mailbox, the shard lease fences the runner,
//     and a runner that lost the lease cannot append to its journal.
//   - An activity runs at least once (again after a crash mid-activity),
//     and its result, once journaled, is what every replay gets: with its
//     Key as the message id of a persisted entity call, its effect takes
//     place once.
//   - A timer fires at or after its time, never before, whatever the
//     clocks of the runners and servers involved; a long sleep is a
//     persisted message delivered at its time, so it survives crashes.
//   - Starting an id twice runs one execution; a signal is kept until
//     awaited; a signal's first value counts.
//
// docs/workflows.md has the details and the tests behind each.
package workflow
