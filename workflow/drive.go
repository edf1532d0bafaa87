package workflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"

	"github.com/natsmesh/natsmesh/eventsourced"
	"github.com/natsmesh/natsmesh/internal/records"
)

// driver is one command's drive of an execution: the journal as the run
// sees it (its view: the stored journal plus the events not appended yet)
// and those events. A completed activity's result is appended in the
// background while the run goes on (one append in flight at a time): it
// is stored about as soon as it is known, without the run waiting for the
// store, and the run waits for the last append before it reports a wait
// or an end.
type driver struct {
	e        *Engine
	ctx      context.Context
	def      *definition
	ent      *eventsourced.Entity[journal]
	view     journal
	pending  []event
	inflight chan error // the append in flight, if any
	failed   error      // an append that failed: the command is retried
}

// add adds ev to the view and to the events to append; a completed step
// starts an append in the background.
func (d *driver) add(ev event) error {
	d.pending = append(d.pending, ev)
	d.view = apply(d.view, ev)
	if ev.Kind == evActivity {
		d.kick()
	}
	return d.failed
}

// kick starts appending the pending events unless an append is in flight.
func (d *driver) kick() {
	if d.inflight != nil {
		select {
		case err := <-d.inflight:
			d.inflight = nil
			if err != nil && d.failed == nil {
				d.failed = err
			}
		default:
			return
		}
	}
	if d.failed != nil || len(d.pending) == 0 {
		return
	}
	batch := d.pending
	d.pending = nil
	ch := make(chan error, 1)
	d.inflight = ch
	go func() { ch <- d.append(batch) }()
}

// append appends events as one message, with the expected last sequence
// of the journal (eventsourced): a runner that lost the execution cannot
// append.
func (d *driver) append(events []event) error {
	if len(events) == 0 {
		return nil
	}
	return d.ent.Persist(d.ctx, entries{E: events})
}

// flush waits for the append in flight, then appends what is pending.
func (d *driver) flush() error {
	if d.inflight != nil {
		if err := <-d.inflight; err != nil && d.failed == nil {
			d.failed = err
		}
		d.inflight = nil
	}
	if d.failed != nil {
		return d.failed
	}
	batch := d.pending
	d.pending = nil
	if err := d.append(batch); err != nil {
		d.failed = err
	}
	return d.failed
}

// handle is the Workflow entity's one handler: it records what the command
// brings (a start, a signal, an interrupt, a resume, a child's end), then
// drives the execution as far as it goes (to its end, a wait, or a stop
// for an operator), appends what the run recorded, and records where it
// stands. A command that cannot be carried out now (storage unreachable,
// the lease lost) panics, which has the mesh deliver it again later: the
// execution carries on from its journal.
func (e *Engine) handle(ctx context.Context, ent *eventsourced.Entity[journal], cmd command) (Execution, error) {
	e.mu.Lock()
	def := e.defs[cmd.Def]
	e.mu.Unlock()
	if def == nil {
		return Execution{}, fmt.Errorf("%w: %q", ErrUnknownWorkflow, cmd.Def)
	}
	d := &driver{e: e, ctx: ctx, def: def, ent: ent, view: ent.State().clone()}
	fresh := d.view.Run == 0 && d.view.Commands == nil // no status record yet
	d.record(cmd)
	if d.view.Run == 0 {
		// A signal before the start: kept in the journal for it.
		must(d.flush())
		return Execution{Workflow: cmd.Def, ID: cmd.ID, Status: Waiting, Waiting: "start"}, nil
	}
	waiting := d.drive()
	must(d.flush())
	x := e.execution(ent, waiting)
	e.writeStatus(ctx, x, fresh)
	if x.Status.Final() {
		d.notifyParent()
	}
	return x, nil
}

