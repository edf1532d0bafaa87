package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Registry records (the runners bucket) as the shard manager applies them:
// a record counts only if it decodes and names the key it is stored under;
// anything else leaves the manager's view as it was, and no record panics.
func FuzzRegistryRecord(f *testing.F) {
	f.Add("runner-1", []byte(`{"id":"runner-1","weight":2,"entityTypes":["Counter"],"version":"0.1.0"}`), uint8(0))
	f.Add("runner-1", []byte(`{"id":"runner-2"}`), uint8(0))
	f.Add("runner-1", []byte(`{"id":"runner-1","weight":-9,"started":"yesterday"}`), uint8(0))
	f.Add("runner-1", []byte(`nul`), uint8(0))
	f.Add("runner-1", []byte(nil), uint8(1))
	f.Add("runner-1", []byte(nil), uint8(2))
	f.Add("", []byte(`{}`), uint8(3))
	f.Fuzz(func(t *testing.T, key string, meta []byte, kind uint8) {
		prev := RunnerInfo{ID: key, Weight: 1, Version: "old"}
		tm := &term{
			m:        &ShardManager{log: slog.New(slog.DiscardHandler)},
			live:     map[string]RunnerInfo{key: prev},
			suspects: map[string]RunnerInfo{},
		}
		ev := jetstream.Event{Kind: jetstream.EventKind(kind%4 + 1), Key: key, Meta: meta}
		tm.onRunner(ev)
		got, live := tm.live[key]
		_, suspect := tm.suspects[key]
		switch ev.Kind {
		case jetstream.EventHeld:
			var info RunnerInfo
			if err := json.Unmarshal(meta, &info); err == nil && info.ID == key {
				if !live || !reflect.DeepEqual(got, info) || suspect {
					t.Fatalf("registration %s of %q: live %v %+v, suspect %v; want live %+v", meta, key, live, got, suspect, info)
				}
				return
			}
			if !live || !reflect.DeepEqual(got, prev) {
				t.Fatalf("corrupt registration %q of %q changed the view: %+v, live %v", meta, key, got, live)
			}
		case jetstream.EventReleased:
			if live || suspect {
				t.Fatalf("released %q still live %v or suspect %v", key, live, suspect)
			}
		case jetstream.EventExpired:
			if !live || !suspect {
				t.Fatalf("expired %q: live %v, suspect %v; want both (pinged before dropped)", key, live, suspect)
			}
		case jetstream.EventSynced:
			if !live || suspect {
				t.Fatalf("synced changed %q: live %v, suspect %v", key, live, suspect)
			}
		}
	})
}

// kvEntry is a KV entry as a watcher delivers it.
type kvEntry struct {
	key   string
	value []byte
	op    natsjs.KeyValueOp
}

func (e kvEntry) Bucket() string               { return "assignments" }
func (e kvEntry) Key() string                  { return e.key }
func (e kvEntry) Value() []byte                { return e.value }
func (e kvEntry) Revision() uint64             { return 1 }
func (e kvEntry) Created() time.Time           { return time.Time{} }
func (e kvEntry) Delta() uint64                { return 0 }
func (e kvEntry) Operation() natsjs.KeyValueOp { return e.op }

// Assignment records (the assignments bucket) as a runner applies them: a
// record that decodes makes the runner want exactly the shards it names for
// it in that group; a corrupt one changes nothing; a deleted one drops the
// group; records of unknown groups are ignored; none panics.
func FuzzAssignmentRecord(f *testing.F) {
	f.Add("default", []byte(`{"group":"default","shards":["r1","r2","r1","","r1","r1","r1","r1","r1","r1"],"manager":"m"}`), uint8(0))
	f.Add("default", []byte(`{"shards":null}`), uint8(0))
	f.Add("other", []byte(`{"shards":["r1"]}`), uint8(0))
	f.Add("default", []byte(`{"shards":[1,2]}`), uint8(0))
	f.Add("default", []byte(`[`), uint8(0))
	f.Add("default", []byte(nil), uint8(1))
	f.Add("nosuch", []byte(`{"shards":["r1"]}`), uint8(0))
	const shards = 8
	f.Fuzz(func(t *testing.T, group string, value []byte, op uint8) {
		cfg := DefaultConfig()
		cfg.ShardsPerGroup, cfg.ShardGroups = shards, []string{"default", "other"}
		e := &env{id: "r1", cfg: cfg, space: newShardSpace(&cfg.ClientConfig), log: slog.New(slog.DiscardHandler)}
		c := &coordinator{env: e, desired: map[ShardID]bool{}, assignRev: map[string]uint64{}}
		before := map[ShardID]bool{}
		for _, g := range cfg.ShardGroups {
			for _, n := range []int{1, 5} { // some shards wanted before the record
				c.desired[ShardID{Group: g, N: n}], before[ShardID{Group: g, N: n}] = true, true
			}
		}
		entry := kvEntry{key: group, value: value, op: natsjs.KeyValueOp(op % 3)}
		c.onAssignment(entry)
		want := before
		if _, known := e.space.groups[group]; known {
			switch a, err := decodeAssignment(value); {
			case entry.op != natsjs.KeyValuePut:
				want = without(before, group)
			case err == nil:
				want = without(before, group)
				for n := 0; n < shards && n < len(a.Shards); n++ {
					if a.Shards[n] == e.id {
						want[ShardID{Group: group, N: n}] = true
					}
				}
			}
		}
		if !reflect.DeepEqual(c.desired, want) {
			t.Fatalf("assignment %q (op %v) for %q: runner wants %v, want %v", value, entry.op, group, c.desired, want)
		}
	})
}

