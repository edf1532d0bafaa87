package workflow

import (
	"encoding/json"
	"time"
)

// The journal of an execution is the history of an event-sourced entity
// (package eventsourced): one stream subject per execution, appended with
// the expected last sequence, so that a runner that lost the execution
// (fenced) cannot append. Replaying the workflow function against it
// gives back every result it recorded: a command (an activity, a timer, an
// await, a child, a clock reading) takes the next sequence number, and at
// each sequence the journal holds what the command returned the first
// time.

// Event kinds. Commands take a sequence number; the others do not.
const (
	evRun        = "run"        // a run starts: Run, Data = input
	evActivity   = "activity"   // command: Name, Data or Err = its result
	evTimer      = "timer"      // command: At = when it fires
	evTimerFired = "timerFired" // Seq's timer fired
	evAwait      = "await"      // command: Name = the signal, At = its deadline (zero: none)
	evAwaitDone  = "awaitDone"  // Seq's await returned: Data or Err, or TimedOut
	evChild      = "child"      // command: Name = the child's workflow, Data = its id
	evChildDone  = "childDone"  // Seq's child ended: Data or Err
	evNow        = "now"        // command: At = the time read
	evSignal     = "signal"     // a signal arrived: Name, Data or Err (first wins)
	evMarker     = "marker"     // a version marker: Name = change id, Ver
	evInterrupt  = "interrupt"  // an interrupt was asked for
	evStuck      = "stuck"      // stopped for an operator: Seq (or -1), Err
	evResumed    = "resumed"    // an operator resumed it
	evCompDone   = "compDone"   // Seq's compensation ran
	evEnd        = "end"        // the run ended: Name = its status, Data or Err
)

// event is one entry of a journal (the eventsourced event "wf").
type event struct {
	Kind     string          `json:"k"`
	Seq      int             `json:"s,omitempty"`
	Name     string          `json:"n,omitempty"`
	Data     json.RawMessage `json:"d,omitempty"`
	Err      *ErrorInfo      `json:"e,omitempty"`
	At       time.Time       `json:"at,omitzero"`
	Ver      int             `json:"v,omitempty"`
	Run      int             `json:"r,omitempty"`
	TimedOut bool            `json:"to,omitempty"`
	// Parent, on a child's run event: the parent's step to complete.
	Parent *parentRef `json:"p,omitempty"`
}

// entries is what one append stores: the events a run recorded since its
// last append, in order (one message for all: JetStream stores one message
// about as fast as a byte, and an atomic batch of several far slower).
type entries struct {
	E []event `json:"e"`
}

// applyAll folds a stored append.
func applyAll(j journal, es entries) journal {
	for _, ev := range es.E {
		j = apply(j, ev)
	}
	return j
}

// journal is an execution's state: its current run's history, folded.
type journal struct {
	Def, ID     string
	Run         int // 0 before the first start
	Input       json.RawMessage
	Parent      *parentRef // a child's parent
	Started     time.Time
	Commands    []event          // by sequence: the command's first event
	Done        map[int]event    // the completion of a two-event command (timer, await, child)
	Signals     map[string]event // received, by name
	Markers     map[string]int   // version markers, by change id
	CompDone    map[int]bool     // compensations that ran, by their activity's sequence
	Interrupted bool
	Stuck       *event // non-nil while stuck
	End         *event // non-nil once the run ended for good
	// ContinuedAsNew counts the runs ended by continue-as-new.
	ContinuedAsNew int
}

func newJournal() journal {
	return journal{Done: map[int]event{}, Signals: map[string]event{}, Markers: map[string]int{}, CompDone: map[int]bool{}}
}

// apply folds one event into the journal.
func apply(j journal, ev event) journal {
	switch ev.Kind {
	case evRun:
		// A new run: the previous one's history is gone from the state
		// (it stays in the stream); signals not awaited are kept.
		def, id, signals := j.Def, j.ID, j.Signals
		for _, c := range j.Commands {
			if c.Kind == evAwait {
				if d, ok := j.Done[c.Seq]; ok && !d.TimedOut {
					delete(signals, c.Name)
				}
			}
		}
		j = newJournal()
		j.Def, j.ID, j.Signals = def, id, signals
		j.Run, j.Input, j.Started, j.Parent = ev.Run, ev.Data, ev.At, ev.Parent
	case evActivity, evTimer, evAwait, evChild, evNow:
		if ev.Seq == len(j.Commands) {
			j.Commands = append(j.Commands, ev)
		}
	case evTimerFired, evAwaitDone, evChildDone:
		if _, done := j.Done[ev.Seq]; !done {
			j.Done[ev.Seq] = ev
		}
	case evSignal:
		if _, got := j.Signals[ev.Name]; !got {
			j.Signals[ev.Name] = ev
		}
	case evMarker:
		if _, set := j.Markers[ev.Name]; !set {
			j.Markers[ev.Name] = ev.Ver
		}
	case evInterrupt:
		j.Interrupted = true
	case evStuck:
		e := ev
		j.Stuck = &e
	case evResumed:
		j.Stuck = nil
	case evCompDone:
		j.CompDone[ev.Seq] = true
	case evEnd:
		if ev.Name == string(ContinuedAsNew) {
			j.ContinuedAsNew++
			break
		}
		e := ev
		j.End = &e
	}
	return j
}

// clone returns a copy of j that shares nothing mutable with it: a drive
// applies its steps to a clone (its view) until they are appended.
func (j journal) clone() journal {
	c := j
	c.Commands = append([]event(nil), j.Commands...)
	c.Done = make(map[int]event, len(j.Done))
	for k, v := range j.Done {
		c.Done[k] = v
	}
	c.Signals = make(map[string]event, len(j.Signals))
	for k, v := range j.Signals {
		c.Signals[k] = v
	}
	c.Markers = make(map[string]int, len(j.Markers))
	for k, v := range j.Markers {
		c.Markers[k] = v
	}
	c.CompDone = make(map[int]bool, len(j.CompDone))
	for k, v := range j.CompDone {
		c.CompDone[k] = v
	}
	return c
}
