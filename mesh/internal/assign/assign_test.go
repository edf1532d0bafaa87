package assign

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// equal returns n runners of weight 1 named r00, r01, ...
func equal(n int) []Runner {
	rs := make([]Runner, n)
	for i := range rs {
		rs[i] = Runner{ID: fmt.Sprintf("r%02d", i), Weight: 1}
	}
	return rs
}

func weighted(ws ...int) []Runner {
	rs := make([]Runner, len(ws))
	for i, w := range ws {
		rs[i] = Runner{ID: fmt.Sprintf("r%02d", i), Weight: w}
	}
	return rs
}

func counts(a []string) map[string]int {
	c := map[string]int{}
	for _, id := range a {
		c[id]++
	}
	return c
}

// bounds is the oracle for one live runner: its weighted share's floor and
// ceiling, computed independently of the code under test.
type bounds struct{ lo, hi int }

// shares returns the live runners (last of each ID wins, weights clamped
// like Compute documents) and their bounds.
func shares(shards int, runners []Runner) map[string]bounds {
	w := map[string]int{}
	for _, r := range runners {
		if r.ID == "" {
			continue
		}
		w[r.ID] = min(max(r.Weight, 1), maxWeight)
	}
	total := 0
	for _, x := range w {
		total += x
	}
	b := map[string]bounds{}
	for id, x := range w {
		// Weights in tests are small, so int arithmetic is exact here.
		lo := shards * x / total
		hi := lo
		if shards*x%total != 0 {
			hi++
		}
		b[id] = bounds{lo, hi}
	}
	return b
}

// minMoves is the least number of shards any assignment within the balance
// bounds must move from prev: every shard not held by a live runner, plus,
// for each runner, what it holds above its floor, less one for each ceiling
// (there are shards-sum(floors) of them) given to a runner that holds more
// than its floor.
func minMoves(shards int, runners []Runner, prev []string) int {
	shards = max(shards, 0)
	b := shares(shards, runners)
	if len(b) == 0 {
		n := 0
		for i := range min(shards, len(prev)) {
			if prev[i] != "" {
				n++
			}
		}
		return n
	}
	held := map[string]int{}
	moves := 0
	for i := range shards {
		id := at(prev, i)
		if _, ok := b[id]; ok {
			held[id]++
		} else {
			moves++
		}
	}
	ceilings := shards
	eligible := 0
	for id, x := range b {
		ceilings -= x.lo
		moves += max(0, held[id]-x.lo)
		if x.hi > x.lo && held[id] > x.lo {
			eligible++
		}
	}
	return moves - min(ceilings, eligible)
}

// check asserts every property Compute promises for one call, and returns
// its result.
func check(t testing.TB, shards int, runners []Runner, prev []string) []string {
	t.Helper()
	next := Compute(shards, runners, prev)
	desc := fmt.Sprintf("Compute(%d, %v, prev)", shards, runners)
	if want := max(shards, 0); len(next) != want {
		t.Fatalf("%s: len = %d, want %d", desc, len(next), want)
	}
	b := shares(shards, runners)
	c := counts(next)
	for i, id := range next {
		if _, ok := b[id]; !ok && (len(b) > 0 || id != "") {
			t.Fatalf("%s: shard %d = %q, not a live runner", desc, i, id)
		}
	}
	for id, x := range b {
		if c[id] < x.lo || c[id] > x.hi {
			t.Fatalf("%s: runner %s owns %d shards, want %d..%d", desc, id, c[id], x.lo, x.hi)
		}
	}
	held := counts(prev[:min(len(prev), max(shards, 0))])
	for i := range min(len(prev), len(next)) {
		x, ok := b[prev[i]]
		if ok && held[prev[i]] <= x.lo && next[i] != prev[i] {
			t.Fatalf("%s: shard %d moved %s -> %s, but %s held %d <= its floor %d",
				desc, i, prev[i], next[i], prev[i], held[prev[i]], x.lo)
		}
		// Compare with the target Compute chose (its final count): an
		// owner that did not exceed it keeps every shard.
		if ok && held[prev[i]] <= c[prev[i]] && next[i] != prev[i] {
			t.Fatalf("%s: shard %d moved %s -> %s, but %s held %d <= its target %d",
				desc, i, prev[i], next[i], prev[i], held[prev[i]], c[prev[i]])
		}
	}
	moved := len(Moves(prev[:min(len(prev), max(shards, 0))], next))
	if want := minMoves(shards, runners, prev); moved != want {
		t.Fatalf("%s: %d shards moved, want the minimum %d", desc, moved, want)
	}
	if again := Compute(shards, runners, next); !slices.Equal(again, next) {
		t.Fatalf("%s: not a fixed point: recomputing moves %v", desc, Moves(next, again))
	}
	return next
}