func without(m map[ShardID]bool, group string) map[ShardID]bool {
	out := map[ShardID]bool{}
	for s := range m {
		if s.Group != group {
			out[s] = true
		}
	}
	return out
}

// Stream control messages (acknowledgements and cancellation from the
// caller) never move the acknowledged count backwards or past what was
// sent, take every in-range acknowledgement, cancel exactly when asked,
// and never panic.
func FuzzStreamControl(f *testing.F) {
	f.Add(uint64(10), uint64(3), "7", "")
	f.Add(uint64(10), uint64(3), "11", "")
	f.Add(uint64(10), uint64(3), "2", "")
	f.Add(uint64(10), uint64(3), "-1", "")
	f.Add(uint64(10), uint64(3), "18446744073709551616", "")
	f.Add(uint64(0), uint64(0), "", "true")
	f.Add(uint64(5), uint64(5), "5", "x")
	f.Fuzz(func(t *testing.T, sent, acked uint64, ack, cancel string) {
		acked = min(acked, sent)
		cancelled := false
		s := &streamReplier{window: 4, credit: make(chan struct{}, 1), cancel: func() { cancelled = true }, sent: sent, acked: acked}
		m := &nats.Msg{Header: nats.Header{}}
		if ack != "" {
			m.Header.Set(protocol.HeaderAck, ack)
		}
		if cancel != "" {
			m.Header.Set(protocol.HeaderCancel, cancel)
		}
		s.onControl(m)
		if cancelled != (cancel != "") {
			t.Fatalf("control (ack %q, cancel %q): cancelled %v", ack, cancel, cancelled)
		}
		if s.acked < acked || s.acked > s.sent || s.sent != sent {
			t.Fatalf("control ack %q with %d sent, %d acked: now %d sent, %d acked", ack, sent, acked, s.sent, s.acked)
		}
		if n, err := strconv.ParseUint(ack, 10, 64); err == nil && cancel == "" && n > acked && n <= sent && s.acked != n {
			t.Fatalf("control ack %d with %d sent, %d acked: acked %d", n, sent, acked, s.acked)
		}
	})
}

var (
	fuzzLedger = actor.NewEntity("FuzzLedger")
	fuzzPost   = actor.NewRPC[int, int](fuzzLedger, "Post", actor.Persisted())
)

