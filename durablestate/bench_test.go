package durablestate

import (
	"context"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/patterntest"
)

// Sequential saves of one entity through an actor runtime, write-through
// and write-behind, alternated with raw KV updates of one key with its
// revision (the write a write-through Save makes), on one embedded server
// (file storage); each reports both rates and their ratio (x-raw).
// `make bench` runs them; docs/benchmarks.md records the figures.

func BenchmarkSaveWriteThrough(b *testing.B) { benchSave(b, nil) }

func BenchmarkSaveWriteBehind(b *testing.B) {
	benchSave(b, &WriteBehind{Interval: 100 * time.Millisecond, MaxChanges: 1000})
}

func benchSave(b *testing.B, wb *WriteBehind) {
	env := newEnv(b, DefaultConfig())
	spec := cartSpec(wb)
	// A fixed-size state: replace the single item each time.
	spec.Handlers[0] = Handle(Add, func(ctx context.Context, e *Entity[cart], item string) (int, error) {
		return 1, e.Save(ctx, cart{Items: []string{item}})
	})
	rt := runtimeFor(b, env.store, spec)
	ctx := context.Background()
	kv, err := env.store.js.CreateKeyValue(ctx, natsjs.KeyValueConfig{Bucket: "raw", History: 1})
	if err != nil {
		b.Fatal(err)
	}
	rev, err := kv.Create(ctx, "one", []byte(`{"items":["item"]}`))
	if err != nil {
		b.Fatal(err)
	}
	patterntest.Compare(b, "saves", func(int) {
		if _, err := actor.Call(ctx, rt, Add, "one", "item"); err != nil {
			b.Fatal(err)
		}
	}, func(int) {
		if rev, err = kv.Update(ctx, "one", []byte(`{"items":["item"]}`), rev); err != nil {
			b.Fatal(err)
		}
	})
}
