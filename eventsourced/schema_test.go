package eventsourced

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/patterntest"
)

// publishRaw stores an event as an older program (or another language)
// would have.
func publishRaw(t testing.TB, env *env, id, name, version string, data string) {
	t.Helper()
	m := &nats.Msg{Subject: env.store.Subject(Account.Name(), id), Header: nats.Header{}, Data: []byte(data)}
	m.Header.Set(HeaderEventType, name)
	if version != "" {
		m.Header.Set(HeaderEventVersion, version)
	}
	if _, err := env.store.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// v2 of the account: "Credited" {"amt"} was renamed "Deposited" and its
// field became "amount" in version 2.
func upcastSpec() Spec[account] {
	spec := accountSpec(0)
	spec.Events[0] = Event("Deposited", func(s account, e Deposited) account {
		s.Balance += e.Amount
		s.Log = append(s.Log, e.Amount)
		return s
	}, Version(2), Alias("Credited"), Upcast(1, func(data []byte) ([]byte, error) {
		var v1 struct {
			Amt int `json:"amt"`
		}
		if err := json.Unmarshal(data, &v1); err != nil {
			return nil, err
		}
		return json.Marshal(Deposited{Amount: v1.Amt})
	}))
	return spec
}

func TestUpcasting(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	publishRaw(t, env, "old", "Credited", "", `{"amt":5}`)
	publishRaw(t, env, "old", "Deposited", "1", `{"amt":6}`)
	publishRaw(t, env, "old", "Deposited", "2", `{"amount":7}`)
	rt := runtimeFor(t, env.store, upcastSpec())
	if got := patterntest.Call(t, rt, Deposit, "old", 100); got != 118 {
		t.Fatalf("Deposit on upcast history = %d, want 118", got)
	}
	// New events are stored under the current name and version.
	var names, versions []string
	read(t, env, "old", func(_ uint64, h nats.Header) {
		names = append(names, h.Get(HeaderEventType))
		versions = append(versions, h.Get(HeaderEventVersion))
	})
	if names[3] != "Deposited" || versions[3] != "2" {
		t.Fatalf("new event stored as %s v%s, want Deposited v2", names[3], versions[3])
	}
}

// A history that no declaration accounts for stops activation with a
// typed error instead of being skipped or guessed at.
func TestUnreadableHistory(t *testing.T) {
	tests := []struct {
		name         string
		typ, version string
		data         string
		spec         Spec[account]
		want         error
	}{
		{"unknown name", "Refunded", "", `{}`, accountSpec(0), ErrUnknownEvent},
		{"version from the future", "Deposited", "3", `{"amount":1}`, upcastSpec(), ErrUnknownEvent},
		{"no upcaster", "Deposited", "1", `{"amount":1}`, func() Spec[account] {
			s := accountSpec(0)
			s.Events[0] = Event("Deposited", func(s account, e Deposited) account { return s }, Version(2))
			return s
		}(), ErrUnknownEvent},
		{"undecodable", "Deposited", "", `{"amount":"x"}`, accountSpec(0), ErrDecode},
		{"upcaster fails", "Credited", "", `not json`, upcastSpec(), ErrDecode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newEnv(t, DefaultConfig())
			publishRaw(t, env, "x", tt.typ, tt.version, tt.data)
			rt := runtimeFor(t, env.store, tt.spec, actor.DefectRetryPolicy(actor.ExponentialBackoff(1, 1)))
			_, err := actor.Call(context.Background(), rt, Balance, "x", actor.Empty{})
			if !errors.Is(err, tt.want) || !errors.Is(err, actor.ErrActivation) {
				t.Fatalf("activation over %s v%q %s = %v, want %v (activation failure)", tt.typ, tt.version, tt.data, err, tt.want)
			}
		})
	}
}

