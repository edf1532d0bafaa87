package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/records"
	"github.com/natsmesh/natsmesh/mesh"
)

// Errors of the package.
var (
	// ErrInvalidOption wraps every rejected argument, Config field or
	// definition (it is actor.ErrInvalidOption).
	ErrInvalidOption = actor.ErrInvalidOption
	// ErrNotFound is returned for a saga id that was never started.
	ErrNotFound = errors.New("saga: not found")
	// ErrUnknownDefinition is the outcome of a saga whose definition this
	// runner does not have.
	ErrUnknownDefinition = errors.New("saga: unknown definition")
)

// Status is where a saga stands.
type Status string

// Statuses. Completed and Compensated are final; Stuck waits for Resume.
const (
	Running      Status = "running"
	Completed    Status = "completed"
	Compensating Status = "compensating"
	Compensated  Status = "compensated"
	// Stuck: a step or compensation kept failing with errors that are not
	// an Abort (MaxAttempts); Resume tries it again.
	Stuck Status = "stuck"
)

// Outcome describes a saga's state.
type Outcome struct {
	Status Status `json:"status"`
	// FailedStep and Error name the step that aborted (or is stuck) and why.
	FailedStep string `json:"failedStep,omitempty"`
	Error      string `json:"error,omitempty"`
}

// Final reports whether the saga has ended (completed or compensated).
func (o Outcome) Final() bool { return o.Status == Completed || o.Status == Compensated }

// abortError marks a step's definite failure.
type abortError struct{ err error }

func (e *abortError) Error() string { return "saga: aborted: " + e.err.Error() }
func (e *abortError) Unwrap() error { return e.err }

// Abort wraps a step's error to say the step failed for good and had no
// effect (the entity refused: insufficient funds, account closed): the saga
// compensates the steps before it. Any other error is taken as "outcome
// unknown" (a timeout, no runner) and the step is tried again with the same
// idempotency keys.
func Abort(err error) error {
	if err == nil {
		err = errors.New("aborted")
	}
	return &abortError{err: err}
}

// IsAbort reports whether err was returned through Abort.
func IsAbort(err error) bool {
	var a *abortError
	return errors.As(err, &a)
}

// Step is one step of a saga: Do and, optionally, Compensate, which undoes
// Do's effect when a later step aborts. Both must be idempotent under their
// Exec.Key (use it as the mesh.MessageID of a persisted call, which is then
// handled once however often the step is retried).
type Step[In any] struct {
	Name       string
	Do         func(ctx context.Context, x Exec[In]) error
	Compensate func(ctx context.Context, x Exec[In]) error
}

// Exec is what a step's function gets.
type Exec[In any] struct {
	// ID is the saga's id; Input its input.
	ID    string
	Input In
	// Step is the step's name; Attempt counts its tries from 1 (across
	// runners, restarting at 1 after a crash).
	Step    string
	Attempt int
	key     string
	doKey   string
}

// Key is the idempotency key of this step's action (its Do or its
// Compensate): the same on every retry and after a crash.
func (x Exec[In]) Key() string { return x.key }

// KeyFor derives further keys for a step that sends several messages.
func (x Exec[In]) KeyFor(part string) string { return x.key + "/" + part }

// DoKey is the key of the step's Do, also in its Compensate: a
// compensation that needs what Do got back (a reservation id, say) reads
// Do's stored reply with mesh.Reply(ctx, client, rpc, x.DoKey()).
func (x Exec[In]) DoKey() string { return x.doKey }

// Config configures a Sagas. Start from DefaultConfig.
type Config struct {
	// MaxAttempts bounds the tries of a step or compensation that fails
	// without Abort before the saga is Stuck.
	MaxAttempts int
	// Backoff and BackoffMax space those tries (doubling).
	Backoff, BackoffMax time.Duration
}

// DefaultConfig returns 20 attempts, 100 ms apart at first, at most 10 s.
func DefaultConfig() Config {
	return Config{MaxAttempts: 20, Backoff: 100 * time.Millisecond, BackoffMax: 10 * time.Second}
}

