package protocol

// Version is the subject token of this protocol version: every subject
// starts with "<prefix>.v1.".
const Version = "v1"

// Headers of calls, replies and streams.
const (
	// HeaderID carries the entity id as UTF-8 when it has no control
	// characters and no leading or trailing white space.
	HeaderID = "Mesh-Id"
	// HeaderIDBase64 carries the entity id as standard base64 of its UTF-8
	// bytes: for any id, required for ids HeaderID cannot carry.
	HeaderIDBase64 = "Mesh-Id-B64"
	// HeaderCodec names the payload codec: CodecJSON (the default when
	// absent) or CodecMsgpack. Replies use the request's codec; stored
	// entity state and events name theirs with it too.
	HeaderCodec = "Mesh-Codec"
	// HeaderTimeout is the caller's remaining time budget in milliseconds;
	// the handler's context gets this deadline.
	HeaderTimeout = "Mesh-Timeout"
	// HeaderError marks an error reply and holds its code; the body is the
	// error envelope.
	HeaderError = "Mesh-Error"
	// HeaderStreamWindow, on a request, asks for a streaming reply with at
	// most that many unacknowledged chunks in flight.
	HeaderStreamWindow = "Mesh-Stream-Window"
	// HeaderSeq numbers the chunks of a stream from 1.
	HeaderSeq = "Mesh-Seq"
	// HeaderControl, on a stream chunk, is the subject the caller sends
	// acknowledgements and cancellation to.
	HeaderControl = "Mesh-Control"
	// HeaderEnd marks the last message of a stream (with HeaderError when
	// the stream failed).
	HeaderEnd = "Mesh-End"
	// HeaderAck, on a control message, acknowledges chunks up to its value.
	HeaderAck = "Mesh-Ack"
	// HeaderCancel, on a control message, cancels the stream.
	HeaderCancel = "Mesh-Cancel"
)

// Headers of persisted messages (docs/persistence.md). A persisted call is
// published to the persisted subject of its shard with Nats-Msg-Id
// (deduplication) and HeaderMsgID (the logical id its reply is stored
// under).
const (
	// HeaderMsgID is a persisted message's logical id: its reply is stored
	// under it.
	HeaderMsgID = "Mesh-Msg-Id"
	// HeaderReplyTo, on a persisted message, is where the runner publishes
	// the reply once handled (besides storing it).
	HeaderReplyTo = "Mesh-Reply-To"
	// HeaderDeadReason, HeaderDeadCode, HeaderDeadSubject and
	// HeaderAttempts describe a dead letter.
	HeaderDeadReason  = "Mesh-Dead-Reason"
	HeaderDeadCode    = "Mesh-Dead-Code"
	HeaderDeadSubject = "Mesh-Dead-Subject"
	HeaderAttempts    = "Mesh-Attempts"
	// HeaderDeliverAt, on a persisted message, is the earliest time it may
	// be handled (RFC 3339 with nanoseconds).
	HeaderDeliverAt = "Mesh-Deliver-At"
	// HeaderNoReply "true", on a persisted message, says nobody will ever
	// ask for its reply (a Send without a message id: its generated id is
	// never shown to the caller), so the runner neither stores the reply
	// nor looks for one before handling it.
	HeaderNoReply = "Mesh-No-Reply"
)

// MaxMessageIDLen bounds a persisted message's id (bytes): its reply's key
// and the subjects built from it must stay within the server's limits.
const MaxMessageIDLen = 512