// Persisted messages with any subject (in a shard group the runner
// consumes), headers and payload a publisher can store in the stream: each
// is acknowledged (removed from the work queue) and leaves a trace, a dead
// letter, a stored reply under its message id, or (Mesh-No-Reply) a run of
// the handler; none is lost silently, retried forever, or panics the
// runner. Runs against a real runner and server, with one shard so that
// every id is in it; a message scheduled for the future is held by design
// and not generated.
func FuzzPersistedMessage(f *testing.F) {
	f.Add("0.FuzzLedger.Post", "json", "id-1", "", "m-1", "", false, []byte("5"))
	f.Add("0.FuzzLedger.Post", "msgpack", "id-1", "", "m-2", "", false, []byte{0x05})
	f.Add("0.FuzzLedger.Post", "xml", "id-1", "", "m-3", "", false, []byte("5"))
	f.Add("0.FuzzLedger.Post", "json", "", "aWQ=", "m-4", "", false, []byte("5"))
	f.Add("0.FuzzLedger.Post", "json", "", "!!", "m-5", "", false, []byte("5"))
	f.Add("0.FuzzLedger.Post", "json", "", "", "m-6", "", false, []byte("5"))
	f.Add("0.FuzzLedger.Post", "json", "", "/w==", "m-7", "", false, []byte("5"))
	f.Add("0.FuzzLedger.Post", "json", "id-1", "", "", "", false, []byte("5"))
	f.Add("0.FuzzLedger.Post", "json", "id-1", "", "m-8", "not a time", false, []byte("5"))
	f.Add("0.FuzzLedger.Post", "json", "id-1", "", "m-9", "2001-01-01T00:00:00Z", true, []byte("5"))
	f.Add("0.FuzzLedger.Post", "json", "id-1", "", "m 10 with spaces", "", false, []byte("{"))
	f.Add("0.FuzzLedger.Nope", "json", "id-1", "", "m-11", "", false, []byte("5"))
	f.Add("0.Nobody.Post", "json", "id-1", "", "m-12", "", false, []byte("5"))
	f.Add("7.FuzzLedger.Post", "json", "id-1", "", "m-13", "", false, []byte("5"))
	f.Add("x", "json", "id-1", "", "m-14", "", false, []byte("5"))
	f.Add("0.FuzzLedger.Post.extra", "json", "id-1", "", "m-15", "", true, []byte("5"))

	srv := natstest.StartServer(f)
	cfg := DefaultConfig()
	cfg.ShardsPerGroup, cfg.Standalone = 1, true
	cfg.PersistMaxAttempts, cfg.PersistRetryBackoff, cfg.PersistRetryBackoffMax = 2, 10*time.Millisecond, 20*time.Millisecond
	nc := natstest.Connect(f, srv)
	r, err := NewRunner(nc, cfg)
	if err != nil {
		f.Fatal(err)
	}
	var runs atomic.Int64
	err = r.Register(actor.Implement(fuzzLedger, func(*actor.Instance) ([]actor.Handler, error) {
		return []actor.Handler{actor.Handle(fuzzPost, func(_ context.Context, n int) (int, error) { runs.Add(1); return n, nil })}, nil
	}))
	if err != nil {
		f.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
	})
	p := r.persist
	const group = "mesh.v1.persist.default."

	f.Fuzz(func(t *testing.T, tail, codec, id, idB64, msgID, deliverAt string, noReply bool, payload []byte) {
		for _, v := range []string{codec, id, idB64, msgID, deliverAt} {
			if strings.ContainsAny(v, "\r\n") {
				return // a header value on the wire cannot hold a line break
			}
		}
		if at, err := time.Parse(time.RFC3339Nano, deliverAt); err == nil && at.After(time.Now()) {
			return // held until then, by design
		}
		if len(msgID) > 512 || len(tail) > 512 {
			return // long ids and subjects: see test/badinput
		}
		m := &nats.Msg{Subject: group + tail, Data: payload, Header: nats.Header{}}
		for k, v := range map[string]string{protocol.HeaderCodec: codec, protocol.HeaderID: id, protocol.HeaderIDBase64: idB64, protocol.HeaderMsgID: msgID, protocol.HeaderDeliverAt: deliverAt} {
			if v != "" {
				m.Header.Set(k, v)
			}
		}
		if noReply {
			m.Header.Set(protocol.HeaderNoReply, "true")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		deadBefore, runsBefore := deadCount(ctx, t, p), runs.Load()
		ack, err := p.js.PublishMsg(ctx, m)
		if err != nil {
			return // not storable (a subject NATS refuses, say): the publisher learns it
		}
		natstest.WaitFor(t, 15*time.Second, func() bool {
			_, err := p.stream.GetMsg(ctx, ack.Sequence)
			return errors.Is(err, natsjs.ErrMsgNotFound)
		}, "the message to be acknowledged (removed from the work queue)")
		if deadCount(ctx, t, p) > deadBefore {
			return // dead-lettered, with its reason
		}
		if noReply && runs.Load() > runsBefore {
			return // handled; nobody wants its reply
		}
		key := msgID
		if key == "" {
			t.Fatalf("message %q %v without id acknowledged without a dead letter or a run", m.Subject, m.Header)
		}
		e, err := p.replies.Get(ctx, protocol.ReplyKey(key))
		if err != nil {
			t.Fatalf("message %q %v acknowledged, neither dead-lettered nor answered: %v", m.Subject, m.Header, err)
		}
		if _, _, _, err := protocol.DecodeStored(e.Value()); err != nil {
			t.Fatalf("stored reply of %q: %v", msgID, err)
		}
	})
}

func deadCount(ctx context.Context, t *testing.T, p *persistence) uint64 {
	t.Helper()
	info, err := p.dead.Info(ctx)
	if err != nil {
		t.Fatalf("dead-letter stream info: %v", err)
	}
	return info.State.Msgs
}