// Validate reports the first bad field, wrapping ErrInvalidOption.
func (c *Config) Validate() error {
	switch {
	case c.MaxAttempts < 1:
		return fmt.Errorf("%w: MaxAttempts %d: want at least 1", ErrInvalidOption, c.MaxAttempts)
	case c.Backoff <= 0 || c.BackoffMax < c.Backoff:
		return fmt.Errorf("%w: Backoff %v, BackoffMax %v: want 0 < Backoff <= BackoffMax", ErrInvalidOption, c.Backoff, c.BackoffMax)
	}
	return nil
}

// Sagas runs saga definitions on a cluster: install it on every runner.
type Sagas struct {
	client *mesh.Client
	store  *records.Store
	log    *slog.Logger
	opts   Config

	mu   sync.Mutex
	defs map[string]definition
}

// definition is a Definition without its input type.
type definition interface {
	len() int
	do(ctx context.Context, rec *record, i int, attempt int) error
	compensate(ctx context.Context, rec *record, i int, attempt int) error
	stepName(i int) string
}

// EntityType is the entity type whose entities (one per saga) run sagas.
const EntityType = "Saga"

var (
	entity = actor.NewEntity(EntityType)
	// runRPC starts or resumes a saga; its stored reply is the outcome.
	runRPC = actor.NewRPC[command, Outcome](entity, "Run", actor.Persisted())
)

type command struct {
	Op    string          `json:"op"` // "start" or "resume"
	Def   string          `json:"def"`
	ID    string          `json:"id"`
	Input json.RawMessage `json:"input,omitempty"`
}

// record is a saga's progress in KV, written only from its entity.
type record struct {
	Def    string          `json:"def"`
	ID     string          `json:"id"`
	Input  json.RawMessage `json:"input"`
	Status Status          `json:"status"`
	// Step counts the steps done; Comp is the next step to compensate.
	Step int `json:"step"`
	Comp int `json:"comp"`
	// StuckIn is the status to resume from when Stuck.
	StuckIn    Status    `json:"stuckIn,omitempty"`
	FailedStep string    `json:"failedStep,omitempty"`
	Error      string    `json:"error,omitempty"`
	Started    time.Time `json:"started"`
	Updated    time.Time `json:"updated"`
}

func (r *record) outcome() Outcome {
	return Outcome{Status: r.Status, FailedStep: r.FailedStep, Error: r.Error}
}

// New opens the saga bucket (<prefix>_sagas) of client's cluster, created
// if absent; the sagas call entities and log through client. It returns an
// error wrapping ErrInvalidOption for a bad Config.
func New(ctx context.Context, client *mesh.Client, cfg Config) (*Sagas, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mc := client.Config()
	store, err := records.Open(ctx, client.Conn(), records.Config{
		Bucket:      mc.Prefix + "_sagas",
		Description: "natsmesh saga progress, by definition and id",
		Replicas:    mc.StorageReplicas,
	})
	if err != nil {
		return nil, err
	}
	return &Sagas{client: client, store: store, log: client.Logger(), opts: cfg, defs: map[string]definition{}}, nil
}

// Install registers the Saga entity on r. Call it before r.Start, on every
// runner, after defining the same sagas everywhere.
func (ss *Sagas) Install(r *mesh.Runner) error {
	return r.Register(actor.Implement(entity, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.Handle(runRPC, ss.run)}, nil
	}))
}

// Definition is a named sequence of steps taking an input of type In
// (stored as JSON).
type Definition[In any] struct {
	ss    *Sagas
	name  string
	steps []Step[In]
}

// Define adds a saga definition. Errors: ErrInvalidOption (no name, no steps, a
// step without name or Do, duplicate names).
func Define[In any](ss *Sagas, name string, steps ...Step[In]) (*Definition[In], error) {
	if name == "" || len(steps) == 0 {
		return nil, fmt.Errorf("%w: a saga needs a name and steps", ErrInvalidOption)
	}
	seen := map[string]bool{}
	for _, s := range steps {
		if s.Name == "" || s.Do == nil || seen[s.Name] {
			return nil, fmt.Errorf("%w: step %q: each step needs a unique name and Do", ErrInvalidOption, s.Name)
		}
		seen[s.Name] = true
	}
	d := &Definition[In]{ss: ss, name: name, steps: steps}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if _, dup := ss.defs[name]; dup {
		return nil, fmt.Errorf("%w: saga %q defined twice", ErrInvalidOption, name)
	}
	ss.defs[name] = d
	return d, nil
}

func (d *Definition[In]) len() int { return len(d.steps) }

