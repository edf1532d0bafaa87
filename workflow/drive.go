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

// handle is the Workflow entity's one handler: it records what the command
// brings (a start, a signal, an interrupt, a resume, a child's end), then
// drives the execution as far as it goes (to its end, a wait, or a stop
// for an operator) and records where it stands. A command that cannot be
// carried out now (storage unreachable, the lease lost) panics, which has
// the mesh deliver it again later: the execution carries on from its
// journal.
func (e *Engine) handle(ctx context.Context, ent *eventsourced.Entity[journal], cmd command) (Execution, error) {
	e.mu.Lock()
	d := e.defs[cmd.Def]
	e.mu.Unlock()
	if d == nil {
		return Execution{}, fmt.Errorf("%w: %q", ErrUnknownWorkflow, cmd.Def)
	}
	e.record(ctx, ent, cmd)
	j := ent.State()
	if j.Run == 0 {
		// A signal before the start: kept in the journal for it.
		return Execution{Workflow: cmd.Def, ID: cmd.ID, Status: Waiting, Waiting: "start"}, nil
	}
	x := e.drive(ctx, d, ent)
	e.writeStatus(ctx, x)
	return x, nil
}

// record stores what a command brings, once.
func (e *Engine) record(ctx context.Context, ent *eventsourced.Entity[journal], cmd command) {
	j := ent.State()
	var ev *event
	switch cmd.Op {
	case "start":
		if j.Run == 0 {
			ev = &event{Kind: evRun, Run: 1, Data: cmd.Input, At: e.clock.Now().UTC(), Parent: cmd.Parent}
		}
	case "signal":
		if _, got := j.Signals[cmd.Name]; !got {
			ev = &event{Kind: evSignal, Name: cmd.Name, Data: cmd.Data, Err: cmd.Err}
		}
	case "interrupt":
		if !j.Interrupted && j.End == nil && j.Run > 0 {
			must(ent.Persist(ctx, event{Kind: evInterrupt}))
			if j.Stuck != nil && j.Stuck.Seq >= 0 {
				// Stuck on a failing activity: the interrupt gives up on
				// it and compensates what the execution did. (One stuck
				// in its code, by a non-determinism or a panic, needs the
				// code fixed and Resume.)
				ev = &event{Kind: evResumed}
			}
		}
	case "resume":
		if j.Stuck != nil {
			ev = &event{Kind: evResumed}
		}
	case "childDone":
		if _, done := j.Done[cmd.Seq]; !done && cmd.Run == j.Run {
			ev = &event{Kind: evChildDone, Seq: cmd.Seq, Data: cmd.Data, Err: cmd.Err}
		}
	}
	if ev != nil {
		must(ent.Persist(ctx, *ev))
	}
}

// drive runs the workflow function against the journal until the run
// ends, waits or stops, and returns where the execution stands.
func (e *Engine) drive(ctx context.Context, d *definition, ent *eventsourced.Entity[journal]) Execution {
	for {
		j := ent.State()
		if j.End != nil || j.Stuck != nil {
			return e.execution(ent, "")
		}
		s, out := e.runOnce(ctx, d, ent)
		switch s.kind {
		case suspended:
			return e.execution(ent, s.on)
		case retry:
			must(s.err)
		case stuck:
			if s.err != nil { // not recorded yet (a non-determinism, a panic)
				info := &ErrorInfo{Code: "Stuck", Message: s.err.Error()}
				if errors.Is(s.err, ErrNonDeterminism) {
					info.Code = "NonDeterminism"
				}
				must(ent.Persist(ctx, event{Kind: evStuck, Seq: -1, Err: info}))
				e.log.Error("workflow stuck", "workflow", d.name, "id", j.ID, "err", s.err)
			}
			return e.execution(ent, "")
		case interrupted:
			if e.compensate(ctx, ent, s.comps) {
				must(ent.Persist(ctx, event{Kind: evEnd, Name: string(Interrupted), Err: &ErrorInfo{Code: "Interrupted", Message: "interrupted"}}))
				e.notifyParent(ctx, ent)
			}
			return e.execution(ent, "")
		}
		// The function returned.
		if ca, ok := isContinue(out.err); ok {
			must(ent.Persist(ctx, event{Kind: evEnd, Name: string(ContinuedAsNew)},
				event{Kind: evRun, Run: j.Run + 1, Data: ca.input, At: e.clock.Now().UTC(), Parent: j.Parent}))
			continue
		}
		if out.err == nil {
			must(ent.Persist(ctx, event{Kind: evEnd, Name: string(Completed), Data: out.data}))
		} else {
			if !e.compensate(ctx, ent, s.comps) {
				return e.execution(ent, "")
			}
			must(ent.Persist(ctx, event{Kind: evEnd, Name: string(Failed), Err: d.encodeError(out.err)}))
		}
		e.notifyParent(ctx, ent)
		return e.execution(ent, "")
	}
}