// record adds what a command brings, once.
func (d *driver) record(cmd command) {
	j := d.view
	var evs []event
	switch cmd.Op {
	case "start":
		if j.Run == 0 {
			evs = append(evs, event{Kind: evRun, Run: 1, Data: cmd.Input, At: d.e.clock.Now().UTC(), Parent: cmd.Parent})
		}
	case "signal":
		if _, got := j.Signals[cmd.Name]; !got {
			evs = append(evs, event{Kind: evSignal, Name: cmd.Name, Data: cmd.Data, Err: cmd.Err})
		}
	case "interrupt":
		if !j.Interrupted && j.End == nil && j.Run > 0 {
			evs = append(evs, event{Kind: evInterrupt})
			if j.Stuck != nil && j.Stuck.Seq >= 0 {
				// Stuck on a failing activity: the interrupt gives up on
				// it and compensates what the execution did. (One stuck
				// in its code, by a non-determinism or a panic, needs the
				// code fixed and Resume.)
				evs = append(evs, event{Kind: evResumed})
			}
		}
	case "resume":
		if j.Stuck != nil {
			evs = append(evs, event{Kind: evResumed})
		}
	case "childDone":
		if _, done := j.Done[cmd.Seq]; !done && cmd.Run == j.Run {
			evs = append(evs, event{Kind: evChildDone, Seq: cmd.Seq, Data: cmd.Data, Err: cmd.Err})
		}
	}
	for _, ev := range evs {
		must(d.add(ev))
	}
}

// drive runs the workflow function against the view until the run ends,
// waits or stops; it returns what a waiting execution waits on.
func (d *driver) drive() (waiting string) {
	for {
		j := d.view
		if j.End != nil || j.Stuck != nil {
			return ""
		}
		s, out := d.runOnce()
		switch s.kind {
		case suspended:
			return s.on
		case retry:
			must(s.err)
		case stuck:
			if s.err != nil { // not recorded yet (a non-determinism, a panic)
				info := &ErrorInfo{Code: "Stuck", Message: s.err.Error()}
				if errors.Is(s.err, ErrNonDeterminism) {
					info.Code = "NonDeterminism"
				}
				must(d.add(event{Kind: evStuck, Seq: -1, Err: info}))
				d.e.log.Error("workflow stuck", "workflow", d.def.name, "id", j.ID, "err", s.err)
			}
			return ""
		case interrupted:
			if d.compensate(s.comps) {
				must(d.add(event{Kind: evEnd, Name: string(Interrupted), Err: &ErrorInfo{Code: "Interrupted", Message: "interrupted"}}))
			}
			return ""
		}
		// The function returned.
		if ca, ok := isContinue(out.err); ok {
			must(d.add(event{Kind: evEnd, Name: string(ContinuedAsNew)}))
			must(d.add(event{Kind: evRun, Run: j.Run + 1, Data: ca.input, At: d.e.clock.Now().UTC(), Parent: j.Parent}))
			continue
		}
		if out.err == nil {
			must(d.add(event{Kind: evEnd, Name: string(Completed), Data: out.data}))
		} else if d.compensate(s.comps) {
			must(d.add(event{Kind: evEnd, Name: string(Failed), Err: d.def.encodeError(out.err)}))
		}
		return ""
	}
}

// result is what the workflow function returned.
type result struct {
	data json.RawMessage
	err  error
}

// runOnce runs the workflow function, on its own goroutine, until it
// returns or stops.
func (d *driver) runOnce() (stopped, result) {
	c := &Context{ctx: d.ctx, e: d.e, def: d.def, d: d, stop: make(chan stopped, 1)}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				c.stop <- stopped{kind: stuck, err: fmt.Errorf("workflow %s panicked: %v\n%s", d.def.name, r, debug.Stack()), comps: c.comps}
			}
		}()
		data, err := d.def.run(c, d.view.Input)
		if err == nil && c.seq < len(d.view.Commands) {
			// Returned before the steps its journal records: the code
			// changed under a running execution.
			got := d.view.Commands[c.seq]
			c.stop <- stopped{kind: stuck, err: &NonDeterminismError{Seq: c.seq, Want: "the end", Got: describe(got.Kind, got.Name)}}
			return
		}
		done <- result{data: data, err: err}
		c.stop <- stopped{kind: returned, comps: c.comps}
	}()
	s := <-c.stop
	if s.kind == returned {
		return s, <-done
	}
	return s, result{}
}

