package actor

import (
	"fmt"
	"sync"
	"time"
)

// Observer hears of activations and deactivations. Its methods are called
// from entity goroutines, concurrently for different entities, and must not
// block. For one address, Deactivated of an activation is always called
// before Activated of the next one.
type Observer interface {
	Activated(addr Address)
	Deactivated(addr Address, reason StopReason)
}

type runtimeOptions struct {
	defaults    entityOptions
	termTimeout time.Duration
	observer    Observer
	partitions  int
	partFn      func(Address) int
	gate        func(partition int) error
}

// RuntimeOption configures a Runtime.
type RuntimeOption func(*runtimeOptions) error

// WithTerminationTimeout bounds how long an activation's finalizers may run
// (entityTerminationTimeout).
func WithTerminationTimeout(d time.Duration) RuntimeOption {
	return func(o *runtimeOptions) error {
		if d <= 0 {
			return fmt.Errorf("%w: termination timeout %v must be positive", ErrInvalidOption, d)
		}
		o.termTimeout = d
		return nil
	}
}

// WithDefaults sets the entity options used where a behaviour sets none
// (entityMaxIdleTime, entityMailboxCapacity, ...).
func WithDefaults(opts ...Option) RuntimeOption {
	return func(o *runtimeOptions) error {
		for _, opt := range opts {
			if err := opt(&o.defaults); err != nil {
				return err
			}
		}
		return nil
	}
}

// WithObserver reports activations and deactivations to obs. Given more
// than once, every observer hears every event, in the order given.
func WithObserver(obs Observer) RuntimeOption {
	return func(o *runtimeOptions) error {
		switch {
		case obs == nil:
		case o.observer == nil:
			o.observer = obs
		default:
			o.observer = observers{o.observer, obs}
		}
		return nil
	}
}

type observers [2]Observer

func (os observers) Activated(addr Address) {
	os[0].Activated(addr)
	os[1].Activated(addr)
}

func (os observers) Deactivated(addr Address, reason StopReason) {
	os[0].Deactivated(addr, reason)
	os[1].Deactivated(addr, reason)
}

// WithPartitions splits the entities into n partitions chosen by fn, which
// must return a value in [0, n) and be a pure function of the address. A
// partition can be closed and reopened as a unit (ClosePartition); the mesh
// uses one partition per shard.
func WithPartitions(n int, fn func(Address) int) RuntimeOption {
	return func(o *runtimeOptions) error {
		if n < 1 || fn == nil {
			return fmt.Errorf("%w: partitions need n >= 1 and a function", ErrInvalidOption)
		}
		o.partitions, o.partFn = n, fn
		return nil
	}
}

// WithGate sets a check run before each message is handed to its entity
// (and before an entity is activated for it): if gate returns an error for
// the entity's partition, the message is not run and fails with that
// error. Unlike ClosePartition, which stops a partition as soon as someone
// calls it, a gate is consulted at the last moment, on the goroutine about
// to run the handler: for a message that activates its entity, once more
// after init returns (init may wait for storage), and if the gate refuses
// then, the activation is abandoned (its finalizers run, no Observer hears
// of it) and the message fails. The mesh uses it to check, per message, that the
// shard's lease is still locally valid, so that a runner resumed after a
// long pause runs nothing it queued before, even before its fencing runs.
// gate must be fast and safe for concurrent use.
func WithGate(gate func(partition int) error) RuntimeOption {
	return func(o *runtimeOptions) error {
		o.gate = gate
		return nil
	}
}

// typeState is one registered entity type.
type typeState struct {
	rt          *Runtime
	b           *Behavior
	maxIdle     int64 // nanoseconds
	concurrency int32
	capacity    int32
	noFatal     bool
	retry       Backoff
	idx         int // index of this type's map in every partition
	// pools holds reusable calls per RPC index. They are per runtime, not
	// per RPC, so that a call's channel never outlives its runtime (and
	// never crosses a testing/synctest bubble).
	pools []sync.Pool
}

// partition is a unit of entities that can be closed together. Its maps are
// indexed by entity type (typeState.idx) and keyed by id: a 16-byte key and a
// single string to hash, which matters when a runtime holds millions.
type partition struct {
	mu   sync.Mutex
	maps []map[string]*Instance
	err  error // non-nil while closed: the error new messages get
	_    [64]byte
}
