package mesh

import (
	"fmt"
	"strings"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// ClientConfig is what a client needs: the shape of the cluster, which
// every process of one cluster must agree on (Prefix, ShardsPerGroup,
// ShardGroups, EntityGroups), how calls are timed and encoded, and the
// settings of the persisted-message stream and reply bucket, used by
// whichever process creates them first. Names mirror @effect/cluster's
// ShardingConfig. Start from DefaultClientConfig and check with Validate.
type ClientConfig struct {
	// Prefix is the first token of every subject: clusters with different
	// prefixes share a NATS system without seeing each other.
	Prefix string
	// ShardsPerGroup is the number of shards in each shard group.
	ShardsPerGroup int
	// ShardGroups names the shard groups; the first is the default group.
	ShardGroups []string
	// EntityGroups assigns entity types to shard groups; types not listed
	// belong to the first group.
	EntityGroups map[string]string

	// CallTimeout applies to calls whose context has no deadline.
	CallTimeout time.Duration
	// RetryBackoff is the first wait before retrying a call that found no
	// runner for its shard; it doubles up to RetryBackoffMax.
	RetryBackoff    time.Duration
	RetryBackoffMax time.Duration
	// Codec is the Go client's payload codec: "msgpack" or "json".
	Codec string

	// StorageReplicas is the replication of the KV buckets and streams the
	// mesh creates: 1 on a single NATS server, 3 on a cluster.
	StorageReplicas int
	// Storage is where those buckets and streams keep their data:
	// StorageFile (the default) on disk, or StorageMemory in the servers'
	// memory (tests, single-process development: same behaviour, nothing
	// survives a restart of the NATS servers). It applies when they are
	// created; an existing bucket or stream keeps its storage.
	Storage string
	// PersistReplyRetention is how long the reply of a persisted message
	// is kept: a message sent again with the same id within it is answered
	// from the stored reply without running the handler again.
	PersistReplyRetention time.Duration
	// PersistDedupWindow is the stream's Nats-Msg-Id window: a message
	// published twice with one id within it is stored once.
	PersistDedupWindow time.Duration
}

// Config configures a runner or a shard manager: a client's settings
// (a runner calls entities too: the route subject, singletons) and the
// runner's own. Start from DefaultConfig and check with Validate.
type Config struct {
	ClientConfig

	// EntityMailboxCapacity, EntityMaxIdleTime and EntityTerminationTimeout
	// are the defaults for entities that set none (see package actor).
	EntityMailboxCapacity    int
	EntityMaxIdleTime        time.Duration
	EntityTerminationTimeout time.Duration

	// ExposeDefectStacks sends a defect's stack to callers. Stacks help
	// debugging but reveal code paths: turn it off for untrusted callers.
	ExposeDefectStacks bool
	// StreamAckTimeout ends a stream whose caller sent no acknowledgement
	// for this long while the runner waited for one (the caller is gone).
	StreamAckTimeout time.Duration

	// Standalone makes a runner serve every shard itself, with no shard
	// manager, leases or registry: one runner only (tests, examples).
	Standalone bool
	// RunnerID names this runner in the registry and in leases; it must be
	// unique per process incarnation. Empty: generated.
	RunnerID string
	// RunnerWeight is this runner's share of shards (runnerShardWeight).
	RunnerWeight int
	// ShardLockExpiration is the lease TTL of shards, singletons' shards, the
	// shard manager's leadership and runner registrations (whole seconds).
	ShardLockExpiration time.Duration
	// ShardLockRefreshInterval is how often leases and registrations are
	// renewed; several must fit in ShardLockExpiration.
	ShardLockRefreshInterval time.Duration
	// ShardLockMargin is how long before a lease could expire on the server
	// its holder stops serving: it must cover the time to stop a shard.
	ShardLockMargin time.Duration
	// RefreshAssignmentsInterval is how often runners re-read assignments
	// and retry leases, and the shard manager recomputes, besides reacting
	// to KV watch events at once.
	RefreshAssignmentsInterval time.Duration
	// RunnerHealthCheckTimeout bounds the ping that confirms a runner whose
	// registration expired is really gone before its shards move.
	RunnerHealthCheckTimeout time.Duration

	// PersistMaxAttempts bounds how often a persisted message whose handler
	// panics is tried before it goes to the dead-letter stream.
	PersistMaxAttempts int
	// PersistRetryBackoff and PersistRetryBackoffMax space those attempts
	// (doubling).
	PersistRetryBackoff    time.Duration
	PersistRetryBackoffMax time.Duration
	// PersistMaxInFlight bounds the persisted messages a runner's consumer
	// hands out before acknowledgements (its MaxAckPending).
	PersistMaxInFlight int

	// ReplyPrefixes are the subject prefixes a runner publishes replies to
	// (a request's reply subject, a persisted message's Mesh-Reply-To).
	// Callers choose those subjects and the runner publishes with its own
	// permissions, which include writing leases: a reply anywhere else is
	// refused, so a caller cannot make a runner overwrite a lease or call
	// the JetStream API. Default "_INBOX." (every NATS client's inboxes,
	// custom inbox prefixes included when they start with it).
	ReplyPrefixes []string
}

// FastFailover returns c with coordination timings tuned for failover in
// about 2 s (2 s leases renewed every 500 ms, 500 ms margin): more KV writes
// (each runner renews every shard lease twice a second) and less tolerance
// of NATS hiccups than the defaults.
func (c Config) FastFailover() Config {
	c.ShardLockExpiration = 2 * time.Second
	c.ShardLockRefreshInterval = 500 * time.Millisecond
	c.ShardLockMargin = 500 * time.Millisecond
	c.RefreshAssignmentsInterval = 500 * time.Millisecond
	c.RunnerHealthCheckTimeout = 250 * time.Millisecond
	return c
}

// Storage modes (ClientConfig.Storage).
const (
	StorageFile   = "file"
	StorageMemory = "memory"
)

// storageType is the JetStream storage of ClientConfig.Storage.
func (c *ClientConfig) storageType() natsjs.StorageType {
	if c.Storage == StorageMemory {
		return natsjs.MemoryStorage
	}
	return natsjs.FileStorage
}

// DefaultClientConfig returns the defaults of a client: the cluster shape
// and timings of docs/design.md.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		Prefix:          "mesh",
		ShardsPerGroup:  300,
		ShardGroups:     []string{"default"},
		CallTimeout:     10 * time.Second,
		RetryBackoff:    5 * time.Millisecond,
		RetryBackoffMax: 250 * time.Millisecond,
		Codec:           protocol.CodecMsgpack,

		StorageReplicas:       1,
		Storage:               StorageFile,
		PersistReplyRetention: 24 * time.Hour,
		PersistDedupWindow:    2 * time.Minute,
	}
}

