package check

import (
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/test/chaos/internal/model"
)

var t0 = time.Unix(1_700_000_000, 0)

// at returns t0 plus s seconds.
func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func act(s float64, addr string) model.Record {
	return model.Record{Kind: model.Activated, Start: at(s), Addr: addr}
}

func deact(s float64, addr string) model.Record {
	return model.Record{Kind: model.Deactivated, Start: at(s), Addr: addr, Op: "idle"}
}

func handled(from, to float64, addr, outcome string) model.Record {
	return model.Record{Kind: model.Handled, Start: at(from), End: at(to), Addr: addr, Op: "Add", Arg: 1, Outcome: outcome}
}

func rec(k model.Kind, s float64, addr string) model.Record {
	return model.Record{Kind: k, Start: at(s), Addr: addr, Op: "Add"}
}

func inc(id string, ended float64, killed bool, recs ...model.Record) *Incarnation {
	return &Incarnation{ID: id, Started: t0, Ended: at(ended), Killed: killed, Records: recs}
}

func paused(i *Incarnation, from, to float64) *Incarnation {
	i.Pauses = append(i.Pauses, Span{at(from), at(to)})
	return i
}

func cut(i *Incarnation, from, to float64) *Incarnation {
	i.Partitions = append(i.Partitions, Span{at(from), at(to)})
	return i
}

// wantViolations fails unless r's violations are of the invariants want,
// in order.
func wantViolations(t *testing.T, check string, r *Report, want []string) {
	t.Helper()
	var got []string
	for _, v := range r.Violations {
		got = append(got, v.Invariant)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("%s violations = %v, want %v", check, r.Violations, want)
	}
}

func TestActivations(t *testing.T) {
	tests := []struct {
		name string
		incs []*Incarnation
		want []string
	}{
		{name: "hand-off", incs: []*Incarnation{
			inc("r1", 10, false, act(1, "a"), handled(1.1, 1.2, "a", model.OK), deact(2, "a")),
			inc("r2", 10, false, act(3, "a"), handled(3.1, 3.2, "a", model.OK), deact(4, "a")),
		}},
		{name: "overlap", incs: []*Incarnation{
			inc("r1", 10, false, act(1, "a"), deact(5, "a")),
			inc("r2", 10, false, act(3, "a"), deact(4, "a")),
		}, want: []string{SingleActivation}},
		{name: "other addresses may overlap", incs: []*Incarnation{
			inc("r1", 10, false, act(1, "a"), deact(5, "a")),
			inc("r2", 10, false, act(3, "b"), deact(4, "b")),
		}},
		{name: "paused and fenced on resume", incs: []*Incarnation{
			paused(inc("r1", 10, false, act(1, "a"), handled(1.5, 1.6, "a", model.OK), deact(8.1, "a")), 2, 8),
			inc("r2", 10, false, act(4, "a"), handled(4.1, 4.2, "a", model.OK), deact(9, "a")),
		}},
		{name: "a short pause does not hide a later long one", incs: []*Incarnation{
			paused(paused(inc("r1", 10, false, act(1, "a"), handled(1.9, 2.1, "a", model.OK), handled(2.5, 2.6, "a", model.OK), deact(8.1, "a")), 2, 2.2), 3, 8),
			inc("r2", 10, false, act(4, "a"), deact(9, "a")),
		}},
		{name: "paused, then served after resume", incs: []*Incarnation{
			paused(inc("r1", 10, false, act(1, "a"), handled(8.05, 8.06, "a", model.OK), deact(8.1, "a")), 2, 8),
			inc("r2", 10, false, act(4, "a"), deact(9, "a")),
		}, want: []string{SingleActivation}},
		{name: "killed", incs: []*Incarnation{
			inc("r1", 3, true, act(1, "a")),
			inc("r2", 10, false, act(4, "a"), deact(5, "a")),
		}},
		{name: "activated before the kill", incs: []*Incarnation{
			inc("r1", 3, true, act(1, "a")),
			inc("r2", 10, false, act(2.5, "a"), deact(5, "a")),
		}, want: []string{SingleActivation}},
		{name: "handled outside an activation", incs: []*Incarnation{
			inc("r1", 10, false, act(1, "a"), deact(2, "a"), handled(3, 3.1, "a", model.OK)),
		}, want: []string{SingleActivation}},
		{name: "left open after a graceful exit", incs: []*Incarnation{
			inc("r1", 10, false, act(1, "a")),
		}, want: []string{Records}},
		{name: "cut off and fenced in time", incs: []*Incarnation{
			cut(inc("r1", 10, false, act(1, "a"), deact(3.4, "a")), 2, 8),
			inc("r2", 10, false, act(4, "a"), deact(9, "a")),
		}},
		{name: "cut off and fenced late", incs: []*Incarnation{
			cut(inc("r1", 10, false, act(1, "a"), deact(4.5, "a")), 2, 8),
			inc("r2", 10, false, act(4, "a"), deact(9, "a")),
		}, want: []string{SingleActivation}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Report
			r.Activations(tt.incs)
			wantViolations(t, "Activations", &r, tt.want)
		})
	}
}