func TestCompute(t *testing.T) {
	tests := []struct {
		name    string
		shards  int
		runners []Runner
		prev    []string
		want    map[string]int // shard count per runner ID ("" = unassigned)
	}{
		{"no runners", 5, nil, nil, map[string]int{"": 5}},
		{"no runners, prev named gone runners", 3, nil, []string{"a", "b", ""}, map[string]int{"": 3}},
		{"zero shards", 0, equal(3), nil, map[string]int{}},
		{"negative shards", -4, equal(3), nil, map[string]int{}},
		{"one runner", 300, equal(1), nil, map[string]int{"r00": 300}},
		{"three equal", 300, equal(3), nil, map[string]int{"r00": 100, "r01": 100, "r02": 100}},
		{"weights 1,1,2", 300, weighted(1, 1, 2), nil, map[string]int{"r00": 75, "r01": 75, "r02": 150}},
		{"remainder by ID", 100, equal(3), nil, map[string]int{"r00": 34, "r01": 33, "r02": 33}},
		// 10*1/6 = 1.67, 10*2/6 = 3.33, 10*3/6 = 5: the one spare shard goes
		// to the largest fractional part.
		{"remainder by fraction", 10, weighted(1, 2, 3), nil, map[string]int{"r00": 2, "r01": 3, "r02": 5}},
		// ...unless another runner already holds its ceiling: then it keeps it.
		{"remainder to holder", 10, weighted(1, 2, 3),
			[]string{"r01", "r01", "r01", "r01", "r00", "r02", "r02", "r02", "r02", "r02"},
			map[string]int{"r00": 1, "r01": 4, "r02": 5}},
		{"more runners than shards", 2, equal(5), nil, map[string]int{"r00": 1, "r01": 1}},
		{"weight below 1 counts as 1", 30, weighted(0, -7, 1), nil, map[string]int{"r00": 10, "r01": 10, "r02": 10}},
		{"duplicate ID: last wins", 30, []Runner{{"a", 1}, {"b", 1}, {"a", 4}}, nil, map[string]int{"a": 24, "b": 6}},
		{"empty ID ignored", 4, []Runner{{"", 5}, {"a", 1}}, nil, map[string]int{"a": 4}},
		{"prev longer than shards", 2, equal(2), []string{"r01", "r01", "r01", "r01"}, map[string]int{"r00": 1, "r01": 1}},
		{"prev shorter than shards", 4, equal(2), []string{"r01"}, map[string]int{"r00": 2, "r01": 2}},
		{"huge weights", 7, weighted(maxWeight, maxWeight+5, 1<<62), nil, map[string]int{"r00": 3, "r01": 2, "r02": 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Compute(tt.shards, tt.runners, tt.prev)
			if c := counts(got); !mapsEqual(c, tt.want) {
				t.Fatalf("Compute(%d, %v, %v) counts = %v, want %v", tt.shards, tt.runners, tt.prev, c, tt.want)
			}
			if tt.name != "huge weights" { // the oracle's int arithmetic would overflow
				check(t, tt.shards, tt.runners, tt.prev)
			}
		})
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestComputeKeepsPrevOwners(t *testing.T) {
	// r00 and r01 are under target and keep everything; the gone runner's
	// shards and the unassigned one are filled.
	prev := []string{"r00", "gone", "r01", "", "r00", "gone"}
	got := Compute(6, equal(3), prev)
	for i, id := range prev {
		if (id == "r00" || id == "r01") && got[i] != id {
			t.Fatalf("Compute(6, 3 runners, %v)[%d] = %q, want %q", prev, i, got[i], id)
		}
	}
	if want := []int{1, 3, 5}; !slices.Equal(Moves(prev, got), want) {
		t.Fatalf("Moves(%v, %v) = %v, want %v", prev, got, Moves(prev, got), want)
	}
}

// When one runner joins n equal runners, only shards that go to the newcomer
// move, exactly as many as its target, whatever its ID sorts as.
func TestJoin(t *testing.T) {
	for n := 1; n <= 12; n++ {
		for _, shards := range []int{1, 2, 5, 7, 13, 100, 299, 300, 301, 1024} {
			for _, newID := range []string{"a-first", "r05x", "z-last"} {
				before := equal(n)
				prev := check(t, shards, before, nil)
				after := append(slices.Clone(before), Runner{ID: newID, Weight: 1})
				next := check(t, shards, after, prev)
				moved := Moves(prev, next)
				for _, s := range moved {
					if next[s] != newID {
						t.Fatalf("join %s to %d runners, %d shards: shard %d went %s -> %s, not to the newcomer",
							newID, n, shards, s, prev[s], next[s])
					}
				}
				if got, want := len(moved), counts(next)[newID]; got != want {
					t.Fatalf("join %s to %d runners, %d shards: %d moved, newcomer owns %d", newID, n, shards, got, want)
				}
			}
		}
	}
}

// When one runner leaves, only its shards move.
func TestLeave(t *testing.T) {
	for n := 2; n <= 12; n++ {
		for _, shards := range []int{1, 2, 5, 7, 13, 100, 299, 300, 301, 1024} {
			for gone := range n {
				before := equal(n)
				prev := check(t, shards, before, nil)
				after := slices.Delete(slices.Clone(before), gone, gone+1)
				next := check(t, shards, after, prev)
				goneID := before[gone].ID
				moved := Moves(prev, next)
				for _, s := range moved {
					if prev[s] != goneID {
						t.Fatalf("%s leaves %d runners, %d shards: shard %d moved %s -> %s", goneID, n, shards, s, prev[s], next[s])
					}
				}
				if got, want := len(moved), counts(prev)[goneID]; got != want {
					t.Fatalf("%s leaves %d runners, %d shards: %d moved, it owned %d", goneID, n, shards, got, want)
				}
			}
		}
	}
}

// The movement figures quoted in the package's report, pinned.
func TestMovement(t *testing.T) {
	tests := []struct {
		name          string
		shards        int
		before, after []Runner
		wantMoved     int
	}{
		{"unchanged", 300, equal(4), equal(4), 0},
		{"3 to 4 equal", 300, equal(3), equal(4), 75},
		{"4 to 3 equal", 300, equal(4), equal(3), 75},
		{"start with 1,1,2", 300, nil, weighted(1, 1, 2), 300},
		{"1,1,1 to 1,1,2", 300, equal(3), weighted(1, 1, 2), 50},
		{"1,1 to 1,1,2", 300, equal(2), weighted(1, 1, 2), 150},
		{"1,1,2 to 1,1,1", 300, weighted(1, 1, 2), equal(3), 50},
		{"10 to 11 equal, 3000", 3000, equal(10), equal(11), 272},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prev := Compute(tt.shards, tt.before, nil)
			next := check(t, tt.shards, tt.after, prev)
			if got := len(Moves(prev, next)); got != tt.wantMoved {
				t.Fatalf("moves %v -> %v = %d, want %d", tt.before, tt.after, got, tt.wantMoved)
			}
		})
	}
}

