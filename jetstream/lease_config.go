package jetstream

import (
	"fmt"
	"time"
)

// LeaseConfig configures a lease bucket. Zero fields take the value of
// DefaultLeaseConfig.
type LeaseConfig struct {
	// Bucket is the KV bucket (stream KV_<Bucket>) holding the leases.
	Bucket string
	// Replicas is the bucket's replication factor: 3 in a production
	// cluster, 1 on a single server.
	Replicas int
	// Memory keeps the bucket in the servers' memory instead of on disk
	// (tests); it applies when the bucket is created.
	Memory bool
	// TTL is how long the server keeps a lease after its last write. NATS
	// truncates per-message TTLs to whole seconds, so TTL must be a whole
	// number of seconds, at least 1s.
	TTL time.Duration
	// Margin is subtracted from TTL to give the holder's local validity: a
	// holder stops acting on a lease Margin before the server could expire
	// it. It must cover clock-rate drift between holder and server and the
	// time the holder needs to stop work after losing the lease.
	Margin time.Duration
}

// DefaultLeaseConfig returns the defaults: bucket "leases", one replica, a
// 35 s TTL (the mesh's default shard lock expiration) and a 1 s margin.
func DefaultLeaseConfig() LeaseConfig {
	return LeaseConfig{Bucket: "leases", Replicas: 1, TTL: 35 * time.Second, Margin: time.Second}
}

func (c LeaseConfig) withDefaults() LeaseConfig {
	d := DefaultLeaseConfig()
	if c.Bucket == "" {
		c.Bucket = d.Bucket
	}
	if c.Replicas == 0 {
		c.Replicas = d.Replicas
	}
	if c.TTL == 0 {
		c.TTL = d.TTL
	}
	if c.Margin == 0 {
		c.Margin = d.Margin
	}
	return c
}

// Validate reports whether c (after defaults) can work. Errors wrap
// ErrInvalidOption.
func (c LeaseConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case !validBucket(c.Bucket):
		return fmt.Errorf("%w: bucket %q: want [a-zA-Z0-9_-]+", ErrInvalidOption, c.Bucket)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("%w: replicas %d: want 1 to 5", ErrInvalidOption, c.Replicas)
	case c.TTL < time.Second || c.TTL%time.Second != 0:
		return fmt.Errorf("%w: TTL %v: want whole seconds, at least 1s", ErrInvalidOption, c.TTL)
	case c.Margin < 0 || c.Margin >= c.TTL:
		return fmt.Errorf("%w: margin %v: want 0 < margin < TTL %v", ErrInvalidOption, c.Margin, c.TTL)
	}
	return nil
}

// validity is how long a lease stays locally valid after the request that
// wrote it was sent.
func (c LeaseConfig) validity() time.Duration { return c.TTL - c.Margin }

// attemptTimeout bounds one request of a retried operation, so that a
// request lost during a leader election is retried well before the lease's
// validity runs out. A JetStream CAS normally takes milliseconds.
func (c LeaseConfig) attemptTimeout() time.Duration {
	return min(max(c.validity()/4, 250*time.Millisecond), 2*time.Second)
}

const (
	// defaultTimeout applies to Acquire, Release and Holder when their
	// context has no deadline.
	defaultTimeout = 5 * time.Second
	// retryPause separates the attempts of a retried operation.
	retryPause = 25 * time.Millisecond
)