// compensate runs the compensations not run yet, latest first; it reports
// whether they all ran (else the execution is stuck for an operator).
func (d *driver) compensate(comps []compensation) bool {
	e := d.e
	for i := len(comps) - 1; i >= 0; i-- {
		comp := comps[i]
		if d.view.CompDone[comp.seq] {
			continue
		}
		info := comp.info
		wait := comp.retry.Backoff
		var err error
		for n := 1; n <= comp.retry.MaxAttempts; n++ {
			info.Attempt = n
			if err = comp.fn(d.ctx, info); err == nil {
				break
			}
			must(d.ctx.Err())
			e.log.Warn("workflow compensation failed", "workflow", info.Workflow, "id", info.ID, "activity", info.Name, "attempt", n, "err", err)
			if n < comp.retry.MaxAttempts {
				select {
				case <-e.clock.After(wait):
				case <-d.ctx.Done():
					must(d.ctx.Err())
				}
				wait = min(2*wait, comp.retry.BackoffMax)
			}
		}
		if err != nil {
			must(d.add(event{Kind: evStuck, Seq: comp.seq, Err: &ErrorInfo{Code: "Stuck",
				Message: fmt.Sprintf("compensating activity %s failed %d times: %v", info.Name, comp.retry.MaxAttempts, err)}}))
			return false
		}
		// Appended at once: a compensation is not run again after a crash
		// once it is known to have run.
		must(d.add(event{Kind: evCompDone, Seq: comp.seq}))
		must(d.flush())
	}
	return true
}

// notifyParent tells a child's parent that the child ended.
func (d *driver) notifyParent() {
	j := d.ent.State()
	if j.Parent == nil || j.End == nil {
		return
	}
	p := j.Parent
	cmd := command{Op: "childDone", Def: p.Def, ID: p.ID, Seq: p.Seq, Run: p.Run, Data: j.End.Data, Err: j.End.Err}
	must(d.e.send(d.ctx, cmd, msgID(p.Def, p.ID, "child", strconv.Itoa(p.Run), strconv.Itoa(p.Seq))))
}

// execution describes where the execution stands.
func (e *Engine) execution(ent *eventsourced.Entity[journal], waiting string) Execution {
	j := ent.State()
	x := Execution{Workflow: j.Def, ID: j.ID, Run: j.Run, Steps: len(j.Commands), Started: j.Started, Updated: e.clock.Now().UTC(), Seq: ent.Seq()}
	switch {
	case j.End != nil:
		x.Status, x.Output, x.Error = Status(j.End.Name), j.End.Data, j.End.Err
	case j.Stuck != nil:
		x.Status, x.Error = Stuck, j.Stuck.Err
	case waiting != "":
		x.Status, x.Waiting = Waiting, waiting
	default:
		x.Status = Running
	}
	return x
}

// writeStatus records x as the execution's status unless a newer one is
// there (a stale instance's write never replaces a newer one). A fresh
// execution's is created in one request.
func (e *Engine) writeStatus(ctx context.Context, x Execution, fresh bool) {
	key := records.Key(x.Workflow, x.ID)
	for try := range 5 {
		var rev uint64
		if try > 0 || !fresh {
			var cur Execution
			var err error
			rev, err = e.status.Get(ctx, key, &cur)
			switch {
			case errors.Is(err, records.ErrNotFound):
				rev = 0
			case err != nil:
				must(err)
			case cur.Seq > x.Seq:
				return
			}
		}
		if _, err := e.status.Put(ctx, key, x, rev); !errors.Is(err, records.ErrConflict) {
			must(err)
			return
		}
	}
	must(fmt.Errorf("status of %s/%s: too many conflicting writers", x.Workflow, x.ID))
}

// must makes the mesh deliver the command again later if err is not nil:
// a panic is how a persisted message's handler asks for a retry (an error
// returned would be stored as the command's reply).
func must(err error) {
	if err != nil {
		panic(fmt.Sprintf("workflow: %v (the command is delivered again)", err))
	}
}