func (d *Definition[In]) stepName(i int) string { return d.steps[i].Name }

func (d *Definition[In]) exec(rec *record, i, attempt int, action string) (Exec[In], error) {
	var in In
	if err := json.Unmarshal(rec.Input, &in); err != nil {
		return Exec[In]{}, fmt.Errorf("%w: decode input: %w", ErrInvalidOption, err)
	}
	s := d.steps[i]
	base := "saga/" + d.name + "/" + rec.ID + "/" + s.Name + "/"
	return Exec[In]{ID: rec.ID, Input: in, Step: s.Name, Attempt: attempt, key: base + action, doKey: base + "do"}, nil
}

func (d *Definition[In]) do(ctx context.Context, rec *record, i, attempt int) error {
	x, err := d.exec(rec, i, attempt, "do")
	if err != nil {
		return Abort(err)
	}
	return d.steps[i].Do(ctx, x)
}

func (d *Definition[In]) compensate(ctx context.Context, rec *record, i, attempt int) error {
	if d.steps[i].Compensate == nil {
		return nil
	}
	x, err := d.exec(rec, i, attempt, "undo")
	if err != nil {
		return err
	}
	return d.steps[i].Compensate(ctx, x)
}

func entityID(def, id string) string { return def + "/" + id }

// Start starts saga id with input in and returns once it is stored: it then
// runs to its end (completed or compensated) on whichever runner owns it,
// across crashes. Starting an id again does nothing. Errors: ErrInvalidOption, or
// the mesh's errors of a persisted Send.
func (d *Definition[In]) Start(ctx context.Context, id string, in In) error {
	if id == "" {
		return fmt.Errorf("%w: empty saga id", ErrInvalidOption)
	}
	raw, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("%w: encode input: %w", ErrInvalidOption, err)
	}
	return mesh.Send(ctx, d.ss.client, runRPC, entityID(d.name, id),
		command{Op: "start", Def: d.name, ID: id, Input: raw}, mesh.MessageID(d.startID(id)))
}

func (d *Definition[In]) startID(id string) string { return "saga/" + d.name + "/" + id + "/start" }

// Run starts saga id and waits for its outcome (see Start and Wait).
func (d *Definition[In]) Run(ctx context.Context, id string, in In) (Outcome, error) {
	if err := d.Start(ctx, id, in); err != nil {
		return Outcome{}, err
	}
	return d.Wait(ctx, id)
}

// Wait waits for saga id to end or get stuck, and returns its outcome.
func (d *Definition[In]) Wait(ctx context.Context, id string) (Outcome, error) {
	o, err := mesh.Reply(ctx, d.ss.client, runRPC, d.startID(id))
	if err != nil {
		return Outcome{}, err
	}
	if o.Status == Stuck { // it may have been resumed since
		return d.Status(ctx, id)
	}
	return o, nil
}

