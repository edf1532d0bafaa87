package mesh

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// Wire protocol v1: subjects and headers. docs/protocol.md is the normative
// description; these constants are its names.
const (
	// ProtocolVersion is the subject token of this protocol version.
	ProtocolVersion = "v1"

	// HeaderID carries the entity id as UTF-8 when it has no control
	// characters and no leading or trailing white space.
	HeaderID = "Mesh-Id"
	// HeaderIDBase64 carries the entity id as standard base64 of its UTF-8
	// bytes: for any id, required for ids HeaderID cannot carry.
	HeaderIDBase64 = "Mesh-Id-B64"
	// HeaderCodec names the payload codec: "json" (the default when absent)
	// or "msgpack". Replies use the request's codec.
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

// Codec names on the wire.
const (
	CodecJSON    = "json"
	CodecMsgpack = "msgpack"
)

// subjects builds the subjects of one cluster (one prefix).
type subjects struct{ prefix string }

// call is the subject of calls to an RPC of an entity type in a shard.
func (s subjects) call(shard ShardID, entityType, rpc string) string {
	return s.prefix + "." + ProtocolVersion + ".call." + shard.Group + "." + strconv.Itoa(shard.N) + "." + entityType + "." + rpc
}

// shardCalls is the subscription subject of every call to one shard.
func (s subjects) shardCalls(shard ShardID) string {
	return s.prefix + "." + ProtocolVersion + ".call." + shard.Group + "." + strconv.Itoa(shard.N) + ".>"
}

// route is the subject that needs no hashing: any runner takes the call and
// forwards it to the shard.
func (s subjects) route(entityType, rpc string) string {
	return s.prefix + "." + ProtocolVersion + ".entity." + entityType + "." + rpc
}

// streamControl returns a new stream's control subject: where its caller
// acknowledges chunks and cancels. Its own subject space (not the runner's
// inbox), so that permissions can let callers publish there and nowhere
// near the runner's other replies (docs/security.md); unguessable, as an
// inbox is.
func (s subjects) streamControl() string {
	return s.prefix + "." + ProtocolVersion + ".ctl." + nuid.Next()
}

func (s subjects) routeAll() string { return s.prefix + "." + ProtocolVersion + ".entity.*.*" }

// parseCall splits a call subject of the header form into its shard, type
// and rpc.
func (s subjects) parseCall(subject string) (shard ShardID, entityType, rpc string, ok bool) {
	c, ok := s.parseCallSubject(subject)
	if !ok || c.compact {
		return ShardID{}, "", "", false
	}
	return c.shard, c.entityType, c.rpc, true
}

// callSubject is a parsed call subject: the header form (four tokens after
// "call") or the compact form, which adds the codec and the id.
type callSubject struct {
	shard           ShardID
	entityType, rpc string
	compact         bool
	codecName, id   string // compact form only
}

// parseCallSubject parses either form of call subject (no allocation: this
// runs per call).
func (s subjects) parseCallSubject(subject string) (c callSubject, ok bool) {
	rest, found := strings.CutPrefix(subject, s.prefix+"."+ProtocolVersion+".call.")
	if !found {
		return c, false
	}
	group, rest, ok1 := strings.Cut(rest, ".")
	num, rest, ok2 := strings.Cut(rest, ".")
	entityType, rest, ok3 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || !ok3 {
		return c, false
	}
	rpc, rest, more := strings.Cut(rest, ".")
	if more {
		codec, id, ok4 := strings.Cut(rest, ".")
		if !ok4 || !IDSubjectSafe(id) {
			return c, false
		}
		c.compact, c.codecName, c.id = true, codec, id
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 {
		return callSubject{}, false
	}
	c.shard, c.entityType, c.rpc = ShardID{Group: group, N: n}, entityType, rpc
	return c, true
}

// compactCall is the compact call subject of id: the header form's subject
// followed by the codec name and the id, which must be IDSubjectSafe.
func compactCall(callSubject, codecName, id string) string {
	return callSubject + "." + codecName + "." + id
}

// MaxSubjectID is the longest id the compact call subject carries.
const MaxSubjectID = 256

// IDSubjectSafe reports whether id can be the last token of a compact call
// subject (docs/protocol.md): 1 to MaxSubjectID bytes of printable ASCII
// other than '.', '*' and '>'.
func IDSubjectSafe(id string) bool {
	if id == "" || len(id) > MaxSubjectID {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f || c == '.' || c == '*' || c == '>' {
			return false
		}
	}
	return true
}

// parseRoute splits a route subject into type and rpc.
func (s subjects) parseRoute(subject string) (entityType, rpc string, ok bool) {
	rest, found := strings.CutPrefix(subject, s.prefix+"."+ProtocolVersion+".entity.")
	if !found {
		return "", "", false
	}
	entityType, rpc, ok = strings.Cut(rest, ".")
	return entityType, rpc, ok && !strings.Contains(rpc, ".")
}

// idHeaderSafe reports whether id can travel in HeaderID unchanged: header
// values lose leading and trailing white space and cannot hold line breaks.
func idHeaderSafe(id string) bool {
	if id == "" || id[0] == ' ' || id[0] == '\t' || id[len(id)-1] == ' ' || id[len(id)-1] == '\t' {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// setID puts id in h, in the form the protocol prescribes for it.
func setID(h nats.Header, id string) {
	if idHeaderSafe(id) {
		h[HeaderID] = []string{id}
	} else {
		h[HeaderIDBase64] = []string{base64.StdEncoding.EncodeToString([]byte(id))}
	}
}

// getID reads the entity id from a request's headers.
func getID(h nats.Header) (string, error) {
	if v := h[HeaderIDBase64]; len(v) > 0 {
		b, err := base64.StdEncoding.DecodeString(v[0])
		if err != nil {
			return "", fmt.Errorf("%s: %w", HeaderIDBase64, err)
		}
		return string(b), nil
	}
	if v := h[HeaderID]; len(v) > 0 {
		return v[0], nil
	}
	return "", fmt.Errorf("missing %s or %s header", HeaderID, HeaderIDBase64)
}
