package jetstream

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// A process configured with fewer replicas (a client, a tool) must not
// change a cluster's R3 assets; missing features are added, nothing else.
func TestEnsureKeepsExistingAssets(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	nc := natstest.Connect(t, servers...)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	var mu sync.Mutex
	var mismatches []string
	note := func(s string) { mu.Lock(); mismatches = append(mismatches, s); mu.Unlock() }

	// A stream created R3 without schedules and with one subject.
	if _, err := EnsureStream(ctx, js, natsjs.StreamConfig{Name: "S", Subjects: []string{"a.>"}, Replicas: 3}, note); err != nil {
		t.Fatal(err)
	}
	st, err := EnsureStream(ctx, js, natsjs.StreamConfig{
		Name: "S", Subjects: []string{"a.>", "b.>"}, Replicas: 1, Duplicates: time.Minute, AllowMsgSchedules: true,
	}, note)
	if err != nil {
		t.Fatal(err)
	}
	got := st.CachedInfo().Config
	if got.Replicas != 3 || !got.AllowMsgSchedules || !slices.Equal(got.Subjects, []string{"a.>", "b.>"}) || got.Duplicates == time.Minute {
		t.Fatalf("stream after Ensure with R1: replicas %d, schedules %v, subjects %v, duplicates %v; want R3 kept, schedules and b.> added, duplicates kept",
			got.Replicas, got.AllowMsgSchedules, got.Subjects, got.Duplicates)
	}

	// A bucket created R3 without per-key TTLs.
	if _, err := EnsureKeyValue(ctx, js, natsjs.KeyValueConfig{Bucket: "B", Replicas: 3, History: 1}, note); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureKeyValue(ctx, js, natsjs.KeyValueConfig{Bucket: "B", Replicas: 1, History: 5, LimitMarkerTTL: 5 * time.Second}, note); err != nil {
		t.Fatal(err)
	}
	kvs, err := js.Stream(ctx, "KV_B")
	if err != nil {
		t.Fatal(err)
	}
	kc := kvs.CachedInfo().Config
	if kc.Replicas != 3 || kc.MaxMsgsPerSubject != 1 || !kc.AllowMsgTTL || kc.SubjectDeleteMarkerTTL != 5*time.Second {
		t.Fatalf("bucket stream after Ensure with R1: replicas %d, history %d, msg TTL %v, marker TTL %v; want R3 and history 1 kept, TTLs added",
			kc.Replicas, kc.MaxMsgsPerSubject, kc.AllowMsgTTL, kc.SubjectDeleteMarkerTTL)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(mismatches) != 2 || !strings.Contains(mismatches[0], "3 replicas") {
		t.Fatalf("mismatches reported: %q, want the two replica differences", mismatches)
	}
}
