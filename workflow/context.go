package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"time"

	"github.com/natsmesh/natsmesh/mesh"
)

// Context is what workflow code runs its steps through. It belongs to one
// replay of one execution: use it from the workflow function's goroutine
// only, and do not keep it.
type Context struct {
	ctx   context.Context // the command's: activities derive theirs from it
	e     *Engine
	def   *definition
	d     *driver
	seq   int            // the next step's sequence
	comps []compensation // of the activities done so far, in order
	stop  chan stopped   // to the driver
}

// compensation is a completed activity's undo.
type compensation struct {
	seq   int
	info  ActivityInfo
	fn    func(ctx context.Context, a ActivityInfo) error
	retry RetryPolicy
}

// stopped is why the workflow function stopped before returning.
type stopped struct {
	kind  stopKind
	on    string // what a suspended execution waits on
	err   error
	comps []compensation
}

type stopKind int

const (
	suspended   stopKind = iota // waits for a timer, a signal or a child
	interrupted                 // an interrupt was asked for
	stuck                       // an operator must act (err says why; the journal has it when stuckSeq is set)
	retry                       // the command must be tried again (storage unreachable, the lease lost)
	returned                    // the function returned (runOnce's own)
)

// Workflow returns the workflow's name; ID the execution's id; Run the
// run's number (continue-as-new starts the next).
func (c *Context) Workflow() string { return c.def.name }
func (c *Context) ID() string       { return c.j().ID }
func (c *Context) Run() int         { return c.j().Run }

func (c *Context) j() journal { return c.d.view }

// halt stops the workflow function (its goroutine ends here) and tells the
// driver why.
func (c *Context) halt(s stopped) {
	s.comps = c.comps
	c.stop <- s
	runtime.Goexit()
}

// persist adds an event to the journal: at once to the run's view, and
// to storage with the next append (in the background after an activity,
// and at the run's next wait or end). A crash before the append loses the
// events since the last one: their steps run again on replay, as a step
// that was running at the crash does (activities are at least once).
func (c *Context) persist(ev event) {
	if err := c.d.add(ev); err != nil {
		c.halt(stopped{kind: retry, err: err})
	}
}

// step takes the next sequence for a step of kind and name: the journal's
// entry when it has one (which must be the same step, else the replay is
// non-deterministic), or a new entry to store.
func (c *Context) step(kind, name string) (ev event, recorded bool) {
	seq := c.seq
	c.seq++
	j := c.j()
	if seq < len(j.Commands) {
		got := j.Commands[seq]
		if got.Kind != kind || got.Name != name {
			c.halt(stopped{kind: stuck, err: &NonDeterminismError{Seq: seq, Want: describe(kind, name), Got: describe(got.Kind, got.Name)}})
		}
		return got, true
	}
	c.live()
	return event{Kind: kind, Seq: seq, Name: name}, false
}

// live is called where the run goes past its journal: an interrupted
// execution goes no further.
func (c *Context) live() {
	if c.j().Interrupted {
		c.halt(stopped{kind: interrupted})
	}
}

func describe(kind, name string) string {
	if name == "" {
		return kind
	}
	return kind + " " + strconv.Quote(name)
}

// ActivityInfo is what an activity (and its compensation) gets.
type ActivityInfo struct {
	Workflow string
	ID       string // the execution's
	Run      int
	Name     string // the activity's
	Seq      int    // its step
	// Attempt counts the tries from 1 (in this process: after a crash
	// the next runner starts again from 1).
	Attempt int
	// Key is the activity's idempotency key, the same on every attempt,
	// replay and runner: send it as the mesh.MessageID of a persisted
	// call and the call takes effect once however often the activity
	// runs.
	Key string
	// Result is, in a compensation, the activity's result (JSON).
	Result json.RawMessage
}

// ActivityOption configures one activity.
type ActivityOption func(*activityOptions)

type activityOptions struct {
	retry      RetryPolicy
	timeout    time.Duration
	compensate func(ctx context.Context, a ActivityInfo) error
}