func TestActivationsNotesInFlightHandler(t *testing.T) {
	var r Report
	r.Activations([]*Incarnation{
		paused(inc("r1", 10, false, act(1, "a"), handled(1.9, 8.05, "a", model.Refused), deact(8.1, "a")), 2, 8),
		inc("r2", 10, false, act(4, "a"), deact(9, "a")),
	})
	if len(r.Violations) != 0 || len(r.Notes) != 1 || !strings.Contains(r.Notes[0], "in-flight handler") {
		t.Fatalf("Activations = %v, notes %v; want one in-flight note", r.Violations, r.Notes)
	}
}

func TestSingletons(t *testing.T) {
	tests := []struct {
		name string
		incs []*Incarnation
		want []string
	}{
		{name: "moved", incs: []*Incarnation{
			inc("r1", 10, false, rec(model.SingletonStart, 1, "s"), rec(model.SingletonTick, 1.1, "s"), rec(model.SingletonStop, 2, "s")),
			inc("r2", 10, false, rec(model.SingletonStart, 2.5, "s"), rec(model.SingletonStop, 9, "s")),
		}},
		{name: "paused, stopped on resume", incs: []*Incarnation{
			paused(inc("r1", 10, false, rec(model.SingletonStart, 1, "s"), rec(model.SingletonStop, 8.01, "s")), 2, 8),
			inc("r2", 10, false, rec(model.SingletonStart, 5, "s"), rec(model.SingletonStop, 9, "s")),
		}},
		{name: "paused, ticked on resume", incs: []*Incarnation{
			paused(inc("r1", 10, false, rec(model.SingletonStart, 1, "s"), rec(model.SingletonTick, 8.001, "s"), rec(model.SingletonStop, 8.01, "s")), 2, 8),
			inc("r2", 10, false, rec(model.SingletonStart, 5, "s"), rec(model.SingletonStop, 9, "s")),
		}, want: []string{SingleSingleton}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Report
			r.Singletons(tt.incs)
			wantViolations(t, "Singletons", &r, tt.want)
		})
	}
}

func TestConflicts(t *testing.T) {
	conflict := rec(model.Conflict, 6, "a")
	tests := []struct {
		name string
		incs []*Incarnation
		want []string
	}{
		{name: "unexplained", incs: []*Incarnation{
			inc("r1", 10, false, handled(1, 1.1, "a", model.OK)),
			inc("r2", 10, false, conflict),
		}, want: []string{Fencing}},
		{name: "a write in flight across a pause", incs: []*Incarnation{
			paused(inc("r1", 10, false, handled(1.9, 5.5, "a", model.OK)), 2, 5),
			inc("r2", 10, false, conflict),
		}},
		{name: "a write in flight across a partition", incs: []*Incarnation{
			cut(inc("r1", 10, false, handled(2.5, 5.5, "a", model.Failed)), 2, 5),
			inc("r2", 10, false, conflict),
		}},
		{name: "a write that timed out", incs: []*Incarnation{
			inc("r2", 10, false, handled(3, 4, "a", model.Failed), conflict),
		}},
		{name: "a fault after the conflict explains nothing", incs: []*Incarnation{
			paused(inc("r1", 10, false, handled(6.5, 7.5, "a", model.OK)), 7, 8),
			inc("r2", 10, false, conflict),
		}, want: []string{Fencing}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Report
			r.Conflicts(tt.incs)
			wantViolations(t, "Conflicts", &r, tt.want)
		})
	}
}

