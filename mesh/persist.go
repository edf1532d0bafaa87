package mesh

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Persisted messages (docs/persistence.md). A persisted call is published to
// the stream <prefix>_persist on <prefix>.v1.persist.<group>.<shard>.<Type>.<Rpc>
// with Nats-Msg-Id (deduplication) and Mesh-Msg-Id (the logical id its reply
// is stored under). The runner holding the shard consumes the shard's durable
// consumer, runs each message in its entity's mailbox, stores the reply in
// the KV bucket <prefix>_replies, publishes it to Mesh-Reply-To if the sender
// asked, and acknowledges the message (the stream is a work queue: an
// acknowledged message is gone). Messages that can never succeed go to the
// stream <prefix>_deadletters.
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
	// ask for its reply (a Send without MessageID: its generated id is
	// never shown to the caller), so the runner neither stores the reply
	// nor looks for one before handling it.
	HeaderNoReply = "Mesh-No-Reply"
)

func (s subjects) persist(shard ShardID, entityType, rpc string) string {
	return s.prefix + "." + ProtocolVersion + ".persist." + shard.Group + "." + strconv.Itoa(shard.N) + "." + entityType + "." + rpc
}

func (s subjects) persistShard(shard ShardID) string {
	return s.prefix + "." + ProtocolVersion + ".persist." + shard.Group + "." + strconv.Itoa(shard.N) + ".>"
}

func (s subjects) persistGroup(group string) string {
	return s.prefix + "." + ProtocolVersion + ".persist." + group + ".>"
}

func (s subjects) parsePersist(subject string) (shard ShardID, entityType, rpc string, ok bool) {
	rest, found := strings.CutPrefix(subject, s.prefix+"."+ProtocolVersion+".persist.")
	if !found {
		return ShardID{}, "", "", false
	}
	return s.parseCall(s.prefix + "." + ProtocolVersion + ".call." + rest)
}

// schedule is the subject of a persisted message's delivery schedule
// (one schedule per subject, so per message id).
func (s subjects) schedule(msgID string) string {
	return s.prefix + "." + ProtocolVersion + ".sched." + base64.RawURLEncoding.EncodeToString([]byte(msgID))
}

func (s subjects) dead(shard ShardID) string {
	return s.prefix + "." + ProtocolVersion + ".dead." + shard.Group + "." + strconv.Itoa(shard.N)
}

// persistence holds the stream and buckets of persisted messages.
type persistence struct {
	js      natsjs.JetStream
	stream  natsjs.Stream
	replies natsjs.KeyValue
	dead    natsjs.Stream
}

func openPersistence(ctx context.Context, nc *nats.Conn, cfg Config) (*persistence, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, storeSetupTimeout)
		defer cancel()
	}
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, err
	}
	p := &persistence{js: js}
	if p.stream, err = openStream(ctx, js, natsjs.StreamConfig{
		Name:        cfg.Prefix + "_persist",
		Description: "natsmesh persisted messages, one durable consumer per runner",
		Subjects: []string{
			cfg.Prefix + "." + ProtocolVersion + ".persist.>",
			cfg.Prefix + "." + ProtocolVersion + ".sched.>",
		},
		Retention:  natsjs.WorkQueuePolicy,
		Storage:    cfg.storageType(),
		Replicas:   cfg.StorageReplicas,
		Duplicates: cfg.PersistDedupWindow,
		// DeliverAt: the server publishes a scheduled message to its
		// shard's subject at its time (nats-server 2.12+).
		AllowMsgSchedules: true,
	}, cfg.Logger); err != nil {
		return nil, err
	}
	if p.replies, err = openKV(ctx, js, natsjs.KeyValueConfig{
		Bucket:      cfg.Prefix + "_replies",
		Description: "natsmesh replies of persisted messages, by message id",
		History:     1,
		TTL:         cfg.PersistReplyRetention,
		Replicas:    cfg.StorageReplicas,
		Storage:     cfg.storageType(),
	}, cfg.Logger); err != nil {
		return nil, err
	}
	if p.dead, err = openStream(ctx, js, natsjs.StreamConfig{
		Name:        cfg.Prefix + "_deadletters",
		Description: "natsmesh persisted messages that could not be handled, with the reason",
		Subjects:    []string{cfg.Prefix + "." + ProtocolVersion + ".dead.>"},
		Storage:     cfg.storageType(),
		Replicas:    cfg.StorageReplicas,
	}, cfg.Logger); err != nil {
		return nil, err
	}
	return p, nil
}

// replyKey is the KV key of a message id's reply: the id itself when it is
// a plain token, else its base64url encoding (KV keys allow few characters).
func replyKey(msgID string) string {
	if validToken(msgID) {
		return "k." + msgID
	}
	return "b." + base64.RawURLEncoding.EncodeToString([]byte(msgID))
}

// Stored replies: one status byte ('0' ok, '1' error), the codec ('j' or
// 'm'), the error code and a newline (empty when ok), then the body.
func encodeStored(codec Codec, code string, body []byte) []byte {
	out := make([]byte, 0, 3+len(code)+len(body))
	if code == "" {
		out = append(out, '0')
	} else {
		out = append(out, '1')
	}
	if codec.Name() == CodecMsgpack {
		out = append(out, 'm')
	} else {
		out = append(out, 'j')
	}
	out = append(out, code...)
	out = append(out, '\n')
	return append(out, body...)
}

func decodeStored(v []byte) (codec Codec, code string, body []byte, err error) {
	if len(v) < 3 {
		return nil, "", nil, errors.New("stored reply too short")
	}
	switch v[1] {
	case 'm':
		codec = Msgpack
	case 'j':
		codec = JSON
	default:
		return nil, "", nil, fmt.Errorf("stored reply: codec %q", v[1])
	}
	i := strings.IndexByte(string(v[2:]), '\n')
	if i < 0 {
		return nil, "", nil, errors.New("stored reply: no header end")
	}
	code = string(v[2 : 2+i])
	if (v[0] == '1') != (code != "") {
		return nil, "", nil, errors.New("stored reply: status and code disagree")
	}
	return codec, code, v[3+i:], nil
}