// Retry sets the activity's retry policy (Config.Activity otherwise).
func Retry(p RetryPolicy) ActivityOption { return func(o *activityOptions) { o.retry = p } }

// Timeout bounds each attempt of the activity.
func Timeout(d time.Duration) ActivityOption { return func(o *activityOptions) { o.timeout = d } }

// Compensate attaches an undo to the activity: if the workflow later fails
// or is interrupted, the compensations of its completed activities run,
// latest first, each once (retried like an activity; it gets the
// activity's info, its Key and Result). The saga pattern, in code.
func Compensate(fn func(ctx context.Context, a ActivityInfo) error) ActivityOption {
	return func(o *activityOptions) { o.compensate = fn }
}

// Activity runs fn as the workflow's next step named name and returns its
// result, which the journal keeps: on a replay fn does not run again and
// the recorded result is returned. fn runs at least once (again after a
// crash mid-activity), retried per its policy; an error wrapped with
// NonRetryable is returned to the workflow code as it is (an *ErrorInfo
// after a replay), and once the retries are exhausted the execution is
// Stuck until Resume. fn may call entities, other services, anything: use
// a.Key for an effect that must happen once.
func Activity[Out any](c *Context, name string, fn func(ctx context.Context, a ActivityInfo) (Out, error), opts ...ActivityOption) (Out, error) {
	var zero Out
	o := activityOptions{retry: c.e.cfg.Activity}
	for _, opt := range opts {
		opt(&o)
	}
	ev, recorded := c.step(evActivity, name)
	info := c.info(name, ev.Seq)
	if !recorded {
		data, err := c.attempts(info, o, func(ctx context.Context, a ActivityInfo) (json.RawMessage, error) {
			out, err := fn(ctx, a)
			if err != nil {
				return nil, err
			}
			return json.Marshal(out)
		})
		ev.Data = data
		if err != nil {
			ev.Err = &ErrorInfo{Message: err.Error()}
		}
		c.persist(ev)
	}
	if ev.Err != nil {
		return zero, ev.Err
	}
	var out Out
	if err := json.Unmarshal(ev.Data, &out); err != nil {
		return zero, fmt.Errorf("decode the result of activity %s: %w", name, err)
	}
	if o.compensate != nil {
		info.Result = ev.Data
		c.comps = append(c.comps, compensation{seq: ev.Seq, info: info, fn: o.compensate, retry: o.retry})
	}
	return out, nil
}

func (c *Context) info(name string, seq int) ActivityInfo {
	j := c.j()
	return ActivityInfo{Workflow: c.def.name, ID: j.ID, Run: j.Run, Name: name, Seq: seq,
		Key: msgID(c.def.name, j.ID, strconv.Itoa(j.Run), strconv.Itoa(seq))}
}

// attempts runs fn until it succeeds or fails for good (NonRetryable); its
// retries exhausted, the execution is stuck at the step.
func (c *Context) attempts(info ActivityInfo, o activityOptions, fn func(ctx context.Context, a ActivityInfo) (json.RawMessage, error)) (json.RawMessage, error) {
	wait := o.retry.Backoff
	var err error
	for n := 1; n <= o.retry.MaxAttempts; n++ {
		info.Attempt = n
		ctx, cancel := c.ctx, context.CancelFunc(func() {})
		if o.timeout > 0 {
			ctx, cancel = context.WithTimeout(ctx, o.timeout)
		}
		var data json.RawMessage
		data, err = fn(ctx, info)
		cancel()
		switch {
		case err == nil:
			return data, nil
		case isNonRetryable(err):
			return nil, err
		case c.ctx.Err() != nil: // the command ended (the lease lost, the runner stopping)
			c.halt(stopped{kind: retry, err: err})
		}
		c.e.log.Warn("workflow activity failed", "workflow", info.Workflow, "id", info.ID, "activity", info.Name, "attempt", n, "err", err)
		if n == o.retry.MaxAttempts {
			break
		}
		select {
		case <-c.e.clock.After(wait):
		case <-c.ctx.Done():
			c.halt(stopped{kind: retry, err: c.ctx.Err()})
		}
		wait = min(2*wait, o.retry.BackoffMax)
	}
	c.persist(event{Kind: evStuck, Seq: info.Seq, Err: &ErrorInfo{Code: "Stuck", Message: fmt.Sprintf("activity %s failed %d times: %v", info.Name, o.retry.MaxAttempts, err)}})
	c.halt(stopped{kind: stuck})
	return nil, nil // not reached
}

