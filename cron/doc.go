// Package cron runs named jobs on a cron schedule once per tick across a
// whole cluster, as @effect/cluster's ClusterCron does, and parses cron
// expressions.
//
// # Usage
//
// Every runner adds the same jobs and installs them before it starts:
//
//	rem, err := reminder.New(ctx, nc, cfg)
//	crons := cron.New(rem, logger)
//	err = crons.Add(cron.Job{
//		Name:     "nightly-report",
//		Schedule: "0 3 * * *", // 03:00 every day
//		Location: berlin,
//		Run:      func(ctx context.Context, tick time.Time) error { ... },
//		SkipIfOlderThan: time.Hour,
//	})
//	err = crons.Install(runner) // before runner.Start
//
// # How it works
//
// Each job is an entity of type ClusterCron (id: the job's name) with a
// durable reminder (package reminder) on the job's schedule: each tick is a
// JetStream scheduled message, handled by whichever runner owns the job's
// shard when it falls due, and the reminder's record in KV names the armed
// tick, so a tick is neither lost nor forked when runners come and go. A
// singleton (natsmesh-cron) registers every job's schedule when it starts;
// an unchanged schedule is left alone, a changed one (new expression, zone or
// FromPrevious) replaces it.
//
// # Concurrency
//
// A job's runs never overlap: its ticks are messages to one entity, handled
// one at a time. Different jobs run in parallel.
//
// # Guarantees
//
//   - Each tick runs once across the cluster. It runs again only if the
//     runner running it dies (or is fenced) before the run's outcome is
//     stored; the next owner then runs it again (at least once).
//   - A tick that arrives more than SkipIfOlderThan after its time (every
//     runner was down, say) is skipped, not run.
//   - Missed ticks: by default one late tick stands for all the ticks missed
//     while no runner could run the job (it runs if not older than
//     SkipIfOlderThan) and the schedule resumes at its next time after now.
//     With FromPrevious every missed tick comes, in order, each run or
//     skipped by SkipIfOlderThan.
//   - Run's error is logged and the tick counts as run; a panic retries it as
//     a persisted message (then a dead letter).
//   - Ticks have one-second resolution (six-field expressions); a runner
//     holds each until its exact time.
//   - Wall-clock times skipped by a daylight-saving change do not run that
//     day; a time repeated by one runs once (expressions with every hour run
//     through both passes).
//   - All runners must Install the same jobs. During a rolling deploy that
//     changes a schedule, the singleton may register the old and the new one
//     in turn; each replacement drops the other's pending tick.
package cron