func acked(seqs ...int64) []Sent {
	var out []Sent
	for _, s := range seqs {
		out = append(out, Sent{Seq: s, From: at(float64(s)), At: at(float64(s))})
	}
	return out
}

func TestAccounts(t *testing.T) {
	state := func(v int64, seqs ...int64) model.State {
		st := model.State{Volatile: v}
		for _, s := range seqs {
			st = st.With(s)
		}
		return st
	}
	ooo := func(seq, top int64) *Incarnation {
		return inc("r1", 10, false, model.Record{Kind: model.OutOfOrder, Start: at(1), Addr: "a", Op: "Deposit", Arg: seq, Value: top})
	}
	tests := []struct {
		name  string
		acct  Account
		final model.State
		incs  []*Incarnation
		want  []string
	}{
		{name: "exact", acct: Account{ID: "a", AddOK: 2, Replies: []Reply{{Value: 1}, {Value: 2}}, Acked: acked(1, 2)}, final: state(2, 1, 2)},
		{name: "unknowns applied", acct: Account{ID: "a", AddOK: 1, AddUnknown: 1, Replies: []Reply{{Value: 2, UnknownPrev: 1}}, Acked: acked(2), Unknown: []int64{1}}, final: state(2, 1, 2)},
		{name: "acknowledged deposit lost", acct: Account{ID: "a", Acked: acked(1, 2)}, final: state(0, 1), want: []string{Durability}},
		{name: "deposit never sent", acct: Account{ID: "a", Acked: acked(1)}, final: state(0, 1, 2), want: []string{Counter}},
		{name: "answered Add lost", acct: Account{ID: "a", AddOK: 2, Replies: []Reply{{Value: 1}, {Value: 2}}}, final: state(1), want: []string{Counter}},
		{name: "Add applied twice", acct: Account{ID: "a", AddOK: 2, Replies: []Reply{{Value: 1}, {Value: 3}}}, final: state(3), want: []string{Counter, Counter}},
		{name: "answer went back", acct: Account{ID: "a", AddOK: 2, AddUnknown: 1, Replies: []Reply{{Value: 2, UnknownPrev: 1}, {Value: 2}}}, final: state(3), want: []string{Counter}},
		{name: "acknowledged deposit out of order", acct: Account{ID: "a", Acked: acked(1, 2)}, final: state(0, 1, 2), incs: []*Incarnation{ooo(1, 2)}, want: []string{Order}},
		{name: "unknown deposit out of order", acct: Account{ID: "a", Acked: acked(2), Unknown: []int64{1}}, final: state(0, 1, 2), incs: []*Incarnation{ooo(1, 2)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Report
			r.Accounts([]Account{tt.acct}, map[string]model.State{"a": tt.final}, tt.incs)
			wantViolations(t, "Accounts", &r, tt.want)
		})
	}
}

func TestUnavailability(t *testing.T) {
	got := Unavailability(map[int][]time.Time{
		0: {at(3), at(1), at(2)},
		1: {at(1), at(5), at(5.5)},
	})
	if len(got) != 2 || got[0].Shard != 1 || got[0].To.Sub(got[0].From) != 4*time.Second || got[1].To.Sub(got[1].From) != time.Second {
		t.Fatalf("Unavailability = %+v, want shard 1 (4s) then shard 0 (1s)", got)
	}
}

