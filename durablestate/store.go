package durablestate

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Errors of the package. Match them with errors.Is.
var (
	// ErrConflict is returned by Save and Delete (and so by the handler
	// that called them) when the server refused the write because the
	// entity's key had moved past the revision this instance read: two
	// instances of one entity were active at once. Nothing was written;
	// the instance reloads its state before its next command. The error is
	// a *ConflictError.
	ErrConflict = errors.New("durablestate: conflicting writer")
	// ErrUnknownOutcome is returned when the server did not answer a write
	// before the handler's context ended: it may or may not be stored. The
	// instance reloads before its next command.
	ErrUnknownOutcome = errors.New("durablestate: write outcome unknown")
	// ErrDecode is returned by activation when the stored state cannot be
	// decoded or migrated; the entity does not start from a guess.
	ErrDecode = errors.New("durablestate: cannot decode state")
	// ErrInvalidOption wraps every rejected Spec, Config field or option
	// (it is actor.ErrInvalidOption).
	ErrInvalidOption = actor.ErrInvalidOption
)

// ConflictError is the error of a refused write: the entity's key was at
// revision Actual, not Expected (the revision this instance read or last
// wrote).
//
// Declare it as a failure of the RPCs that save state,
// actor.Failure[*durablestate.ConflictError]("Conflict"), for callers across
// the mesh to receive it typed. Retrying the command is safe: nothing of it
// was stored.
type ConflictError struct {
	Entity   string `json:"entity"` // address, Type/ID
	Expected uint64 `json:"expected"`
	Actual   uint64 `json:"actual"`
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("durablestate: conflicting writer on %s: expected revision %d, key is at %d", e.Entity, e.Expected, e.Actual)
}

// Is reports whether target is ErrConflict.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Headers of a stored state, besides the KV ones.
const (
	// HeaderStateVersion is Spec.StateVersion when the state was written
	// ("0" when absent).
	HeaderStateVersion = "Mesh-State-Version"
	// HeaderWriteID is unique per write: it tells a write that landed from
	// one that did not after an unanswered attempt.
	HeaderWriteID = "Mesh-Write-Id"
)

// Config configures a Store. Start from DefaultConfig.
type Config struct {
	// Prefix names the buckets, <Prefix>_state_<EntityType>: the mesh's
	// prefix.
	Prefix string
	// Replicas is the replication of the buckets: 1 on a single server, 3
	// on a cluster.
	Replicas int
	// Codec encodes states.
	Codec actor.Codec
	// LoadTimeout bounds loading an entity's state on activation, and a
	// write-behind flush outside a command.
	LoadTimeout time.Duration
	// WriteAttemptTimeout bounds one attempt to write; an attempt with no
	// answer is retried with the same revision until the handler's context
	// ends.
	WriteAttemptTimeout time.Duration
}

// DefaultConfig returns prefix "mesh" (the mesh's default), one replica,
// JSON, a 30 s load timeout and 5 s write attempts.
func DefaultConfig() Config {
	return Config{Prefix: "mesh", Replicas: 1, Codec: protocol.JSON, LoadTimeout: 30 * time.Second, WriteAttemptTimeout: 5 * time.Second}
}

// Validate reports the first bad field, wrapping ErrInvalidOption.
func (c *Config) Validate() error {
	switch {
	case !actor.ValidName(c.Prefix):
		return fmt.Errorf("%w: Prefix %q: want [A-Za-z0-9_-]{1,64}", ErrInvalidOption, c.Prefix)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("%w: Replicas %d: want 1 to 5", ErrInvalidOption, c.Replicas)
	case c.Codec == nil:
		return fmt.Errorf("%w: no Codec", ErrInvalidOption)
	case c.LoadTimeout <= 0 || c.WriteAttemptTimeout <= 0:
		return fmt.Errorf("%w: LoadTimeout %v, WriteAttemptTimeout %v: want positive timeouts", ErrInvalidOption, c.LoadTimeout, c.WriteAttemptTimeout)
	}
	return nil
}

// Option configures a Store beyond its Config.
type Option func(*Store) error

// WithLogger sends the store's warnings (write-behind changes that could
// not be flushed) to l; without it they are discarded.
func WithLogger(l *slog.Logger) Option {
	return func(st *Store) error {
		if l == nil {
			return fmt.Errorf("%w: WithLogger(nil)", ErrInvalidOption)
		}
		st.log = l
		return nil
	}
}

// Store holds the connection and settings shared by the durable-state
// entity types of a process; New creates each type's bucket. It is safe for
// concurrent use.
type Store struct {
	nc    *nats.Conn
	js    natsjs.JetStream
	cfg   Config
	log   *slog.Logger
	hooks *hooks // tests only (export_test.go); nil in production
}

// hooks are test hooks, set by tests only: nil runs none.
type hooks struct {
	// attempt runs each write attempt (jetstream.Append.Attempt).
	attempt func(attempt int, publish func() (uint64, error)) (uint64, error)
}

// Open returns a Store. It does no I/O; it returns an error wrapping
// ErrInvalidOption for a bad Config or option.
func Open(nc *nats.Conn, cfg Config, opts ...Option) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, err
	}
	st := &Store{nc: nc, js: js, cfg: cfg, log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		if err := opt(st); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// Bucket returns the name of the KV bucket of an entity type.
func (st *Store) Bucket(entityType string) string { return st.cfg.Prefix + "_state_" + entityType }

// Key returns the KV key of one entity.
func Key(id string) string { return jetstream.Token(id) }
