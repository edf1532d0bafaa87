package badinput_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

// garbage is what a broken tool or a bad disk might leave in a bucket.
var garbage = []byte("garbage\x00\xff{\"id\":")

func put(t *testing.T, c *cluster, bucket, key string) (revision uint64) {
	t.Helper()
	ctx := context.Background()
	kv, err := c.js().KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Put(ctx, key, garbage)
	if err != nil {
		t.Fatalf("put garbage in %s/%s: %v", bucket, key, err)
	}
	return rev
}

// A corrupt assignment is ignored by the runners, which keep their shards;
// Inspect says it is corrupt; the shard manager overwrites it at the next
// change of runners.
func TestCorruptAssignment(t *testing.T) {
	c, cl, nc := started(t)
	put(t, c, "mesh_assignments", "default")
	c.answered(cl, "with a corrupt assignment")
	ctx := context.Background()
	if _, err := mesh.Inspect(ctx, nc, c.cfg); err == nil || !strings.Contains(err.Error(), "corrupt assignment") {
		t.Fatalf("Inspect with a corrupt assignment = %v, want an error saying so", err)
	}
	c.runner("r2")
	natstest.WaitFor(t, 20*time.Second, func() bool {
		st, err := mesh.Inspect(ctx, nc, c.cfg)
		if err != nil {
			return false
		}
		n := map[string]int{}
		for _, s := range st.Shards {
			if s.Assigned == s.Holder {
				n[s.Holder]++
			}
		}
		return n["r1"] == 2 && n["r2"] == 2
	}, "a fresh assignment over r1 and r2, each holding its shards")
	c.answered(cl, "after the assignment was rewritten")
}

// A corrupt stored reply is reported as malformed to whoever asks for it,
// and the message is not run again.
func TestCorruptStoredReply(t *testing.T) {
	c, cl, _ := started(t)
	put(t, c, "mesh_replies", "k.corrupt-1") // the reply key of message id corrupt-1
	ctx := context.Background()
	if _, err := mesh.Reply(ctx, cl, makeP, "corrupt-1"); !errors.Is(err, actor.ErrMalformed) {
		t.Fatalf("Reply of a corrupt stored reply = %v, want ErrMalformed", err)
	}
	before := blobRuns.Load()
	if _, err := mesh.Call(ctx, cl, makeP, "a", 1, mesh.MessageID("corrupt-1")); !errors.Is(err, actor.ErrMalformed) {
		t.Fatalf("sending corrupt-1 again = %v, want ErrMalformed", err)
	}
	if n := blobRuns.Load() - before; n != 0 {
		t.Fatalf("a message with a stored reply ran %d times", n)
	}
}

// A corrupt registration of a live runner, and garbage under a key no
// runner uses, cost nothing: the runner keeps its shards, also under a new
// shard manager.
func TestCorruptRegistration(t *testing.T) {
	c, cl, nc := started(t)
	put(t, c, "mesh_runners", "not-a-runner")
	put(t, c, "mesh_runners", "r1")
	c.answered(cl, "with corrupt registrations")
	c.stopManager()
	c.startManager()
	ctx := context.Background()
	natstest.WaitFor(t, 20*time.Second, func() bool {
		st, err := mesh.Inspect(ctx, nc, c.cfg)
		if err != nil || len(st.Runners) == 0 || st.Runners[0].ID != "r1" || st.Runners[0].Version == "" {
			return false
		}
		for _, s := range st.Shards {
			if s.Assigned != "r1" {
				return false
			}
		}
		return true
	}, "r1 registered again and assigned every shard by the new shard manager")
	c.answered(cl, "after the shard manager changed")
}

// A corrupt shard lease is not a holder: the shard's runner takes its lease
// back (or another one does) and serves it again within the lease expiry.
func TestCorruptLease(t *testing.T) {
	c, cl, nc := started(t)
	rev := put(t, c, "mesh_leases", "shard.default.0")
	ctx := context.Background()
	natstest.WaitFor(t, 20*time.Second, func() bool {
		st, err := mesh.Inspect(ctx, nc, c.cfg)
		return err == nil && st.Shards[0].Holder == "r1" && st.Shards[0].LeaseRevision > rev
	}, "shard 0's lease held by r1 again, written after the garbage")
	c.answered(cl, "after a corrupt lease")
}

// A persisted stream deleted under a running runner: volatile calls go on,
// persisted calls fail with a clear error (the stream is gone) instead of
// hanging, and a runner that starts recreates the stream.
func TestPersistedStreamDeleted(t *testing.T) {
	c, cl, _ := started(t)
	ctx := context.Background()
	if _, err := mesh.Call(ctx, cl, echoP, "a", "x"); err != nil {
		t.Fatal(err)
	}
	if err := c.js().DeleteStream(ctx, "mesh_persist"); err != nil {
		t.Fatal(err)
	}
	c.answered(cl, "after the persisted stream was deleted")
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := mesh.Call(cctx, cl, echoP, "a", "x"); !errors.Is(err, natsjs.ErrNoStreamResponse) {
		t.Fatalf("persisted call without the stream = %v, want ErrNoStreamResponse", err)
	}
	c.runner("r2")
	c.stop("r1")
	c.served("r2 serving every shard")
	if v, err := mesh.Call(ctx, cl, echoP, "a", "xyz"); err != nil || v != 3 {
		t.Fatalf("persisted call after a runner started = %d, %v", v, err)
	}
}
