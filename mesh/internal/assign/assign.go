package assign

import (
	"math/bits"
	"slices"
	"strings"
)

// Runner is a live runner as the shard manager sees it.
type Runner struct {
	// ID names the runner, e.g. "runner-3f2a". The empty ID means
	// "unassigned" in an assignment, so a runner with it is ignored.
	ID string
	// Weight is the runner's runnerShardWeight: a runner with weight 2 gets
	// about twice the shards of one with weight 1. Values below 1 count as 1;
	// values above 1<<31-1 count as 1<<31-1.
	Weight int
}

// maxWeight bounds a weight so that the sum of all weights fits in 64 bits
// for any number of runners a process can hold. Real weights are small.
const maxWeight = 1<<31 - 1

// Compute returns the assignment of shards 0..shards-1 to the live runners,
// given the previous assignment prev (shard number -> runner ID, "" for
// unassigned). prev may be nil, shorter than shards (the missing shards are
// unassigned), longer (the extra entries are ignored), or name runners that
// are gone. The result has length shards (empty if shards <= 0) and is all ""
// when no runner is live.
//
// Each runner gets the floor or the ceiling of its weighted share
// shards*Weight/sum(Weight), and shards move only off runners that are gone
// or above their share; see the package documentation for the algorithm.
//
// The result depends only on the arguments' values, not on the order of
// runners, with one exception: when two runners share an ID the last one in
// runners wins (as a registry keyed by ID would have it), so their order
// decides which weight counts. Compute never modifies runners or prev.
func Compute(shards int, runners []Runner, prev []string) []string {
	if shards <= 0 {
		return []string{}
	}
	next := make([]string, shards)
	rs := live(runners)
	if len(rs) == 0 {
		return next
	}
	owner := owners(shards, rs, prev)
	setTargets(shards, rs)
	keep(rs, owner, next)
	handOut(rs, owner, next)
	return next
}

// owners returns, for each shard, the index in rs of its owner in prev, or
// -1 when it is free; it counts each runner's shards in prev.
func owners(shards int, rs []runner, prev []string) []int32 {
	index := make(map[string]int32, len(rs))
	for i := range rs {
		index[rs[i].id] = int32(i)
	}
	owner := make([]int32, shards)
	for i := range owner {
		owner[i] = -1
		if i >= len(prev) {
			continue
		}
		if o, ok := index[prev[i]]; ok {
			owner[i] = o
			rs[o].prev++
		}
	}
	return owner
}

// keep keeps every shard whose owner is at or under target in next. An
// owner above target sheds exactly prev-target of its shards, spread evenly
// over the ones it holds (Bresenham's line stepping, started half a step
// in), so the shards that move are scattered rather than one block at the
// end; a shed shard's owner becomes -1.
func keep(rs []runner, owner []int32, next []string) {
	for i := range rs {
		if r := &rs[i]; r.prev > r.target {
			r.acc = r.prev
		}
	}
	for i, o := range owner {
		if o < 0 {
			continue
		}
		r := &rs[o]
		if surplus := r.prev - r.target; surplus > 0 {
			r.acc += 2 * surplus
			if r.acc >= 2*r.prev {
				r.acc -= 2 * r.prev
				owner[i] = -1
				continue
			}
		}
		next[i] = r.id
	}
}

// handOut hands the free shards, in shard order, to the runners under
// target. Runner r needs d = target - kept more; it takes its k-th
// (0-based) shard at virtual time (2k+1)/(2d), and shards go out in time
// order (ties to the smaller ID). Each runner's new shards are thus spread
// over the free ones, interleaved with the other takers', instead of one
// runner taking a contiguous block.
func handOut(rs []runner, owner []int32, next []string) {
	h := takers{rs: rs}
	for i := range rs {
		r := &rs[i]
		if r.need = r.target - min(r.prev, r.target); r.need > 0 {
			h.push(int32(i))
		}
	}
	for i, o := range owner {
		if o >= 0 {
			continue
		}
		t := h.heap[0]
		r := &rs[t]
		next[i] = r.id
		if r.taken++; r.taken == r.need {
			h.pop()
		} else {
			h.fix()
		}
	}
}

// runner is Compute's working state for one live runner.
type runner struct {
	id     string
	weight uint64
	prev   int    // shards it owns in prev
	target int    // shards it owns in next
	rem    uint64 // fractional part of its ideal share, times the total weight
	acc    int    // eviction stepping accumulator, when prev > target
	need   int    // free shards it takes: target - min(prev, target)
	taken  int    // free shards taken so far
}

