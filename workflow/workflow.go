package workflow

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/eventsourced"
	"github.com/natsmesh/natsmesh/internal/records"
	"github.com/natsmesh/natsmesh/mesh"
)

// Status is where an execution stands.
type Status string

// Statuses. Completed, Failed and Interrupted are final; Stuck waits for
// an operator (Resume).
const (
	Running     Status = "running"
	Waiting     Status = "waiting" // on a timer, a signal or a child
	Completed   Status = "completed"
	Failed      Status = "failed" // the code returned an error; compensations ran
	Interrupted Status = "interrupted"
	Stuck       Status = "stuck"
	// ContinuedAsNew ends a run that continued as a new one; the
	// execution goes on (never an execution's status).
	ContinuedAsNew Status = "continuedAsNew"
)

// Final reports whether s is an end.
func (s Status) Final() bool { return s == Completed || s == Failed || s == Interrupted }

// Execution is the outcome of an execution, or where it stands.
type Execution struct {
	Workflow string `json:"workflow"`
	ID       string `json:"id"`
	// Run counts the runs (continue-as-new starts the next).
	Run    int    `json:"run"`
	Status Status `json:"status"`
	// Waiting says on what a Waiting execution waits.
	Waiting string `json:"waiting,omitempty"`
	// Output is a Completed execution's result (JSON).
	Output json.RawMessage `json:"output,omitempty"`
	// Error is a Failed, Interrupted or Stuck execution's error.
	Error *ErrorInfo `json:"error,omitempty"`
	// Steps is how many steps (activities, timers, awaits, children) the
	// current run took.
	Steps   int       `json:"steps"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
	// Seq is the journal's last sequence when this was written: the
	// newest wins.
	Seq uint64 `json:"seq"`
}

// Config configures an Engine. Start from DefaultConfig.
type Config struct {
	// Activity is the retry policy of an activity without its own.
	Activity RetryPolicy
	// InMemorySleep is the longest Sleep (or Await timeout) waited in
	// memory; longer ones are a persisted wake-up delivered at their time,
	// and the execution holds nothing on the runner meanwhile.
	InMemorySleep time.Duration
	// IdleTime is how long an execution's entity stays in memory after
	// its last command (its journal cached for the next one); then it is
	// passivated, and a waiting execution costs storage only.
	IdleTime time.Duration
	// Clock tells the time (tests set a controllable one). Nil: the
	// system's.
	Clock Clock
}

// RetryPolicy says how often an activity that fails (without NonRetryable)
// is tried, and how long between tries (doubling from Backoff to
// BackoffMax). After MaxAttempts the execution is Stuck.
type RetryPolicy struct {
	MaxAttempts int
	Backoff     time.Duration
	BackoffMax  time.Duration
}

// Clock is the engine's time.
type Clock interface {
	Now() time.Time
	// After is time.After for the clock.
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// DefaultConfig returns 10 attempts from 100 ms to 10 s, sleeps up to 1 s
// in memory, and a minute's idle time.
func DefaultConfig() Config {
	return Config{Activity: RetryPolicy{MaxAttempts: 10, Backoff: 100 * time.Millisecond, BackoffMax: 10 * time.Second},
		InMemorySleep: time.Second, IdleTime: time.Minute}
}

// Validate reports the first bad field, wrapping ErrInvalidOption.
func (c *Config) Validate() error {
	if err := c.Activity.validate(); err != nil {
		return fmt.Errorf("Activity: %w", err)
	}
	if c.InMemorySleep < 0 {
		return fmt.Errorf("%w: InMemorySleep %v: want >= 0", ErrInvalidOption, c.InMemorySleep)
	}
	if c.IdleTime <= 0 {
		return fmt.Errorf("%w: IdleTime %v: want > 0", ErrInvalidOption, c.IdleTime)
	}
	return nil
}

func (p RetryPolicy) validate() error {
	if p.MaxAttempts < 1 || p.Backoff <= 0 || p.BackoffMax < p.Backoff {
		return fmt.Errorf("%w: retry policy %+v: want MaxAttempts >= 1 and 0 < Backoff <= BackoffMax", ErrInvalidOption, p)
	}
	return nil
}

// The entity every execution is: "Workflow", id "<workflow>/<execution>",
// driven by one persisted RPC.
var (
	entity     = actor.NewEntity("Workflow")
	commandRPC = actor.NewRPC[command, Execution](entity, "Command", actor.Persisted())
)

// command is what drives an execution.
type command struct {
	Op    string          `json:"op"` // start, wake, signal, interrupt, resume, childDone
	Def   string          `json:"def"`
	ID    string          `json:"id"`
	Input json.RawMessage `json:"input,omitempty"`
	// Signal: Name and Data or Err. childDone: Seq and Run of the
	// parent's step, Data or Err.
	Name string          `json:"name,omitempty"`
	Data json.RawMessage `json:"data,omitempty"`
	Err  *ErrorInfo      `json:"err,omitempty"`
	Seq  int             `json:"seq,omitempty"`
	Run  int             `json:"run,omitempty"`
	// Parent, for a child's start: the parent's workflow and id, and the
	// step (Seq, Run) to complete when the child ends.
	Parent *parentRef `json:"parent,omitempty"`
}

type parentRef struct {
	Def string `json:"def"`
	ID  string `json:"id"`
	Seq int    `json:"seq"`
	Run int    `json:"run"`
}

// Engine runs the workflows defined on it. Define the same workflows on
// every runner, then Install.
type Engine struct {
	client *mesh.Client
	cfg    Config
	clock  Clock
	log    *slog.Logger
	events *eventsourced.Store
	status *records.Store

	mu   sync.Mutex
	defs map[string]*definition
}

// New opens the engine's storage on client's cluster: the journals (the
// eventsourced stream <prefix>_events, entity type Workflow) and the
// executions' status (the KV bucket <prefix>_workflows). It returns an
// error wrapping ErrInvalidOption for a bad Config.
func New(ctx context.Context, client *mesh.Client, cfg Config) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mc := client.Config()
	ecfg := eventsourced.DefaultConfig()
	ecfg.Prefix, ecfg.Replicas = mc.Prefix, mc.StorageReplicas
	events, err := eventsourced.Open(ctx, client.Conn(), ecfg, eventsourced.WithLogger(client.Logger()))
	if err != nil {
		return nil, err
	}
	status, err := records.Open(ctx, client.Conn(), records.Config{
		Bucket: mc.Prefix + "_workflows", Description: "natsmesh workflow executions: status and outcome", Replicas: mc.StorageReplicas,
	})
	if err != nil {
		return nil, err
	}
	clock := cfg.Clock
	if clock == nil {
		clock = systemClock{}
	}
	return &Engine{client: client, cfg: cfg, clock: clock, log: client.Logger(), events: events, status: status, defs: map[string]*definition{}}, nil
}

// Install registers the Workflow entity on r. Call it before r.Start, on
// every runner, after defining the same workflows everywhere.
func (e *Engine) Install(r *mesh.Runner) error {
	b, err := eventsourced.New(e.events, entity, eventsourced.Spec[journal]{
		Initial: func(id string) journal {
			j := newJournal()
			j.Def, j.ID, _ = strings.Cut(id, "/")
			return j
		},
		Events:        []eventsourced.EventType[journal]{eventsourced.Event("wf", applyAll)},
		Handlers:      []eventsourced.Handler[journal]{eventsourced.Handle(commandRPC, e.handle)},
		SnapshotEvery: 64,
	}, actor.MaxIdleTime(e.cfg.IdleTime))
	if err != nil {
		return err
	}
	return r.Register(b)
}

// definition is a workflow without its Go types.
type definition struct {
	name     string
	run      func(c *Context, input json.RawMessage) (json.RawMessage, error)
	failures map[string]reflect.Type // declared failure codes
	codes    map[reflect.Type]string
}

// Workflow is a defined workflow: In is its input, Out its result (both
// stored as JSON).
type Workflow[In, Out any] struct {
	e   *Engine
	def *definition
}

// Option configures a workflow definition.
type Option func(*definition) error

// Failure declares an error type the workflow may fail with, under code:
// Result returns it typed (as actor.Failure does for an RPC).
func Failure[E error](code string) Option {
	return func(d *definition) error {
		t := reflect.TypeFor[E]()
		if code == "" || d.failures[code] != nil {
			return fmt.Errorf("%w: failure code %q empty or declared twice", ErrInvalidOption, code)
		}
		d.failures[code], d.codes[t] = t, code
		return nil
	}
}

// Define adds a workflow named name (a subject token, [A-Za-z0-9_-]): fn is
// ordinary Go code that runs its side effects through the Context
// (Activity, Sleep, Await, Child, Now, Version). fn is replayed from its
// start whenever its execution resumes (on another runner after a crash,
// after a wait), each step returning what it returned the first time: so
// fn must decide what to do only from its input and its steps' results,
// never from the clock, random numbers or anything read outside a step.
func Define[In, Out any](e *Engine, name string, fn func(c *Context, in In) (Out, error), opts ...Option) (*Workflow[In, Out], error) {
	if !actor.ValidName(name) || fn == nil {
		return nil, fmt.Errorf("%w: workflow %q: want a name [A-Za-z0-9_-]{1,64} and a function", ErrInvalidOption, name)
	}
	d := &definition{name: name, failures: map[string]reflect.Type{}, codes: map[reflect.Type]string{}}
	for _, opt := range opts {
		if err := opt(d); err != nil {
			return nil, err
		}
	}
	d.run = func(c *Context, input json.RawMessage) (json.RawMessage, error) {
		var in In
		if len(input) > 0 {
			if err := json.Unmarshal(input, &in); err != nil {
				return nil, NonRetryable(fmt.Errorf("decode input: %w", err))
			}
		}
		out, err := fn(c, in)
		if err != nil {
			return nil, err
		}
		return json.Marshal(out)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.defs[name] != nil {
		return nil, fmt.Errorf("%w: workflow %q defined twice", ErrInvalidOption, name)
	}
	e.defs[name] = d
	return &Workflow[In, Out]{e: e, def: d}, nil
}

// Name returns the workflow's name.
func (w *Workflow[In, Out]) Name() string { return w.def.name }

// Start starts execution id of the workflow with input in, and returns
// once it is stored: it then runs to its end on whichever runner owns it,
// across crashes. Starting an id that was started already does nothing
// (the first input stands), from any process.
func (w *Workflow[In, Out]) Start(ctx context.Context, id string, in In) error {
	raw, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("%w: encode input: %w", ErrInvalidOption, err)
	}
	return w.e.send(ctx, command{Op: "start", Def: w.def.name, ID: id, Input: raw}, msgID(w.def.name, id, "start"))
}

// Run starts execution id and waits for its result (Start, then Result).
// An execution that ends within its first drive (no wait) answers with
// the start's own reply.
func (w *Workflow[In, Out]) Run(ctx context.Context, id string, in In) (Out, error) {
	var zero Out
	raw, err := json.Marshal(in)
	if err != nil {
		return zero, fmt.Errorf("%w: encode input: %w", ErrInvalidOption, err)
	}
	cmd := command{Op: "start", Def: w.def.name, ID: id, Input: raw}
	if err := w.e.check(cmd); err != nil {
		return zero, err
	}
	x, err := mesh.Call(ctx, w.e.client, commandRPC, cmd.Def+"/"+cmd.ID, cmd, mesh.MessageID(msgID(w.def.name, id, "start")))
	if err != nil {
		return zero, err
	}
	if !x.Status.Final() && x.Status != Stuck {
		return w.Result(ctx, id)
	}
	return w.outcome(x)
}

// Result waits for execution id to end and returns its result, or its
// error: a declared failure typed, ErrInterrupted, or, for an execution
// that is Stuck, an error wrapping ErrStuck (and ErrNonDeterminism if that
// is why). It waits across restarts and continue-as-new; ctx bounds it.
func (w *Workflow[In, Out]) Result(ctx context.Context, id string) (Out, error) {
	x, err := w.e.await(ctx, w.def.name, id)
	if err != nil {
		var zero Out
		return zero, err
	}
	return w.outcome(x)
}

// outcome is the result or error of an ended (or stuck) execution.
func (w *Workflow[In, Out]) outcome(x Execution) (Out, error) {
	var zero Out
	id := x.ID
	switch x.Status {
	case Completed:
		var out Out
		if err := json.Unmarshal(x.Output, &out); err != nil {
			return zero, fmt.Errorf("decode result of %s/%s: %w", w.def.name, id, err)
		}
		return out, nil
	case Stuck:
		return zero, stuckError(x.Error)
	}
	return zero, w.def.decodeError(x.Error)
}

// Poll returns where execution id stands now. Errors: ErrNotFound.
func (w *Workflow[In, Out]) Poll(ctx context.Context, id string) (Execution, error) {
	return w.e.Poll(ctx, w.def.name, id)
}

// Interrupt stops execution id: it ends Interrupted once the compensations
// of its completed activities ran (latest first). An execution that has
// ended already is left as it is.
func (w *Workflow[In, Out]) Interrupt(ctx context.Context, id string) error {
	return w.e.Interrupt(ctx, w.def.name, id)
}

// Resume tries a Stuck execution again from where it stopped (a failing
// activity gets new attempts; a non-deterministic step is replayed against
// the code deployed now).
func (w *Workflow[In, Out]) Resume(ctx context.Context, id string) error {
	return w.e.Resume(ctx, w.def.name, id)
}

// Poll returns where execution id of workflow name stands now. Errors:
// ErrNotFound.
func (e *Engine) Poll(ctx context.Context, name, id string) (Execution, error) {
	var x Execution
	if _, err := e.status.Get(ctx, records.Key(name, id), &x); err != nil {
		if errors.Is(err, records.ErrNotFound) {
			return Execution{}, fmt.Errorf("%w: %s/%s", ErrNotFound, name, id)
		}
		return Execution{}, err
	}
	return x, nil
}

// Interrupt interrupts execution id of workflow name (Workflow.Interrupt).
func (e *Engine) Interrupt(ctx context.Context, name, id string) error {
	return e.send(ctx, command{Op: "interrupt", Def: name, ID: id}, msgID(name, id, "interrupt"))
}

// Resume resumes a Stuck execution (Workflow.Resume).
func (e *Engine) Resume(ctx context.Context, name, id string) error {
	return e.send(ctx, command{Op: "resume", Def: name, ID: id}, msgID(name, id, "resume", strconv.FormatInt(time.Now().UnixNano(), 36)))
}

// Signal completes the await named signal of execution id of workflow
// name with value v (or, with SignalError, an error), whether the
// execution waits for it yet or not: a signal sent before its await is
// kept for it. The first signal of a name counts; later ones are ignored.
func Signal[T any](ctx context.Context, e *Engine, name, id, signal string, v T) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: encode signal: %w", ErrInvalidOption, err)
	}
	return e.send(ctx, command{Op: "signal", Def: name, ID: id, Name: signal, Data: data}, msgID(name, id, "signal", signal))
}

// SignalError completes the await named signal with an error: Await
// returns it (an *ErrorInfo with its text).
func SignalError(ctx context.Context, e *Engine, name, id, signal string, failure error) error {
	return e.send(ctx, command{Op: "signal", Def: name, ID: id, Name: signal, Err: &ErrorInfo{Message: failure.Error()}}, msgID(name, id, "signal", signal))
}

// send sends a command to an execution as a persisted message with id
// msgID.
func (e *Engine) send(ctx context.Context, cmd command, id string) error {
	if err := e.check(cmd); err != nil {
		return err
	}
	return mesh.Send(ctx, e.client, commandRPC, cmd.Def+"/"+cmd.ID, cmd, mesh.MessageID(id))
}

// check checks a command's execution id.
func (e *Engine) check(cmd command) error {
	if cmd.ID == "" {
		return fmt.Errorf("%w: empty execution id", ErrInvalidOption)
	}
	if err := actor.ValidateID(cmd.Def + "/" + cmd.ID); err != nil {
		return fmt.Errorf("%w: execution id: %w", ErrInvalidOption, err)
	}
	return nil
}

// msgID is the message id of an execution's command: its parts joined,
// hashed when long (ids are bounded; executions' ids may be long).
func msgID(def, id string, parts ...string) string {
	s := "wf/" + def + "/" + id + "/" + strings.Join(parts, "/")
	if len(s) <= 200 {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "wf/" + def + "/h/" + hex.EncodeToString(sum[:16]) + "/" + strings.Join(parts, "/")
}

// await waits for execution id of workflow name to end (or be stuck).
func (e *Engine) await(ctx context.Context, name, id string) (Execution, error) {
	w, err := e.status.Watch(ctx, records.Key(name, id))
	if err != nil {
		return Execution{}, err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return Execution{}, fmt.Errorf("result of %s/%s: %w", name, id, ctx.Err())
		case entry, ok := <-w.Updates():
			if !ok {
				return Execution{}, fmt.Errorf("result of %s/%s: watch ended", name, id)
			}
			if entry == nil {
				continue // the current values were given (none yet)
			}
			var x Execution
			if json.Unmarshal(entry.Value(), &x) == nil && (x.Status.Final() || x.Status == Stuck) {
				return x, nil
			}
		}
	}
}

// encodeError turns a workflow's error into what its outcome keeps.
func (d *definition) encodeError(err error) *ErrorInfo {
	var info *ErrorInfo
	if errors.As(err, &info) {
		return info
	}
	for t, code := range d.codes {
		target := reflect.New(t)
		if errors.As(err, target.Interface()) {
			detail, _ := json.Marshal(target.Elem().Interface())
			return &ErrorInfo{Message: err.Error(), Code: code, Detail: detail}
		}
	}
	return &ErrorInfo{Message: err.Error()}
}

// decodeError turns a stored error back into the error Result returns.
func (d *definition) decodeError(info *ErrorInfo) error {
	if info == nil {
		return errors.New("workflow: failed without an error")
	}
	if info.Code == "Interrupted" {
		return fmt.Errorf("%w: %s", ErrInterrupted, info.Message)
	}
	if t := d.failures[info.Code]; t != nil {
		v := reflect.New(t)
		if json.Unmarshal(info.Detail, v.Interface()) == nil {
			if err, ok := v.Elem().Interface().(error); ok {
				return err
			}
		}
	}
	return info
}

func stuckError(info *ErrorInfo) error {
	if info != nil && info.Code == "NonDeterminism" {
		return fmt.Errorf("%w: %w: %s", ErrStuck, ErrNonDeterminism, info.Message)
	}
	return fmt.Errorf("%w: %v", ErrStuck, info)
}
