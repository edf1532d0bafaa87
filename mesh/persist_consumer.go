package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// One durable consumer per runner, not per shard. The server checks every
// consumer of a work-queue stream on every acknowledgement and scans for each
// filtered consumer's next message: with a consumer per shard (300 by
// default) that cost more than everything else a persisted message needs.
// The runner's consumer filters on the persist subjects of the shards it
// serves and is rebuilt (deleted, created) when that set changes; the stream
// being a work queue, a new consumer delivers exactly the unacknowledged
// messages of its shards, in stream order. A work queue also refuses two
// consumers with the same filter, so two runners can never consume one
// shard's messages at once: a runner taking over a shard first deletes the
// consumer that still has it (its crashed or fenced previous owner's, which
// that runner rebuilds if it is alive).
//
// A consumer's filters are never changed in place, and above all never
// grown: a consumer given a filter it did not have is past that filter's
// older messages (it never delivers them), and on its next leader change
// nats-server's interest check acknowledges, so removes from the work
// queue, every message of its filters below its acknowledgement floor
// (TestTakeShardsRacingARebuild). Editing another runner's consumer from
// a listing of its configuration did exactly that when the runner rebuilt
// it between the listing and the edit (K8, docs/reliability.md).
//
// Messages are held by stream sequence across rebuilds: a message being
// handled when its consumer is replaced is not handled again when the new
// consumer delivers it; the new delivery only replaces the handle its
// acknowledgement goes through.

// loseDelivery, set by tests only, drops the deliveries it returns true
// for, as a consumer leader change can lose them in flight.
var loseDelivery atomic.Pointer[func(streamSeq, numDelivered uint64) bool]

// failReplyLookup, set by tests only, runs before each look-up of a stored
// reply and fails it with the error it returns (nil: the look-up goes
// ahead), as a look-up across a pause or a lost connection fails.
var failReplyLookup atomic.Pointer[func(msgID string) error]

// holdRebuilds, set by tests only, holds consumer rebuilds until the
// channel is closed.
var holdRebuilds atomic.Pointer[chan struct{}]

// takeShardsListed, set by tests only, runs in takeShards between listing
// the consumers and acting on the listing.
var takeShardsListed atomic.Pointer[func()]

// doneMemory bounds how many handled-and-acknowledged stream sequences a
// runner remembers, to recognize a redelivery whose ack was lost (or had not
// reached the server when the consumer was rebuilt). A redelivery beyond it
// is answered from the reply store, or (for Mesh-No-Reply messages) handled
// again: delivery is at least once.
const doneMemory = 8192

// rebuildDebounce gathers the shard changes of a burst (a runner starting,
// a rebalance) into one consumer rebuild.
const rebuildDebounce = 20 * time.Millisecond

// errStaleRebuild ends a rebuild whose shards changed meanwhile; the change
// has asked for another.
var errStaleRebuild = errors.New("shards changed during the rebuild")

// verifyEvery is how often a runner checks that its consumer still exists
// with the filters it built it with (another runner taking a shard deletes
// the previous owner's consumer; an operator may delete or edit it).
const verifyEvery = 5 * time.Second

// errWQNotUnique is the server's refusal of a consumer whose filter overlaps
// another's on a work-queue stream.
const errWQNotUnique natsjs.ErrorCode = 10100

// persistConsumer consumes the persisted messages of the shards a runner
// serves. Messages of one entity are run one at a time in stream order (a
// retried message holds back the entity's later ones); messages of
// different entities run in parallel.
type persistConsumer struct {
	r    *Runner
	p    *persistence
	name string
	kick chan struct{} // asks the manager for a rebuild
	quit chan struct{} // closed by close
	exit chan struct{} // closed when the manager returns
	done *seqSet

	mu      sync.Mutex
	want    map[ShardID]bool
	gen     *consumerGen // nil while none consumes
	version uint64       // bumped by every change of want
	built   uint64       // version the current consumer was built for
	rebuilt chan struct{}
	queues  map[actor.Address][]*pmsg // head is running or waiting to retry
	held    map[uint64]*pmsg          // by stream sequence
	running map[ShardID]int           // messages being handled, per shard
	idle    chan struct{}             // closed and replaced when running drops
	closed  bool
	wg      sync.WaitGroup // goroutines handling or delaying a message
}

// consumerGen is one consumer incarnation; deliveries are numbered per
// incarnation.
type consumerGen struct {
	cc       natsjs.ConsumeContext
	lastCSeq uint64
	stale    bool
	// shards it was built for, less those removed since (a subset of
	// want): its deliveries of a shard removed and added back before the
	// rebuild are not handled (they could overtake a message of the shard
	// it had delivered and that was let go at the removal, unacknowledged:
	// only the next consumer delivers that one again, in order).
	shards map[ShardID]bool
}

type pmsg struct {
	m          natsjs.Msg // newest delivery: acks go through it
	seq        uint64
	shard      ShardID
	addr       actor.Address
	rpc        string
	codec      actor.Codec
	msgID      string
	replyTo    string
	attempts   int
	deadReason error
	due        time.Time // local (monotonic) time to hold it until; zero: none
	noReply    bool      // Mesh-No-Reply: neither look up nor store a reply
	stored     []byte    // the handler's answer, once its store failed: only the store is retried
	running    bool
}

