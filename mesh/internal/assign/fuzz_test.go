package assign

import (
	"fmt"
	"slices"
	"testing"
)

// FuzzCompute decodes a runner set and a previous assignment from bytes and
// checks every property Compute promises (see check): length, only live
// runners, balance within the floor and ceiling of each weighted share,
// stickiness, the least possible movement, and a fixed point. It also checks
// that runner order does not matter.
//
// runnerSpec: two bytes per runner, an ID out of 16 and a weight in -1..6.
// prevSpec: one byte per shard, naming one of 16 runner IDs (some of them
// not live) or, for the 4 other values out of 20, nobody.
func FuzzCompute(f *testing.F) {
	f.Add(uint16(300), []byte{0, 1, 1, 1, 2, 1}, []byte(nil))
	f.Add(uint16(300), []byte{0, 1, 1, 1, 2, 2}, []byte{0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3, 3})
	f.Add(uint16(10), []byte{0, 1, 1, 2, 2, 3}, []byte{1, 1, 1, 1, 0, 2, 2, 2, 2, 2})
	f.Add(uint16(0), []byte{0, 1}, []byte{0})
	f.Add(uint16(7), []byte(nil), []byte{0, 1, 19, 5})
	f.Add(uint16(5), []byte{3, 0, 3, 7, 4, 255}, []byte{3, 3, 3, 3, 3, 3, 3, 3})
	f.Add(uint16(1024), []byte{9, 2, 8, 1, 7, 1, 6, 3, 5, 1}, []byte{9, 9, 9, 8, 8, 7, 16, 17, 18, 19, 15, 14})
	f.Add(uint16(3), []byte{0, 1, 1, 1, 2, 1, 3, 1, 4, 1, 5, 1}, []byte{5, 5, 5})
	f.Fuzz(func(t *testing.T, shards uint16, runnerSpec, prevSpec []byte) {
		n := int(shards % 2049)
		var runners []Runner
		for i := 0; i+1 < len(runnerSpec) && len(runners) < 40; i += 2 {
			runners = append(runners, Runner{
				ID:     fmt.Sprintf("r%02d", runnerSpec[i]%16),
				Weight: int(runnerSpec[i+1]%8) - 1,
			})
		}
		prev := make([]string, min(len(prevSpec), 2100))
		for i := range prev {
			if k := prevSpec[i] % 20; k < 16 {
				prev[i] = fmt.Sprintf("r%02d", k)
			}
		}
		next := check(t, n, runners, prev)

		// Order independence, on the runners as Compute sees them (with
		// duplicate IDs, which one is last is meant to matter).
		seen := map[string]bool{}
		var distinct []Runner
		for i := len(runners) - 1; i >= 0; i-- {
			if !seen[runners[i].ID] {
				seen[runners[i].ID] = true
				distinct = append(distinct, runners[i])
			}
		}
		if got := Compute(n, distinct, prev); !slices.Equal(got, next) {
			t.Fatalf("Compute(%d, %v, prev) differs from Compute(%d, %v, prev) at %v", n, distinct, n, runners, Moves(next, got))
		}
	})
}