func TestInvalidSpec(t *testing.T) {
	env := newEnv(t, DefaultConfig())
	other := actor.NewEntity("Other")
	otherRPC := actor.NewRPC[int, int](other, "Do")
	mod := func(f func(*Spec[account])) Spec[account] { s := accountSpec(0); f(&s); return s }
	tests := []struct {
		name string
		spec Spec[account]
	}{
		{"no events", mod(func(s *Spec[account]) { s.Events = nil })},
		{"duplicate name", mod(func(s *Spec[account]) {
			s.Events = append(s.Events, Event("Deposited", func(s account, _ undeclared) account { return s }))
		})},
		{"duplicate alias", mod(func(s *Spec[account]) {
			s.Events[0] = Event("Deposited", func(s account, e Deposited) account { return s }, Alias("Withdrawn"))
		})},
		{"duplicate Go type", mod(func(s *Spec[account]) {
			s.Events = append(s.Events, Event("Other", func(s account, _ Deposited) account { return s }))
		})},
		{"bad name", mod(func(s *Spec[account]) {
			s.Events[0] = Event("has space", func(s account, e Deposited) account { return s })
		})},
		{"nil fold", mod(func(s *Spec[account]) { s.Events[0] = Event[account, Deposited]("Deposited", nil) })},
		{"interface event", mod(func(s *Spec[account]) {
			s.Events = append(s.Events, Event("Any", func(s account, _ any) account { return s }))
		})},
		{"version 0", mod(func(s *Spec[account]) {
			s.Events[0] = Event("Deposited", func(s account, e Deposited) account { return s }, Version(0))
		})},
		{"upcast at the current version", mod(func(s *Spec[account]) {
			s.Events[0] = Event("Deposited", func(s account, e Deposited) account { return s },
				Upcast(1, func(b []byte) ([]byte, error) { return b, nil }))
		})},
		{"upcast twice", mod(func(s *Spec[account]) {
			up := func(b []byte) ([]byte, error) { return b, nil }
			s.Events[0] = Event("Deposited", func(s account, e Deposited) account { return s }, Version(3), Upcast(1, up), Upcast(1, up))
		})},
		{"handler of another entity", mod(func(s *Spec[account]) {
			s.Handlers = append(s.Handlers, Handle(otherRPC, func(context.Context, *Entity[account], int) (int, error) { return 0, nil }))
		})},
		{"nil handler", mod(func(s *Spec[account]) { s.Handlers[0] = Handle[account](Deposit, nil) })},
		{"two handlers for one rpc", mod(func(s *Spec[account]) { s.Handlers = append(s.Handlers, s.Handlers[0]) })},
		{"negative SnapshotEvery", mod(func(s *Spec[account]) { s.SnapshotEvery = -1 })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(env.store, Account, tt.spec); !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("New = %v, want ErrInvalidOption", err)
			}
		})
	}
	if _, err := New(nil, Account, accountSpec(0)); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("New(nil store) = %v, want ErrInvalidOption", err)
	}
	for _, change := range []func(*Config){
		func(c *Config) { c.Prefix = "a.b" }, func(c *Config) { c.Replicas = 7 },
		func(c *Config) { c.Snapshots = 9 }, func(c *Config) { c.ActivationTimeout = -1 },
	} {
		cfg := DefaultConfig()
		change(&cfg)
		if _, err := Open(context.Background(), env.nc, cfg); !errors.Is(err, ErrInvalidOption) {
			t.Fatalf("Open(%+v) = %v, want ErrInvalidOption", cfg, err)
		}
	}
}

