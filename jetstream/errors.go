package jetstream

import (
	"errors"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Errors returned by this package. Match them with errors.Is; most are
// wrapped with the key and the cause.
var (
	// ErrInvalidOption is returned for input that cannot work: a
	// configuration LeaseConfig.Validate refuses, a key or holder id that
	// cannot be stored (see Leases.Acquire).
	ErrInvalidOption = errors.New("jetstream: invalid option")

	// ErrLeaseHeld is returned by Acquire when another holder has the
	// lease; the message names that holder.
	ErrLeaseHeld = errors.New("jetstream: lease held by another holder")

	// ErrLeaseLost is returned when the key no longer names this lease:
	// another holder took it, or it was released or expired on the server.
	// The holder must stop acting on it at once.
	ErrLeaseLost = errors.New("jetstream: lease lost")

	// ErrLeaseExpired is returned when the local validity of a lease passed
	// without a confirmed renewal. The key may still name the holder on the
	// server, but the holder must act as if it had lost it (fencing); it may
	// try Acquire again, which takes over a key that still names it.
	ErrLeaseExpired = errors.New("jetstream: lease expired locally")

	// ErrNoLease is returned by Holder when nobody holds the key.
	ErrNoLease = errors.New("jetstream: no lease")

	// ErrNotFound is returned by LeaderGet when no message matches.
	ErrNotFound = errors.New("jetstream: no message")

	// ErrStopped is the reason a Keeper reports after Stop, Release or the
	// cancellation of its context.
	ErrStopped = errors.New("jetstream: keeper stopped")
)

// WrongLastSequence reports whether err is the server refusing a write
// whose expected last sequence (Nats-Expected-Last-Subject-Sequence, a KV
// revision, a KV create) did not match: another writer got there first,
// or, on a replicated stream, an earlier write to the same subject is still
// being applied. Single-replica streams answer 10071, replicated ones
// 10164; nats.go turns both into ErrKeyExists or ErrKeyRevisionMismatch
// for KV operations.
func WrongLastSequence(err error) bool {
	if errors.Is(err, natsjs.ErrKeyExists) || errors.Is(err, natsjs.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *natsjs.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == natsjs.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == natsjs.JSErrCodeStreamWrongLastSequenceConstant)
}