// Runner order does not matter: Compute sorts by ID.
func TestDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	runners := weighted(3, 1, 2, 1, 5, 1, 1)
	prev := make([]string, 500)
	for i := range prev {
		prev[i] = fmt.Sprintf("r%02d", rng.IntN(10)) // r07..r09 are gone
	}
	want := Compute(500, runners, prev)
	for range 50 {
		shuffled := slices.Clone(runners)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if got := Compute(500, shuffled, prev); !slices.Equal(got, want) {
			t.Fatalf("Compute(500, %v, prev) differs from order %v at shards %v", shuffled, runners, Moves(want, got))
		}
	}
}

// Compute does not modify its arguments.
func TestNoMutation(t *testing.T) {
	runners := []Runner{{"b", 0}, {"a", 2}, {"b", 3}}
	prev := []string{"a", "x", "b", "b", "b"}
	r0, p0 := slices.Clone(runners), slices.Clone(prev)
	Compute(5, runners, prev)
	if !slices.Equal(runners, r0) || !slices.Equal(prev, p0) {
		t.Fatalf("Compute modified its arguments: %v %v, was %v %v", runners, prev, r0, p0)
	}
}

// Shards that move are spread over the shard range, and so are the ones a
// runner starts with: no runner gets one contiguous block.
func TestSpread(t *testing.T) {
	maxGap := func(a []string, id string) int {
		gap, last := 0, -1
		for i, x := range a {
			if x == id {
				gap = max(gap, i-last)
				last = i
			}
		}
		return max(gap, len(a)-last)
	}
	tests := []struct {
		name          string
		shards        int
		before, after []Runner
		id            string
		wantMaxGap    int
	}{
		{"fresh, equal", 300, nil, equal(3), "r01", 3},
		{"fresh, weighted", 300, nil, weighted(1, 1, 2), "r02", 3},
		{"fresh, weighted light", 300, nil, weighted(1, 1, 2), "r00", 5},
		{"newcomer 3 to 4", 300, equal(3), equal(4), "r03", 12},
		{"leaver's shards 4 to 3", 300, equal(4), equal(3), "r00", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := Compute(tt.shards, tt.after, Compute(tt.shards, tt.before, nil))
			if got := maxGap(next, tt.id); got > tt.wantMaxGap {
				t.Fatalf("largest gap between %s's shards = %d, want <= %d", tt.id, got, tt.wantMaxGap)
			}
		})
	}
}

