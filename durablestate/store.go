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
	// ErrInvalidSpec wraps every rejected Spec or Config.
	ErrInvalidSpec = errors.New("durablestate: invalid spec")
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

// Config configures a Store. The zero value of each field means its default.
type Config struct {
	// Prefix names the buckets, <Prefix>_state_<EntityType>. Default
	// "mesh", the mesh's default prefix.
	Prefix string
	// Replicas is the replication of the buckets: 1 (default) on a single
	// server, 3 on a cluster.
	Replicas int
	// Codec encodes states (default JSON).
	Codec actor.Codec
	// LoadTimeout bounds loading an entity's state on activation, and a
	// write-behind flush outside a command. Default 30 s.
	LoadTimeout time.Duration
	// WriteAttemptTimeout bounds one attempt to write; an attempt with no
	// answer is retried with the same revision until the handler's context
	// ends. Default 5 s.
	WriteAttemptTimeout time.Duration
	// Logger hears of write-behind changes that could not be flushed. Nil
	// discards.
	Logger *slog.Logger
}

func (c *Config) defaults() error {
	if c.Prefix == "" {
		c.Prefix = "mesh"
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Codec == nil {
		c.Codec = protocol.JSON
	}
	if c.LoadTimeout == 0 {
		c.LoadTimeout = 30 * time.Second
	}
	if c.WriteAttemptTimeout == 0 {
		c.WriteAttemptTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case !actor.ValidName(c.Prefix):
		return fmt.Errorf("%w: Prefix %q: want [A-Za-z0-9_-]{1,64}", ErrInvalidSpec, c.Prefix)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("%w: Replicas %d: want 1 to 5", ErrInvalidSpec, c.Replicas)
	case c.LoadTimeout < 0 || c.WriteAttemptTimeout < 0:
		return fmt.Errorf("%w: negative timeout", ErrInvalidSpec)
	}
	return nil
}

// Store holds the connection and settings shared by the durable-state
// entity types of a process; New creates each type's bucket. It is safe for
// concurrent use.
type Store struct {
	nc  *nats.Conn
	js  natsjs.JetStream
	cfg Config
}

// Open returns a Store. It does no I/O; it returns an error wrapping
// ErrInvalidSpec for a bad Config.
func Open(nc *nats.Conn, cfg Config) (*Store, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, err
	}
	return &Store{nc: nc, js: js, cfg: cfg}, nil
}

// Bucket returns the name of the KV bucket of an entity type.
func (st *Store) Bucket(entityType string) string { return st.cfg.Prefix + "_state_" + entityType }

// Key returns the KV key of one entity.
func Key(id string) string { return jetstream.Token(id) }
