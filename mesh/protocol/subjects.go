package protocol

import (
	"encoding/base64"
	"strconv"
	"strings"

	"github.com/nats-io/nuid"
)

// Subjects builds and parses the subjects of one cluster: every subject
// starts with Prefix, then Version.
type Subjects struct{ Prefix string }

func (s Subjects) base() string { return s.Prefix + "." + Version + "." }

// Call is the subject of calls to an RPC of an entity type in a shard (the
// header form: id and codec in headers).
func (s Subjects) Call(shard ShardID, entityType, rpc string) string {
	return s.base() + "call." + shard.Group + "." + strconv.Itoa(shard.N) + "." + entityType + "." + rpc
}

// ShardCalls is the subscription subject of every call to one shard.
func (s Subjects) ShardCalls(shard ShardID) string {
	return s.base() + "call." + shard.Group + "." + strconv.Itoa(shard.N) + ".>"
}

// Route is the subject that needs no hashing: any runner takes the call
// and forwards it to the shard's owner.
func (s Subjects) Route(entityType, rpc string) string {
	return s.base() + "entity." + entityType + "." + rpc
}

// RouteAll is the subscription subject of every route call.
func (s Subjects) RouteAll() string { return s.base() + "entity.*.*" }

// StreamControl returns a new stream's control subject: where its caller
// acknowledges chunks and cancels. Its own subject space (not the runner's
// inbox), so that permissions can let callers publish there and nowhere
// near the runner's other replies (docs/security.md); unguessable, as an
// inbox is.
func (s Subjects) StreamControl() string { return s.base() + "ctl." + nuid.Next() }

// Ping is the subject a runner answers health pings on.
func (s Subjects) Ping(runnerID string) string { return s.base() + "runner." + runnerID + ".ping" }

// Persist is the subject of persisted messages to an RPC of an entity type
// in a shard.
func (s Subjects) Persist(shard ShardID, entityType, rpc string) string {
	return s.base() + "persist." + shard.Group + "." + strconv.Itoa(shard.N) + "." + entityType + "." + rpc
}

// PersistShard is the filter of every persisted message of one shard.
func (s Subjects) PersistShard(shard ShardID) string {
	return s.base() + "persist." + shard.Group + "." + strconv.Itoa(shard.N) + ".>"
}

// PersistGroup is the filter of every persisted message of a shard group.
func (s Subjects) PersistGroup(group string) string { return s.base() + "persist." + group + ".>" }

// PersistAll is the filter of every persisted message.
func (s Subjects) PersistAll() string { return s.base() + "persist.>" }

// Schedule is the subject of a persisted message's delivery schedule
// (one schedule per subject, so per message id).
func (s Subjects) Schedule(msgID string) string {
	return s.base() + "sched." + base64.RawURLEncoding.EncodeToString([]byte(msgID))
}

// ScheduleAll is the filter of every delivery schedule.
func (s Subjects) ScheduleAll() string { return s.base() + "sched.>" }

// Dead is the subject of a shard's dead letters.
func (s Subjects) Dead(shard ShardID) string {
	return s.base() + "dead." + shard.Group + "." + strconv.Itoa(shard.N)
}

// DeadAll is the filter of every dead letter.
func (s Subjects) DeadAll() string { return s.base() + "dead.>" }

// CallSubject is a parsed call subject: the header form (four tokens after
// "call") or the compact form, which adds the codec and the id.
type CallSubject struct {
	Shard           ShardID
	EntityType, RPC string
	Compact         bool
	Codec, ID       string // compact form only
}

// ParseCall parses either form of call subject. It allocates nothing: a
// runner parses every call.
func (s Subjects) ParseCall(subject string) (c CallSubject, ok bool) {
	rest, found := strings.CutPrefix(subject, s.Prefix+"."+Version+".call.")
	if !found {
		return c, false
	}
	return parseCallTokens(rest)
}

// parseCallTokens parses what follows "call." (or "persist.").
func parseCallTokens(rest string) (c CallSubject, ok bool) {
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
		c.Compact, c.Codec, c.ID = true, codec, id
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 {
		return CallSubject{}, false
	}
	c.Shard, c.EntityType, c.RPC = ShardID{Group: group, N: n}, entityType, rpc
	return c, true
}

// ParsePersist splits a persisted subject into its shard, type and rpc.
func (s Subjects) ParsePersist(subject string) (shard ShardID, entityType, rpc string, ok bool) {
	rest, found := strings.CutPrefix(subject, s.Prefix+"."+Version+".persist.")
	if !found {
		return ShardID{}, "", "", false
	}
	c, ok := parseCallTokens(rest)
	if !ok || c.Compact {
		return ShardID{}, "", "", false
	}
	return c.Shard, c.EntityType, c.RPC, true
}

// ParseRoute splits a route subject into type and rpc.
func (s Subjects) ParseRoute(subject string) (entityType, rpc string, ok bool) {
	rest, found := strings.CutPrefix(subject, s.Prefix+"."+Version+".entity.")
	if !found {
		return "", "", false
	}
	entityType, rpc, ok = strings.Cut(rest, ".")
	return entityType, rpc, ok && !strings.Contains(rpc, ".")
}

// CompactCall is the compact call subject of id: the header form's subject
// followed by the codec name and the id, which must be IDSubjectSafe.
func CompactCall(callSubject, codecName, id string) string {
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
