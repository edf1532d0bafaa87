package eventsourced

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/patterntest"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Each benchmark alternates this package's operation with raw JetStream
// doing the same storage work, on one embedded server (file storage), and
// reports both rates and their ratio (x-raw): ratios are what to compare
// across machines and runs. Appends go through an actor runtime (no mesh
// hop): they measure this package's cost over JetStream. `make bench` runs
// them; docs/benchmarks.md records the figures.

// inFlight is how many callers the 1,000-entity benchmark runs.
const inFlight = 64

// rawAppend publishes one event-sized message to subj on condition that
// its last sequence is *seq, as Persist does, and advances *seq.
func rawAppend(b *testing.B, js natsjs.JetStream, subj string, seq *uint64) {
	m := &nats.Msg{Subject: subj, Data: []byte(`{"amount":1}`), Header: nats.Header{}}
	m.Header.Set(natsjs.ExpectedLastSubjSeqHeader, strconv.FormatUint(*seq, 10))
	ack, err := js.PublishMsg(context.Background(), m)
	if err != nil {
		b.Fatal(err)
	}
	*seq = ack.Sequence
}

// BenchmarkAppendOneEntity: sequential commands to one entity, each
// persisting one event, against sequential conditional publishes to one
// subject.
func BenchmarkAppendOneEntity(b *testing.B) {
	env := newEnv(b, DefaultConfig())
	rt := runtimeFor(b, env.store, accountSpec(0))
	ctx := context.Background()
	raw := env.store.Subject("Raw", "one")
	var seq uint64
	patterntest.Compare(b, "appends", func(int) {
		if _, err := actor.Call(ctx, rt, Deposit, "one", 1); err != nil {
			b.Fatal(err)
		}
	}, func(int) { rawAppend(b, env.store.js, raw, &seq) })
}

// BenchmarkAppend1000Entities: 64 callers, each commanding its own share
// of 1,000 entities in turn (active before the timer starts: activation is
// measured below), against 64 callers publishing to their share of 1,000
// subjects.
func BenchmarkAppend1000Entities(b *testing.B) {
	env := newEnv(b, DefaultConfig())
	rt := runtimeFor(b, env.store, accountSpec(0))
	ids := make([][]string, inFlight)
	seqs := make([][]uint64, inFlight)
	for g := range inFlight {
		for e := g; e < 1000; e += inFlight {
			id := fmt.Sprint("e", e)
			ids[g] = append(ids[g], id)
			if _, err := actor.Call(context.Background(), rt, Balance, id, actor.Empty{}); err != nil {
				b.Fatal(err)
			}
		}
		seqs[g] = make([]uint64, len(ids[g]))
	}
	ctx := context.Background()
	patterntest.CompareParallel(b, "appends", inFlight, 20, func(g, i int) {
		if _, err := actor.Call(ctx, rt, Deposit, ids[g][i%len(ids[g])], 1); err != nil {
			b.Error(err)
		}
	}, func(g, i int) {
		e := i % len(ids[g])
		rawAppend(b, env.store.js, env.store.Subject("Raw", ids[g][e]), &seqs[g][e])
	})
}

// historyOf stores n Deposited events for id, as Persist would have.
func historyOf(b *testing.B, env *env, id string, n int) {
	b.Helper()
	subj := env.store.Subject(Account.Name(), id)
	for range n {
		m := &nats.Msg{Subject: subj, Data: []byte(`{"amount":1}`), Header: nats.Header{}}
		m.Header.Set(HeaderEventType, "Deposited")
		m.Header.Set(protocol.HeaderCodec, "json")
		if _, err := env.store.js.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-env.store.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		b.Fatal("history not stored")
	}
}

// activate rebuilds id as an activation does and checks the result.
func activate(b *testing.B, env *env, spec Spec[account], id string, want int) {
	d, err := define(env.store, Account, spec)
	if err != nil {
		b.Fatal(err)
	}
	e := newEntity(d, actor.Address{Type: Account.Name(), ID: id}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.load(ctx, true); err != nil {
		b.Fatal(err)
	}
	e.stop(ctx)
	if e.State().Balance != want {
		b.Fatalf("activated at %d, want %d", e.State().Balance, want)
	}
}

// rawRead reads the 10,000 messages of one subject with an ordered
// consumer, the usual raw JetStream way, decoding nothing.
func rawRead(b *testing.B, env *env, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := env.store.js.Stream(ctx, env.store.stream)
	if err != nil {
		b.Fatal(err)
	}
	c, err := st.OrderedConsumer(ctx, natsjs.OrderedConsumerConfig{FilterSubjects: []string{env.store.Subject(Account.Name(), id)}})
	if err != nil {
		b.Fatal(err)
	}
	it, err := c.Messages()
	if err != nil {
		b.Fatal(err)
	}
	defer it.Stop()
	for range 10_000 {
		if _, err := it.Next(natsjs.NextContext(ctx)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkActivate10kEvents: rebuild an entity with 10,000 events and no
// snapshot (a replay of all of them), against reading those events raw.
func BenchmarkActivate10kEvents(b *testing.B) {
	env := newEnv(b, DefaultConfig())
	historyOf(b, env, "h", 10_000)
	patterntest.Compare(b, "activations",
		func(int) { activate(b, env, accountSpec(0), "h", 10_000) },
		func(int) { rawRead(b, env, "h") })
}

// BenchmarkActivate10kEventsSnapshot: the same entity with a snapshot at
// its 10,000th event (a snapshot read, no replay), against reading the
// events raw.
func BenchmarkActivate10kEventsSnapshot(b *testing.B) {
	env := newEnv(b, DefaultConfig())
	historyOf(b, env, "h", 10_000)
	activate(b, env, accountSpec(10_000), "h", 10_000) // replays all and writes the snapshot
	var from uint64
	env.store.hooks = &hooks{loaded: func(_ actor.Address, snap uint64, _ int) { from = snap }}
	defer func() { env.store.hooks = nil }()
	patterntest.Compare(b, "activations",
		func(int) { activate(b, env, accountSpec(10_000), "h", 10_000) },
		func(int) { rawRead(b, env, "h") })
	if from == 0 {
		b.Fatal("activation did not start from the snapshot")
	}
}
