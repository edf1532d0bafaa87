package mesh

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// A runner taking shards from another runner's consumer must never give
// that consumer a filter it does not have. The hazard, on a real R3
// cluster: a consumer that gains a filter is past the filter's older
// messages, and on its next leader change nats-server acknowledges, so
// removes from the work queue, those below its acknowledgement floor: an
// acknowledged persisted message lost without a trace (chaos seed
// 3365860003895664009, K8 in docs/reliability.md). takeShards once edited
// the other consumer from a listing of it, and the listing could be stale:
// its owner had rebuilt it meanwhile without a shard, which the edit put
// back.
func TestTakeShardsRacingARebuild(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	nc := natstest.Connect(t, servers...)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := js.CreateStream(ctx, natsjs.StreamConfig{
		Name: "P", Subjects: []string{"p.>"}, Retention: natsjs.WorkQueuePolicy, Replicas: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	consumer := func(name string, filters ...string) {
		t.Helper()
		if err := st.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, natsjs.ErrConsumerNotFound) {
			t.Fatal(err)
		}
		_, err := st.CreateConsumer(ctx, natsjs.ConsumerConfig{
			Durable: name, FilterSubjects: filters, AckPolicy: natsjs.AckExplicitPolicy,
			DeliverPolicy: natsjs.DeliverAllPolicy, MemoryStorage: true,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	publish := func(subj string) uint64 {
		t.Helper()
		ack, err := js.Publish(ctx, subj, []byte(subj))
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	// consumeAll handles (acknowledges) every message name's consumer has.
	consumeAll := func(name string, n int) {
		t.Helper()
		c, err := st.Consumer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for got < n {
			b, err := c.Fetch(n-got, natsjs.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			for m := range b.Messages() {
				if err := m.DoubleAck(ctx); err != nil {
					t.Fatal(err)
				}
				got++
			}
			if b.Error() != nil {
				t.Fatal(b.Error())
			}
		}
	}
	stored := func(seq uint64) bool {
		_, err := st.GetMsg(ctx, seq)
		return err == nil
	}
	stepDownConsumer := func(name string) {
		t.Helper()
		c, err := st.Consumer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		old := c.CachedInfo().Cluster.Leader
		if _, err := nc.Request("$JS.API.CONSUMER.LEADER.STEPDOWN.P."+name, nil, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		natstest.WaitFor(t, 20*time.Second, func() bool {
			ictx, icancel := context.WithTimeout(ctx, 2*time.Second)
			defer icancel()
			info, err := c.Info(ictx) // no answer while it has no leader
			return err == nil && info.Cluster != nil && info.Cluster.Leader != "" && info.Cluster.Leader != old
		}, "consumer "+name+" has a new leader")
	}

	// The hazard itself: a consumer past a message, given its filter.
	consumer("grown", "p.x.>")
	publish("p.x.1")
	lost := publish("p.y.1") // not the consumer's: its owner has not read it yet
	publish("p.x.2")
	consumeAll("grown", 2)
	if _, err := st.UpdateConsumer(ctx, natsjs.ConsumerConfig{
		Durable: "grown", FilterSubjects: []string{"p.x.>", "p.y.>"}, AckPolicy: natsjs.AckExplicitPolicy,
		DeliverPolicy: natsjs.DeliverAllPolicy, MemoryStorage: true,
	}); err != nil {
		t.Fatal(err)
	}
	stepDownConsumer("grown")
	natstest.WaitFor(t, 20*time.Second, func() bool { return !stored(lost) },
		"nats-server removes the message of a filter a consumer gained, below its floor (if this fails, the server changed: see persist_consumer.go)")
	if err := st.DeleteConsumer(ctx, "grown"); err != nil {
		t.Fatal(err)
	}

	// takeShards racing its victim's rebuild. The victim had shards a and
	// b; the taker lists it, then (before the taker acts) the victim hands
	// b off, rebuilding its consumer with a only, and goes on handling a's
	// messages past one of b's that b's next owner has not read yet.
	consumer("runner-victim", "p.a.>", "p.b.>")
	var waiting uint64
	hook := func() {
		consumer("runner-victim", "p.a.>")
		publish("p.a.1")
		waiting = publish("p.b.1")
		publish("p.a.2")
		consumeAll("runner-victim", 2)
	}
	h := &hooks{}
	h.takeShardsListed.Store(&hook)
	e := &env{log: slog.New(slog.NewTextHandler(io.Discard, nil)), hooks: h}
	taker := &persistConsumer{env: e, p: &persistence{js: js, stream: st}, name: "runner-taker"}
	if err := taker.takeShards(ctx, []string{"p.a.>"}); err != nil {
		t.Fatal(err)
	}
	h.takeShardsListed.Store(nil)
	if c, err := st.Consumer(ctx, "runner-victim"); err == nil {
		cfg := c.CachedInfo().Config
		have := append(slices.Clone(cfg.FilterSubjects), cfg.FilterSubject)
		if slices.Contains(have, "p.b.>") {
			t.Errorf("takeShards gave the victim's rebuilt consumer back shard b (filters %q): its messages below the consumer's floor are removed at its next leader change", have)
		}
		stepDownConsumer("runner-victim")
	}
	natstest.StepDownStream(t, nc, "P")
	if !stored(waiting) {
		t.Fatalf("the message of shard b (seq %d), never handled, was removed from the stream", waiting)
	}
	// b's next owner creates its consumer and gets the message.
	consumer("runner-b", "p.b.>")
	consumeAll("runner-b", 1)
}