func TestMoves(t *testing.T) {
	tests := []struct {
		name       string
		prev, next []string
		want       []int
	}{
		{"both empty", nil, nil, nil},
		{"same", []string{"a", "b"}, []string{"a", "b"}, nil},
		{"one moved", []string{"a", "b", "c"}, []string{"a", "c", "c"}, []int{1}},
		{"assigned from nothing", nil, []string{"a", "", "b"}, []int{0, 2}},
		{"prev longer", []string{"a", "b", "c"}, []string{"a"}, []int{1, 2}},
		{"trailing unassigned is no move", []string{"a", ""}, []string{"a"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Moves(tt.prev, tt.next); !slices.Equal(got, tt.want) {
				t.Fatalf("Moves(%q, %q) = %v, want %v", tt.prev, tt.next, got, tt.want)
			}
		})
	}
}

// Random runner sets, weights and previous assignments (including gone
// runners, duplicates, bad weights, short and long prev), all properties at
// once. Compute is chained so that prev is often a near-balanced state.
func TestComputeRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		shards := rng.IntN(400)
		runners := make([]Runner, rng.IntN(9))
		for i := range runners {
			runners[i] = Runner{ID: fmt.Sprintf("r%d", rng.IntN(12)), Weight: rng.IntN(6) - 1}
		}
		prev := make([]string, rng.IntN(450))
		for i := range prev {
			if k := rng.IntN(14); k < 12 {
				prev[i] = fmt.Sprintf("r%d", k)
			}
		}
		next := check(t, shards, runners, prev)
		// Then churn: one more runner, or one fewer.
		if rng.IntN(2) == 0 || len(runners) == 0 {
			runners = append(runners, Runner{ID: fmt.Sprintf("r%d", rng.IntN(12)), Weight: rng.IntN(4)})
		} else {
			runners = slices.Delete(runners, 0, 1)
		}
		check(t, shards, runners, next)
	}
}

func ExampleCompute() {
	runners := []Runner{{ID: "a", Weight: 1}, {ID: "b", Weight: 1}}
	prev := Compute(8, runners, nil)
	fmt.Println(prev)

	runners = append(runners, Runner{ID: "c", Weight: 2})
	next := Compute(8, runners, prev)
	fmt.Println(next)
	fmt.Println("moved:", Moves(prev, next))
	// Output:
	// [a b a b a b a b]
	// [c c a b c c a b]
	// moved: [0 1 4 5]
}

func benchmarkCompute(b *testing.B, shards int, before, after []Runner) {
	var prev []string
	if before != nil {
		prev = Compute(shards, before, nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		Compute(shards, after, prev)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(shards), "ns/shard")
}

func BenchmarkCompute(b *testing.B) {
	b.Run("fresh/3000x10", func(b *testing.B) { benchmarkCompute(b, 3000, nil, equal(10)) })
	b.Run("stable/3000x10", func(b *testing.B) { benchmarkCompute(b, 3000, equal(10), equal(10)) })
	b.Run("join/3000x10to11", func(b *testing.B) { benchmarkCompute(b, 3000, equal(10), equal(11)) })
	b.Run("leave/3000x10to9", func(b *testing.B) { benchmarkCompute(b, 3000, equal(10), equal(9)) })
	b.Run("fresh/300x3", func(b *testing.B) { benchmarkCompute(b, 300, nil, equal(3)) })
	b.Run("fresh/100000x1000", func(b *testing.B) { benchmarkCompute(b, 100000, nil, equal(1000)) })
}