// Sleep waits d, durably: a sleep longer than Config.InMemorySleep holds
// nothing on the runner (the execution is passivated and woken by a
// persisted message at its time, on whichever runner owns it then). It
// never returns early, whatever the clocks of the runners involved.
func Sleep(c *Context, d time.Duration) {
	ev, recorded := c.step(evTimer, "")
	if !recorded {
		ev.At = c.e.clock.Now().Add(d).UTC()
		c.persist(ev)
	}
	if _, fired := c.j().Done[ev.Seq]; fired {
		return
	}
	c.live()
	for {
		left := ev.At.Sub(c.e.clock.Now())
		if left <= 0 {
			c.persist(event{Kind: evTimerFired, Seq: ev.Seq})
			return
		}
		if left > c.e.cfg.InMemorySleep {
			c.wakeAt(ev.Seq, ev.At)
			c.halt(stopped{kind: suspended, on: "timer until " + ev.At.Format(time.RFC3339)})
		}
		select {
		case <-c.e.clock.After(left):
		case <-c.ctx.Done():
			c.halt(stopped{kind: retry, err: c.ctx.Err()})
		}
	}
}

// wakeAt has the execution woken at t (a persisted message delivered
// then; sent again on each replay, deduplicated by its id).
func (c *Context) wakeAt(seq int, t time.Time) {
	j := c.j()
	err := mesh.Send(c.ctx, c.e.client, commandRPC, j.Def+"/"+j.ID, command{Op: "wake", Def: j.Def, ID: j.ID},
		mesh.MessageID(msgID(j.Def, j.ID, "wake", strconv.Itoa(j.Run), strconv.Itoa(seq), strconv.FormatInt(t.UnixNano(), 36))), mesh.DeliverAt(t))
	if err != nil {
		c.halt(stopped{kind: retry, err: fmt.Errorf("schedule a wake-up: %w", err)})
	}
}

// AwaitOption configures an Await.
type AwaitOption func(*awaitOptions)

type awaitOptions struct{ timeout time.Duration }

// Within bounds an Await: once d has passed, it returns ErrTimeout.
func Within(d time.Duration) AwaitOption { return func(o *awaitOptions) { o.timeout = d } }

// Await waits for the signal named name (Signal, SignalError, the gateway,
// meshctl) and returns its value, or its error. A signal sent before the
// execution reaches its Await is kept for it. While it waits the
// execution holds nothing on the runner.
func Await[T any](c *Context, name string, opts ...AwaitOption) (T, error) {
	var zero T
	var o awaitOptions
	for _, opt := range opts {
		opt(&o)
	}
	ev, recorded := c.step(evAwait, name)
	if !recorded {
		if o.timeout > 0 {
			ev.At = c.e.clock.Now().Add(o.timeout).UTC()
		}
		c.persist(ev)
	}
	done, ok := c.j().Done[ev.Seq]
	if !ok {
		c.live()
		if sig, got := c.j().Signals[name]; got {
			done = event{Kind: evAwaitDone, Seq: ev.Seq, Data: sig.Data, Err: sig.Err}
			c.persist(done)
		} else if !ev.At.IsZero() && !c.e.clock.Now().Before(ev.At) {
			done = event{Kind: evAwaitDone, Seq: ev.Seq, TimedOut: true}
			c.persist(done)
		} else {
			if !ev.At.IsZero() {
				c.wakeAt(ev.Seq, ev.At)
			}
			c.halt(stopped{kind: suspended, on: "signal " + strconv.Quote(name)})
		}
	}
	switch {
	case done.TimedOut:
		return zero, fmt.Errorf("%w: signal %q", ErrTimeout, name)
	case done.Err != nil:
		return zero, done.Err
	}
	var v T
	if err := json.Unmarshal(done.Data, &v); err != nil {
		return zero, fmt.Errorf("decode signal %q: %w", name, err)
	}
	return v, nil
}