func newPersistConsumer(r *Runner, p *persistence) *persistConsumer {
	name := "runner-" + r.id
	if !actor.ValidName(r.id) || strings.ContainsAny(r.id, `/\`) || len(name) > 200 {
		name = "runner-" + nuid.Next() // a runner id unfit for a consumer name
	}
	pc := &persistConsumer{
		r: r, p: p, name: name,
		kick:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		exit:    make(chan struct{}),
		done:    newSeqSet(doneMemory),
		want:    map[ShardID]bool{},
		rebuilt: make(chan struct{}),
		queues:  map[actor.Address][]*pmsg{},
		held:    map[uint64]*pmsg{},
		running: map[ShardID]int{},
		idle:    make(chan struct{}),
	}
	go pc.manage()
	return pc
}

// add starts consuming shard s's messages (after the next rebuild).
func (pc *persistConsumer) add(s ShardID) {
	pc.mu.Lock()
	if pc.closed || pc.want[s] {
		pc.mu.Unlock()
		return
	}
	pc.want[s] = true
	pc.version++
	pc.mu.Unlock()
	pc.requestRebuild()
}

// remove stops handling shard s's messages: those not started are left to
// the shard's next owner (unacknowledged). The returned function waits
// (bounded by ctx) until the messages being handled are done and the
// consumer no longer has the shard, so that the next owner can take it.
func (pc *persistConsumer) remove(s ShardID) (wait func(ctx context.Context)) {
	pc.mu.Lock()
	if !pc.want[s] {
		pc.mu.Unlock()
		return func(context.Context) {}
	}
	delete(pc.want, s)
	if pc.gen != nil {
		delete(pc.gen.shards, s)
	}
	pc.version++
	v := pc.version
	for addr, q := range pc.queues {
		if len(q) > 0 && q[0].shard == s {
			pc.forgetIdleLocked(addr)
		}
	}
	pc.mu.Unlock()
	pc.requestRebuild()
	return func(ctx context.Context) {
		for {
			pc.mu.Lock()
			busy, idle := pc.running[s] > 0, pc.idle
			built, rebuilt := pc.built >= v || pc.closed, pc.rebuilt
			pc.mu.Unlock()
			var ch chan struct{}
			switch {
			case busy:
				ch = idle
			case !built:
				ch = rebuilt
			default:
				return
			}
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
		}
	}
}

// close stops consuming: messages being handled finish (bounded by ctx),
// then the consumer is deleted; what was not handled stays in the stream
// for the shards' next owners.
func (pc *persistConsumer) close(ctx context.Context) {
	pc.mu.Lock()
	if pc.closed {
		pc.mu.Unlock()
		return
	}
	pc.closed = true
	close(pc.quit)
	gen := pc.gen
	pc.gen = nil
	clear(pc.want)
	pc.mu.Unlock()
	<-pc.exit
	if gen != nil && gen.cc != nil {
		gen.cc.Stop()
	}
	waited := make(chan struct{})
	go func() { pc.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-ctx.Done():
	}
	if pc.r.nc.IsConnected() {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_ = pc.p.stream.DeleteConsumer(dctx, pc.name)
	}
}

func (pc *persistConsumer) requestRebuild() {
	select {
	case pc.kick <- struct{}{}:
	default:
	}
}

// manage rebuilds the consumer when asked, one rebuild at a time.
func (pc *persistConsumer) manage() {
	defer close(pc.exit)
	backoff := pc.r.cfg.PersistRetryBackoff
	verify := time.NewTicker(verifyEvery)
	defer verify.Stop()
	for {
		select {
		case <-pc.kick:
		case <-verify.C:
			if pc.intact() {
				continue
			}
		case <-pc.quit:
			return
		}
		t := time.NewTimer(rebuildDebounce)
		select {
		case <-t.C:
		case <-pc.quit:
			t.Stop()
			return
		}
		if h := holdRebuilds.Load(); h != nil {
			select {
			case <-*h:
			case <-pc.quit:
				return
			}
		}
		select { // the burst's requests are all served by this rebuild
		case <-pc.kick:
		default:
		}
		if err := pc.rebuild(); err != nil && !errors.Is(err, errStaleRebuild) {
			pc.r.log.Warn("persisted messages: rebuild consumer", "consumer", pc.name, "err", err, "retry", backoff)
			time.AfterFunc(backoff, pc.requestRebuild)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = pc.r.cfg.PersistRetryBackoff
	}
}

// intact reports whether the consumer is as the last rebuild made it (or
// whether that cannot be told now: NATS unreachable). A consumer deleted, or
// whose filters someone else changed, is rebuilt.
func (pc *persistConsumer) intact() bool {
	pc.mu.Lock()
	gen, built, version := pc.gen, pc.built, pc.version
	want := pc.filtersLocked()
	pc.mu.Unlock()
	if gen == nil || built != version {
		return true // no consumer, or a rebuild is due anyway
	}
	ctx, cancel := context.WithTimeout(context.Background(), pc.r.cfg.CallTimeout)
	defer cancel()
	cons, err := pc.p.stream.Consumer(ctx, pc.name)
	if errors.Is(err, natsjs.ErrConsumerNotFound) {
		pc.r.log.Warn("persisted messages: consumer gone; rebuilding it", "consumer", pc.name)
		return false
	}
	if err != nil {
		return true
	}
	cfg := cons.CachedInfo().Config
	have := cfg.FilterSubjects
	if cfg.FilterSubject != "" {
		have = []string{cfg.FilterSubject}
	}
	if !slices.Equal(slices.Sorted(slices.Values(have)), want) {
		pc.r.log.Warn("persisted messages: consumer's filters changed by someone else; rebuilding it", "consumer", pc.name, "have", len(have), "want", len(want))
		return false
	}
	return true
}

// rebuild replaces the consumer with one filtering on the wanted shards.
func (pc *persistConsumer) rebuild() error {
	pc.mu.Lock()
	if pc.closed {
		pc.mu.Unlock()
		return nil
	}
	version := pc.version
	filters := pc.filtersLocked()
	shards := maps.Clone(pc.want)
	old := pc.gen
	pc.gen = nil
	if old != nil {
		old.stale = true
	}
	pc.mu.Unlock()
	if old != nil && old.cc != nil {
		old.cc.Stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), pc.r.cfg.CallTimeout)
	defer cancel()
	// Acks queued for the old consumer reach the server before its
	// deletion: a message handled here is not redelivered elsewhere.
	pc.r.replies.sync(ctx)
	if err := pc.p.stream.DeleteConsumer(ctx, pc.name); err != nil && !errors.Is(err, natsjs.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s: %w", pc.name, err)
	}
	if len(filters) > 0 {
		cons, err := pc.create(ctx, filters, version)
		if err != nil {
			return err
		}
		g := &consumerGen{shards: shards}
		pc.mu.Lock()
		if pc.closed || pc.version != version {
			// Changed meanwhile: build again (the requests are queued).
			pc.mu.Unlock()
			pc.requestRebuild()
			return nil
		}
		pc.gen = g // before Consume: deliveries must find their generation
		pc.mu.Unlock()
		cc, err := cons.Consume(func(m natsjs.Msg) { pc.onMsg(g, m) },
			natsjs.PullMaxMessages(min(pc.r.cfg.PersistMaxInFlight, 1024)),
			// Heartbeats every 2 s: a consumer whose leader died (a NATS
			// server lost) is noticed within seconds, not half a minute.
			natsjs.PullHeartbeat(2*time.Second),
			natsjs.ConsumeErrHandler(func(_ natsjs.ConsumeContext, err error) { pc.consumeError(g, err) }))
		if err != nil {
			pc.mu.Lock()
			if pc.gen == g {
				pc.gen = nil
			}
			pc.mu.Unlock()
			return fmt.Errorf("consume %s: %w", pc.name, err)
		}
		pc.mu.Lock()
		g.cc = cc
		stopNow := pc.gen != g // closed or rebuilt meanwhile
		pc.mu.Unlock()
		if stopNow {
			cc.Stop()
		}
	}
	pc.r.log.Debug("persisted: consumer rebuilt", "consumer", pc.name, "version", version, "filters", strings.Join(filters, " "))
	pc.mu.Lock()
	if pc.version == version {
		pc.built = version
		close(pc.rebuilt)
		pc.rebuilt = make(chan struct{})
	}
	pc.mu.Unlock()
	return nil
}

// filtersLocked returns the consumer's filter subjects for the wanted
// shards: one per shard, or one per shard group whose shards are all wanted
// (a runner alone in its cluster). Fewer filters matter: the server finds
// a multi-filter consumer's next message by intersecting the filters with
// the subjects present, per delivery.
func (pc *persistConsumer) filtersLocked() []string {
	perGroup := map[string]int{}
	for s := range pc.want {
		perGroup[s.Group]++
	}
	var filters []string
	for s := range pc.want {
		if perGroup[s.Group] < pc.r.cfg.ShardsPerGroup {
			filters = append(filters, pc.r.subj.PersistShard(s))
		}
	}
	for g, n := range perGroup {
		if n >= pc.r.cfg.ShardsPerGroup {
			filters = append(filters, pc.r.subj.PersistGroup(g))
		}
	}
	slices.Sort(filters)
	return filters
}

// create creates the runner's consumer; if another consumer still has one of
// its shards (a crashed or fenced runner's), it deletes that consumer
// first.
func (pc *persistConsumer) create(ctx context.Context, filters []string, version uint64) (natsjs.Consumer, error) {
	cfg := natsjs.ConsumerConfig{
		Durable:        pc.name,
		Description:    "natsmesh runner " + pc.r.id,
		FilterSubjects: filters,
		AckPolicy:      natsjs.AckExplicitPolicy,
		AckWait:        30 * time.Second,
		MaxAckPending:  pc.r.cfg.PersistMaxInFlight,
		DeliverPolicy:  natsjs.DeliverAllPolicy,
		// The consumer's state in memory: it lives as long as the runner,
		// and the stream (a work queue) holds exactly the unacknowledged
		// messages whatever happens to it.
		MemoryStorage: true,
	}
	if len(filters) == 1 {
		cfg.FilterSubject, cfg.FilterSubjects = filters[0], nil
	}
	cons, err := pc.p.stream.CreateConsumer(ctx, cfg)
	var apiErr *natsjs.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == errWQNotUnique {
		// Take shards only while they are still ours: a rebuild planned
		// before this runner lost a shard (fenced) must not take it back
		// from its new owner. A lost shard always changes the version
		// before its lease expires, so before anyone else can hold it.
		pc.mu.Lock()
		stale := pc.version != version || pc.closed
		shards := slices.Collect(maps.Keys(pc.want))
		pc.mu.Unlock()
		if stale {
			return nil, errStaleRebuild
		}
		// Nor while a lease has lapsed here (a pause; a renewal failing):
		// the shard may be someone else's already, and deleting that
		// runner's consumer would only make it take the shard back from
		// this one's, until this runner notices the loss.
		for _, s := range shards {
			if !pc.r.leaseValid(s) {
				return nil, fmt.Errorf("create consumer %s: %w; the lease of shard %s has lapsed here: not taking it from another runner's consumer", pc.name, err, s)
			}
		}
		if err := pc.takeShards(ctx, filters); err != nil {
			return nil, err
		}
		cons, err = pc.p.stream.CreateConsumer(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("create consumer %s: %w", pc.name, err)
	}
	return cons, nil
}

// takeShards deletes every other runner's consumer that filters on one of
// the given filters. This runner holds the shards' leases, so their
// previous owners have stopped acting on them; such an owner still alive
// rebuilds its consumer for the shards it keeps (its unacknowledged
// messages stay in the stream). A consumer is deleted, never edited to
// drop the shards: the edit would be computed from a listing that may be
// stale by the time it lands, and could give a consumer rebuilt meanwhile
// filters it does not have, whose messages the server then removes (see
// the top of this file).
func (pc *persistConsumer) takeShards(ctx context.Context, filters []string) error {
	list := pc.p.stream.ListConsumers(ctx)
	var infos []*natsjs.ConsumerInfo
	for info := range list.Info() {
		infos = append(infos, info)
	}
	if err := list.Err(); err != nil {
		return fmt.Errorf("list consumers: %w", err)
	}
	if f := takeShardsListed.Load(); f != nil {
		(*f)()
	}
	for _, info := range infos {
		if info.Name == pc.name {
			continue
		}
		all := info.Config.FilterSubjects
		if info.Config.FilterSubject != "" {
			all = append(all, info.Config.FilterSubject)
		}
		taken := 0
		for _, f := range all {
			if slices.ContainsFunc(filters, func(mine string) bool { return subjectsCollide(f, mine) }) {
				taken++
			}
		}
		if taken == 0 {
			continue
		}
		// Only consumers natsmesh made (one per runner, or one per shard in
		// earlier versions) are touched.
		if !strings.HasPrefix(info.Name, "runner-") && !strings.HasPrefix(info.Name, "shard-") {
			return fmt.Errorf("consumer %s (not natsmesh's) consumes shards of this runner: remove it", info.Name)
		}
		pc.r.log.Info("persisted messages: deleting another runner's consumer that has shards of this runner", "consumer", info.Name, "shards", taken, "filters", len(all))
		err := pc.p.stream.DeleteConsumer(ctx, info.Name)
		if err != nil && !errors.Is(err, natsjs.ErrConsumerNotFound) {
			return fmt.Errorf("take shards from consumer %s: %w", info.Name, err)
		}
	}
	return nil
}

// subjectsCollide reports whether some subject matches both subject
// filters a and b.
func subjectsCollide(a, b string) bool {
	ta, tb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(ta) && i < len(tb); i++ {
		x, y := ta[i], tb[i]
		if x == ">" || y == ">" {
			return true
		}
		if x != y && x != "*" && y != "*" {
			return false
		}
	}
	return len(ta) == len(tb)
}

// consumeError hears the errors of generation g's pulls. The client library
// retries most by itself; when the consumer is gone or silent (its leader
// lost with a server, or deleted) the consumer is rebuilt, which also
// recovers any delivery lost meanwhile.
func (pc *persistConsumer) consumeError(g *consumerGen, err error) {
	pc.mu.Lock()
	current := pc.gen == g && !g.stale && !pc.closed
	pc.mu.Unlock()
	if !current {
		return
	}
	if errors.Is(err, natsjs.ErrNoHeartbeat) || errors.Is(err, natsjs.ErrConsumerDeleted) || errors.Is(err, natsjs.ErrConsumerNotFound) {
		pc.mu.Lock()
		g.stale = pc.gen == g
		pc.mu.Unlock()
		pc.r.log.Warn("persisted messages: consumer lost; rebuilding it", "consumer", pc.name, "err", err)
		pc.requestRebuild()
		return
	}
	pc.r.log.Debug("persisted messages: pull", "consumer", pc.name, "err", err)
}

// onMsg receives one delivery of generation g.
func (pc *persistConsumer) onMsg(g *consumerGen, m natsjs.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		return
	}
	if f := loseDelivery.Load(); f != nil && (*f)(meta.Sequence.Stream, meta.NumDelivered) {
		return // fault injection (tests): as if lost in flight
	}
	seq := meta.Sequence.Stream
	pc.mu.Lock()
	if pc.closed || pc.gen != g || g.stale {
		pc.mu.Unlock()
		return
	}
	// Order check. A delivery lost in flight (a consumer leader change, a
	// dropped pull) would be redelivered only after the ack wait, behind
	// its entity's later messages. Deliveries are numbered without gaps, so
	// a gap means one was lost: rebuild the consumer, which delivers every
	// unacknowledged message again in stream order, before handling
	// anything after the gap.
	if cseq := meta.Sequence.Consumer; cseq != g.lastCSeq+1 {
		g.stale = true
		last := g.lastCSeq
		pc.mu.Unlock()
		pc.r.log.Warn("persisted messages out of sequence: rebuilding the consumer", "consumer", pc.name, "delivery", cseq, "after", last)
		pc.requestRebuild()
		return
	}
	g.lastCSeq++
	if pm := pc.held[seq]; pm != nil {
		pm.m = m // held already (a rebuild, or the ack wait passed): ack through the newest delivery
		pc.mu.Unlock()
		return
	}
	pc.mu.Unlock()
	if pc.done.has(seq) {
		// Handled here already; the ack was lost, or had not reached the
		// server before the consumer was rebuilt. Ack again.
		pc.trace("persisted: delivery of a message handled here: acked again", &pmsg{seq: seq})
		_ = m.Ack()
		return
	}
	pm := pc.parse(m, seq, int(meta.NumDelivered)-1, meta.Timestamp)
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closed || pc.gen != g || pc.held[seq] != nil {
		return
	}
	if pm.deadReason == nil && !g.shards[pm.shard] { // wanted, and not removed since g was built
		pc.trace("persisted: delivery for a shard not served: left unacknowledged", pm)
		return // a shard being removed: left for its next owner
	}
	pc.trace("persisted: delivery", pm)
	pc.held[seq] = pm
	q := pc.queues[pm.addr]
	pc.queues[pm.addr] = append(q, pm)
	if len(q) == 0 {
		pc.startLocked(pm)
	}
}

// parse reads a delivery's headers; a message that can never be handled
// gets a deadReason. stored is the server's time of storing it.
func (pc *persistConsumer) parse(m natsjs.Msg, seq uint64, attempts int, stored time.Time) *pmsg {
	r := pc.r
	pm := &pmsg{m: m, seq: seq, attempts: attempts}
	h := m.Headers()
	if v := h.Get(protocol.HeaderDeliverAt); v != "" {
		if at, err := time.Parse(time.RFC3339Nano, v); err == nil {
			pm.due = holdUntil(at, stored, r.wallNow())
		}
	}
	shard, entityType, rpc, ok := r.subj.ParsePersist(m.Subject())
	codec, cerr := protocol.CodecByName(h.Get(protocol.HeaderCodec))
	id, iderr := protocol.GetID(h)
	pm.msgID, pm.replyTo = h.Get(protocol.HeaderMsgID), h.Get(protocol.HeaderReplyTo)
	pm.noReply = h.Get(protocol.HeaderNoReply) == "true"
	if pm.replyTo != "" && !r.replyAllowed(pm.replyTo) {
		// Handled and stored, but not published where the sender said:
		// the runner's permissions must not serve a forged destination.
		r.log.Warn("persisted message's reply subject outside the reply prefixes: not published", "msg", truncate(pm.msgID, 80), "reply", truncate(pm.replyTo, 80))
		pm.replyTo = ""
	}
	if pm.msgID == "" {
		pm.msgID = h.Get("Nats-Msg-Id")
	}
	if codec == nil {
		codec = protocol.JSON
	}
	pm.codec, pm.shard, pm.addr, pm.rpc = codec, shard, actor.Address{Type: entityType, ID: id}, rpc
	switch {
	case !ok:
		pm.deadReason = fmt.Errorf("%w: subject %q", ErrBadRequest, m.Subject())
	case cerr != nil:
		pm.deadReason = fmt.Errorf("%w: %w", ErrBadRequest, cerr)
	case iderr != nil:
		pm.deadReason = fmt.Errorf("%w: %w", ErrBadRequest, iderr)
	case pm.msgID == "":
		pm.deadReason = fmt.Errorf("%w: no %s or Nats-Msg-Id", ErrBadRequest, protocol.HeaderMsgID)
	case len(pm.msgID) > protocol.MaxMessageIDLen:
		pm.deadReason = fmt.Errorf("%w: message id of %d bytes, limit %d", ErrBadRequest, len(pm.msgID), protocol.MaxMessageIDLen)
	default:
		if err := actor.ValidateID(id); err != nil {
			pm.deadReason = err
		} else if g := r.cfg.groupOf(entityType); g != shard.Group || protocol.ShardOf(id, r.cfg.ShardsPerGroup) != shard.N {
			pm.deadReason = fmt.Errorf("%w: entity %s/%s is not in shard %s", ErrBadRequest, entityType, id, shard)
		}
	}
	return pm
}

// holdUntil returns the local time until which a message to deliver at
// `at`, stored by the server at `stored`, is held (zero: none). A schedule
// fires at the whole second at or after its time by the server's clock, so
// the server's storing time says how early, if at all, the message came;
// the runner's own wall clock (now) can only shorten the wait, so a runner
// whose clock is behind, or jumps back, does not hold the message for the
// difference. The result is on the monotonic clock: a jump of the wall
// clock while the message waits does not move it either.
func holdUntil(at, stored, now time.Time) time.Time {
	wait := at.Sub(now)
	if !stored.IsZero() {
		wait = min(wait, at.Sub(stored))
	}
	if wait <= 0 {
		return time.Time{}
	}
	return time.Now().Add(wait)
}

// startLocked runs pm, the head of its entity's queue.
func (pc *persistConsumer) startLocked(pm *pmsg) {
	pm.running = true
	pc.running[pm.shard]++
	pc.wg.Add(1)
	go pc.process(pm)
}

// stillHeld reports whether pm is still to be handled here.
func (pc *persistConsumer) stillHeld(pm *pmsg) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return !pc.closed && pc.held[pm.seq] == pm && (pm.deadReason != nil || pc.want[pm.shard])
}

// process runs one message (the head of its entity's queue).
func (pc *persistConsumer) process(pm *pmsg) {
	defer pc.wg.Done()
	r := pc.r
	if pm.deadReason != nil {
		pc.deadLetter(pm, pm.deadReason)
		return
	}
	// Schedules fire on whole seconds and may be early: hold the message
	// (and its entity's later ones) until its time.
	if wait := time.Until(pm.due); !pm.due.IsZero() && wait > 0 {
		pc.processAfter(pm, wait)
		return
	}
	if pm.stored != nil { // handled; storing its reply failed
		pc.storeAndFinish(pm, pm.stored)
		return
	}
	if !pm.noReply {
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.CallTimeout)
		// Handled before (a redelivery after a crash, or a resend of the
		// same id): answer from the stored reply, do not run the handler
		// again.
		var e natsjs.KeyValueEntry
		var err error
		if f := failReplyLookup.Load(); f != nil {
			err = (*f)(pm.msgID)
		}
		if err == nil {
			e, err = pc.p.replies.Get(ctx, protocol.ReplyKey(pm.msgID))
		}
		cancel()
		if err == nil {
			pc.trace("persisted: answered from its stored reply, not run", pm)
			pc.publishStored(pm, e.Value())
			pc.finish(pm, true)
			return
		}
		if !errors.Is(err, natsjs.ErrKeyNotFound) {
			// Without the reply store (NATS unreachable, say) neither the
			// check nor the reply can be done: do not run the handler, whose
			// reply could not be stored, so its next owner would run it
			// again.
			pc.retryLater(pm, fmt.Errorf("check the stored reply: %w", err))
			return
		}
	}
	// A shard removed meanwhile (handed off or fenced, maybe already served
	// elsewhere), or whose lease has just passed its validity (a pause),
	// must not deliver: its next owner has the message.
	if !pc.stillHeld(pm) || !r.leaseValid(pm.shard) {
		pc.finish(pm, false)
		return
	}
	rep := &persistReplier{pc: pc, pm: pm}
	hctx := context.WithValue(context.Background(), msgIDKey{}, pm.msgID)
	if o := r.cfg.Observer; o != nil {
		if pm.attempts > 0 {
			o.Redelivered(pm.addr, pm.rpc)
		}
		hctx, rep.obs = o.CallReceived(hctx, pm.addr, pm.rpc, pm.shard, pc.msgOf(pm).Headers())
	}
	if err := r.rt.Deliver(hctx, pm.addr.Type, pm.addr.ID, pm.rpc, pm.codec, pc.msgOf(pm).Data(), rep); err != nil {
		rep.Reply(nil, err)
	}
}

type msgIDKey struct{}

// MessageIDFromContext returns the id of the persisted message a handler is
// handling (the caller's MessageID, or the generated one), and false for a
// volatile call. A handler whose effect must happen exactly once records
// the ids it applied together with its state (a durable-state or
// event-sourced entity), and answers a message it already applied without
// applying it again: the runner delivers each message at least once, and
// twice when it crashes between running the handler and storing the reply.
func MessageIDFromContext(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(msgIDKey{}).(string)
	return id, ok
}

// persistReplier receives the outcome of one persisted message.
type persistReplier struct {
	pc  *persistConsumer
	pm  *pmsg
	obs CallObservation // nil without an Observer
}

// Started implements actor.StartNotifier.
func (p *persistReplier) Started() {
	if p.obs != nil {
		p.obs.Started()
	}
}

func (p *persistReplier) Chunk(context.Context, []byte) error {
	return fmt.Errorf("%w: persisted rpcs cannot stream", ErrBadRequest)
}

// Reply is called on the entity's goroutine (or by whoever refused the
// message). What follows the handler (storing its reply, publishing it,
// acknowledging the message, or scheduling a retry) needs NATS, which a
// runner cut off cannot reach for up to CallTimeout: it runs on a goroutine
// of its own, so that the entity is free at once. Otherwise a fenced
// shard's entities stayed active until their reply stores gave up, long
// after the next owner had activated them (K7, docs/reliability.md). The
// entity's next persisted message still waits for this one's finish, and a
// hand-off for its shard's running count.
func (p *persistReplier) Reply(payload []byte, err error) {
	pc := p.pc
	if p.obs != nil {
		p.obs.Done(declared(pc.r.rpcInfo(p.pm.addr.Type, p.pm.rpc), err))
	}
	pc.mu.Lock()
	async := !pc.closed // close waits for wg: no Add once it may be waiting
	if async {
		pc.wg.Add(1)
	}
	pc.mu.Unlock()
	if !async {
		p.settle(payload, err)
		return
	}
	go func() {
		defer pc.wg.Done()
		p.settle(payload, err)
	}()
}

// settle deals with the outcome of the message's handler.
func (p *persistReplier) settle(payload []byte, err error) {
	pc, pm := p.pc, p.pm
	code := ""
	if err != nil {
		code = codeOf(err)
	}
	switch code {
	case protocol.CodeNotServing, protocol.CodeShuttingDown:
		pc.finish(pm, false) // not run: the shard's next owner gets it again
		return
	case protocol.CodeDefect, protocol.CodeActivation, protocol.CodeMailboxFull, protocol.CodeTimeout, protocol.CodeCanceled:
		pm.attempts++
		if pm.attempts >= pc.r.cfg.PersistMaxAttempts {
			pc.deadLetter(pm, fmt.Errorf("after %d attempts: %w", pm.attempts, err))
			return
		}
		pc.retryLater(pm, err)
		return
	case protocol.CodeUnknownEntity, protocol.CodeUnknownRPC, protocol.CodeMalformed, protocol.CodeInvalidID, protocol.CodeNotImplemented, protocol.CodeBadRequest, protocol.CodePayloadTooLarge:
		pc.deadLetter(pm, err)
		return
	}
	// An answer: a result, a declared failure, or the handler's error.
	if pm.noReply {
		pc.finish(pm, true)
		return
	}
	var stored []byte
	if err == nil {
		stored = protocol.EncodeStored(pm.codec, "", payload)
	} else {
		info := pc.r.rpcInfo(pm.addr.Type, pm.rpc)
		em := errorMsg("", pm.codec, info, err, pc.r.cfg.ExposeDefectStacks)
		stored = protocol.EncodeStored(pm.codec, em.Header.Get(protocol.HeaderError), em.Data)
	}
	// A reply the server would refuse to store (or publish) is answered
	// with PayloadTooLarge: retrying could never store it.
	if max := pc.r.nc.MaxPayload(); max > 0 && int64(len(stored))+1024 > max {
		em := errorMsg("", pm.codec, nil, fmt.Errorf("%w: reply of %d bytes, limit %d", ErrPayloadTooLarge, len(payload), max-1024), false)
		stored = protocol.EncodeStored(pm.codec, em.Header.Get(protocol.HeaderError), em.Data)
	}
	pc.storeAndFinish(pm, stored)
}

// storeAndFinish stores a handled message's reply, publishes it and
// acknowledges the message. A failed store is retried (the handler is not
// run again), and counts as an attempt: at PersistMaxAttempts the message
// is dead-lettered.
func (pc *persistConsumer) storeAndFinish(pm *pmsg, stored []byte) {
	final, ok := pc.store(pm, stored)
	if !ok {
		pm.stored = stored
		pm.attempts++
		if pm.attempts >= pc.r.cfg.PersistMaxAttempts {
			pc.deadLetter(pm, fmt.Errorf("storing the reply failed %d times", pm.attempts))
			return
		}
		pc.retryLater(pm, errors.New("storing the reply failed"))
		return
	}
	pm.stored = nil
	pc.publishStored(pm, final)
	pc.finish(pm, true)
}

// store saves a reply, first writer wins: if a reply is stored for the
// message already (a fenced runner's handler finished late, after the next
// owner had run the message again and stored its reply, or the other way
// round), that one stays and is returned, so that every Call and Reply for
// the id gets the same answer. It returns the reply stored and whether
// storing (or reading the one there) succeeded.
func (pc *persistConsumer) store(pm *pmsg, stored []byte) ([]byte, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), pc.r.cfg.CallTimeout)
	defer cancel()
	key := protocol.ReplyKey(pm.msgID)
	_, err := pc.p.replies.Create(ctx, key, stored)
	if errors.Is(err, natsjs.ErrKeyExists) {
		var e natsjs.KeyValueEntry
		if e, err = pc.p.replies.Get(ctx, key); err == nil {
			pc.r.log.Warn("persisted message answered twice: the reply stored first stands", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String())
			return e.Value(), true
		}
	}
	if err != nil {
		pc.r.log.Warn("store persisted reply", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "err", err)
		return nil, false
	}
	return stored, true
}

// publishStored sends a stored reply to the message's reply subject.
func (pc *persistConsumer) publishStored(pm *pmsg, stored []byte) {
	if pm.replyTo == "" {
		return
	}
	_, code, body, err := protocol.DecodeStored(stored)
	if err != nil {
		pc.r.log.Warn("corrupt stored reply", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "err", err)
		return
	}
	h := nats.Header{protocol.HeaderMsgID: []string{pm.msgID}}
	if code != "" {
		h[protocol.HeaderError] = []string{code}
	}
	pc.r.replies.publish(pm.replyTo, body, h)
}

// retryLater runs the message again after a backoff; its entity's later
// messages wait.
func (pc *persistConsumer) retryLater(pm *pmsg, cause error) {
	cfg := pc.r.cfg
	d := cfg.PersistRetryBackoff
	for i := 1; i < pm.attempts && d < cfg.PersistRetryBackoffMax; i++ {
		d *= 2
	}
	d = min(d, cfg.PersistRetryBackoffMax)
	pc.r.log.Warn("persisted message failed; retrying", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "attempt", pm.attempts, "after", d, "err", cause)
	pc.processAfter(pm, d)
}

// deadLetter moves a message that cannot succeed to the dead-letter stream
// with the reason, stores an error reply for its sender, and acknowledges it.
func (pc *persistConsumer) deadLetter(pm *pmsg, reason error) {
	r := pc.r
	code := codeOf(reason)
	shard := pm.shard
	if pm.addr.Type == "" { // unparseable subject: file it under shard 0 of the first group
		shard = ShardID{Group: r.cfg.ShardGroups[0]}
	}
	m := pc.msgOf(pm)
	dm := &nats.Msg{Subject: r.subj.Dead(shard), Data: m.Data(), Header: nats.Header{}}
	for k, v := range m.Headers() {
		if k != "Nats-Msg-Id" && !strings.HasPrefix(k, "Nats-") {
			dm.Header[k] = v
		}
	}
	dm.Header[protocol.HeaderMsgID] = []string{pm.msgID}
	dm.Header[protocol.HeaderDeadReason] = []string{strings.ReplaceAll(reason.Error(), "\n", " ")}
	dm.Header[protocol.HeaderDeadCode] = []string{code}
	dm.Header[protocol.HeaderDeadSubject] = []string{m.Subject()}
	dm.Header[protocol.HeaderAttempts] = []string{strconv.Itoa(pm.attempts)}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.CallTimeout)
	defer cancel()
	if _, err := pc.p.js.PublishMsg(ctx, dm); err != nil {
		r.log.Error("dead-letter", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "err", err)
		pc.retryLater(pm, err) // never drop silently
		return
	}
	r.log.Warn("persisted message dead-lettered", "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "code", code, "reason", reason)
	if o := r.cfg.Observer; o != nil {
		o.DeadLettered(pm.addr, pm.rpc, code)
	}
	if !pm.noReply && pm.msgID != "" && len(pm.msgID) <= protocol.MaxMessageIDLen { // a reply needs a key
		em := errorMsg("", pm.codec, nil, reason, r.cfg.ExposeDefectStacks)
		stored := protocol.EncodeStored(pm.codec, em.Header.Get(protocol.HeaderError), em.Data)
		if final, ok := pc.store(pm, stored); ok {
			stored = final
		}
		pc.publishStored(pm, stored)
	}
	pc.finish(pm, true)
}

// trace logs a persisted message's step at debug level (the chaos suite
// reads them to follow a message), at no cost when that level is off.
func (pc *persistConsumer) trace(event string, pm *pmsg) {
	if !pc.r.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	pc.r.log.Debug(event, "seq", pm.seq, "msg", pm.msgID, "entity", pm.addr.String(), "shard", pm.shard.String(), "attempts", pm.attempts)
}

// ackPayload is the body of a JetStream acknowledgement (ADR-15).
var ackPayload = []byte("+ACK")

// finish acknowledges (or leaves) a message and starts its entity's next.
func (pc *persistConsumer) finish(pm *pmsg, ack bool) {
	if ack {
		pc.trace("persisted: finished, acknowledged", pm)
	} else {
		pc.trace("persisted: finished, left unacknowledged", pm)
	}
	if ack {
		pc.done.add(pm.seq)
		pc.mu.Lock()
		m := pm.m
		pc.mu.Unlock()
		// An ack is a plain publish to the delivery's reply subject (what
		// Msg.Ack does); batched with the replies (see replyBatcher).
		pc.r.replies.publish(m.Reply(), ackPayload, nil)
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.stoppedLocked(pm)
	if pc.held[pm.seq] == pm {
		delete(pc.held, pm.seq)
	}
	q := pc.queues[pm.addr]
	if len(q) == 0 || q[0] != pm {
		return
	}
	q = q[1:]
	if len(q) == 0 {
		delete(pc.queues, pm.addr)
		return
	}
	pc.queues[pm.addr] = q
	if !pc.closed {
		pc.startLocked(q[0])
	}
}

// stoppedLocked records that pm is no longer running.
func (pc *persistConsumer) stoppedLocked(pm *pmsg) {
	if !pm.running {
		return
	}
	pm.running = false
	if pc.running[pm.shard]--; pc.running[pm.shard] <= 0 {
		delete(pc.running, pm.shard)
	}
	close(pc.idle)
	pc.idle = make(chan struct{})
}

// processAfter processes pm again after d, unless it is dropped (its shard
// removed, the runner stopping) meanwhile; pm stays at the head of its
// entity's queue until then, and its ack wait is reset.
func (pc *persistConsumer) processAfter(pm *pmsg, d time.Duration) {
	_ = pc.msgOf(pm).InProgress()
	pc.mu.Lock()
	pc.stoppedLocked(pm) // waiting is not handling: a hand-off need not wait for it
	pc.mu.Unlock()
	pc.wg.Add(1)
	go func() {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-pc.quit:
			t.Stop()
			pc.wg.Done()
			return
		}
		pc.mu.Lock()
		if pc.closed || pc.held[pm.seq] != pm || !(pm.deadReason != nil || pc.want[pm.shard]) {
			if !pc.closed && pc.held[pm.seq] == pm {
				// Its shard was removed while it waited (remove kept it, as it
				// was running then): leave it, unacknowledged, to the shard's
				// next owner, as remove does with what is not running. Kept,
				// it would block its entity's queue here for good should the
				// shard come back.
				pc.trace("persisted: shard removed while it waited: left unacknowledged", pm)
				pc.forgetIdleLocked(pm.addr)
			}
			pc.mu.Unlock()
			pc.wg.Done()
			return
		}
		pm.running = true
		pc.running[pm.shard]++
		pc.mu.Unlock()
		pc.process(pm)
	}()
}

// forgetIdleLocked forgets the messages queued for addr that are not
// running, leaving them unacknowledged for their shard's next owner; a
// running one stays until it finishes. pc.mu is held.
func (pc *persistConsumer) forgetIdleLocked(addr actor.Address) {
	q := pc.queues[addr]
	keep := q[:0]
	for _, pm := range q {
		if pm.running {
			keep = append(keep, pm)
		} else {
			delete(pc.held, pm.seq)
		}
	}
	if len(keep) == 0 {
		delete(pc.queues, addr)
	} else {
		pc.queues[addr] = keep
	}
}

// msgOf returns pm's newest delivery (onMsg replaces it).
func (pc *persistConsumer) msgOf(pm *pmsg) natsjs.Msg {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pm.m
}

// rpcInfo returns a hosted RPC's description, or nil.
func (r *Runner) rpcInfo(entityType, rpc string) actor.RPCInfo {
	if e := r.rt.Entity(entityType); e != nil {
		return e.RPC(rpc)
	}
	return nil
}

// seqSet remembers the last n stream sequences added (FIFO).
type seqSet struct {
	mu   sync.Mutex
	set  map[uint64]struct{}
	fifo []uint64
	next int
	max  int
}

func newSeqSet(n int) *seqSet { return &seqSet{set: map[uint64]struct{}{}, max: n} }

func (s *seqSet) add(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.set[seq]; ok {
		return
	}
	if len(s.fifo) < s.max {
		s.fifo = append(s.fifo, seq)
	} else {
		delete(s.set, s.fifo[s.next])
		s.fifo[s.next] = seq
		s.next = (s.next + 1) % len(s.fifo)
	}
	s.set[seq] = struct{}{}
}

func (s *seqSet) has(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.set[seq]
	return ok
}
