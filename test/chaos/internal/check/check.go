// Package check is the chaos suite's checker: from the records every runner
// process wrote (model.Record), what the suite did to each process, and
// what the load generator was told, it finds every breach of docs/design.md's
// invariants: a runner serving a shard without its lease, an address
// active on two runners at once, a singleton running twice, a state write
// fenced off by another writer, a persisted deposit acknowledged and not
// applied or applied out of order, a counter that disagrees with its
// acknowledged increments.
//
// # Usage
//
//	var r check.Report
//	r.Leases(incs, leaseEvents, gaps, shardOf) // first: the others use its findings
//	r.Activations(incs)
//	r.Singletons(incs)
//	r.Conflicts(incs)
//	r.Accounts(accounts, finals, incs)
//	for _, v := range r.Violations { ... } // v.Known names a known bug's signature
//
// # Concurrency
//
// A Report is not safe for concurrent use; the checks are pure functions
// of their inputs.
//
// # Guarantees
//
// The checks are exact on the records and strict: what they excuse, and
// why, is said at each excuse, and every excuse is listed in Report.Notes
// with its evidence. Times come from one clock (all processes of a run
// share a machine), so records of different processes are compared as
// they are.
package check

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/natsmesh/natsmesh/test/chaos/internal/model"
)

// Span is a time interval [From, To).
type Span struct{ From, To time.Time }

func (s Span) contains(t time.Time) bool { return !t.Before(s.From) && t.Before(s.To) }

func (s Span) overlaps(o Span) bool { return s.From.Before(o.To) && o.From.Before(s.To) }

// Incarnation is one runner process's life as the suite saw it.
type Incarnation struct {
	ID      string
	Started time.Time
	// Ended is when the process was killed, or seen to exit.
	Ended time.Time
	// Killed: the process was SIGKILLed at Ended, so what it had open
	// ended then.
	Killed bool
	// Pauses are its SIGSTOP..SIGCONT spans; Partitions the spans its
	// network was cut off or blackholed (its process kept running).
	Pauses, Partitions []Span
	Records            []model.Record
}

// Violation is one breach of an invariant.
type Violation struct {
	Invariant string
	Addr      string
	Detail    string
	// Known names the known bug whose signature the evidence matches
	// ("" for none).
	Known string
}

func (v Violation) String() string {
	s := fmt.Sprintf("%s: %s: %s", v.Invariant, v.Addr, v.Detail)
	if v.Known != "" {
		s = "[known bug " + v.Known + "] " + s
	}
	return s
}

// Known bugs: violations whose evidence matches the signature of a bug
// this suite found, recorded in docs/reliability.md with its fix; each is
// described below as it was before the fix. They are violations all the
// same: the suite tolerates them only when told to (the
// NATSMESH_TOLERATE_KNOWN_BUGS environment variable, to bisect an old
// revision), and any other violation still fails it. A signature is
// checked on the evidence, not assumed from the fault.
const (
	// ServeAfterPause: a runner resumed after a pause longer than its lease
	// runs calls that reached it before or during the pause, and its
	// singletons work, in the milliseconds between resuming and fencing,
	// although the shard's lease expired or moved meanwhile: nothing
	// checks the lease's local validity when a call is dispatched or a
	// handler starts. The new owner received the same volatile calls, so
	// they run twice. Signature: the run or tick breaks Leases and starts
	// within resumeWindow after a pause of its runner ends; overlaps,
	// refused writes and counter excesses are attributed to it when such a
	// run of the same account explains them.
	ServeAfterPause = "K1"
	// StalePull: a persisted message stored while the shard's previous
	// owner is paused or cut off goes to that owner's pull request, still
	// open on the shard's durable consumer (its unsubscription cannot
	// reach the server), and not to the new owner's: it waits there until
	// the ack wait (30 s) or a later reset of the consumer redelivers it,
	// behind the account's later messages. Signature: the out-of-order
	// deposit was stored (between its first send and its acknowledgement)
	// while the holder of its shard's lease at the start of a pause or
	// partition of that holder was still paused or cut off.
	StalePull = "K2"
	// SetupNotFenced: a runner that loses a shard's lease while it is
	// still setting the shard up (its persisted consumer, which can wait
	// up to CallTimeout for NATS) does not fence it: the lease's loss is
	// watched only once the set-up returns, while the shard's partition is
	// open and its subscription made, so the runner serves the shard, once
	// its connection is back, although another runner holds the lease.
	// Signature: the run or tick breaks Leases, and its runner's last
	// lease write of the shard before it was its acquisition (no renewal
	// followed), less than setupWindow before the run.
	SetupNotFenced = "K3"
)

// StaleRegistry (K4): after the faults, the leading shard manager keeps
// shards assigned to a runner that is gone and no longer registered, so
// they stay unserved until another manager leads. The manager learns of
// an expired registration only from its watch of the registry, through
// the expiry marker, which the bucket keeps for the lease TTL only
// (LimitMarkerTTL); a watcher being recreated after a NATS server restart
// for longer than that misses it, and nothing re-reads the registry.
// Signature: a minute after the faults, the leading manager's assignment
// names runners that are not registered.
const StaleRegistry = "K4"

// ExpiryLost (K5): a lease or registration key outlives its per-key TTL by
// minutes once its holder is gone, so the shard cannot be acquired, or the
// dead runner stays registered and keeps its shards. Seen with keys last
// written while a NATS server of the cluster was restarting
// (nats-server v2.15.2 did not expire them, even after the whole cluster
// restarted from its stores); the mesh trusts the server's expiry alone.
// Signature: a minute after the faults, a registration or a shard's lease
// names a runner incarnation whose process has exited.
const ExpiryLost = "K5"

// HeldOpen (K7): the activation of an entity on a runner cut off from NATS
// (cut or blackholed) stays open after the runner fences its shard, until
// storing the reply of the last persisted message its handler answered
// gives up (CallTimeout, 10 s): the reply was stored on the entity's own
// goroutine, and fencing waits for it. No handler runs meanwhile, but the
// activation overlaps the next owner's. Signature: a single-activation
// overlap whose earlier activation ended partition-closed on a runner that
// was cut off before the later one began, and ran no handler of the
// account from then on.
const HeldOpen = "K7"

// setupWindow bounds how long after acquiring a shard a runner may still
// be setting it up (CallTimeout, 10 s, plus slack) for its runs to match
// SetupNotFenced.
const setupWindow = 15 * time.Second

// resumeWindow bounds how long after a pause a runner may take to fence
// for its runs to match ServeAfterPause.
const resumeWindow = time.Second

// zombie is a run or tick that broke Leases and matches a known bug
// (ServeAfterPause or SetupNotFenced).
type zombie struct {
	inc   *Incarnation
	rec   model.Record
	known string
}

// Invariants, as named in violations.
const (
	SingleActivation = "single activation"
	SingleSingleton  = "singleton overlap"
	LeaseHeld        = "served without the lease"
	Fencing          = "fencing token"
	Order            = "order"
	Durability       = "durability"
	Counter          = "counter"
	Consistency      = "state consistency"
	Records          = "records"
	Availability     = "availability"
)

// Report collects violations and notes (excused events, with evidence).
// Run Leases before the other checks: they attribute violations to
// ServeAfterPause and SetupNotFenced from its findings.
type Report struct {
	Violations []Violation
	Notes      []string

	zombies map[string][]zombie  // by account or singleton name
	leases  map[int][]LeaseEvent // by shard, in time order
	shardOf func(string, bool) int
	incs    []*Incarnation
	// Counts is how much was checked.
	Counts struct{ Intervals, Handled, Conflicts, LeaseChecked, LeaseUnchecked int }
}

func (r *Report) violate(inv, addr, format string, args ...any) {
	r.violateKnown("", inv, addr, format, args...)
}

func (r *Report) violateKnown(known, inv, addr, format string, args ...any) {
	r.Violations = append(r.Violations, Violation{Invariant: inv, Addr: addr, Detail: fmt.Sprintf(format, args...), Known: known})
}