// live returns the runners with an ID, weights clamped to [1, maxWeight],
// sorted by ID, the last of each ID kept.
func live(runners []Runner) []runner {
	rs := make([]runner, 0, len(runners))
	for _, r := range runners {
		if r.ID == "" {
			continue
		}
		w := uint64(max(r.Weight, 1))
		rs = append(rs, runner{id: r.ID, weight: min(w, maxWeight)})
	}
	// Stable, so that among equal IDs input order survives and the last
	// of each run is the last given.
	slices.SortStableFunc(rs, func(a, b runner) int { return strings.Compare(a.id, b.id) })
	out := rs[:0]
	for i := range rs {
		if i+1 < len(rs) && rs[i+1].id == rs[i].id {
			continue
		}
		out = append(out, rs[i])
	}
	return out
}

// setTargets sets each runner's target to the floor or ceiling of its ideal
// share shards*w/W, the ceilings going to exactly as many runners as the
// floors leave shards over.
//
// Which runners get a ceiling is free within that rule, and the choice
// decides how much moves: a runner that already holds at least its ceiling
// keeps one more shard if it gets the ceiling, and a runner that holds less
// gains nothing from it. So ceilings go first to runners holding at least
// their ceiling, then by largest fractional part, then by ID. This makes the
// number of moved shards the least any assignment within the balance bound
// allows: moved = (shards whose owner is gone or absent) + sum over runners
// of max(0, prev - target), and no other choice of floors and ceilings gives
// a smaller second term.
func setTargets(shards int, rs []runner) {
	var total uint64
	for i := range rs {
		total += rs[i].weight // at most len(rs) * 2^31: no overflow
	}
	sum := 0
	cands := make([]int, 0, len(rs))
	for i := range rs {
		r := &rs[i]
		// shards*weight needs 128 bits; the quotient is at most shards,
		// so it fits in 64 and Div64 cannot overflow.
		hi, lo := bits.Mul64(uint64(shards), r.weight)
		q, rem := bits.Div64(hi, lo, total)
		r.target, r.rem = int(q), rem
		sum += int(q)
		if rem > 0 {
			cands = append(cands, i)
		}
	}
	// The fractional parts sum to shards-sum, and each is below 1, so there
	// are more candidates than ceilings to hand out.
	slices.SortFunc(cands, func(a, b int) int {
		ra, rb := &rs[a], &rs[b]
		if ka, kb := ra.prev > ra.target, rb.prev > rb.target; ka != kb {
			if ka {
				return -1
			}
			return 1
		}
		if ra.rem != rb.rem {
			if ra.rem > rb.rem {
				return -1
			}
			return 1
		}
		return a - b // rs is sorted by ID
	})
	for _, i := range cands[:shards-sum] {
		rs[i].target++
	}
}

// takers is a min-heap of runner indices keyed by the virtual time of each
// runner's next take, (2*taken+1)/(2*need), ties to the smaller index.
type takers struct {
	rs   []runner
	heap []int32
}

func (h *takers) less(a, b int32) bool {
	ra, rb := &h.rs[a], &h.rs[b]
	// (2ta+1)/na < (2tb+1)/nb, cross-multiplied in 128 bits.
	ah, al := bits.Mul64(uint64(2*ra.taken+1), uint64(rb.need))
	bh, bl := bits.Mul64(uint64(2*rb.taken+1), uint64(ra.need))
	if ah != bh {
		return ah < bh
	}
	if al != bl {
		return al < bl
	}
	return a < b
}

func (h *takers) push(i int32) {
	h.heap = append(h.heap, i)
	h.up(len(h.heap) - 1)
}

// pop removes the top.
func (h *takers) pop() {
	n := len(h.heap) - 1
	h.heap[0] = h.heap[n]
	h.heap = h.heap[:n]
	if n > 0 {
		h.down(0)
	}
}

// fix restores the heap after the top's key grew.
func (h *takers) fix() { h.down(0) }

func (h *takers) up(j int) {
	for j > 0 {
		p := (j - 1) / 2
		if !h.less(h.heap[j], h.heap[p]) {
			return
		}
		h.heap[j], h.heap[p] = h.heap[p], h.heap[j]
		j = p
	}
}

func (h *takers) down(j int) {
	n := len(h.heap)
	for {
		c := 2*j + 1
		if c >= n {
			return
		}
		if c+1 < n && h.less(h.heap[c+1], h.heap[c]) {
			c++
		}
		if !h.less(h.heap[c], h.heap[j]) {
			return
		}
		h.heap[j], h.heap[c] = h.heap[c], h.heap[j]
		j = c
	}
}

// Moves lists, in increasing order, the shards whose owner differs between
// prev and next; a shard past the end of either counts as unassigned there.
// It returns nil when nothing moves.
func Moves(prev, next []string) []int {
	var moved []int
	for i := range max(len(prev), len(next)) {
		if at(prev, i) != at(next, i) {
			moved = append(moved, i)
		}
	}
	return moved
}

func at(a []string, i int) string {
	if i < len(a) {
		return a[i]
	}
	return ""
}