// Status returns saga id's outcome as stored now. Errors: ErrNotFound.
func (d *Definition[In]) Status(ctx context.Context, id string) (Outcome, error) {
	var rec record
	if _, err := d.ss.store.Get(ctx, records.Key(d.name, id), &rec); err != nil {
		if errors.Is(err, records.ErrNotFound) {
			return Outcome{}, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return Outcome{}, err
	}
	return rec.outcome(), nil
}

// Forget deletes the record of saga id once it has ended (records are kept
// until then, and after unless forgotten). Starting the same id again later
// starts a new saga: forget only ids that will not be reused, and not
// within Config.PersistReplyRetention of the start if its steps' keys must
// still deduplicate. Errors: ErrNotFound; ErrInvalidOption for a saga that has not
// ended.
func (d *Definition[In]) Forget(ctx context.Context, id string) error {
	key := records.Key(d.name, id)
	var rec record
	rev, err := d.ss.store.Get(ctx, key, &rec)
	if errors.Is(err, records.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return err
	}
	if !rec.outcome().Final() {
		return fmt.Errorf("%w: saga %s is %s, not ended", ErrInvalidOption, id, rec.Status)
	}
	return d.ss.store.Delete(ctx, key, rev)
}

// Resume tries a Stuck saga again from where it stopped and waits for its
// new outcome.
func (d *Definition[In]) Resume(ctx context.Context, id string) (Outcome, error) {
	return mesh.Call(ctx, d.ss.client, runRPC, entityID(d.name, id), command{Op: "resume", Def: d.name, ID: id})
}

// run drives a saga from its record, in the saga's entity mailbox.
func (ss *Sagas) run(ctx context.Context, cmd command) (Outcome, error) {
	ss.mu.Lock()
	def := ss.defs[cmd.Def]
	ss.mu.Unlock()
	if def == nil {
		return Outcome{}, fmt.Errorf("%w: %q", ErrUnknownDefinition, cmd.Def)
	}
	key := records.Key(cmd.Def, cmd.ID)
	var rec record
	rev, err := ss.store.Get(ctx, key, &rec)
	switch {
	case errors.Is(err, records.ErrNotFound) && cmd.Op == "start":
		now := time.Now()
		rec = record{Def: cmd.Def, ID: cmd.ID, Input: cmd.Input, Status: Running, Started: now}
		rev = 0
	case errors.Is(err, records.ErrNotFound):
		return Outcome{}, fmt.Errorf("%w: %s", ErrNotFound, cmd.ID)
	case err != nil:
		retry(err)
	case cmd.Op == "resume" && rec.Status == Stuck:
		rec.Status, rec.StuckIn = rec.StuckIn, ""
		rec.FailedStep, rec.Error = "", ""
	}
	save := func() {
		rec.Updated = time.Now()
		// A conflict means another activation of this saga wrote (a fenced
		// runner still running): retry the message from the record.
		n, err := ss.store.Put(context.WithoutCancel(ctx), key, &rec, rev)
		if err != nil {
			retry(err)
		}
		rev = n
	}
	if rev == 0 {
		save()
	}
	for {
		switch rec.Status {
		case Running:
			ss.forward(ctx, def, &rec)
		case Compensating:
			ss.backward(ctx, def, &rec)
		default: // Completed, Compensated, Stuck
			return rec.outcome(), nil
		}
		save()
	}
}

// forward runs the saga's next step, or completes it.
func (ss *Sagas) forward(ctx context.Context, def definition, rec *record) {
	if rec.Step == def.len() {
		rec.Status = Completed
		return
	}
	i := rec.Step
	err := ss.attempt(ctx, func(n int) error { return def.do(ctx, rec, i, n) })
	switch {
	case err == nil:
		rec.Step++
	case IsAbort(err):
		rec.Status, rec.FailedStep, rec.Error, rec.Comp = Compensating, def.stepName(i), err.Error(), i-1
	default:
		rec.Status, rec.StuckIn, rec.FailedStep, rec.Error = Stuck, Running, def.stepName(i), err.Error()
		ss.log.Error("saga stuck", "def", rec.Def, "id", rec.ID, "step", def.stepName(i), "err", err)
	}
}

// backward runs the saga's next compensation, or ends it compensated.
func (ss *Sagas) backward(ctx context.Context, def definition, rec *record) {
	if rec.Comp < 0 {
		rec.Status = Compensated
		return
	}
	i := rec.Comp
	err := ss.attempt(ctx, func(n int) error {
		err := def.compensate(ctx, rec, i, n)
		if IsAbort(err) {
			// A compensation cannot be refused: try it like any
			// failure, then stop for an operator.
			return errors.Unwrap(err)
		}
		return err
	})
	if err != nil {
		rec.Status, rec.StuckIn = Stuck, Compensating
		rec.Error = fmt.Sprintf("compensating %s: %v (after: %s)", def.stepName(i), err, rec.Error)
		ss.log.Error("saga stuck compensating", "def", rec.Def, "id", rec.ID, "step", def.stepName(i), "err", err)
	} else {
		rec.Comp--
	}
}

// attempt runs fn until it succeeds, aborts, or has failed MaxAttempts
// times, with doubling backoff between tries.
func (ss *Sagas) attempt(ctx context.Context, fn func(attempt int) error) error {
	d := ss.opts.Backoff
	for n := 1; ; n++ {
		err := fn(n)
		if err == nil || IsAbort(err) || n >= ss.opts.MaxAttempts {
			return err
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		d = min(2*d, ss.opts.BackoffMax)
	}
}

// retry makes the mesh run the saga's message again later (a panic is how a
// persisted handler asks for a retry; returning the error would store it as
// the saga's outcome). The saga resumes from its record.
func retry(err error) {
	panic(fmt.Sprintf("saga: %v (the message is retried)", err))
}
