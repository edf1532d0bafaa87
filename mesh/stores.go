package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/jetstream"
)

// stores are the KV buckets of one cluster (one prefix):
//
//	<prefix>_leases       shard leases ("shard.<group>.<n>") and the shard
//	                      manager's leadership ("manager"), per-key TTL
//	<prefix>_runners      runner registrations (key: runner id), per-key TTL
//	<prefix>_assignments  the shard manager's assignment per group (key: group)
type stores struct {
	leases      *jetstream.Leases
	runners     *jetstream.Leases
	assignments natsjs.KeyValue
}

func openStores(ctx context.Context, nc *nats.Conn, cfg Config) (*stores, error) {
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, err
	}
	lc := jetstream.LeaseConfig{
		Replicas: cfg.StorageReplicas,
		TTL:      cfg.ShardLockExpiration,
		Margin:   cfg.ShardLockMargin,
	}
	lc.Bucket = cfg.Prefix + "_leases"
	leases, err := jetstream.OpenLeases(ctx, js, lc)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", lc.Bucket, err)
	}
	lc.Bucket = cfg.Prefix + "_runners"
	runners, err := jetstream.OpenLeases(ctx, js, lc)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", lc.Bucket, err)
	}
	bucket := cfg.Prefix + "_assignments"
	kv, err := js.CreateOrUpdateKeyValue(ctx, natsjs.KeyValueConfig{
		Bucket:      bucket,
		Description: "natsmesh shard assignments, written by the leading shard manager",
		History:     1,
		Replicas:    cfg.StorageReplicas,
	})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", bucket, err)
	}
	return &stores{leases: leases, runners: runners, assignments: kv}, nil
}

func shardKey(s ShardID) string { return fmt.Sprintf("shard.%s.%d", s.Group, s.N) }

func parseShardKey(key string) (ShardID, bool) {
	rest, ok := strings.CutPrefix(key, "shard.")
	i := strings.LastIndexByte(rest, '.')
	if !ok || i < 1 {
		return ShardID{}, false
	}
	n, err := strconv.Atoi(rest[i+1:])
	if err != nil || n < 0 {
		return ShardID{}, false
	}
	return ShardID{Group: rest[:i], N: n}, true
}

const managerKey = "manager"

// RunnerInfo is a runner's registration, as the shard manager and
// Inspect see it.
type RunnerInfo struct {
	ID          string    `json:"id"`
	Weight      int       `json:"weight"`
	EntityTypes []string  `json:"entityTypes"`
	Singletons  []string  `json:"singletons,omitempty"`
	Version     string    `json:"version"`
	Host        string    `json:"host,omitempty"`
	Started     time.Time `json:"started"`
}

// Assignment is the shard manager's decision for one shard group: the
// runner that should own each shard ("" = none).
type Assignment struct {
	Group   string    `json:"group"`
	Shards  []string  `json:"shards"`
	Manager string    `json:"manager"`
	Updated time.Time `json:"updated"`
}

func decodeAssignment(b []byte) (Assignment, error) {
	var a Assignment
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("corrupt assignment: %w", err)
	}
	return a, nil
}

// readAssignment returns the stored assignment of a group and its revision
// (0 when none).
func (st *stores) readAssignment(ctx context.Context, group string) (Assignment, uint64, error) {
	e, err := st.assignments.Get(ctx, group)
	if errors.Is(err, natsjs.ErrKeyNotFound) {
		return Assignment{Group: group}, 0, nil
	}
	if err != nil {
		return Assignment{}, 0, err
	}
	a, err := decodeAssignment(e.Value())
	return a, e.Revision(), err
}