// result is what the workflow function returned.
type result struct {
	data json.RawMessage
	err  error
}

// runOnce runs the workflow function, on its own goroutine, until it
// returns or stops.
func (e *Engine) runOnce(ctx context.Context, d *definition, ent *eventsourced.Entity[journal]) (stopped, result) {
	c := &Context{ctx: ctx, e: e, def: d, ent: ent, stop: make(chan stopped, 1)}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				c.stop <- stopped{kind: stuck, err: fmt.Errorf("workflow %s panicked: %v\n%s", d.name, r, debug.Stack()), comps: c.comps}
			}
		}()
		data, err := d.run(c, ent.State().Input)
		if err == nil && c.seq < len(ent.State().Commands) {
			// Returned before the steps its journal records: the code
			// changed under a running execution.
			got := ent.State().Commands[c.seq]
			c.stop <- stopped{kind: stuck, err: &NonDeterminismError{Seq: c.seq, Want: "the end", Got: describe(got.Kind, got.Name)}}
			return
		}
		done <- result{data: data, err: err}
		c.stop <- stopped{kind: -1, comps: c.comps}
	}()
	s := <-c.stop
	if s.kind == -1 {
		return s, <-done
	}
	return s, result{}
}

// compensate runs the compensations not run yet, latest first; it reports
// whether they all ran (else the execution is stuck for an operator).
func (e *Engine) compensate(ctx context.Context, ent *eventsourced.Entity[journal], comps []compensation) bool {
	for i := len(comps) - 1; i >= 0; i-- {
		comp := comps[i]
		if ent.State().CompDone[comp.seq] {
			continue
		}
		info := comp.info
		wait := comp.retry.Backoff
		var err error
		for n := 1; n <= comp.retry.MaxAttempts; n++ {
			info.Attempt = n
			if err = comp.fn(ctx, info); err == nil {
				break
			}
			if ctx.Err() != nil {
				must(ctx.Err())
			}
			e.log.Warn("workflow compensation failed", "workflow", info.Workflow, "id", info.ID, "activity", info.Name, "attempt", n, "err", err)
			if n < comp.retry.MaxAttempts {
				select {
				case <-e.clock.After(wait):
				case <-ctx.Done():
					must(ctx.Err())
				}
				wait = min(2*wait, comp.retry.BackoffMax)
			}
		}
		if err != nil {
			must(ent.Persist(ctx, event{Kind: evStuck, Seq: comp.seq, Err: &ErrorInfo{Code: "Stuck",
				Message: fmt.Sprintf("compensating activity %s failed %d times: %v", info.Name, comp.retry.MaxAttempts, err)}}))
			return false
		}
		must(ent.Persist(ctx, event{Kind: evCompDone, Seq: comp.seq}))
	}
	return true
}

// notifyParent tells a child's parent that the child ended.
func (e *Engine) notifyParent(ctx context.Context, ent *eventsourced.Entity[journal]) {
	j := ent.State()
	if j.Parent == nil || j.End == nil {
		return
	}
	p := j.Parent
	cmd := command{Op: "childDone", Def: p.Def, ID: p.ID, Seq: p.Seq, Run: p.Run, Data: j.End.Data, Err: j.End.Err}
	must(e.send(ctx, cmd, msgID(p.Def, p.ID, "child", strconv.Itoa(p.Run), strconv.Itoa(p.Seq))))
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
// there (a stale instance's write never replaces a newer one).
func (e *Engine) writeStatus(ctx context.Context, x Execution) {
	key := records.Key(x.Workflow, x.ID)
	for range 5 {
		var cur Execution
		rev, err := e.status.Get(ctx, key, &cur)
		switch {
		case errors.Is(err, records.ErrNotFound):
			rev = 0
		case err != nil:
			must(err)
		case cur.Seq > x.Seq:
			return
		}
		if _, err = e.status.Put(ctx, key, x, rev); !errors.Is(err, records.ErrConflict) {
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