// Child starts execution id of workflow w as a child of this one and waits
// for its result, durably: the parent holds nothing while the child runs,
// and resumes when it ends (Result's error if it failed).
func Child[In, Out any](c *Context, w *Workflow[In, Out], id string, in In) (Out, error) {
	var zero Out
	ev, recorded := c.step(evChild, w.def.name+"/"+id)
	if !recorded {
		c.persist(ev)
	}
	done, ok := c.j().Done[ev.Seq]
	if !ok {
		c.live()
		raw, err := json.Marshal(in)
		if err != nil {
			return zero, fmt.Errorf("encode the input of child %s/%s: %w", w.def.name, id, err)
		}
		j := c.j()
		start := command{Op: "start", Def: w.def.name, ID: id, Input: raw, Parent: &parentRef{Def: j.Def, ID: j.ID, Seq: ev.Seq, Run: j.Run}}
		if err := c.e.send(c.ctx, start, msgID(w.def.name, id, "start")); err != nil {
			c.halt(stopped{kind: retry, err: fmt.Errorf("start child %s/%s: %w", w.def.name, id, err)})
		}
		c.halt(stopped{kind: suspended, on: "child " + w.def.name + "/" + id})
	}
	if done.Err != nil {
		return zero, w.def.decodeError(done.Err)
	}
	var out Out
	if err := json.Unmarshal(done.Data, &out); err != nil {
		return zero, fmt.Errorf("decode the result of child %s/%s: %w", w.def.name, id, err)
	}
	return out, nil
}

// Now returns the time, recorded: the same on every replay.
func Now(c *Context) time.Time {
	ev, recorded := c.step(evNow, "")
	if !recorded {
		ev.At = c.e.clock.Now().UTC()
		c.persist(ev)
	}
	return ev.At
}

// DefaultVersion is what Version returns for an execution that passed the
// change before the change was deployed.
const DefaultVersion = 0

// Version lets a workflow's code change while executions of it are in
// flight. Around a change, ask Version(c, "change-id", min, max) and
// branch on the version it returns: an execution that reaches the call for
// the first time gets max, recorded in its journal; one whose journal
// shows it passed this point before the change (it has steps past here)
// gets DefaultVersion; and it keeps its version on every replay. A
// version below min (an execution of code no longer supported) stops the
// execution as Stuck with ErrNonDeterminism naming the change, rather than
// running a path its journal does not match.
func Version(c *Context, changeID string, min, max int) int {
	j := c.j()
	v, set := j.Markers[changeID]
	switch {
	case set:
	case c.seq < len(j.Commands): // replaying steps taken before the change existed
		v = DefaultVersion
	default:
		c.live()
		c.persist(event{Kind: evMarker, Name: changeID, Ver: max})
		v = max
	}
	if v < min || v > max {
		c.halt(stopped{kind: stuck, err: &NonDeterminismError{Seq: c.seq, Want: fmt.Sprintf("version %d to %d of change %q", min, max, changeID), Got: fmt.Sprintf("version %d", v)}})
	}
	return v
}

// continueAsNew is the error ContinueAsNew returns.
type continueAsNew struct{ input json.RawMessage }

func (*continueAsNew) Error() string { return "workflow: continue as new" }

// ContinueAsNew ends this run and starts the next with input in, keeping
// the execution's id: return its result from the workflow function. A
// long-lived workflow (a loop over days) stays bounded: each run's journal
// is replayed alone.
func ContinueAsNew(c *Context, in any) error {
	raw, err := json.Marshal(in)
	if err != nil {
		return NonRetryable(fmt.Errorf("encode the next run's input: %w", err))
	}
	return &continueAsNew{input: raw}
}

func isContinue(err error) (*continueAsNew, bool) {
	var ca *continueAsNew
	return ca, errors.As(err, &ca)
}