// Snapshots are used when valid and skipped (the state rebuilt from the
// events) when the state's version changed or the stream was re-created
// since they were written; in an object store as in KV.
func TestSnapshotValidity(t *testing.T) {
	for _, storage := range []SnapshotStorage{SnapshotsKV, SnapshotsObjectStore} {
		t.Run(map[SnapshotStorage]string{SnapshotsKV: "kv", SnapshotsObjectStore: "object"}[storage], func(t *testing.T) {
			env := newEnv(t, withSnapshots(storage))
			var from []uint64
			env.store.hooks = &hooks{loaded: func(_ actor.Address, snap uint64, _ int) { from = append(from, snap) }}
			spec := accountSpec(4)
			rt := runtimeFor(t, env.store, spec)
			for i := 1; i <= 10; i++ {
				patterntest.Call(t, rt, Deposit, "s", i)
			}
			patterntest.Passivate(t, rt)
			from = nil
			if got := patterntest.Call(t, rt, Balance, "s", actor.Empty{}).Balance; got != 55 || len(from) != 1 || from[0] == 0 {
				t.Fatalf("reactivated at %d from snapshot %v, want 55 from a snapshot", got, from)
			}

			spec.StateVersion = 2
			rt2 := runtimeFor(t, env.store, spec)
			from = nil
			if got := patterntest.Call(t, rt2, Balance, "s", actor.Empty{}).Balance; got != 55 || len(from) != 1 || from[0] != 0 {
				t.Fatalf("with a new StateVersion: %d from snapshot %v, want 55 from the events alone", got, from)
			}

			// Re-create the stream: the old snapshot (seq 8 or so) must not
			// be applied to the new history.
			if err := env.store.js.DeleteStream(context.Background(), env.store.stream); err != nil {
				t.Fatal(err)
			}
			store2, err := Open(context.Background(), env.nc, withSnapshots(storage))
			if err != nil {
				t.Fatal(err)
			}
			store2.hooks = env.store.hooks
			// rt2 wrote a snapshot with StateVersion 2 when it replayed:
			// only the stream's incarnation can tell it apart now.
			rt3 := runtimeFor(t, store2, spec)
			for i := 1; i <= 9; i++ {
				patterntest.Call(t, rt3, Deposit, "other", 1) // move the sequence past the old snapshot's
			}
			patterntest.Call(t, rt3, Deposit, "s", 1000)
			patterntest.Passivate(t, rt3)
			from = nil
			if got := patterntest.Call(t, rt3, Balance, "s", actor.Empty{}).Balance; got != 1000 || from[0] != 0 {
				t.Fatalf("after re-creating the stream: %d from snapshot %v, want 1000 from the events alone", got, from)
			}
		})
	}
}

// Snapshots in the object store use its standard layout: what this
// package writes nats.go reads, and the other way round, over several
// chunks.
func TestObjectSnapshotLayout(t *testing.T) {
	env := newEnv(t, withSnapshots(SnapshotsObjectStore))
	objs := env.store.snaps.(objectSnapshots)
	ctx := context.Background()
	big := make([]byte, 3*objectChunkSize+17)
	for i := range big {
		big[i] = byte(i * 7)
	}
	for round := range 2 { // the second replaces the first
		big[0] = byte(round)
		if err := objs.put(ctx, "a", big); err != nil {
			t.Fatal(err)
		}
		got, err := objs.obj.GetBytes(ctx, "a")
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("nats.go read %d bytes, %v; want what put wrote", len(got), err)
		}
	}
	if _, err := objs.obj.PutBytes(ctx, "b", big); err != nil {
		t.Fatal(err)
	}
	if got, err := objs.get(ctx, "b"); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("get of a nats.go object: %d bytes, %v", len(got), err)
	}
	if _, err := objs.get(ctx, "none"); !errors.Is(err, errSnapshotNotFound) {
		t.Fatalf("get of no object = %v, want errSnapshotNotFound", err)
	}
	info, err := objs.obj.GetInfo(ctx, "a")
	if err != nil || info.Chunks != 4 {
		t.Fatalf("object a: %+v, %v; want 4 chunks", info, err)
	}
	st, err := env.store.js.Stream(ctx, "OBJ_"+objs.bucket)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 10 {
		t.Fatalf("object stream holds %d messages, want 10 (4 chunks and a meta for a and for b; the replaced chunks purged)", n)
	}
}
