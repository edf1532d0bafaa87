package workflow

import (
	"errors"
	"fmt"

	"github.com/natsmesh/natsmesh/actor"
)

// Errors of the package. Match them with errors.Is.
var (
	// ErrInvalidOption wraps every rejected definition, argument, Config
	// field or option (it is actor.ErrInvalidOption).
	ErrInvalidOption = actor.ErrInvalidOption
	// ErrNotFound is returned for an execution that was never started.
	ErrNotFound = errors.New("workflow: no such execution")
	// ErrUnknownWorkflow is the outcome of an execution whose workflow
	// this runner does not define.
	ErrUnknownWorkflow = errors.New("workflow: unknown workflow")
	// ErrInterrupted is the outcome of an interrupted execution.
	ErrInterrupted = errors.New("workflow: interrupted")
	// ErrTimeout is returned by Await when its timeout passed first.
	ErrTimeout = errors.New("workflow: await timed out")
	// ErrNonDeterminism marks an execution whose code, replayed against
	// its journal, asked for something else than the journal recorded at
	// some step: it is Stuck (a *NonDeterminismError says where) until the
	// code is fixed and the execution resumed.
	ErrNonDeterminism = errors.New("workflow: non-deterministic replay")
	// ErrStuck is the error Result returns for a Stuck execution.
	ErrStuck = errors.New("workflow: stuck")
)

// ErrorInfo is an error as a journal and an execution's outcome keep it:
// its text, and for a declared failure (Define's Failure option) its code
// and value.
type ErrorInfo struct {
	Message string `json:"message"`
	// Code is a declared failure's code; "Interrupted", "NonDeterminism"
	// or "Stuck" for those.
	Code   string `json:"code,omitempty"`
	Detail []byte `json:"detail,omitempty"`
}

func (e *ErrorInfo) Error() string {
	if e.Code != "" {
		return e.Code + ": " + e.Message
	}
	return e.Message
}

// NonDeterminismError says where a replay left its journal.
type NonDeterminismError struct {
	Seq  int    // the step's sequence number
	Want string // what the code asked for at that step
	Got  string // what the journal holds there ("nothing" past its end)
}

func (e *NonDeterminismError) Error() string {
	return fmt.Sprintf("workflow: non-deterministic replay at step %d: the code asks for %s, the journal holds %s", e.Seq, e.Want, e.Got)
}

// Is reports whether target is ErrNonDeterminism.
func (e *NonDeterminismError) Is(target error) bool { return target == ErrNonDeterminism }

// nonRetryable marks an activity's definite failure.
type nonRetryable struct{ err error }

func (e *nonRetryable) Error() string { return e.err.Error() }
func (e *nonRetryable) Unwrap() error { return e.err }

// NonRetryable wraps an activity's error to say it failed for good: the
// activity is not tried again, and the error is returned to the workflow
// code (which may compensate by returning it). Any other error is retried
// per the activity's retry policy, and once that is exhausted the
// execution is Stuck for an operator (an outcome that is unknown is never
// guessed at).
func NonRetryable(err error) error {
	if err == nil {
		err = errors.New("failed")
	}
	return &nonRetryable{err: err}
}

func isNonRetryable(err error) bool {
	var n *nonRetryable
	return errors.As(err, &n)
}