func TestLeases(t *testing.T) {
	held := func(s float64, holder string) LeaseEvent {
		return LeaseEvent{At: at(s), Rev: uint64(s * 10), Shard: 0, Holder: holder, Held: true}
	}
	expired := func(s float64) LeaseEvent { return LeaseEvent{At: at(s), Rev: uint64(s * 10), Shard: 0} }
	tick := rec(model.SingletonTick, 5, "s")
	tests := []struct {
		name   string
		events []LeaseEvent
		gaps   [][2]uint64
		recs   []model.Record
		want   []string
	}{
		{name: "held", events: []LeaseEvent{held(1, "r1"), held(4, "r1")}, recs: []model.Record{handled(5, 5.1, "a", model.OK), tick}},
		{name: "before the first event", events: []LeaseEvent{held(6, "r1")}, recs: []model.Record{handled(5, 5.1, "a", model.OK)}},
		{name: "expired", events: []LeaseEvent{held(1, "r1"), expired(4.5)}, recs: []model.Record{handled(5, 5.1, "a", model.OK)}, want: []string{LeaseHeld}},
		{name: "taken over", events: []LeaseEvent{held(1, "r1"), expired(3), held(4, "r2")}, recs: []model.Record{tick}, want: []string{LeaseHeld}},
		{name: "expired, with the history after it missed", events: []LeaseEvent{held(1, "r1"), expired(4.5), held(6, "r1")}, gaps: [][2]uint64{{50, 52}}, recs: []model.Record{handled(5, 5.1, "a", model.OK)}},
		{name: "expired, with a gap elsewhere", events: []LeaseEvent{held(1, "r1"), expired(4.5), held(6, "r1")}, gaps: [][2]uint64{{60, 62}, {20, 30}}, recs: []model.Record{handled(5, 5.1, "a", model.OK)}, want: []string{LeaseHeld}},
		{name: "taken back", events: []LeaseEvent{held(1, "r1"), held(3, "r2"), expired(4), held(4.5, "r1")}, recs: []model.Record{handled(5, 5.1, "a", model.OK)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Report
			r.Leases([]*Incarnation{inc("r1", 10, false, tt.recs...)}, tt.events, tt.gaps, func(string, bool) int { return 0 })
			wantViolations(t, "Leases", &r, tt.want)
		})
	}
}