// DefaultConfig returns the defaults of docs/design.md.
func DefaultConfig() Config {
	return Config{
		ClientConfig:             DefaultClientConfig(),
		EntityMailboxCapacity:    4096,
		EntityMaxIdleTime:        time.Minute,
		EntityTerminationTimeout: 15 * time.Second,
		ExposeDefectStacks:       true,
		StreamAckTimeout:         30 * time.Second,

		RunnerWeight:               1,
		ShardLockExpiration:        35 * time.Second,
		ShardLockRefreshInterval:   10 * time.Second,
		ShardLockMargin:            time.Second,
		RefreshAssignmentsInterval: 3 * time.Second,
		RunnerHealthCheckTimeout:   time.Second,

		PersistMaxAttempts:     10,
		PersistRetryBackoff:    100 * time.Millisecond,
		PersistRetryBackoffMax: 30 * time.Second,
		PersistMaxInFlight:     1000,
		ReplyPrefixes:          []string{"_INBOX."},
	}
}

// FieldError is a configuration field Validate refuses. It matches
// ErrInvalidOption with errors.Is.
type FieldError struct {
	// Field is the Config field's name ("EntityGroups[Type]" for one key of
	// a map).
	Field string
	// Value is the value refused.
	Value any
	// Reason says what a valid value is.
	Reason string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%v: %s = %v: %s", ErrInvalidOption, e.Field, e.Value, e.Reason)
}

// Unwrap returns ErrInvalidOption.
func (e *FieldError) Unwrap() error { return ErrInvalidOption }

func bad(field string, v any, why string) error {
	return &FieldError{Field: field, Value: v, Reason: why}
}

// Validate reports the first bad field as a *FieldError.
func (c *ClientConfig) Validate() error {
	switch {
	case !actor.ValidName(c.Prefix):
		return bad("Prefix", c.Prefix, "want [A-Za-z0-9_-]{1,64}")
	case c.ShardsPerGroup < 1 || c.ShardsPerGroup > 1<<20:
		return bad("ShardsPerGroup", c.ShardsPerGroup, "want 1..1048576")
	case len(c.ShardGroups) == 0:
		return bad("ShardGroups", c.ShardGroups, "want at least one group")
	case c.CallTimeout <= 0:
		return bad("CallTimeout", c.CallTimeout, "must be positive")
	case c.RetryBackoff <= 0 || c.RetryBackoffMax < c.RetryBackoff:
		return bad("RetryBackoff", c.RetryBackoff, "want 0 < RetryBackoff <= RetryBackoffMax")
	case c.StorageReplicas < 1 || c.StorageReplicas > 5:
		return bad("StorageReplicas", c.StorageReplicas, "want 1 to 5")
	case c.Storage != "" && c.Storage != StorageFile && c.Storage != StorageMemory:
		return bad("Storage", c.Storage, `want "file" or "memory"`)
	case c.PersistReplyRetention < time.Second:
		return bad("PersistReplyRetention", c.PersistReplyRetention, "want at least 1s")
	case c.PersistDedupWindow < time.Second:
		return bad("PersistDedupWindow", c.PersistDedupWindow, "want at least 1s")
	}
	if _, err := protocol.CodecByName(c.Codec); err != nil || c.Codec == "" {
		return bad("Codec", c.Codec, "want msgpack or json")
	}
	seen := map[string]bool{}
	for _, g := range c.ShardGroups {
		if !actor.ValidName(g) || seen[g] {
			return bad("ShardGroups", g, "want unique names [A-Za-z0-9_-]{1,64}")
		}
		seen[g] = true
	}
	for t, g := range c.EntityGroups {
		if !seen[g] {
			return bad("EntityGroups["+t+"]", g, "not in ShardGroups")
		}
	}
	return nil
}

