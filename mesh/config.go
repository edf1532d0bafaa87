package mesh

import (
	"fmt"
	"log/slog"
	"time"
)

// Config is the mesh's configuration, shared by runners and clients; every
// process of one cluster must agree on Prefix, ShardsPerGroup, ShardGroups and
// EntityGroups. Names mirror @effect/cluster's ShardingConfig. Start from
// DefaultConfig and check with Validate.
type Config struct {
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

	// EntityMailboxCapacity, EntityMaxIdleTime and EntityTerminationTimeout
	// are the defaults for entities that set none (see package actor).
	EntityMailboxCapacity    int
	EntityMaxIdleTime        time.Duration
	EntityTerminationTimeout time.Duration

	// CallTimeout applies to calls whose context has no deadline.
	CallTimeout time.Duration
	// RetryBackoff is the first wait before retrying a call that found no
	// runner for its shard; it doubles up to RetryBackoffMax.
	RetryBackoff    time.Duration
	RetryBackoffMax time.Duration
	// Codec is the Go client's payload codec: "msgpack" or "json".
	Codec string
	// ExposeDefectStacks sends a defect's stack to callers. Stacks help
	// debugging but reveal code paths: turn it off for untrusted callers.
	ExposeDefectStacks bool
	// StreamAckTimeout ends a stream whose caller sent no acknowledgement
	// for this long while the runner waited for one (the caller is gone).
	StreamAckTimeout time.Duration

	// Logger receives the mesh's structured logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults of DESIGN.md.
func DefaultConfig() Config {
	return Config{
		Prefix:                   "mesh",
		ShardsPerGroup:           300,
		ShardGroups:              []string{"default"},
		EntityMailboxCapacity:    4096,
		EntityMaxIdleTime:        time.Minute,
		EntityTerminationTimeout: 15 * time.Second,
		CallTimeout:              10 * time.Second,
		RetryBackoff:             5 * time.Millisecond,
		RetryBackoffMax:          250 * time.Millisecond,
		Codec:                    CodecMsgpack,
		ExposeDefectStacks:       true,
		StreamAckTimeout:         30 * time.Second,
	}
}

// Validate reports the first bad field, wrapped in ErrInvalidOption.
func (c *Config) Validate() error {
	bad := func(field string, v any, why string) error {
		return fmt.Errorf("%w: %s = %v: %s", ErrInvalidOption, field, v, why)
	}
	switch {
	case !validToken(c.Prefix):
		return bad("Prefix", c.Prefix, "want [A-Za-z0-9_-]{1,64}")
	case c.ShardsPerGroup < 1 || c.ShardsPerGroup > 1<<20:
		return bad("ShardsPerGroup", c.ShardsPerGroup, "want 1..1048576")
	case len(c.ShardGroups) == 0:
		return bad("ShardGroups", c.ShardGroups, "want at least one group")
	case c.EntityMailboxCapacity < 1:
		return bad("EntityMailboxCapacity", c.EntityMailboxCapacity, "must be positive")
	case c.EntityMaxIdleTime <= 0:
		return bad("EntityMaxIdleTime", c.EntityMaxIdleTime, "must be positive")
	case c.EntityTerminationTimeout <= 0:
		return bad("EntityTerminationTimeout", c.EntityTerminationTimeout, "must be positive")
	case c.CallTimeout <= 0:
		return bad("CallTimeout", c.CallTimeout, "must be positive")
	case c.RetryBackoff <= 0 || c.RetryBackoffMax < c.RetryBackoff:
		return bad("RetryBackoff", c.RetryBackoff, "want 0 < RetryBackoff <= RetryBackoffMax")
	case c.StreamAckTimeout <= 0:
		return bad("StreamAckTimeout", c.StreamAckTimeout, "must be positive")
	}
	if _, err := CodecByName(c.Codec); err != nil || c.Codec == "" {
		return bad("Codec", c.Codec, "want msgpack or json")
	}
	seen := map[string]bool{}
	for _, g := range c.ShardGroups {
		if !validToken(g) || seen[g] {
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

// groupOf returns the shard group of an entity type.
func (c *Config) groupOf(entityType string) string {
	if g, ok := c.EntityGroups[entityType]; ok {
		return g
	}
	return c.ShardGroups[0]
}

func validToken(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
