package patterntest

import (
	"sync"
	"testing"
	"time"
)

// Compare measures lib against raw, the same storage work done with plain
// JetStream, by alternating them: each b.N iteration runs lib(i) then
// raw(i). On a machine shared with other work the load shifts during a
// run; interleaving makes both see the same load, so the ratio holds even
// when the absolute figures drift. It reports lib's and raw's rates in
// unit per second ("<unit>/s", "raw-<unit>/s") and lib's rate over raw's
// ("x-raw").
func Compare(b *testing.B, unit string, lib, raw func(i int)) {
	var tl, tr time.Duration
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		lib(i)
		t1 := time.Now()
		raw(i)
		tl += t1.Sub(t0)
		tr += time.Since(t1)
	}
	report(b, unit, float64(b.N), tl, tr)
}

// CompareParallel is Compare with callers goroutines: each iteration runs a
// round of rounds operations per caller with lib, then one with raw.
// lib(g, i) and raw(g, i) are caller g's i-th operation.
func CompareParallel(b *testing.B, unit string, callers, rounds int, lib, raw func(g, i int)) {
	var tl, tr time.Duration
	run := func(op func(g, i int), base int) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for g := range callers {
			wg.Go(func() {
				for i := range rounds {
					op(g, base+i)
				}
			})
		}
		wg.Wait()
		return time.Since(start)
	}
	for n := 0; b.Loop(); n++ {
		tl += run(lib, n*rounds)
		tr += run(raw, n*rounds)
	}
	report(b, unit, float64(b.N*callers*rounds), tl, tr)
}

func report(b *testing.B, unit string, ops float64, tl, tr time.Duration) {
	b.ReportMetric(ops/tl.Seconds(), unit+"/s")
	b.ReportMetric(ops/tr.Seconds(), "raw-"+unit+"/s")
	b.ReportMetric(tr.Seconds()/tl.Seconds(), "x-raw")
}
