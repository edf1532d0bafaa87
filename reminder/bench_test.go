package reminder_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/reminder"
)

// benchReminders is how many reminders fall due in the same second.
const benchReminders = 10000

// The benchmark's own entity types: BenchAlarm handles reminders only,
// Pinger's Ping is a persisted RPC for the DeliverAt baseline, its payload
// the due time in Unix nanoseconds.
var (
	BenchAlarm  = actor.NewEntity("BenchAlarm")
	BenchRemind = reminder.NewRPC(BenchAlarm)
	Pinger      = actor.NewEntity("Pinger")
	Ping        = actor.NewRPC[int64, actor.Empty](Pinger, "Ping", actor.Persisted())
)

// BenchmarkReminderFiring registers 10,000 one-shot reminders (one per
// entity) due in the same second on one standalone runner and reports how
// late their handlers ran (p50, p99, max), beside the lateness of 10,000 raw
// JetStream scheduled messages due in one second and read by one consumer
// in the same run. Run it once: -benchtime=1x.
func BenchmarkReminderFiring(b *testing.B) {
	s := natstest.StartServer(b)
	url := s.ClientURL()
	ctx := context.Background()
	for range b.N {
		raw := rawScheduleLateness(b, url, benchReminders)
		base := deliverAtLateness(b, url, benchReminders)

		cfg := meshtest.Standalone()
		cfg.Prefix = fmt.Sprintf("bench%d", time.Now().UnixNano())
		var (
			mu   sync.Mutex
			late []time.Duration
		)
		var handled atomic.Int64
		behavior := func(rem *reminder.Service) *actor.Behavior {
			return actor.Implement(BenchAlarm, func(self *actor.Instance) ([]actor.Handler, error) {
				return []actor.Handler{rem.Handle(BenchRemind, self, func(_ context.Context, t reminder.Tick) error {
					d := time.Since(t.Due)
					mu.Lock()
					late = append(late, d)
					mu.Unlock()
					handled.Add(1)
					return nil
				})}, nil
			})
		}
		meshtest.StartRunner(b, url, cfg, func(nc *nats.Conn, r *mesh.Runner) {
			rem, err := reminder.New(ctx, r.Client())
			if err != nil {
				b.Fatal(err)
			}
			if err := r.Register(behavior(rem)); err != nil {
				b.Fatal(err)
			}
		})
		nc := meshtest.Connect(b, url)
		rem, err := reminder.New(ctx, meshtest.Client(b, nc, cfg))
		if err != nil {
			b.Fatal(err)
		}
		js, _ := natsjs.New(nc)
		kv, err := js.KeyValue(ctx, cfg.Prefix+"_reminders")
		if err != nil {
			b.Fatal(err)
		}
		due := time.Now().Add(60 * time.Second).Truncate(time.Second)
		start := time.Now()
		var wg sync.WaitGroup
		const senders = 16
		for w := range senders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < benchReminders; i += senders {
					// Spread over the second, as reminders set by many
					// users would be.
					at := due.Add(time.Duration(i) * time.Second / benchReminders)
					if err := rem.Register(ctx, BenchRemind, "e"+strconv.Itoa(i), "r", at); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		sent := time.Since(start)
		natstest.WaitFor(b, 120*time.Second, func() bool {
			st, err := kv.Status(ctx)
			return err == nil && st.Values() >= benchReminders
		}, "every reminder registered")
		registered := time.Since(start)
		if time.Now().After(due) {
			b.Fatalf("registration took %v, past the due time: raise the lead time", registered)
		}
		natstest.WaitFor(b, 180*time.Second, func() bool { return handled.Load() >= benchReminders }, "every reminder fired")
		mu.Lock()
		p50, p99, pmax := percentiles(late)
		mu.Unlock()
		b.ReportMetric(float64(benchReminders)/sent.Seconds(), "register-sends/s")
		b.ReportMetric(float64(benchReminders)/registered.Seconds(), "registrations/s")
		b.ReportMetric(ms(p50), "late-p50-ms")
		b.ReportMetric(ms(p99), "late-p99-ms")
		b.ReportMetric(ms(pmax), "late-max-ms")
		b.ReportMetric(ms(base[0]), "deliverat-late-p50-ms")
		b.ReportMetric(ms(base[1]), "deliverat-late-p99-ms")
		b.ReportMetric(ms(raw[0]), "raw-late-p50-ms")
		b.ReportMetric(ms(raw[1]), "raw-late-p99-ms")
		b.ReportMetric(ms(raw[2]), "raw-late-max-ms")
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func percentiles(ds []time.Duration) (p50, p99, pmax time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0, 0, 0
	}
	return s[len(s)/2], s[len(s)*99/100], s[len(s)-1]
}

// rawScheduleLateness publishes n JetStream scheduled messages due in one
// second (each to its own schedule subject, as the mesh does) and consumes
// the fired messages with one consumer, returning p50, p99 and max of
// receive time minus the whole second they were due at.
func rawScheduleLateness(b *testing.B, url string, n int) [3]time.Duration {
	ctx := context.Background()
	nc := meshtest.Connect(b, url)
	js, _ := natsjs.New(nc)
	name := fmt.Sprintf("RAWSCHED%d", time.Now().UnixNano())
	st, err := js.CreateStream(ctx, natsjs.StreamConfig{
		Name: name, Subjects: []string{name + ".>"}, Retention: natsjs.WorkQueuePolicy, AllowMsgSchedules: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	due := time.Now().Add(15 * time.Second).Truncate(time.Second)
	var pending []natsjs.PubAckFuture
	for i := range n {
		m := &nats.Msg{Subject: name + ".sched." + strconv.Itoa(i), Header: nats.Header{}}
		m.Header.Set("Nats-Schedule", "@at "+due.UTC().Format(time.RFC3339))
		m.Header.Set("Nats-Schedule-Target", name+".fired")
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			b.Fatal(err)
		}
		pending = append(pending, f)
	}
	for _, f := range pending {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			b.Fatal(err)
		}
	}
	if time.Now().After(due) {
		b.Fatal("raw schedules published after their due time")
	}
	cons, err := st.CreateConsumer(ctx, natsjs.ConsumerConfig{FilterSubject: name + ".fired", AckPolicy: natsjs.AckExplicitPolicy, MaxAckPending: 10000})
	if err != nil {
		b.Fatal(err)
	}
	var (
		mu   sync.Mutex
		late []time.Duration
	)
	cc, err := cons.Consume(func(m natsjs.Msg) {
		d := time.Since(due)
		_ = m.Ack()
		mu.Lock()
		late = append(late, d)
		mu.Unlock()
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()
	natstest.WaitFor(b, 120*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(late) >= n }, "raw schedules fired")
	mu.Lock()
	defer mu.Unlock()
	p50, p99, pmax := percentiles(late)
	return [3]time.Duration{p50, p99, pmax}
}

// deliverAtLateness sends n persisted messages with mesh.DeliverAt due in
// one second to n entities of one standalone runner: the mesh's share of a
// reminder's lateness (a tick is such a message, plus the reminder's record
// read and update).
func deliverAtLateness(b *testing.B, url string, n int) [3]time.Duration {
	ctx := context.Background()
	cfg := meshtest.Standalone()
	cfg.Prefix = fmt.Sprintf("base%d", time.Now().UnixNano())
	var (
		mu   sync.Mutex
		late []time.Duration
	)
	r := meshtest.StartRunner(b, url, cfg, func(_ *nats.Conn, r *mesh.Runner) {
		err := r.Register(actor.Implement(Pinger, func(*actor.Instance) ([]actor.Handler, error) {
			return []actor.Handler{actor.Handle(Ping, func(_ context.Context, due int64) (actor.Empty, error) {
				d := time.Since(time.Unix(0, due))
				mu.Lock()
				late = append(late, d)
				mu.Unlock()
				return actor.Empty{}, nil
			})}, nil
		}))
		if err != nil {
			b.Fatal(err)
		}
	})
	defer r.Stop()
	c, err := mesh.NewClient(meshtest.Connect(b, url), cfg.ClientConfig)
	if err != nil {
		b.Fatal(err)
	}
	due := time.Now().Add(30 * time.Second).Truncate(time.Second)
	var wg sync.WaitGroup
	const senders = 16
	for w := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += senders {
				at := due.Add(time.Duration(i) * time.Second / time.Duration(n))
				if err := mesh.Send(ctx, c, Ping, "e"+strconv.Itoa(i), at.UnixNano(), mesh.DeliverAt(at)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if time.Now().After(due) {
		b.Fatal("DeliverAt messages sent after their due time")
	}
	natstest.WaitFor(b, 180*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(late) >= n }, "DeliverAt messages handled")
	mu.Lock()
	defer mu.Unlock()
	p50, p99, pmax := percentiles(late)
	return [3]time.Duration{p50, p99, pmax}
}