// zombieIn returns the known bug of a zombie run of addr by inc (any
// incarnation if nil) in [from, to], or "" if there is none.
func (r *Report) zombieIn(addr string, inc *Incarnation, from, to time.Time) string {
	for _, z := range r.zombies[addr] {
		if (inc == nil || z.inc == inc) && !z.rec.Start.Before(from) && !z.rec.Start.After(to) {
			return z.known
		}
	}
	return ""
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// interval is one activation (or singleton run) of an address on one
// incarnation, with the end that counts for overlap.
type interval struct {
	inc       *Incarnation
	start     time.Time
	end       time.Time // as recorded, or the kill
	effective time.Time // end, or the start of a pause it never served after
	how       string    // why it ended
}

func (iv interval) String() string {
	s := fmt.Sprintf("%s [%s, %s] (%s)", iv.inc.ID, clock(iv.start), clock(iv.end), iv.how)
	if !iv.effective.Equal(iv.end) {
		s += fmt.Sprintf(", paused from %s without serving it again", clock(iv.effective))
	}
	return s
}

func clock(t time.Time) string { return t.Format("15:04:05.000000") }

// intervals pairs the open and close records of kind open/close per
// address on one incarnation. work tells the records that count as serving
// the address (handler runs, singleton ticks): an interval whose
// incarnation was paused counts as ending at the pause unless it served
// the address again after the pause began. A paused process does nothing,
// so its activation is only nominal while it is stopped; one that resumes
// and serves again before it fences shows up as an overlap.
func (r *Report) intervals(inc *Incarnation, open, close model.Kind, work func(model.Record) bool) map[string][]interval {
	out := map[string][]interval{}
	openAt := map[string]time.Time{}
	served := map[string][]time.Time{} // work record times per address
	for _, rec := range inc.Records {
		if work(rec) {
			served[rec.Addr] = append(served[rec.Addr], rec.Start)
		}
	}
	add := func(addr string, start, end time.Time, how string) {
		iv := interval{inc: inc, start: start, end: end, effective: end, how: how}
		for _, p := range inc.Pauses { // in time order
			if !p.From.After(start) || !p.From.Before(end) {
				continue
			}
			again := slices.ContainsFunc(served[addr], func(t time.Time) bool { return !t.Before(p.From) && !t.After(end) })
			if !again {
				iv.effective = p.From
				break
			}
		}
		out[addr] = append(out[addr], iv)
	}
	for _, rec := range inc.Records {
		switch rec.Kind {
		case open:
			if at, ok := openAt[rec.Addr]; ok {
				r.violate(Records, rec.Addr, "%s opened it at %s while open since %s", inc.ID, clock(rec.Start), clock(at))
			}
			openAt[rec.Addr] = rec.Start
		case close:
			at, ok := openAt[rec.Addr]
			if !ok {
				r.violate(Records, rec.Addr, "%s closed it at %s without opening it", inc.ID, clock(rec.Start))
				continue
			}
			delete(openAt, rec.Addr)
			add(rec.Addr, at, rec.Start, rec.Op)
		}
	}
	for addr, at := range openAt {
		switch {
		case inc.Killed:
			add(addr, at, inc.Ended, "killed")
		default:
			// A process that stopped gracefully closes everything: an
			// interval left open may have lasted until its exit.
			r.violate(Records, addr, "%s never closed what it opened at %s, though it exited without SIGKILL", inc.ID, clock(at))
			add(addr, at, inc.Ended, "exited")
		}
	}
	return out
}

// overlaps reports, per address, every pair of intervals of different
// incarnations whose effective spans overlap.
func (r *Report) overlaps(inv string, all map[string][]interval) {
	for addr, ivs := range all {
		slices.SortFunc(ivs, func(a, b interval) int { return a.start.Compare(b.start) })
		var last interval // the interval reaching furthest so far
		for i, iv := range ivs {
			if i > 0 && iv.start.Before(last.effective) && iv.inc != last.inc {
				known := cmp.Or(r.zombieIn(addr, last.inc, last.start, last.end), r.zombieIn(addr, iv.inc, iv.start, iv.end))
				if known == "" && inv == SingleActivation && heldOpen(addr, last, iv) {
					known = HeldOpen
				}
				r.violateKnown(known, inv, addr, "%v overlaps %v by %v", last, iv, last.effective.Sub(iv.start))
			}
			if i == 0 || iv.effective.After(last.effective) {
				last = iv
			}
		}
	}
}

// heldOpen reports whether the overlap of activations last and iv of
// addr matches HeldOpen.
func heldOpen(addr string, last, iv interval) bool {
	if last.how != "partition-closed" { // actor.StopPartitionClosed, as the runners record it
		return false
	}
	cutOff := slices.ContainsFunc(last.inc.Partitions, func(f Span) bool {
		return f.From.Before(iv.start) && f.From.Before(last.end)
	})
	return cutOff && !slices.ContainsFunc(last.inc.Records, func(rec model.Record) bool {
		return rec.Kind == model.Handled && rec.Addr == addr && !rec.End.Before(iv.start) && !rec.Start.After(last.end)
	})
}

func merge(dst, src map[string][]interval) {
	for k, v := range src {
		dst[k] = append(dst[k], v...)
	}
}

// Activations checks single activation of accounts: no two incarnations'
// activations of one account overlap (a pause excused as described at
// intervals), and every handler run lies within an activation of its own
// incarnation. A handler that was running when its runner was paused or
// cut off and finished after another runner activated the account is the
// documented limit of fencing (docs/operations.md, Known limits): it is
// noted, and Conflicts checks that its write was fenced off.
func (r *Report) Activations(incs []*Incarnation) {
	all := map[string][]interval{}
	handled := func(rec model.Record) bool { return rec.Kind == model.Handled }
	for _, inc := range incs {
		own := r.intervals(inc, model.Activated, model.Deactivated, handled)
		for _, rec := range inc.Records {
			if rec.Kind != model.Handled {
				continue
			}
			r.Counts.Handled++
			if !slices.ContainsFunc(own[rec.Addr], func(iv interval) bool {
				return !rec.Start.Before(iv.start) && !rec.End.After(iv.end)
			}) {
				r.violate(SingleActivation, rec.Addr, "%s ran %s(%d) [%s, %s] outside its activations", inc.ID, rec.Op, rec.Arg, clock(rec.Start), clock(rec.End))
			}
		}
		merge(all, own)
	}
	for _, ivs := range all {
		r.Counts.Intervals += len(ivs)
	}
	r.overlaps(SingleActivation, all)
	// Handlers in flight across another's activation (their start lies in
	// their own effective interval, else overlaps reported them).
	for _, inc := range incs {
		for _, rec := range inc.Records {
			if rec.Kind != model.Handled {
				continue
			}
			run := Span{rec.Start, rec.End}
			for _, iv := range all[rec.Addr] {
				if iv.inc != inc && run.overlaps(Span{iv.start, iv.effective}) && !(Span{iv.start, iv.effective}).contains(rec.Start) {
					r.note("in-flight handler: %s ran %s(%d) %s [%s, %s] (outcome %s) into %v",
						inc.ID, rec.Op, rec.Arg, rec.Addr, clock(rec.Start), clock(rec.End), rec.Outcome, iv)
				}
			}
		}
	}
}

// Singletons checks that no two incarnations ran one singleton at once:
// runs are SingletonStart..SingletonStop, ticks are its work.
func (r *Report) Singletons(incs []*Incarnation) {
	all := map[string][]interval{}
	tick := func(rec model.Record) bool { return rec.Kind == model.SingletonTick }
	for _, inc := range incs {
		runs := r.intervals(inc, model.SingletonStart, model.SingletonStop, tick)
		for _, ivs := range runs {
			for i := range ivs {
				if ivs[i].how == "" {
					ivs[i].how = "stopped"
				}
			}
		}
		merge(all, runs)
	}
	r.overlaps(SingleSingleton, all)
}

// Conflicts checks refused state writes. A write is refused when the
// account's state was written by someone else since this activation read
// it: another activation, at the same time. That is expected in one case
// only, a write that reached the server late: a handler's that was running
// when its runner was paused or cut off (held by the pause or the network:
// the documented limit of fencing), or one whose writer timed out while
// the server still committed it (a NATS server failing over, say). The
// refused write is then the late one, or the next writer's after it
// landed. Any other refused write is a violation.
func (r *Report) Conflicts(incs []*Incarnation) {
	// Handler runs that overlapped a fault of their own incarnation.
	type run struct {
		inc  *Incarnation
		span Span
	}
	faulted := map[string][]run{}
	// Writes that failed with an unknown outcome (a timeout): the server
	// may still commit them, after the writer gave up.
	unknown := map[string][]run{}
	for _, inc := range incs {
		faults := append(slices.Clone(inc.Pauses), inc.Partitions...)
		for _, rec := range inc.Records {
			if rec.Kind != model.Handled || rec.Outcome == model.Duplicate || rec.Outcome == model.ReadOnly {
				continue
			}
			span := Span{rec.Start, rec.End.Add(time.Nanosecond)}
			if slices.ContainsFunc(faults, span.overlaps) {
				faulted[rec.Addr] = append(faulted[rec.Addr], run{inc, span})
			}
			if rec.Outcome == model.Failed {
				unknown[rec.Addr] = append(unknown[rec.Addr], run{inc, span})
			}
		}
	}
	for _, inc := range incs {
		for _, rec := range inc.Records {
			if rec.Kind != model.Conflict {
				continue
			}
			r.Counts.Conflicts++
			var why []string
			for _, f := range faulted[rec.Addr] {
				if !f.span.From.After(rec.Start) {
					why = append(why, fmt.Sprintf("%s's write [%s, %s] overlapped a fault of %s", f.inc.ID, clock(f.span.From), clock(f.span.To), f.inc.ID))
				}
			}
			for _, u := range unknown[rec.Addr] {
				if !u.span.From.After(rec.Start) && rec.Start.Sub(u.span.From) < lateWrite {
					why = append(why, fmt.Sprintf("%s's write [%s, %s] failed with an unknown outcome and may have landed late", u.inc.ID, clock(u.span.From), clock(u.span.To)))
				}
			}
			if k := r.zombieIn(rec.Addr, nil, rec.Start.Add(-lateWrite), rec.Start); len(why) == 0 && k != "" {
				r.violateKnown(k, Fencing, rec.Addr, "%s's write of %s(%d) at revision %d was refused at %s, after a run of the account by a runner without the lease",
					inc.ID, rec.Op, rec.Arg, rec.Rev, clock(rec.Start))
				continue
			}
			if len(why) == 0 {
				r.violate(Fencing, rec.Addr, "%s's write of %s(%d) at revision %d was refused at %s: another writer, and no handler in flight across a fault explains it",
					inc.ID, rec.Op, rec.Arg, rec.Rev, clock(rec.Start))
				continue
			}
			r.note("refused write: %s's %s(%d) of %s at revision %d at %s; %s", inc.ID, rec.Op, rec.Arg, rec.Addr, rec.Rev, clock(rec.Start), why[0])
		}
	}
}

// lateWrite bounds how long after a write timed out it may still land:
// more than a JetStream leader election.
const lateWrite = time.Minute

// LeaseEvent is one write of a shard's lease as the lease bucket's
// watcher saw it, with the server's timestamp: Holder took or renewed it
// (Held), or it was released or expired (!Held).
type LeaseEvent struct {
	At     time.Time
	Rev    uint64 // the lease bucket's stream sequence
	Shard  int
	Holder string
	Held   bool
}

// Leases checks that every handler run and every singleton tick happened
// on the incarnation holding the lease of its shard at that moment: the
// last lease event of the shard at or before it is a write by that
// incarnation. This is the fencing guarantee itself, at shard level: a
// runner paused or cut off past its lease's expiry must not serve, even an
// address nobody else has activated yet. A runner writes its lease before
// it serves (the write's server time precedes its first handler) and
// fences before the server can expire the lease (the expiry marker's time
// follows its last handler), so a correct run passes whatever the
// scheduling. A run is not checked when the watcher's history around it is
// incomplete: before the shard's first event (the watcher started late),
// or when gaps (revision ranges the watcher skipped, each exclusive at
// both ends) hide revisions between the shard's events around the run,
// one of which could be the runner's own acquisition. shardOf maps an
// account id, or a singleton's name (singleton true), to its shard.
func (r *Report) Leases(incs []*Incarnation, events []LeaseEvent, gaps [][2]uint64, shardOf func(addr string, singleton bool) int) {
	byShard := map[int][]LeaseEvent{}
	for _, e := range events {
		byShard[e.Shard] = append(byShard[e.Shard], e)
	}
	for _, es := range byShard {
		slices.SortStableFunc(es, func(a, b LeaseEvent) int { return a.At.Compare(b.At) })
	}
	r.leases, r.shardOf, r.zombies, r.incs = byShard, shardOf, map[string][]zombie{}, incs
	for _, inc := range incs {
		for _, rec := range inc.Records {
			if rec.Kind != model.Handled && rec.Kind != model.SingletonTick {
				continue
			}
			shard := shardOf(rec.Addr, rec.Kind == model.SingletonTick)
			es := byShard[shard]
			i, _ := slices.BinarySearchFunc(es, rec.Start, func(e LeaseEvent, t time.Time) int {
				if e.At.After(t) {
					return 1
				}
				return -1
			})
			if i == 0 {
				r.Counts.LeaseUnchecked++
				continue
			}
			last, next := es[i-1], uint64(math.MaxUint64)
			if i < len(es) {
				next = es[i].Rev
			}
			// Revisions g[0]+1 .. g[1]-1 were missed: any strictly between
			// last and next?
			if slices.ContainsFunc(gaps, func(g [2]uint64) bool { return g[0]+1 < next && g[1] > last.Rev+1 }) {
				r.Counts.LeaseUnchecked++
				continue
			}
			r.Counts.LeaseChecked++
			if last.Held && last.Holder == inc.ID {
				continue
			}
			what := fmt.Sprintf("%s(%d) of %s", rec.Op, rec.Arg, rec.Addr)
			if rec.Kind == model.SingletonTick {
				what = "singleton " + rec.Addr + "'s work"
			}
			state := "released or expired"
			if last.Held {
				state = "held by " + last.Holder
			}
			known := ""
			for _, p := range inc.Pauses {
				if known == "" && !rec.Start.Before(p.To) && rec.Start.Sub(p.To) < resumeWindow {
					known = ServeAfterPause
					what += fmt.Sprintf(", %v after resuming from a %v pause", rec.Start.Sub(p.To), p.To.Sub(p.From).Round(time.Millisecond))
				}
			}
			if known == "" {
				if at, ok := acquiredOnly(es[:i], inc.ID); ok && rec.Start.Sub(at) < setupWindow {
					known = SetupNotFenced
					what += fmt.Sprintf(", %v after acquiring its lease (never renewed)", rec.Start.Sub(at).Round(time.Millisecond))
				}
			}
			if known != "" {
				r.zombies[rec.Addr] = append(r.zombies[rec.Addr], zombie{inc, rec, known})
			}
			r.violateKnown(known, LeaseHeld, rec.Addr, "%s ran %s at %s on shard %d, whose lease was %s since %s (server time)",
				inc.ID, what, clock(rec.Start), shard, state, clock(last.At))
		}
	}
}

// acquiredOnly reports whether holder's last write among a shard's events
// was an acquisition (the event before it is not holder's), and when.
func acquiredOnly(es []LeaseEvent, holder string) (time.Time, bool) {
	for j := len(es) - 1; j >= 0; j-- {
		if es[j].Held && es[j].Holder == holder {
			return es[j].At, j == 0 || !es[j-1].Held || es[j-1].Holder != holder
		}
	}
	return time.Time{}, false
}

// Account is what the load generator knows of one account.
type Account struct {
	ID string
	// AddOK and AddUnknown count Adds (of 1) answered OK, and failed (they
	// may or may not have been applied).
	AddOK, AddUnknown int64
	// Replies are the values of the OK Adds in order, each with how many
	// unknown Adds came just before it.
	Replies []Reply
	// Acked are the deposits whose Send or Call returned OK (stored), in
	// order; Unknown those that never did (maybe stored).
	Acked   []Sent
	Unknown []int64
}

// Sent is an acknowledged deposit: it was stored between the start of
// its first attempt (From) and its acknowledgement (At), which may have
// come from a later attempt with the same message id.
type Sent struct {
	Seq      int64
	From, At time.Time
}

// Reply is one answered Add.
type Reply struct {
	Value       int64
	UnknownPrev int64
	At          time.Time
}

// Accounts checks every account's final state against its load: each
// acknowledged deposit applied (durability), nothing applied that was not
// sent, the volatile counter within [answered, answered + unknown], each
// answer one more than the previous (plus the unknown calls in between);
// and every out-of-order deposit reported by the runners is a violation
// unless its send's outcome was unknown (a late store).
func (r *Report) Accounts(accts []Account, final map[string]model.State, incs []*Incarnation) {
	byID := map[string]*Account{}
	for i := range accts {
		byID[accts[i].ID] = &accts[i]
	}
	for _, a := range accts {
		st := final[a.ID]
		sent := map[int64]bool{}
		for _, d := range a.Acked {
			sent[d.Seq] = true
			if !st.Has(d.Seq) {
				r.violate(Durability, a.ID, "deposit %d was acknowledged at %s and never applied (applied: %v)", d.Seq, clock(d.At), st.Applied)
			}
		}
		for _, s := range a.Unknown {
			sent[s] = true
		}
		// Adds run by a runner without the lease (possibly twice: the
		// lease holder received them too; their caller got one answer).
		var twice int64
		zknown := ""
		for _, z := range r.zombies[a.ID] {
			if z.rec.Op == "Add" && z.rec.Outcome == model.OK {
				twice++
				zknown = cmp.Or(zknown, z.known)
			}
		}
		for _, rg := range st.Applied {
			for s := rg[0]; s <= rg[1]; s++ {
				if !sent[s] {
					r.violate(Counter, a.ID, "deposit %d applied but never sent", s)
				}
			}
		}
		if st.Volatile < a.AddOK || st.Volatile > a.AddOK+a.AddUnknown {
			known := ""
			if st.Volatile > a.AddOK && st.Volatile <= a.AddOK+a.AddUnknown+twice {
				known = zknown
			}
			r.violateKnown(known, Counter, a.ID, "stored %d Adds, want %d answered + up to %d unknown (%d Adds ran on a runner without the lease)",
				st.Volatile, a.AddOK, a.AddUnknown, twice)
		}
		var prev int64
		for i, rep := range a.Replies {
			if rep.Value <= prev || rep.Value > prev+1+rep.UnknownPrev {
				known := ""
				if rep.Value > prev && rep.Value <= prev+1+rep.UnknownPrev+twice {
					known = zknown
				}
				r.violateKnown(known, Counter, a.ID, "Add answer %d at %s = %d after %d with %d unknown Adds between: want %d..%d",
					i, clock(rep.At), rep.Value, prev, rep.UnknownPrev, prev+1, prev+1+rep.UnknownPrev)
			}
			prev = rep.Value
		}
	}
	for _, inc := range incs {
		for _, rec := range inc.Records {
			if rec.Kind != model.OutOfOrder {
				continue
			}
			a := byID[rec.Addr]
			if a != nil && slices.Contains(a.Unknown, rec.Arg) {
				r.note("late deposit: %s applied %s's deposit %d after %d at %s; its send's outcome was unknown to the sender", inc.ID, rec.Addr, rec.Arg, rec.Value, clock(rec.Start))
				continue
			}
			known, why := "", ""
			if a != nil {
				if i := slices.IndexFunc(a.Acked, func(d Sent) bool { return d.Seq == rec.Arg }); i >= 0 {
					d := a.Acked[i]
					if h := r.staleHolder(rec.Addr, Span{d.From, d.At.Add(time.Nanosecond)}); h != "" {
						known = StalePull
						why = fmt.Sprintf("; it was stored in [%s, %s], while %s", clock(d.From), clock(d.At), h)
					}
				}
			}
			r.violateKnown(known, Order, rec.Addr, "%s applied deposit %d at %s after deposit %d, though %d was acknowledged before %d was sent%s",
				inc.ID, rec.Arg, clock(rec.Start), rec.Value, rec.Arg, rec.Value, why)
		}
	}
}

// staleHolder describes the incarnation, if any, that held the lease of
// account id's shard when one of its pauses or partitions began and was
// still paused or cut off during stored ("" if none): its pull requests
// may still be open on the shard's consumer.
func (r *Report) staleHolder(id string, stored Span) string {
	if r.shardOf == nil || r.incs == nil {
		return ""
	}
	es := r.leases[r.shardOf(id, false)]
	holderAt := func(at time.Time) string {
		h := ""
		for _, e := range es {
			if e.At.After(at) {
				break
			}
			h = ""
			if e.Held {
				h = e.Holder
			}
		}
		return h
	}
	for _, inc := range r.incs {
		for _, f := range append(slices.Clone(inc.Pauses), inc.Partitions...) {
			if f.overlaps(stored) && holderAt(f.From) == inc.ID {
				return fmt.Sprintf("%s, which held the shard's lease, was paused or cut off [%s, %s]", inc.ID, clock(f.From), clock(f.To))
			}
		}
	}
	return ""
}

// Window is the longest time a shard went without an answered call.
type Window struct {
	Shard    int
	From, To time.Time
}

// Unavailability returns each shard's longest window between consecutive
// answered calls (by their end), longest first. answered[s] are the end
// times of shard s's answered calls, in any order.
func Unavailability(answered map[int][]time.Time) []Window {
	var out []Window
	for s, ends := range answered {
		ends = slices.Clone(ends)
		slices.SortFunc(ends, time.Time.Compare)
		w := Window{Shard: s}
		for i := 1; i < len(ends); i++ {
			if d := ends[i].Sub(ends[i-1]); d > w.To.Sub(w.From) {
				w.From, w.To = ends[i-1], ends[i]
			}
		}
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b Window) int {
		return cmp.Or(cmp.Compare(b.To.Sub(b.From), a.To.Sub(a.From)), cmp.Compare(a.Shard, b.Shard))
	})
	return out
}
