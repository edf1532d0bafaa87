// Package saga runs multi-entity operations as sagas: named steps, each
// with an optional compensation, whose progress is stored so that a saga
// interrupted by a crash resumes on another runner and either completes or
// compensates every step it did.
//
// # Usage
//
// Define the same sagas on every runner and install them; start one from
// anywhere:
//
//	ss, err := saga.New(ctx, nc, cfg, saga.Options{})
//	transfer, err := saga.Define(ss, "transfer",
//		saga.Step[Transfer]{
//			Name: "debit",
//			Do: func(ctx context.Context, x saga.Exec[Transfer]) error {
//				_, err := mesh.Call(ctx, client, Withdraw, x.Input.From, x.Input.Amount, mesh.MessageID(x.Key()))
//				if errors.As(err, new(*InsufficientFunds)) {
//					return saga.Abort(err) // refused for good: compensate
//				}
//				return err // anything else: outcome unknown, try again
//			},
//			Compensate: func(ctx context.Context, x saga.Exec[Transfer]) error {
//				_, err := mesh.Call(ctx, client, Deposit, x.Input.From, x.Input.Amount, mesh.MessageID(x.Key()))
//				return err
//			},
//		},
//		saga.Step[Transfer]{Name: "credit", Do: ...},
//	)
//	err = ss.Install(runner) // before runner.Start
//
//	outcome, err := transfer.Run(ctx, "tx-42", Transfer{From: "alice", To: "bob", Amount: 30})
//
// # How it works
//
// A saga is an entity of type Saga (id: definition/saga id) driven by one
// persisted message, Start's. Its progress — status, steps done, next step
// to compensate — is a record in the KV bucket <prefix>_sagas, advanced by
// compare-and-set after each step. If the runner dies mid-saga, the start
// message was not acknowledged, so the saga's next owner handles it again
// and carries on from the record. A step in progress at the crash runs again
// with the same Exec.Key: sent as the mesh.MessageID of a persisted call, it
// is handled once and answered from the stored reply on the retry.
//
// # Concurrency
//
// One saga's steps run one at a time, in order, in its entity's mailbox;
// different sagas run in parallel. Steps of concurrent sagas may interleave
// on the entities they touch: sagas give no isolation, only atomicity by
// compensation.
//
// # Guarantees
//
//   - A started saga ends Completed (every step done) or Compensated (the
//     steps before the one that aborted compensated, latest first), also
//     across runner crashes — or Stuck, for an operator, when a step or a
//     compensation keeps failing without Abort for MaxAttempts tries (an
//     outcome that is unknown is never guessed at); Resume continues it.
//   - Each step's Do and Compensate are run at least once and, when they
//     use Exec.Key as a persisted message id, take effect once.
//   - A step that aborted had no effect and is not compensated; a step
//     without Compensate is skipped when compensating.
//   - Start with the same id twice starts one saga; Wait returns its
//     outcome, also from another process or after a restart.
//   - Records stay in the bucket after a saga ends (Status answers) until
//     Forget deletes them.
//
// A compensation that needs what its step's Do got back reads Do's stored
// reply by its key: mesh.Reply(ctx, client, rpc, x.DoKey()).
package saga
