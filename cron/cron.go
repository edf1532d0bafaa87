package cron

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/cronexpr"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/reminder"
)

// Errors of the package.
var (
	// ErrSyntax wraps a cron expression that does not parse.
	ErrSyntax = cronexpr.ErrSyntax
	// ErrInvalidOption wraps every other rejected argument (it is
	// actor.ErrInvalidOption).
	ErrInvalidOption = actor.ErrInvalidOption
	// ErrUnknownJob is the reply of a tick for a job this runner does not
	// know (its code was removed, or a rolling deploy is half done).
	ErrUnknownJob = errors.New("cron: unknown job")
)

// Schedule is a parsed cron expression in a time zone.
type Schedule = cronexpr.Schedule

// Parse parses a cron expression read in loc (nil: UTC): five fields
// (minute hour day-of-month month day-of-week) or six (a leading second),
// each a list of values, ranges (a-b) and steps (*/n, a-b/n, a/n), with
// month and weekday names (JAN, MON), or a descriptor (@yearly, @monthly,
// @weekly, @daily, @hourly). When both day fields are restricted, a day
// matching either matches (as in Vixie cron).
func Parse(expr string, loc *time.Location) (*Schedule, error) { return cronexpr.Parse(expr, loc) }

// EntityType is the entity type whose entities (one per job, its id the
// job's name) run the jobs.
const EntityType = "ClusterCron"

// DefaultSkipIfOlderThan is how late a tick may run by default.
const DefaultSkipIfOlderThan = 24 * time.Hour

// Job is a named schedule and the function it runs.
type Job struct {
	// Name identifies the job across the cluster (an entity id).
	Name string
	// Schedule is a cron expression (see Parse), read in Location (nil:
	// UTC; it must be a zone time.LoadLocation knows by name).
	Schedule string
	Location *time.Location
	// Run runs the job for the tick due at tick. Its error is logged; the
	// tick counts as run.
	Run func(ctx context.Context, tick time.Time) error
	// SkipIfOlderThan: a tick that comes later than this after its time
	// (every runner was down, say) is skipped, not run (0: the default,
	// DefaultSkipIfOlderThan).
	SkipIfOlderThan time.Duration
	// FromPrevious computes each tick from the previous one, so that ticks
	// missed while no runner could run them come one after the other (each
	// subject to SkipIfOlderThan) instead of one late tick for all.
	FromPrevious bool
}

// Crons runs a set of jobs on the cluster, each once per tick. Every
// runner must Install the same jobs.
type Crons struct {
	rem  *reminder.Service
	rpc  actor.RPC[reminder.Message, actor.Empty]
	log  *slog.Logger
	mu   sync.Mutex
	jobs map[string]*Job
}

var (
	entity = actor.NewEntity(EntityType)
	remind = reminder.NewRPC(entity)
)

// New returns an empty set of jobs that keeps its schedules with rem and
// logs through it.
func New(rem *reminder.Service) *Crons {
	log := slog.New(slog.DiscardHandler)
	if rem != nil {
		log = rem.Logger()
	}
	return &Crons{rem: rem, rpc: remind, log: log, jobs: map[string]*Job{}}
}

// Add adds a job. Add every job before Install. Errors: ErrSyntax,
// ErrInvalidOption.
func (c *Crons) Add(j Job) error {
	if j.Name == "" || j.Run == nil {
		return fmt.Errorf("%w: a job needs a name and a Run function", ErrInvalidOption)
	}
	if err := actor.ValidateID(j.Name); err != nil {
		return fmt.Errorf("%w: job name: %w", ErrInvalidOption, err)
	}
	if j.SkipIfOlderThan < 0 {
		return fmt.Errorf("%w: negative SkipIfOlderThan", ErrInvalidOption)
	}
	if j.SkipIfOlderThan == 0 {
		j.SkipIfOlderThan = DefaultSkipIfOlderThan
	}
	if _, err := cronexpr.Parse(j.Schedule, j.Location); err != nil {
		return err
	}
	if _, err := j.options(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.jobs[j.Name]; dup {
		return fmt.Errorf("%w: job %q added twice", ErrInvalidOption, j.Name)
	}
	c.jobs[j.Name] = &j
	return nil
}

func (j *Job) options() ([]reminder.Option, error) {
	opts := []reminder.Option{reminder.Cron(j.Schedule, j.Location)}
	if j.FromPrevious {
		opts = append(opts, reminder.CatchUp())
	}
	var s reminder.Spec // check the options now, not at the first tick
	for _, o := range opts {
		if err := o(&s); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidOption, err)
		}
	}
	return opts, nil
}

// Install registers the ClusterCron entity on r and a singleton that, on
// whichever runner holds it, registers each job's schedule (an unchanged
// schedule is left as it is, so its ticks go on; a changed one replaces
// it). Call it before r.Start.
func (c *Crons) Install(r *mesh.Runner) error {
	if err := r.Register(c.behavior()); err != nil {
		return err
	}
	return r.RegisterSingleton("natsmesh-cron", c.ensure)
}

// ensure registers every job's schedule; it returns nil once done, so the
// singleton stays stopped until it moves to another runner.
func (c *Crons) ensure(ctx context.Context) error {
	for _, j := range c.sorted() {
		opts, err := j.options()
		if err != nil {
			return err
		}
		if err := c.rem.Register(ctx, c.rpc, j.Name, j.Name, time.Time{}, opts...); err != nil {
			return fmt.Errorf("register job %s: %w", j.Name, err)
		}
	}
	return nil
}

func (c *Crons) sorted() []*Job {
	c.mu.Lock()
	defer c.mu.Unlock()
	jobs := make([]*Job, 0, len(c.jobs))
	for _, j := range c.jobs {
		jobs = append(jobs, j)
	}
	sort.Slice(jobs, func(a, b int) bool { return jobs[a].Name < jobs[b].Name })
	return jobs
}

// Remove stops the job name's schedule across the cluster: for a job whose
// code was removed (remove it from every runner first, or a runner's
// singleton registers it again).
func Remove(ctx context.Context, rem *reminder.Service, name string) error {
	return rem.Cancel(ctx, remind, name, name)
}

// Next returns the time of job name's next tick, as stored. Errors:
// reminder.ErrNotFound when the job has no schedule (yet).
func Next(ctx context.Context, rem *reminder.Service, name string) (time.Time, error) {
	info, err := rem.Get(ctx, remind, name, name)
	if err != nil {
		return time.Time{}, err
	}
	return info.Due, nil
}

func (c *Crons) behavior() *actor.Behavior {
	return actor.Implement(entity, func(self *actor.Instance) ([]actor.Handler, error) {
		name := self.Address().ID
		return []actor.Handler{
			c.rem.Handle(c.rpc, self, func(ctx context.Context, t reminder.Tick) error {
				c.mu.Lock()
				j := c.jobs[name]
				c.mu.Unlock()
				if j == nil {
					c.log.Error("cron: tick for a job this runner does not know", "job", name, "tick", t.Due)
					return fmt.Errorf("%w: %s", ErrUnknownJob, name)
				}
				if late := time.Since(t.Due); late > j.SkipIfOlderThan {
					c.log.Warn("cron: tick skipped: too late", "job", name, "tick", t.Due, "late", late)
					return nil
				}
				if err := j.Run(ctx, t.Due); err != nil {
					c.log.Error("cron: job failed", "job", name, "tick", t.Due, "err", err)
					return err
				}
				return nil
			}),
		}, nil
	})
}
