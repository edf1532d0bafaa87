package mesh

import (
	"context"
	"errors"

	"github.com/natsmesh/natsmesh/actor"
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
	// ErrInvalidOption wraps every rejected option or configuration field.
	ErrInvalidOption = errors.New("mesh: invalid option")
	// ErrClosed is returned after a runner or client was closed.
	ErrClosed = errors.New("mesh: closed")
	// ErrStreamBroken is returned when a stream's chunks arrive out of
	// sequence (a chunk was lost) or its runner went silent.
	ErrStreamBroken = errors.New("mesh: stream broken")
)

// Error codes on the wire (docs/protocol.md lists each with its meaning).
const (
	CodeMailboxFull     = "MailboxFull"
	CodeDefect          = "Defect"
	CodeUnknownEntity   = "UnknownEntity"
	CodeUnknownRPC      = "UnknownRpc"
	CodeMalformed       = "Malformed"
	CodeInvalidID       = "InvalidId"
	CodeNotImplemented  = "NotImplemented"
	CodeActivation      = "Activation"
	CodeNotServing      = "NotServing"
	CodeShuttingDown    = "ShuttingDown"
	CodePayloadTooLarge = "PayloadTooLarge"
	CodeBadRequest      = "BadRequest"
	CodeTimeout         = "Timeout"
	CodeCanceled        = "Canceled"
	CodeFailure         = "Failure"
	CodeError           = "Error"
)

// codes maps each sentinel to its wire code, in matching order.
var codes = []struct {
	err  error
	code string
}{
	{actor.ErrMailboxFull, CodeMailboxFull},
	{actor.ErrDefect, CodeDefect},
	{actor.ErrUnknownEntity, CodeUnknownEntity},
	{actor.ErrUnknownRPC, CodeUnknownRPC},
	{actor.ErrMalformed, CodeMalformed},
	{actor.ErrInvalidID, CodeInvalidID},
	{actor.ErrNotImplemented, CodeNotImplemented},
	{actor.ErrActivation, CodeActivation},
	{actor.ErrNotServing, CodeNotServing},
	{actor.ErrShuttingDown, CodeShuttingDown},
	{ErrPayloadTooLarge, CodePayloadTooLarge},
	{ErrBadRequest, CodeBadRequest},
	{context.DeadlineExceeded, CodeTimeout},
	{context.Canceled, CodeCanceled},
}

// Error is an error reply from a runner. It matches the sentinel of its
// code with errors.Is (actor.ErrMailboxFull for "MailboxFull", ...).
type Error struct {
	Code    string
	Message string
	// Failure names the declared failure when Code is CodeFailure and the
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

// retryable reports whether a reply error means "try again, maybe
// elsewhere": the shard is moving or its runner is stopping.
func retryable(code string) bool { return code == CodeNotServing || code == CodeShuttingDown }

// codeOf returns the wire code of a handler or runtime error.
func codeOf(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return CodeError
}
