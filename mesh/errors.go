package mesh

import (
	"context"
	"errors"

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
	// ErrInvalidOption wraps every rejected option or configuration field.
	ErrInvalidOption = errors.New("mesh: invalid option")
	// ErrClosed is returned after a runner or client was closed.
	ErrClosed = errors.New("mesh: closed")
	// ErrStreamBroken is returned when a stream's chunks arrive out of
	// sequence (a chunk was lost) or its runner went silent.
	ErrStreamBroken = errors.New("mesh: stream broken")
)

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

// codeOf returns the wire code of a handler or runtime error.
func codeOf(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return protocol.CodeError
}
