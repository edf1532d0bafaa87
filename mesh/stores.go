package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
//	<prefix>_types        entity type descriptions (key: <Type>.<fingerprint>)
type stores struct {
	leases      *jetstream.Leases
	runners     *jetstream.Leases
	assignments natsjs.KeyValue
}

func openStores(ctx context.Context, nc *nats.Conn, cfg *Config, log *slog.Logger) (*stores, error) {
	ctx, cancel := jetstream.SetupContext(ctx)
	defer cancel()
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, err
	}
	lc := jetstream.LeaseConfig{
		Replicas: cfg.StorageReplicas,
		Memory:   cfg.Storage == StorageMemory,
		TTL:      cfg.ShardLockExpiration,
		Margin:   cfg.ShardLockMargin,
	}
	st := &stores{}
	if st.leases, err = openLeases(ctx, js, lc, cfg.Prefix+"_leases"); err != nil {
		return nil, err
	}
	if st.runners, err = openLeases(ctx, js, lc, cfg.Prefix+"_runners"); err != nil {
		return nil, err
	}
	st.assignments, err = openKV(ctx, js, natsjs.KeyValueConfig{
		Bucket:      cfg.Prefix + "_assignments",
		Description: "natsmesh shard assignments, written by the leading shard manager",
		History:     1,
		Replicas:    cfg.StorageReplicas,
		Storage:     cfg.storageType(),
	}, log)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// openTypes opens the bucket of entity type descriptions, which only
// runners (writing) and tools (reading) need.
func openTypes(ctx context.Context, nc *nats.Conn, cfg *Config, log *slog.Logger) (natsjs.KeyValue, error) {
	ctx, cancel := jetstream.SetupContext(ctx)
	defer cancel()
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, err
	}
	return openKV(ctx, js, natsjs.KeyValueConfig{
		Bucket:      cfg.Prefix + "_types",
		Description: "natsmesh entity type descriptions, by type and fingerprint, written by the runners",
		History:     1,
		Replicas:    cfg.StorageReplicas,
		Storage:     cfg.storageType(),
	}, log)
}

// openLeases opens the lease bucket named bucket, with the retries of
// jetstream.Setup.
func openLeases(ctx context.Context, js natsjs.JetStream, lc jetstream.LeaseConfig, bucket string) (ls *jetstream.Leases, err error) {
	lc.Bucket = bucket
	err = jetstream.Setup(ctx, "open "+bucket, func(ctx context.Context) (err error) {
		ls, err = jetstream.OpenLeases(ctx, js, lc)
		return err
	})
	return ls, err
}

// openKV opens a KV bucket, creating it if missing (an existing one keeps
// its replicas and limits: jetstream.EnsureKeyValue), with the retries of
// jetstream.Setup.
func openKV(ctx context.Context, js natsjs.JetStream, cfg natsjs.KeyValueConfig, log *slog.Logger) (kv natsjs.KeyValue, err error) {
	err = jetstream.Setup(ctx, "open "+cfg.Bucket, func(ctx context.Context) (err error) {
		kv, err = jetstream.EnsureKeyValue(ctx, js, cfg, mismatchLogger(log))
		return err
	})
	return kv, err
}

// openStream opens a stream, creating it if missing (an existing one keeps
// its replicas and limits: jetstream.EnsureStream), with the retries of
// jetstream.Setup.
func openStream(ctx context.Context, js natsjs.JetStream, cfg natsjs.StreamConfig, log *slog.Logger) (st natsjs.Stream, err error) {
	err = jetstream.Setup(ctx, "open "+cfg.Name, func(ctx context.Context) (err error) {
		st, err = jetstream.EnsureStream(ctx, js, cfg, mismatchLogger(log))
		return err
	})
	return st, err
}

// mismatchLogger logs an existing asset's settings that differ from the
// configuration (they are kept).
func mismatchLogger(log *slog.Logger) func(string) {
	if log == nil {
		return nil
	}
	return func(what string) { log.Warn("JetStream asset differs from the configuration", "detail", what) }
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
	ID          string   `json:"id"`
	Weight      int      `json:"weight"`
	EntityTypes []string `json:"entityTypes"`
	// Types are the entity types with their shard group and protocol
	// fingerprint (EntityTypes names them too, for earlier readers).
	Types      []HostedType `json:"types,omitempty"`
	Singletons []string     `json:"singletons,omitempty"`
	// Version is the runner's build (WithVersion), Protocol the wire
	// protocol it speaks (protocol.Version).
	Version  string    `json:"version"`
	Protocol string    `json:"protocol,omitempty"`
	Host     string    `json:"host,omitempty"`
	Started  time.Time `json:"started"`
}

// Assignment is the shard manager's decision for one shard group: the
// runner that should own each shard ("" = none).
type Assignment struct {
	Group   string    `json:"group"`
	Shards  []string  `json:"shards"`
	Manager string    `json:"manager"`
	Updated time.Time `json:"updated"`
	// Types are the group's entity types, which every runner given its
	// shards hosts; nil when the manager predates them. Refused are the
	// runners that host only some of them (hosting.go).
	Types   []string  `json:"types"`
	Refused []Refusal `json:"refused,omitempty"`
	// Runners are the live runners the manager planned with, sorted: a
	// runner absent from every group's list has not been seen yet (its
	// readiness waits for it). Nil when the manager predates them.
	Runners []string `json:"runners,omitempty"`
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
