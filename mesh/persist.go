package mesh

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
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
)

func (s subjects) persist(shard ShardID, entityType, rpc string) string {
	return s.prefix + "." + ProtocolVersion + ".persist." + shard.Group + "." + strconv.Itoa(shard.N) + "." + entityType + "." + rpc
}

func (s subjects) persistShard(shard ShardID) string {
	return s.prefix + "." + ProtocolVersion + ".persist." + shard.Group + "." + strconv.Itoa(shard.N) + ".>"
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
		Description: "natsmesh persisted messages, one durable consumer per shard",
		Subjects: []string{
			cfg.Prefix + "." + ProtocolVersion + ".persist.>",
			cfg.Prefix + "." + ProtocolVersion + ".sched.>",
		},
		Retention:  natsjs.WorkQueuePolicy,
		Storage:    natsjs.FileStorage,
		Replicas:   cfg.StorageReplicas,
		Duplicates: cfg.PersistDedupWindow,
		// DeliverAt: the server publishes a scheduled message to its
		// shard's subject at its time (nats-server 2.12+).
		AllowMsgSchedules: true,
	}); err != nil {
		return nil, err
	}
	if p.replies, err = openKV(ctx, js, natsjs.KeyValueConfig{
		Bucket:      cfg.Prefix + "_replies",
		Description: "natsmesh replies of persisted messages, by message id",
		History:     1,
		TTL:         cfg.PersistReplyRetention,
		Replicas:    cfg.StorageReplicas,
	}); err != nil {
		return nil, err
	}
	if p.dead, err = openStream(ctx, js, natsjs.StreamConfig{
		Name:        cfg.Prefix + "_deadletters",
		Description: "natsmesh persisted messages that could not be handled, with the reason",
		Subjects:    []string{cfg.Prefix + "." + ProtocolVersion + ".dead.>"},
		Storage:     natsjs.FileStorage,
		Replicas:    cfg.StorageReplicas,
	}); err != nil {
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

// consumerName is the durable consumer of a shard.
func consumerName(s ShardID) string { return "shard-" + s.Group + "-" + strconv.Itoa(s.N) }

// shardConsumer consumes one shard's persisted messages while the runner
// serves the shard. Messages of one entity are run one at a time in stream
// order (a retried message holds back the entity's later ones); messages of
// different entities run in parallel.
type shardConsumer struct {
	r     *Runner
	p     *persistence
	shard ShardID
	cc    natsjs.ConsumeContext

	mu       sync.Mutex
	queues   map[actor.Address][]*pmsg // head is in flight
	inflight map[uint64]bool           // stream sequences held
	stopped  bool
	wg       sync.WaitGroup
}

type pmsg struct {
	m          natsjs.Msg
	seq        uint64
	addr       actor.Address
	rpc        string
	codec      Codec
	msgID      string
	replyTo    string
	attempts   int
	deadReason error
	deliverAt  time.Time
}

// startPersisted starts consuming shard s. A consumer left with
// unacknowledged messages (its previous owner crashed or was fenced) is
// recreated, so that its messages are delivered again in stream order.
func (r *Runner) startPersisted(ctx context.Context, s ShardID) (*shardConsumer, error) {
	p := r.persist
	name := consumerName(s)
	if info, err := p.stream.Consumer(ctx, name); err == nil {
		ci, err := info.Info(ctx)
		if err == nil && ci.NumAckPending > 0 {
			if err := p.stream.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, natsjs.ErrConsumerNotFound) {
				return nil, fmt.Errorf("reset consumer %s: %w", name, err)
			}
		}
	}
	ccfg := natsjs.ConsumerConfig{
		Durable:       name,
		Description:   "natsmesh shard " + s.String(),
		FilterSubject: r.subj.persistShard(s),
		AckPolicy:     natsjs.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: r.cfg.PersistMaxInFlight,
		DeliverPolicy: natsjs.DeliverAllPolicy,
		// The consumer's state (what is acknowledged) in memory: writing it
		// to a file per shard consumer cost a fifth of the server's CPU. If
		// a server restart loses it, the stream still holds exactly the
		// unacknowledged messages (a work queue) and the reply store
		// answers any that were handled.
		MemoryStorage: true,
	}
	cons, err := p.stream.CreateOrUpdateConsumer(ctx, ccfg)
	var apiErr *natsjs.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == natsjs.ErrorCode(10012) {
		// A consumer from another version with settings that cannot be
		// updated in place: replace it (the stream keeps the messages).
		if err = p.stream.DeleteConsumer(ctx, name); err == nil {
			cons, err = p.stream.CreateOrUpdateConsumer(ctx, ccfg)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", name, err)
	}
	sc := &shardConsumer{r: r, p: p, shard: s, queues: map[actor.Address][]*pmsg{}, inflight: map[uint64]bool{}}
	sc.cc, err = cons.Consume(sc.onMsg, natsjs.PullMaxMessages(min(r.cfg.PersistMaxInFlight, 256)))
	if err != nil {
		return nil, fmt.Errorf("consume %s: %w", name, err)
	}
	return sc, nil
}

// stop stops consuming. Messages held but not yet handled stay
// unacknowledged for the shard's next owner.
func (sc *shardConsumer) stop() {
	sc.cc.Stop()
	<-sc.cc.Closed()
	sc.mu.Lock()
	sc.stopped = true
	clear(sc.queues)
	sc.mu.Unlock()
}

// wait waits for the messages being handled (bounded by ctx).
func (sc *shardConsumer) wait(ctx context.Context) {
	done := make(chan struct{})
	go func() { sc.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func (sc *shardConsumer) onMsg(m natsjs.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		return
	}
	pm := &pmsg{m: m, seq: meta.Sequence.Stream, attempts: int(meta.NumDelivered) - 1}
	r := sc.r
	h := m.Headers()
	if v := h.Get(HeaderDeliverAt); v != "" {
		if at, err := time.Parse(time.RFC3339Nano, v); err == nil {
			pm.deliverAt = at
		}
	}
	shard, entityType, rpc, ok := r.subj.parsePersist(m.Subject())
	codec, cerr := CodecByName(h.Get(HeaderCodec))
	id, iderr := getID(h)
	pm.msgID, pm.replyTo = h.Get(HeaderMsgID), h.Get(HeaderReplyTo)
	if pm.msgID == "" {
		pm.msgID = h.Get("Nats-Msg-Id")
	}
	if codec == nil {
		codec = JSON
	}
	pm.codec, pm.addr, pm.rpc = codec, actor.Address{Type: entityType, ID: id}, rpc
	switch {
	case !ok || shard != sc.shard:
		pm.deadReason = fmt.Errorf("%w: subject %q", ErrBadRequest, m.Subject())
	case cerr != nil:
		pm.deadReason = fmt.Errorf("%w: %w", ErrBadRequest, cerr)
	case iderr != nil:
		pm.deadReason = fmt.Errorf("%w: %w", ErrBadRequest, iderr)
	case pm.msgID == "":
		pm.deadReason = fmt.Errorf("%w: no %s or Nats-Msg-Id", ErrBadRequest, HeaderMsgID)
	default:
		if err := actor.ValidateID(id); err != nil {
			pm.deadReason = err
		} else if g := r.cfg.groupOf(entityType); g != shard.Group || ShardOf(id, r.cfg.ShardsPerGroup) != shard.N {
			pm.deadReason = fmt.Errorf("%w: entity %s/%s is not in shard %s", ErrBadRequest, entityType, id, shard)
		}
	}
	sc.mu.Lock()
	if sc.stopped || sc.inflight[pm.seq] { // a redelivery of a message we hold
		sc.mu.Unlock()
		return
	}
	sc.inflight[pm.seq] = true
	q := sc.queues[pm.addr]
	sc.queues[pm.addr] = append(q, pm)
	first := len(q) == 0
	sc.mu.Unlock()
	if first {
		sc.wg.Add(1)
		go sc.process(pm)
	}
}

// process runs one message (the head of its entity's queue).
func (sc *shardConsumer) process(pm *pmsg) {
	defer sc.wg.Done()
	r := sc.r
	if pm.deadReason != nil {
		sc.deadLetter(pm, pm.deadReason)
		return
	}
	// Schedules fire on whole seconds and may be early: hold the message
	// (and its entity's later ones) until its time.
	if wait := time.Until(pm.deliverAt); wait > 0 {
		sc.processAfter(pm, wait)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.CallTimeout)
	defer cancel()
	// Handled before (a redelivery after a crash, or a resend of the same
	// id): answer from the stored reply, do not run the handler again.
	e, err := sc.p.replies.Get(ctx, replyKey(pm.msgID))
	if err == nil {
		sc.publishStored(pm, e.Value())
		sc.finish(pm, true)
		return
	}
	if !errors.Is(err, natsjs.ErrKeyNotFound) {
		// Without the reply store (NATS unreachable, say) neither the check
		// nor the reply can be done: do not run the handler, whose reply
		// could not be stored, so its next owner would run it again.
		sc.retryLater(pm, fmt.Errorf("check the stored reply: %w", err))
		return
	}
	// A consumer stopped meanwhile (its shard handed off or fenced, maybe
	// already served again through a new consumer) must not deliver: the
	// new consumer owns the shard's order now.
	sc.mu.Lock()
	stopped := sc.stopped
	sc.mu.Unlock()
	if stopped {
		return
	}
	rep := &persistReplier{sc: sc, pm: pm}
	if err := r.rt.Deliver(context.Background(), pm.addr.Type, pm.addr.ID, pm.rpc, pm.codec, pm.m.Data(), rep); err != nil {
		rep.Reply(nil, err)
	}
}

// persistReplier receives the outcome of one persisted message.
type persistReplier struct {
	sc *shardConsumer
	pm *pmsg
}

func (p *persistReplier) Chunk(context.Context, []byte) error {
	return fmt.Errorf("%w: persisted rpcs cannot stream", ErrBadRequest)
}

func (p *persistReplier) Reply(payload []byte, err error) {
	sc, pm := p.sc, p.pm
	code := ""
	if err != nil {
		code = codeOf(err)
	}
	switch code {
	case CodeNotServing, CodeShuttingDown:
		sc.finish(pm, false) // not run: the shard's next owner gets it again
		return
	case CodeDefect, CodeActivation, CodeMailboxFull, CodeTimeout, CodeCanceled:
		pm.attempts++
		if pm.attempts >= sc.r.cfg.PersistMaxAttempts {
			sc.deadLetter(pm, fmt.Errorf("after %d attempts: %w", pm.attempts, err))
			return
		}
		sc.retryLater(pm, err)
		return
	case CodeUnknownEntity, CodeUnknownRPC, CodeMalformed, CodeInvalidID, CodeNotImplemented, CodeBadRequest, CodePayloadTooLarge:
		sc.deadLetter(pm, err)
		return
	}
	// An answer: a result, a declared failure, or the handler's error.
	var stored []byte
	if err == nil {
		stored = encodeStored(pm.codec, "", payload)
	} else {
		info := sc.r.rpcInfo(pm.addr.Type, pm.rpc)
		em := errorMsg("", pm.codec, info, err, sc.r.cfg.ExposeDefectStacks)
		stored = encodeStored(pm.codec, em.Header.Get(HeaderError), em.Data)
	}
	if !sc.store(pm, stored) {
		sc.retryLater(pm, errors.New("storing the reply failed"))
		return
	}
	sc.publishStored(pm, stored)
	sc.finish(pm, true)
}

// store saves a reply; it reports whether it is stored.
func (sc *shardConsumer) store(pm *pmsg, stored []byte) bool {
	ctx, cancel := context.WithTimeout(context.Background(), sc.r.cfg.CallTimeout)
	defer cancel()
	if _, err := sc.p.replies.Put(ctx, replyKey(pm.msgID), stored); err != nil {
		sc.r.log.Warn("store persisted reply", "msg", pm.msgID, "err", err)
		return false
	}
	return true
}

// publishStored sends a stored reply to the message's reply subject.
func (sc *shardConsumer) publishStored(pm *pmsg, stored []byte) {
	if pm.replyTo == "" {
		return
	}
	_, code, body, err := decodeStored(stored)
	if err != nil {
		sc.r.log.Warn("corrupt stored reply", "msg", pm.msgID, "err", err)
		return
	}
	m := &nats.Msg{Subject: pm.replyTo, Data: body, Header: nats.Header{HeaderMsgID: []string{pm.msgID}}}
	if code != "" {
		m.Header[HeaderError] = []string{code}
	}
	if err := sc.r.nc.PublishMsg(m); err != nil {
		sc.r.log.Warn("publish persisted reply", "msg", pm.msgID, "err", err)
	}
}

// retryLater runs the message again after a backoff; its entity's later
// messages wait.
func (sc *shardConsumer) retryLater(pm *pmsg, cause error) {
	cfg := sc.r.cfg
	d := cfg.PersistRetryBackoff
	for i := 1; i < pm.attempts && d < cfg.PersistRetryBackoffMax; i++ {
		d *= 2
	}
	d = min(d, cfg.PersistRetryBackoffMax)
	sc.r.log.Warn("persisted message failed; retrying", "msg", pm.msgID, "entity", pm.addr.String(), "attempt", pm.attempts, "after", d, "err", cause)
	sc.processAfter(pm, d)
}

// deadLetter moves a message that cannot succeed to the dead-letter stream
// with the reason, stores an error reply for its sender, and acknowledges it.
func (sc *shardConsumer) deadLetter(pm *pmsg, reason error) {
	r := sc.r
	code := codeOf(reason)
	dm := &nats.Msg{Subject: r.subj.dead(sc.shard), Data: pm.m.Data(), Header: nats.Header{}}
	for k, v := range pm.m.Headers() {
		if k != "Nats-Msg-Id" && !strings.HasPrefix(k, "Nats-") {
			dm.Header[k] = v
		}
	}
	dm.Header[HeaderMsgID] = []string{pm.msgID}
	dm.Header[HeaderDeadReason] = []string{strings.ReplaceAll(reason.Error(), "\n", " ")}
	dm.Header[HeaderDeadCode] = []string{code}
	dm.Header[HeaderDeadSubject] = []string{pm.m.Subject()}
	dm.Header[HeaderAttempts] = []string{strconv.Itoa(pm.attempts)}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.CallTimeout)
	defer cancel()
	if _, err := sc.p.js.PublishMsg(ctx, dm); err != nil {
		r.log.Error("dead-letter", "msg", pm.msgID, "err", err)
		sc.retryLater(pm, err) // never drop silently
		return
	}
	r.log.Warn("persisted message dead-lettered", "msg", pm.msgID, "entity", pm.addr.String(), "code", code, "reason", reason)
	em := errorMsg("", pm.codec, nil, reason, r.cfg.ExposeDefectStacks)
	stored := encodeStored(pm.codec, em.Header.Get(HeaderError), em.Data)
	sc.store(pm, stored)
	sc.publishStored(pm, stored)
	sc.finish(pm, true)
}

// finish acknowledges (or leaves) a message and starts its entity's next.
func (sc *shardConsumer) finish(pm *pmsg, ack bool) {
	if ack {
		if err := pm.m.Ack(); err != nil {
			sc.r.log.Warn("ack persisted message", "msg", pm.msgID, "err", err)
		}
	}
	sc.mu.Lock()
	delete(sc.inflight, pm.seq)
	var next *pmsg
	if q := sc.queues[pm.addr]; len(q) > 0 && q[0] == pm {
		q = q[1:]
		if len(q) == 0 {
			delete(sc.queues, pm.addr)
		} else {
			sc.queues[pm.addr] = q
			next = q[0]
		}
	}
	stopped := sc.stopped
	sc.mu.Unlock()
	if next != nil && !stopped {
		sc.wg.Add(1)
		go sc.process(next)
	}
}

// rpcInfo returns a hosted RPC's description, or nil.
func (r *Runner) rpcInfo(entityType, rpc string) actor.RPCInfo {
	if e := r.rt.Entity(entityType); e != nil {
		return e.RPC(rpc)
	}
	return nil
}

// processAfter processes pm again after d, unless the consumer stopped
// meanwhile; pm stays at the head of its entity's queue until then, and its
// ack wait is reset.
func (sc *shardConsumer) processAfter(pm *pmsg, d time.Duration) {
	_ = pm.m.InProgress()
	sc.wg.Add(1)
	time.AfterFunc(d, func() {
		sc.mu.Lock()
		stopped := sc.stopped
		sc.mu.Unlock()
		if stopped {
			sc.wg.Done()
			return
		}
		sc.process(pm)
	})
}