// Validate reports the first bad field as a *FieldError: the client's
// settings first, then the runner's.
func (c *Config) Validate() error {
	if err := c.ClientConfig.Validate(); err != nil {
		return err
	}
	switch {
	case c.EntityMailboxCapacity < 1:
		return bad("EntityMailboxCapacity", c.EntityMailboxCapacity, "must be positive")
	case c.EntityMaxIdleTime <= 0:
		return bad("EntityMaxIdleTime", c.EntityMaxIdleTime, "must be positive")
	case c.EntityTerminationTimeout <= 0:
		return bad("EntityTerminationTimeout", c.EntityTerminationTimeout, "must be positive")
	case c.StreamAckTimeout <= 0:
		return bad("StreamAckTimeout", c.StreamAckTimeout, "must be positive")
	case c.RunnerID != "" && !actor.ValidName(c.RunnerID):
		return bad("RunnerID", c.RunnerID, "want [A-Za-z0-9_-]{1,64}")
	case c.RunnerWeight < 1:
		return bad("RunnerWeight", c.RunnerWeight, "must be at least 1")
	case c.ShardLockExpiration < time.Second || c.ShardLockExpiration%time.Second != 0:
		return bad("ShardLockExpiration", c.ShardLockExpiration, "want whole seconds, at least 1s (NATS per-key TTLs are whole seconds)")
	case c.ShardLockMargin <= 0 || c.ShardLockMargin >= c.ShardLockExpiration:
		return bad("ShardLockMargin", c.ShardLockMargin, "want 0 < margin < ShardLockExpiration")
	case c.ShardLockRefreshInterval <= 0 || 2*c.ShardLockRefreshInterval > c.ShardLockExpiration-c.ShardLockMargin:
		return bad("ShardLockRefreshInterval", c.ShardLockRefreshInterval, "want at least two renewals within ShardLockExpiration - ShardLockMargin")
	case c.RefreshAssignmentsInterval <= 0:
		return bad("RefreshAssignmentsInterval", c.RefreshAssignmentsInterval, "must be positive")
	case c.RunnerHealthCheckTimeout <= 0:
		return bad("RunnerHealthCheckTimeout", c.RunnerHealthCheckTimeout, "must be positive")
	case c.PersistMaxAttempts < 1:
		return bad("PersistMaxAttempts", c.PersistMaxAttempts, "must be at least 1")
	case c.PersistRetryBackoff <= 0 || c.PersistRetryBackoffMax < c.PersistRetryBackoff:
		return bad("PersistRetryBackoff", c.PersistRetryBackoff, "want 0 < PersistRetryBackoff <= PersistRetryBackoffMax")
	case c.PersistMaxInFlight < 1:
		return bad("PersistMaxInFlight", c.PersistMaxInFlight, "must be at least 1")
	case len(c.ReplyPrefixes) == 0:
		return bad("ReplyPrefixes", c.ReplyPrefixes, `want at least one prefix, such as "_INBOX."`)
	}
	for _, p := range c.ReplyPrefixes {
		if p == "" || strings.ContainsAny(p, "*> \t\r\n") || strings.HasPrefix(p, "$") {
			return bad("ReplyPrefixes", p, "want a literal subject prefix, not empty, without wildcards, not a system subject")
		}
	}
	return nil
}

// groupOf returns the shard group of an entity type.
func (c *ClientConfig) groupOf(entityType string) string {
	if g, ok := c.EntityGroups[entityType]; ok {
		return g
	}
	return c.ShardGroups[0]
}

// shardOf returns the shard of an entity.
func (c *ClientConfig) shardOf(entityType, id string) ShardID {
	return ShardID{Group: c.groupOf(entityType), N: protocol.ShardOf(id, c.ShardsPerGroup)}
}