// The known bugs' signatures: matched on the evidence only.
func TestKnownBugs(t *testing.T) {
	shardOf := func(string, bool) int { return 0 }
	held := func(s float64, holder string) LeaseEvent {
		return LeaseEvent{At: at(s), Rev: uint64(s * 10), Holder: holder, Held: true}
	}
	t.Run("serve after pause", func(t *testing.T) {
		// r1 holds the shard, is paused 2..8 while r2 takes it over, and on
		// resuming runs a call r2 ran too.
		r1 := paused(inc("r1", 10, false, act(8.01, "a"), handled(8.01, 8.02, "a", model.OK), deact(8.03, "a")), 2, 8)
		r2 := inc("r2", 10, false, act(6, "a"), handled(6, 6.1, "a", model.OK), rec(model.Conflict, 8.5, "a"), deact(9, "a"))
		incs := []*Incarnation{r1, r2}
		var r Report
		r.Leases(incs, []LeaseEvent{held(1, "r1"), {At: at(5), Rev: 50}, held(5.5, "r2")}, nil, shardOf)
		r.Activations(incs)
		r.Conflicts(incs)
		r.Accounts([]Account{{ID: "a", AddOK: 1, Replies: []Reply{{Value: 1}}}}, map[string]model.State{"a": {Volatile: 2}}, incs)
		if len(r.Violations) != 4 {
			t.Fatalf("violations = %v, want 4 (lease, overlap, refused write, counter)", r.Violations)
		}
		for _, v := range r.Violations {
			if v.Known != ServeAfterPause {
				t.Errorf("%v: want known bug %s", v, ServeAfterPause)
			}
		}
		// The same run long after the pause is not that bug.
		r1.Pauses[0] = Span{at(1), at(2)}
		r = Report{}
		r.Leases(incs, []LeaseEvent{held(1, "r1"), held(2, "r1"), {At: at(5), Rev: 50}, held(5.5, "r2")}, nil, shardOf)
		if len(r.Violations) != 1 || r.Violations[0].Known != "" {
			t.Fatalf("violations = %v, want one unknown", r.Violations)
		}
	})
	t.Run("set-up not fenced", func(t *testing.T) {
		for _, tt := range []struct {
			events []LeaseEvent
			runAt  float64
			want   string
		}{
			{[]LeaseEvent{held(1, "r1"), {At: at(5), Rev: 50}, held(5.5, "r2")}, 6, SetupNotFenced},
			{[]LeaseEvent{held(1, "r1"), {At: at(5), Rev: 50}, held(5.5, "r2")}, 20, ""},
			{[]LeaseEvent{held(1, "r1"), held(2, "r1"), {At: at(5), Rev: 50}, held(5.5, "r2")}, 6, ""},
		} {
			var r Report
			r.Leases([]*Incarnation{inc("r1", 30, false, handled(tt.runAt, tt.runAt+0.1, "a", model.OK))}, tt.events, nil, shardOf)
			if len(r.Violations) != 1 || r.Violations[0].Known != tt.want {
				t.Fatalf("run at %v after %v: violations = %v, want one, known %q", tt.runAt, tt.events, r.Violations, tt.want)
			}
		}
	})
	t.Run("stale pull", func(t *testing.T) {
		r1 := cut(inc("r1", 20, false), 2, 9)
		r2 := inc("r2", 20, false, model.Record{Kind: model.OutOfOrder, Start: at(12), Addr: "a", Op: "Deposit", Arg: 1, Value: 2})
		incs := []*Incarnation{r1, r2}
		for _, tt := range []struct {
			ackedAt float64
			want    string
		}{{8, StalePull}, {9.5, ""}} {
			var r Report
			r.Leases(incs, []LeaseEvent{held(1, "r1"), {At: at(5), Rev: 50}, held(6, "r2")}, nil, shardOf)
			r.Accounts([]Account{{ID: "a", Acked: []Sent{{1, at(tt.ackedAt), at(tt.ackedAt)}, {2, at(10), at(10)}}}}, map[string]model.State{"a": model.State{}.With(1).With(2)}, incs)
			if len(r.Violations) != 1 || r.Violations[0].Known != tt.want {
				t.Fatalf("deposit acknowledged at %v: violations = %v, want one, known %q", tt.ackedAt, r.Violations, tt.want)
			}
		}
	})
}

// HeldOpen: an activation of a runner cut off from NATS that stays open,
// running nothing, past the next owner's activation.
func TestHeldOpen(t *testing.T) {
	closed := func(s float64, addr string) model.Record {
		return model.Record{Kind: model.Deactivated, Start: at(s), Addr: addr, Op: "partition-closed"}
	}
	for _, tt := range []struct {
		name string
		r1   *Incarnation
		want string
	}{
		{"held open by the cut runner", cut(inc("r1", 20, false, act(1, "a"), handled(1, 1.9, "a", model.OK), closed(12, "a")), 2, 10), HeldOpen},
		{"a handler still running", cut(inc("r1", 20, false, act(1, "a"), handled(1, 6, "a", model.Failed), closed(12, "a")), 2, 10), ""},
		{"not cut off", inc("r1", 20, false, act(1, "a"), handled(1, 1.9, "a", model.OK), closed(12, "a")), ""},
		{"cut off after the next activation began", cut(inc("r1", 20, false, act(1, "a"), handled(1, 1.9, "a", model.OK), closed(12, "a")), 6, 10), ""},
		{"ended otherwise", cut(inc("r1", 20, false, act(1, "a"), handled(1, 1.9, "a", model.OK), deact(12, "a")), 2, 10), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r2 := inc("r2", 20, false, act(5, "a"), handled(5, 5.1, "a", model.OK), deact(15, "a"))
			var r Report
			r.Activations([]*Incarnation{tt.r1, r2})
			if len(r.Violations) != 1 || r.Violations[0].Known != tt.want {
				t.Fatalf("violations = %v, want one, known %q", r.Violations, tt.want)
			}
		})
	}
}
