package actor_test

import (
	"context"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/actor"
)

// Sequential calls to one entity: the runtime's per-call cost (enqueue,
// schedule the entity's goroutine, run, answer, wake the caller).
func BenchmarkCallSequential(b *testing.B) {
	rt := newRuntime(b, counterBehavior(nil))
	ctx := context.Background()
	mustCall(b, rt, Increment, "bench", Amount{1})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := actor.Call(ctx, rt, Increment, "bench", Amount{1}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/call")
}

// Activation of distinct entities, one call each, from 2×GOMAXPROCS
// callers; reports activations/s and the heap retained per idle entity.
func BenchmarkActivation(b *testing.B) {
	n := b.N
	if n < 1000 {
		n = 1000
	}
	ent := actor.NewEntity("Act")
	touch := actor.NewRPC[actor.Empty, actor.Empty](ent, "Touch")
	behave := actor.Implement(ent, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.Handle(touch, func(context.Context, actor.Empty) (actor.Empty, error) {
			return actor.Empty{}, nil
		})}, nil
	}, actor.MaxIdleTime(time.Hour))
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "entity-" + strconv.Itoa(i)
	}
	rt := newRuntime(b, behave)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ReportAllocs()
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	ctx := context.Background()
	for range 2 * runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if _, err := actor.Call(ctx, rt, touch, ids[i], actor.Empty{}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	elapsed := b.Elapsed()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(n)/elapsed.Seconds(), "activations/s")
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(n), "B/idle-entity")
	runtime.KeepAlive(ids)
}

// 10,000 entities called by 2×GOMAXPROCS callers at once.
func BenchmarkContention(b *testing.B) {
	rt := newRuntime(b, counterBehavior(nil))
	const entities = 10_000
	ids := make([]string, entities)
	for i := range ids {
		ids[i] = "c" + strconv.Itoa(i)
		mustCall(b, rt, Increment, ids[i], Amount{1})
	}
	ctx := context.Background()
	var seq atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(2) // 2 × GOMAXPROCS goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := seq.Add(7919)
		for pb.Next() {
			i++
			if _, err := actor.Call(ctx, rt, Increment, ids[i%entities], Amount{1}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
}
