// Package leaselog records every write of a mesh's shard leases, for tests
// that check fencing against what the server saw (test/fencing,
// test/chaos).
//
// # Usage
//
//	l := leaselog.Watch(t, nc, cfg)
//	... // faults
//	for _, e := range l.Entries() { ... }
//
// # Concurrency
//
// Entries may be called at any time from any goroutine; the watch runs in
// its own goroutine until the test's cleanup.
//
// # Guarantees
//
// Entries carry the server's timestamp and revision of each write. The
// watcher is a KV watch (an ordered consumer that nats.go recreates after a
// server restart); the bucket keeps one revision per key, so a revision
// replaced while the watcher was being recreated is missed. Missed
// revisions are not silent: revisions are the bucket stream's sequence
// numbers, so Gaps lists every range of them the watcher skipped after its
// initial values. A check must treat a gap as unknown history.
package leaselog

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/mesh"
)

// Entry is one write of a shard's lease: a put names its holder; a delete
// or purge is a release or an expiry.
type Entry struct {
	At     time.Time // server timestamp
	Rev    uint64    // the bucket's stream sequence
	Shard  mesh.ShardID
	Op     natsjs.KeyValueOp
	Holder string
}

// Held reports whether the entry names a holder.
func (e Entry) Held() bool { return e.Op == natsjs.KeyValuePut }

// Log is the record of a lease bucket's writes.
type Log struct {
	mu      sync.Mutex
	entries []Entry
	gaps    [][2]uint64
}

// Watch starts recording the leases of cfg's first shard group (bucket
// and key names in docs/operations.md) and stops on t's cleanup.
func Watch(t testing.TB, nc *nats.Conn, cfg mesh.Config) *Log {
	t.Helper()
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	kv, err := js.KeyValue(ctx, cfg.Prefix+"_leases")
	if err != nil {
		cancel()
		t.Fatalf("lease bucket: %v", err)
	}
	group := cfg.ShardGroups[0]
	// All keys, not only the shards': the manager's lease shares the
	// bucket, and skipping its revisions would look like gaps.
	w, err := kv.WatchAll(ctx)
	if err != nil {
		cancel()
		t.Fatalf("watch leases: %v", err)
	}
	l := &Log{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var last uint64 // the last revision seen once the initial values are in
		synced := false
		for e := range w.Updates() {
			if e == nil {
				synced = true
				continue
			}
			l.mu.Lock()
			if synced && last != 0 && e.Revision() != last+1 {
				l.gaps = append(l.gaps, [2]uint64{last, e.Revision()})
			}
			last = max(last, e.Revision())
			l.mu.Unlock()
			var n int
			if _, err := fmt.Sscanf(e.Key(), "shard."+group+".%d", &n); err != nil {
				continue
			}
			holder, _, _ := strings.Cut(string(e.Value()), "\n")
			l.mu.Lock()
			l.entries = append(l.entries, Entry{At: e.Created(), Rev: e.Revision(), Shard: mesh.ShardID{Group: group, N: n}, Op: e.Operation(), Holder: holder})
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { _ = w.Stop(); cancel(); <-done })
	return l
}

// Entries returns the writes seen so far, in the order seen.
func (l *Log) Entries() []Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Entry(nil), l.entries...)
}

// Gaps returns the revision ranges the watcher skipped after its initial
// values: for each, the revisions strictly between the two were missed.
func (l *Log) Gaps() [][2]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][2]uint64(nil), l.gaps...)
}
