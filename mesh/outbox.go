package mesh

import (
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// outbox is what a runner answers through: the replies of calls and
// persisted messages, error envelopes, stream ends and acknowledgements.
// It checks every destination a caller chose (Config.ReplyPrefixes) and
// never answers for a fenced shard. Replies of successful unary calls and
// of persisted messages go through the reply batcher (replies.go).
type outbox struct {
	nc       *nats.Conn
	batch    *replyBatcher
	log      *slog.Logger
	obs      Observer // nil: none
	subj     protocol.Subjects
	stacks   bool     // Config.ExposeDefectStacks
	prefixes []string // Config.ReplyPrefixes
}

func newOutbox(nc *nats.Conn, cfg *Config, log *slog.Logger, obs Observer) *outbox {
	return &outbox{
		nc:       nc,
		batch:    newReplyBatcher(nc, func(err error) { log.Warn("reply", "err", err) }),
		log:      log,
		obs:      obs,
		subj:     protocol.Subjects{Prefix: cfg.Prefix},
		stacks:   cfg.ExposeDefectStacks,
		prefixes: cfg.ReplyPrefixes,
	}
}

// maxReplySubject bounds a reply subject: a longer one would make the
// runner's PUB exceed the server's control line and cost its connection.
const maxReplySubject = 1024

// allowed reports whether the runner may publish a reply to subj
// (Config.ReplyPrefixes).
func (o *outbox) allowed(subj string) bool {
	if len(subj) > maxReplySubject || strings.ContainsAny(subj, "*> \t\r\n") || strings.Contains(subj, "..") || strings.HasSuffix(subj, ".") {
		return false
	}
	for _, p := range o.prefixes {
		if strings.HasPrefix(subj, p) && len(subj) > len(p) {
			return true
		}
	}
	return false
}

// badReply drops a request whose reply subject the runner may not publish
// to; it reports whether it did.
func (o *outbox) badReply(m *nats.Msg, entityType, rpc string) bool {
	if m.Reply == "" || o.allowed(m.Reply) {
		return false
	}
	o.log.Warn("call refused: reply subject outside the reply prefixes", "entity", entityType, "rpc", rpc, "reply", truncate(m.Reply, 80))
	if o.obs != nil {
		o.obs.CallRefused(entityType, rpc, protocol.CodeBadRequest)
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// publish queues a reply (or an acknowledgement) in the reply batcher.
func (o *outbox) publish(subject string, payload []byte, header nats.Header) {
	o.batch.publish(subject, payload, header)
}

// refuse answers request m with the error envelope of err. A refused
// streaming request gets the stream's end marker too (docs/protocol.md).
func (o *outbox) refuse(m *nats.Msg, codec actor.Codec, info actor.RPCInfo, err error) {
	if errors.Is(err, errFenced) {
		return // see Runner.fenceShard: a fenced shard stays silent
	}
	if o.obs != nil {
		c, _ := o.subj.ParseCall(m.Subject)
		o.obs.CallRefused(c.EntityType, c.RPC, replyCode(err))
	}
	if m.Reply == "" {
		o.log.Debug("call failed with no reply subject", "subject", m.Subject, "err", err)
		return
	}
	if !o.allowed(m.Reply) {
		o.log.Warn("call refused: reply subject outside the reply prefixes", "subject", m.Subject, "reply", truncate(m.Reply, 80), "err", err)
		return
	}
	out := o.errorMsg(m.Reply, codec, info, err)
	if m.Header.Get(protocol.HeaderStreamWindow) != "" {
		out.Header[protocol.HeaderEnd] = []string{"true"}
		out.Header[protocol.HeaderSeq] = []string{"1"}
	}
	if perr := o.nc.PublishMsg(out); perr != nil {
		o.log.Warn("error reply", "err", perr)
	}
}

// replyError answers reply with the error envelope of err.
func (o *outbox) replyError(reply string, codec actor.Codec, info actor.RPCInfo, err error) {
	if reply == "" {
		o.log.Debug("call failed with no reply subject", "err", err)
		return
	}
	if perr := o.nc.PublishMsg(o.errorMsg(reply, codec, info, err)); perr != nil {
		o.log.Warn("error reply", "err", perr)
	}
}

// errorMsg builds the error reply for err.
func (o *outbox) errorMsg(reply string, codec actor.Codec, info actor.RPCInfo, err error) *nats.Msg {
	return errorMsg(reply, codec, info, err, o.stacks)
}

// errorMsg builds the error reply for err: a declared failure of info as
// itself, a defect with its stack when stacks is set, anything else by its
// code (replyCode).
func errorMsg(reply string, codec actor.Codec, info actor.RPCInfo, err error, stacks bool) *nats.Msg {
	body := protocol.ErrorBody{Code: replyCode(err), Message: err.Error()}
	var failure any
	if info != nil {
		for _, f := range info.Failures() {
			target := reflect.New(f.Type)
			if errors.As(err, target.Interface()) {
				body.Code, body.Failure, failure = protocol.CodeFailure, f.Code, target.Elem().Interface()
				break
			}
		}
	}
	var d *actor.Defect
	if body.Code == protocol.CodeDefect && errors.As(err, &d) {
		body.Message = d.Message
		if stacks {
			body.Stack = d.Stack
		}
	}
	data, eerr := protocol.EncodeError(codec, &body, failure)
	if eerr != nil {
		body = protocol.ErrorBody{Code: protocol.CodeError, Message: fmt.Sprintf("%v (and encoding the failure: %v)", err, eerr)}
		data, _ = protocol.EncodeError(codec, &body, nil)
	}
	return &nats.Msg{Subject: reply, Data: data, Header: nats.Header{protocol.HeaderError: []string{body.Code}}}
}

// maxPayload is the largest message the connection may publish.
func (o *outbox) maxPayload() int64 { return o.nc.MaxPayload() }
