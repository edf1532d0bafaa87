package actor

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// Errors returned by the runtime. Match them with errors.Is.
var (
	// ErrMailboxFull is returned at once when an entity's mailbox holds
	// mailboxCapacity messages; the message is not queued.
	ErrMailboxFull = errors.New("actor: mailbox full")
	// ErrShuttingDown is returned for a message sent after Shutdown began.
	ErrShuttingDown = errors.New("actor: runtime shutting down")
	// ErrNotServing is returned for a message to a partition that is closed
	// (the mesh closes the partition of a shard it no longer owns).
	ErrNotServing = errors.New("actor: partition not served here")
	// ErrUnknownEntity is returned for a message to an entity type that is not
	// registered with the runtime.
	ErrUnknownEntity = errors.New("actor: unknown entity type")
	// ErrUnknownRPC is returned for an RPC name that the entity type does not
	// declare.
	ErrUnknownRPC = errors.New("actor: unknown rpc")
	// ErrNotImplemented is returned when a behaviour declares no handler for
	// a declared RPC.
	ErrNotImplemented = errors.New("actor: rpc not implemented")
	// ErrInvalidID is returned for an entity id that is empty, longer than
	// MaxIDLength bytes, or not valid UTF-8.
	ErrInvalidID = errors.New("actor: invalid entity id")
	// ErrInvalidOption wraps every rejected option, configuration field,
	// argument or registration. It is natsmesh's one sentinel for invalid
	// input: every package that refuses input exports it under the same
	// name (mesh.ErrInvalidOption is this value, and so on), so errors.Is
	// matches it whichever package refused.
	ErrInvalidOption = errors.New("natsmesh: invalid option")
	// ErrActivation wraps the error an init function returned.
	ErrActivation = errors.New("actor: activation failed")
	// ErrDefect matches every *Defect with errors.Is.
	ErrDefect = errors.New("actor: defect")
)

// MaxIDLength is the longest entity id accepted, in bytes.
const MaxIDLength = 1024

// Defect is the error a caller receives when the handler or init function
// panicked while processing its message. It carries the panic value's text
// and the stack of the panicking goroutine. The runtime keeps serving every
// other entity; the panicking entity is re-created according to its
// DefectRetryPolicy unless DisableFatalDefects is set.
type Defect struct {
	// Message is fmt.Sprint of the panic value.
	Message string
	// Stack is the goroutine stack at the panic (empty when the defect
	// crossed the wire from another process and the sender omitted it).
	Stack string
}

func newDefect(v any) *Defect {
	return &Defect{Message: fmt.Sprint(v), Stack: string(debug.Stack())}
}

func (d *Defect) Error() string { return "actor: defect: " + d.Message }

// Is reports whether target is ErrDefect.
func (d *Defect) Is(target error) bool { return target == ErrDefect }
