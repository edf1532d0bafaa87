package eventsourced

import (
	"errors"
	"fmt"

	"github.com/natsmesh/natsmesh/actor"
)

// Errors of the package. Match them with errors.Is.
var (
	// ErrConflict is returned by Persist (and so by the handler that called
	// it) when the server refused the append because another writer had
	// appended to the entity since this instance last read it: two
	// instances of one entity were active at once. Nothing was appended;
	// the instance rebuilds its state from the stream before its next
	// command. The error is a *ConflictError.
	ErrConflict = errors.New("eventsourced: conflicting writer")
	// ErrUnknownOutcome is returned by Persist when the server did not
	// answer before the handler's context ended: the events may or may not
	// be stored. The instance rebuilds its state from the stream before its
	// next command, so it never goes on from a guess.
	ErrUnknownOutcome = errors.New("eventsourced: append outcome unknown")
	// ErrUnknownEvent is returned by Persist for a Go type not declared
	// with Event, and by activation for a stored event whose type name or
	// version no declared event (or upcaster) accounts for.
	ErrUnknownEvent = errors.New("eventsourced: unknown event")
	// ErrDecode is returned by activation when a stored event or upcaster
	// output cannot be decoded: the entity cannot be rebuilt, and is not
	// rebuilt from a partial history.
	ErrDecode = errors.New("eventsourced: cannot decode event")
	// ErrTooManyEvents is returned by Persist for more events than one
	// atomic append holds (MaxEventsPerAppend).
	ErrTooManyEvents = errors.New("eventsourced: too many events in one append")
	// ErrInvalidOption wraps every rejected Spec, event declaration, Config
	// field or option (it is actor.ErrInvalidOption).
	ErrInvalidOption = actor.ErrInvalidOption
)

// ConflictError is the error of a refused append: the entity's stream had
// moved past Expected (the last sequence this instance knew) to Actual.
//
// Declare it as a failure of the RPCs that persist events,
// actor.Failure[*eventsourced.ConflictError]("Conflict"), for callers across
// the mesh to receive it typed; otherwise they receive a *mesh.Error with
// its text. Retrying the command is safe: nothing of it was stored.
type ConflictError struct {
	Entity   string `json:"entity"` // address, Type/ID
	Expected uint64 `json:"expected"`
	Actual   uint64 `json:"actual"`
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("eventsourced: conflicting writer on %s: expected last sequence %d, stream is at %d", e.Entity, e.Expected, e.Actual)
}

// Is reports whether target is ErrConflict.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }
