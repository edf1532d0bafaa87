package main

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/workflow"
)

// The workflows of the bench: three activities, each a persisted entity
// call (Deposit) with its activity's key; and one that waits for a signal
// that never comes.
type wfs struct {
	three *workflow.Workflow[string, int]
	wait  *workflow.Workflow[string, string]
}

func workflowConfig() workflow.Config {
	cfg := workflow.DefaultConfig()
	cfg.IdleTime = time.Second // passivate waiting executions quickly, to measure them
	return cfg
}

// defineWorkflows defines the bench's workflows on e, calling entities
// through client.
func defineWorkflows(e *workflow.Engine, client *mesh.Client) wfs {
	three, err := workflow.Define(e, "three", func(c *workflow.Context, acct string) (int, error) {
		total := 0
		for _, name := range []string{"a", "b", "c"} {
			v, err := workflow.Activity(c, name, func(ctx context.Context, a workflow.ActivityInfo) (int, error) {
				return mesh.Call(ctx, client, Deposit, acct, Amount{1}, mesh.MessageID(a.Key))
			})
			if err != nil {
				return 0, err
			}
			total = v
		}
		return total, nil
	})
	check(err)
	wait, err := workflow.Define(e, "wait", func(c *workflow.Context, _ string) (string, error) {
		return workflow.Await[string](c, "never")
	})
	check(err)
	return wfs{three: three, wait: wait}
}

// workflows measures workflows against persisted calls in the same run:
// sendRate is the persisted sends' throughput measured before.
func workflows(ctx context.Context, client *mesh.Client, w wfs, js natsjs.JetStream, sendRate float64) {
	const seq = 300
	lat := func(f func(i int) error) (p50, p99 time.Duration) {
		ds := make([]time.Duration, seq)
		for i := range seq {
			t := time.Now()
			check(f(i))
			ds[i] = time.Since(t)
		}
		slices.Sort(ds)
		return ds[seq/2], ds[seq*99/100]
	}
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	call50, call99 := lat(func(int) error { _, err := mesh.Call(ctx, client, Deposit, "wf-acct", Amount{1}); return err })
	wf50, wf99 := lat(func(i int) error {
		_, err := w.three.Run(ctx, run+"-seq-"+strconv.Itoa(i), "wf-acct-"+strconv.Itoa(i%50))
		return err
	})
	fmt.Println("\nWorkflows (three activities, each a persisted entity call), sequential, start to result")
	fmt.Printf("  %-34s p50 %8.1f µs  p99 %8.1f µs\n", "mesh.Call (persisted)", us(call50), us(call99))
	fmt.Printf("  %-34s p50 %8.1f µs  p99 %8.1f µs\n", "workflow Run", us(wf50), us(wf99))
	fmt.Printf("  ratio p50 workflow/persisted call: %.2fx (target <= 4x)\n", wf50.Seconds()/call50.Seconds())

	// 1,000 at once, from 256 goroutines.
	const n = 1000
	start := time.Now()
	var wg sync.WaitGroup
	ids := make(chan int, n)
	for i := range n {
		ids <- i
	}
	close(ids)
	for range 256 {
		wg.Go(func() {
			for i := range ids {
				_, err := w.three.Run(ctx, run+"-par-"+strconv.Itoa(i), "wf-par-"+strconv.Itoa(i%500))
				check(err)
			}
		})
	}
	wg.Wait()
	rate := float64(n) / time.Since(start).Seconds()
	fmt.Printf("  %-34s %10.0f workflows/s (%.0f activities/s; %.2fx the persisted sends' %0.f msgs/s, target >= 0.25x)\n",
		"1,000 concurrent workflows", rate, 3*rate, rate/sendRate, sendRate)

	// Waiting executions: what they cost once passivated.
	const waiting = 2000
	events, err := js.Stream(ctx, "mesh_events")
	check(err)
	bytes := func() uint64 { info, err := events.Info(ctx); check(err); return info.State.Bytes }
	status, err := js.KeyValue(ctx, "mesh_workflows")
	check(err)
	sbytes := func() uint64 { st, err := status.Status(ctx); check(err); return st.Bytes() }
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	h0, b0, s0 := heap(), bytes(), sbytes()
	var sw sync.WaitGroup
	next := make(chan int, waiting)
	for i := range waiting {
		next <- i
	}
	close(next)
	for range 64 {
		sw.Go(func() {
			for i := range next {
				check(w.wait.Start(ctx, run+"-wait-"+strconv.Itoa(i), ""))
			}
		})
	}
	sw.Wait()
	for i := 0; i < waiting; i++ { // each Waiting: started and suspended
		id := run + "-wait-" + strconv.Itoa(i)
		for {
			x, err := w.wait.Poll(ctx, id)
			if err == nil && x.Status == workflow.Waiting {
				break
			}
			time.Sleep(5 * time.Millisecond) // poll interval while the runner starts them
		}
	}
	time.Sleep(3 * time.Second) // past the executions' idle time: they passivate
	h1, b1, s1 := heap(), bytes(), sbytes()
	perHeap := (float64(h1) - float64(h0)) / waiting
	fmt.Printf("  %-34s %10.0f bytes of runner memory each (heap after/before %d waiting, passivated)\n",
		"waiting executions", max(perHeap, 0), waiting)
	fmt.Printf("  %-34s %10.0f bytes of journal + %.0f bytes of status record each\n", "", float64(b1-b0)/waiting, float64(s1-s0)/waiting)
}
