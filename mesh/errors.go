package mesh

import (
	"context"
	"errors"
	"reflect"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Errors of the mesh. Errors from the actor runtime (actor.ErrMailboxFull,
// actor.ErrUnknownRPC, ...) cross the wire as *Error values that match them
// with errors.Is; a *actor.Defect and an RPC's declared failures arrive as
// themselves.
var (
	// ErrShardUnavailable is returned when no runner answered for the
	// entity's shard before the caller's deadline (the shard is moving, or
	// no runner owns it).
	ErrShardUnavailable = errors.New("mesh: shard unavailable")
	// ErrPayloadTooLarge is returned for a request or reply larger than the
	// NATS connection's max payload.
	ErrPayloadTooLarge = errors.New("mesh: payload too large")
	// ErrBadRequest is returned for a request that breaks the protocol
	// (missing headers, bad subject).
	ErrBadRequest = errors.New("mesh: bad request")
	// ErrInvalidOption wraps every rejected option, configuration field or
	// argument (a *FieldError for Config and ClientConfig). It is
	// actor.ErrInvalidOption: one sentinel for invalid input across
	// natsmesh.
	ErrInvalidOption = actor.ErrInvalidOption
	// ErrClosed is returned after a runner or client was closed.
	ErrClosed = errors.New("mesh: closed")
	// ErrStreamBroken is returned when a stream's chunks arrive out of
	// sequence (a chunk was lost) or its runner went silent.
	ErrStreamBroken = errors.New("mesh: stream broken")
)

// errUnknownEntity is actor.ErrUnknownEntity, for declarations in this
// package.
var errUnknownEntity = actor.ErrUnknownEntity

// codes maps each sentinel to its wire code, in matching order.
var codes = []struct {
	err  error
	code string
}{
	{actor.ErrMailboxFull, protocol.CodeMailboxFull},
	{actor.ErrDefect, protocol.CodeDefect},
	{actor.ErrUnknownEntity, protocol.CodeUnknownEntity},
	{actor.ErrUnknownRPC, protocol.CodeUnknownRPC},
	{actor.ErrMalformed, protocol.CodeMalformed},
	{actor.ErrInvalidID, protocol.CodeInvalidID},
	{actor.ErrNotImplemented, protocol.CodeNotImplemented},
	{actor.ErrActivation, protocol.CodeActivation},
	{actor.ErrNotServing, protocol.CodeNotServing},
	{actor.ErrShuttingDown, protocol.CodeShuttingDown},
	{ErrPayloadTooLarge, protocol.CodePayloadTooLarge},
	{ErrBadRequest, protocol.CodeBadRequest},
	{context.DeadlineExceeded, protocol.CodeTimeout},
	{context.Canceled, protocol.CodeCanceled},
}

// Error is an error reply from a runner. It matches the sentinel of its
// code with errors.Is (actor.ErrMailboxFull for "MailboxFull", ...).
type Error struct {
	Code    string
	Message string
	// Failure names the declared failure when Code is protocol.CodeFailure and the
	// caller did not know the RPC's failures (CallRaw); Detail is then the
	// failure's value, encoded in the reply's codec.
	Failure string
	Detail  []byte
}

func (e *Error) Error() string { return "mesh: " + e.Code + ": " + e.Message }

// Is reports whether target is the sentinel of e's code.
func (e *Error) Is(target error) bool {
	for _, c := range codes {
		if c.code == e.Code && c.err == target {
			return true
		}
	}
	return false
}

// replyCode is the wire code a runner answers err with: the code of the
// first sentinel it matches, else CodeError. It is not CodeOf: an error a
// handler returns from a call it made itself (ErrShardUnavailable, say)
// must not become NotServing, which would make its caller send the call
// again to a shard where it has run.
func replyCode(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return protocol.CodeError
}

// CodeOf returns the wire code of an outcome a caller or an Observer sees,
// or "" for nil and for errors that stand for no code (a local failure:
// the connection closed, say). The code of a *Error; CodeFailure for a
// DeclaredFailure; CodeDefect for a *actor.Defect; CodeNotServing for
// ErrShardUnavailable; otherwise the code of the actor or mesh sentinel it
// matches (CodeMailboxFull for actor.ErrMailboxFull, CodeTimeout for a
// deadline, ...). Gateways map it to HTTP statuses, metrics and traces
// record it.
func CodeOf(err error) string {
	var e *Error
	var d *actor.Defect
	var f *DeclaredFailure
	switch {
	case err == nil:
		return ""
	case errors.As(err, &f):
		return protocol.CodeFailure
	case errors.As(err, &e):
		return e.Code
	case errors.As(err, &d):
		return protocol.CodeDefect
	case errors.Is(err, ErrShardUnavailable):
		return protocol.CodeNotServing
	}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return ""
}

// DeclaredFailure wraps one of an RPC's declared failures in the outcomes
// Observers hear (CallObservation.Done, CallSent's function), so that they
// can tell it from other errors; Failure is its declared name. Callers of
// Call get the failure itself, never this wrapper.
type DeclaredFailure struct {
	Failure string
	Err     error
}

func (f *DeclaredFailure) Error() string { return f.Err.Error() }
func (f *DeclaredFailure) Unwrap() error { return f.Err }

// declared wraps err in a DeclaredFailure if it is one of info's declared
// failures.
func declared(info actor.RPCInfo, err error) error {
	if err == nil || info == nil {
		return err
	}
	for _, f := range info.Failures() {
		if errors.As(err, reflect.New(f.Type).Interface()) {
			return &DeclaredFailure{Failure: f.Code, Err: err}
		}
	}
	return err
}
