package protocol

// Error codes: the value of HeaderError and the envelope's code
// (docs/protocol.md lists each with its meaning and whether to retry).
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

// Retryable reports whether an error reply with this code means "not
// handled; try again, maybe elsewhere": the shard is moving or its runner
// is stopping.
func Retryable(code string) bool { return code == CodeNotServing || code == CodeShuttingDown }
