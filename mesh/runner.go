package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Runner hosts entities for the shards it serves: it subscribes to each
// served shard's subject, hands every call to the entity's mailbox in the
// actor runtime, and answers on the call's reply subject.
type Runner struct {
	nc     *nats.Conn
	cfg    Config
	id     string
	subj   protocol.Subjects
	rt     *actor.Runtime
	log    *slog.Logger
	groups map[string]int // group name -> index
	client *Client        // forwards calls that arrive on the route subject

	// Every shard subscription feeds inbox; one dispatcher goroutine hands
	// the messages to entity mailboxes (which never blocks). That keeps each
	// shard's order and costs one goroutine instead of one per shard.
	inbox   chan *nats.Msg
	replies *replyBatcher
	// wallNow reads the wall clock where it is compared with times from
	// elsewhere (DeliverAt); tests move it to play a wrong or jumping clock.
	wallNow      func() time.Time
	barriers     sync.Map // *nats.Msg marker -> chan struct{}
	stopDispatch chan struct{}
	dispatchDone chan struct{}

	mu         sync.Mutex
	shards     map[ShardID]*nats.Subscription
	routeSub   *nats.Subscription
	pingSub    *nats.Subscription
	singletons map[string]*singleton
	coord      *coordinator // nil when standalone
	persist    *persistence
	pc         *persistConsumer // nil unless a hosted entity has persisted rpcs
	started    bool
	running    atomic.Bool                 // Start returned without error
	coordp     atomic.Pointer[coordinator] // coord, for the dispatch path without r.mu
	closed     bool
}

// NewRunner returns a runner on nc that serves no shard yet. Register
// behaviours, then Start. It returns an error wrapping ErrInvalidOption for a
// bad configuration.
func NewRunner(nc *nats.Conn, cfg Config, opts ...actor.RuntimeOption) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Runner{
		nc:     nc,
		cfg:    cfg,
		subj:   protocol.Subjects{Prefix: cfg.Prefix},
		log:    cfg.Logger,
		groups: map[string]int{},
		shards: map[ShardID]*nats.Subscription{},

		singletons: map[string]*singleton{},
		wallNow:    time.Now,

		inbox:        make(chan *nats.Msg, inboxSize),
		stopDispatch: make(chan struct{}),
		dispatchDone: make(chan struct{}),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.id = cfg.RunnerID
	if r.id == "" {
		r.id = "runner-" + nuid.Next()
	}
	r.log = r.log.With("runner", r.id)
	for i, g := range cfg.ShardGroups {
		r.groups[g] = i
	}
	n := cfg.ShardsPerGroup
	// One actor partition per shard, so a shard's entities can be stopped
	// (handed off or fenced) as a unit.
	partOf := func(a actor.Address) int {
		return r.groups[cfg.groupOf(a.Type)]*n + protocol.ShardOf(a.ID, n)
	}
	rtOpts := append([]actor.RuntimeOption{
		actor.WithDefaults(
			actor.MailboxCapacity(cfg.EntityMailboxCapacity),
			actor.MaxIdleTime(cfg.EntityMaxIdleTime),
		),
		actor.WithTerminationTimeout(cfg.EntityTerminationTimeout),
		actor.WithPartitions(len(cfg.ShardGroups)*n, partOf),
		actor.WithObserver(cfg.Observer), // nil: none
		// The last check before a handler runs: a message queued before a
		// pause must not run after the lease lapsed, even if fencing has
		// not run yet (the lease's watchdog is a timer like any other).
		actor.WithGate(func(p int) error {
			if c := r.coordp.Load(); c != nil && !c.validPart(p, time.Now()) {
				return errLeaseLapsed
			}
			return nil
		}),
	}, opts...)
	rt, err := actor.New(rtOpts...)
	if err != nil {
		return nil, err
	}
	// Every partition starts closed: the runner serves a shard only once it
	// owns it.
	for p := range len(cfg.ShardGroups) * n {
		_ = rt.ClosePartition(context.Background(), p, nil)
	}
	r.rt = rt
	r.client, err = NewClient(nc, cfg)
	if err != nil {
		return nil, err
	}
	r.replies = newReplyBatcher(nc, func(err error) { r.log.Warn("reply", "err", err) })
	return r, nil
}

// ID returns the runner's id (Config.RunnerID or a generated one).
func (r *Runner) ID() string { return r.id }

// Client returns a client that shares the runner's connection and config.
func (r *Runner) Client() *Client { return r.client }

// Runtime returns the runner's actor runtime.
func (r *Runner) Runtime() *actor.Runtime { return r.rt }

// Register adds an entity behaviour. Register before Start.
func (r *Runner) Register(b *actor.Behavior) error {
	return r.rt.Register(b)
}

// Start joins the cluster: the runner registers itself, then serves the
// shards the shard manager assigns it once it holds their leases (see
// docs/operations.md). With Config.Standalone it serves every shard at once
// instead, with no coordination. Either way it also takes calls on the route
// subjects (no client-side hashing) and answers health pings.
func (r *Runner) Start(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	if r.started {
		r.mu.Unlock()
		return fmt.Errorf("%w: runner already started", ErrInvalidOption)
	}
	r.started = true
	r.mu.Unlock()
	// Persisted messages cost a durable consumer per served shard: only
	// runners hosting an RPC declared Persisted pay for them.
	if r.hostsPersisted() {
		persist, err := openPersistence(ctx, r.nc, r.cfg)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.persist = persist
		r.pc = newPersistConsumer(r, persist)
		r.mu.Unlock()
	}
	r.mu.Lock()
	go r.dispatch()
	sub, err := r.nc.QueueSubscribe(r.subj.RouteAll(), r.cfg.Prefix+"-route", r.onRoute)
	if err != nil {
		r.mu.Unlock()
		return fmt.Errorf("subscribe route: %w", err)
	}
	r.routeSub = sub
	r.pingSub, err = r.nc.Subscribe(r.subj.Ping(r.id), func(m *nats.Msg) { _ = m.Respond([]byte(r.id)) })
	if err != nil {
		r.mu.Unlock()
		return fmt.Errorf("subscribe ping: %w", err)
	}
	r.mu.Unlock()
	if !r.cfg.Standalone {
		coord, err := newCoordinator(ctx, r)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.coord = coord
		r.coordp.Store(coord)
		r.mu.Unlock()
		coord.start()
		return r.startDone(ctx)
	}
	for _, g := range r.cfg.ShardGroups {
		for n := range r.cfg.ShardsPerGroup {
			if err := r.serveShard(ShardID{Group: g, N: n}); err != nil {
				return err
			}
		}
	}
	return r.startDone(ctx)
}

// startDone ends a successful Start: once flushed, the runner may say it
// is ready.
func (r *Runner) startDone(ctx context.Context) error {
	if err := r.flush(ctx); err != nil {
		return err
	}
	r.running.Store(true)
	return nil
}

// hostsPersisted reports whether any hosted entity declares a persisted RPC.
func (r *Runner) hostsPersisted() bool {
	for _, e := range r.rt.Entities() {
		for _, rpc := range e.RPCs() {
			if rpc.Persisted() {
				return true
			}
		}
	}
	return false
}

// flush waits until the server has processed what this runner sent
// (subscriptions included), bounded by ctx or CallTimeout.
func (r *Runner) flush(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.cfg.CallTimeout)
		defer cancel()
	}
	return r.nc.FlushWithContext(ctx)
}

func (r *Runner) partition(s ShardID) int { return r.groups[s.Group]*r.cfg.ShardsPerGroup + s.N }

// serveShard starts serving shard s: its entities may activate here, its
// subject is subscribed and its persisted messages are consumed. The caller
// must own the shard.
func (r *Runner) serveShard(s ShardID) error {
	if _, ok := r.groups[s.Group]; !ok || s.N < 0 || s.N >= r.cfg.ShardsPerGroup {
		return fmt.Errorf("%w: no shard %s", ErrInvalidOption, s)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	if _, ok := r.shards[s]; ok {
		r.mu.Unlock()
		return nil
	}
	if err := r.rt.OpenPartition(r.partition(s)); err != nil {
		r.mu.Unlock()
		return err
	}
	sub, err := r.nc.ChanSubscribe(r.subj.ShardCalls(s), r.inbox)
	if err != nil {
		r.mu.Unlock()
		_ = r.rt.ClosePartition(context.Background(), r.partition(s), nil)
		return fmt.Errorf("subscribe shard %s: %w", s, err)
	}
	r.shards[s] = sub
	pc := r.pc
	r.mu.Unlock()
	if pc != nil {
		pc.add(s)
	}
	if r.cfg.Observer != nil {
		r.cfg.Observer.ShardAcquired(s)
	}
	for _, sg := range r.singletonsOf(s) {
		sg.start(r)
	}
	return nil
}

// unlistShard removes s from the shards served and returns its
// subscription and the persisted consumer; ok is false if s was not served.
func (r *Runner) unlistShard(s ShardID) (sub *nats.Subscription, pc *persistConsumer, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sub, ok = r.shards[s]
	delete(r.shards, s)
	return sub, r.pc, ok
}

// stopShard stops serving shard s. Graceful (abort nil): no new calls are
// taken, calls already received are handled, then the shard's entities are
// passivated. Fencing (abort non-nil): queued calls fail with abort at once.
// It returns when the shard's entities have stopped or ctx ends.
func (r *Runner) stopShard(ctx context.Context, s ShardID, abort error) error {
	if abort != nil {
		return r.fenceShard(ctx, s, abort)
	}
	sub, pc, ok := r.unlistShard(s)
	if !ok {
		return nil
	}
	if r.cfg.Observer != nil {
		defer r.cfg.Observer.ShardReleased(s)
	}
	for _, sg := range r.singletonsOf(s) {
		sg.stop(r.cfg.EntityTerminationTimeout)
	}
	if pc != nil {
		// No new persisted message; those already in mailboxes finish, and
		// the runner's consumer lets go of the shard before its lease is
		// released.
		defer pc.remove(s)(ctx)
	}
	if !r.nc.IsConnected() {
		// Draining needs the server: without it, unsubscribe (the calls in
		// flight are then lost to their callers' timeouts, as the connection
		// itself is).
		_ = sub.Unsubscribe()
		return r.rt.ClosePartition(ctx, r.partition(s), nil)
	}
	// Drain, not Unsubscribe: a call the server routed here just before the
	// unsubscription must still reach the dispatcher (and get an answer)
	// instead of being dropped by the client library, which would leave its
	// caller waiting for the timeout.
	if err := sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		r.log.Warn("drain shard subscription", "shard", s.String(), "err", err)
	}
	// Once the server has processed the unsubscription (flush) and the
	// dispatcher has handed over everything received before it (barrier),
	// every call that reached us is in a mailbox, where the partition's
	// closing lets it finish.
	if err := r.flush(ctx); err == nil {
		r.barrier(ctx)
	}
	return r.rt.ClosePartition(ctx, r.partition(s), nil)
}

// barrier returns once the dispatcher has handled every message queued
// before the call (or ctx ends).
func (r *Runner) barrier(ctx context.Context) {
	m := &nats.Msg{} // no subject: a marker, never a call
	done := make(chan struct{})
	r.barriers.Store(m, done)
	select {
	case r.inbox <- m:
	case <-ctx.Done():
		r.barriers.Delete(m)
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// Ready reports whether the runner serves what it should: started, not
// shutting down, connected to NATS, and, in a cluster, holding the lease of
// every shard the shard manager assigned to it (a runner assigned nothing,
// because no manager runs yet, is ready). Fit for a readiness probe.
func (r *Runner) Ready() bool {
	r.mu.Lock()
	started, closed, coord := r.running.Load(), r.closed, r.coord
	r.mu.Unlock()
	if !started || closed || !r.nc.IsConnected() {
		return false
	}
	return coord == nil || coord.settled()
}

// Shards returns the shards this runner serves.
func (r *Runner) Shards() []ShardID {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]ShardID, 0, len(r.shards))
	for s := range r.shards {
		out = append(out, s)
	}
	return out
}

// Shutdown leaves the cluster gracefully: it hands every shard off (no new
// calls; queued calls handled; entities passivated; singletons stopped;
// leases released so other runners take over at once), deregisters, and
// returns when done or when ctx ends. It is idempotent. It does not close
// the NATS connection.
func (r *Runner) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	coord := r.coord
	r.mu.Unlock()
	if coord != nil {
		coord.shutdown(ctx)
	}
	r.mu.Lock()
	first := !r.closed
	r.closed = true
	if r.pingSub != nil {
		subsPing := r.pingSub
		r.pingSub = nil
		defer func() { _ = subsPing.Unsubscribe() }()
	}
	subs := make([]*nats.Subscription, 0, len(r.shards)+1)
	if r.routeSub != nil {
		subs = append(subs, r.routeSub)
		r.routeSub = nil
	}
	var served []ShardID
	for s, sub := range r.shards {
		subs = append(subs, sub)
		served = append(served, s)
		delete(r.shards, s)
	}
	pc := r.pc
	r.mu.Unlock()
	if pc != nil {
		defer pc.close(ctx)
	}
	if o := r.cfg.Observer; o != nil {
		for _, s := range served {
			o.ShardReleased(s)
		}
	}
	for _, s := range served {
		for _, sg := range r.singletonsOf(s) {
			sg.stop(r.cfg.EntityTerminationTimeout)
		}
	}
	if first {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
		if r.started {
			close(r.stopDispatch)
		}
	}
	if r.started {
		select {
		case <-r.dispatchDone:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err := r.rt.Shutdown(ctx)
	r.replies.close(ctx)
	if ferr := r.flush(ctx); err == nil && ferr != nil && !errors.Is(ferr, nats.ErrConnectionClosed) {
		err = ferr
	}
	return err
}

// inboxSize bounds the calls received but not yet in a mailbox. Past it
// nats.go drops messages as a slow consumer (callers then time out), as
// it would past an async subscription's pending limit.
const inboxSize = 1 << 16

// dispatch moves calls from the shard subscriptions to entity mailboxes.
func (r *Runner) dispatch() {
	defer close(r.dispatchDone)
	for {
		select {
		case m := <-r.inbox:
			r.onCall(m)
		case <-r.stopDispatch:
			for { // the subscriptions are gone: hand over what arrived
				select {
				case m := <-r.inbox:
					r.onCall(m)
				default:
					return
				}
			}
		}
	}
}

// onCall handles a message on a shard subject.
func (r *Runner) onCall(m *nats.Msg) {
	if m.Subject == "" {
		if done, ok := r.barriers.LoadAndDelete(m); ok {
			close(done.(chan struct{}))
		}
		return
	}
	c, ok := r.subj.ParseCall(m.Subject)
	if !ok {
		r.refuse(m, protocol.JSON, nil, fmt.Errorf("%w: subject %q", ErrBadRequest, m.Subject))
		return
	}
	r.handle(m, c)
}

// leaseValid reports whether this runner may act on shard s now: always
// when standalone, else only while the shard's lease is locally valid,
// checked against the clock at this moment rather than waiting for the
// lease's watchdog, which may not have run yet after a pause.
func (r *Runner) leaseValid(s ShardID) bool {
	c := r.coordp.Load()
	return c == nil || c.valid(s, time.Now())
}

// maxReplySubject bounds a reply subject: a longer one would make the
// runner's PUB exceed the server's control line and cost its connection.
const maxReplySubject = 1024

// replyAllowed reports whether the runner may publish a reply to subj
// (Config.ReplyPrefixes).
func (r *Runner) replyAllowed(subj string) bool {
	if len(subj) > maxReplySubject || strings.ContainsAny(subj, "*> \t\r\n") || strings.Contains(subj, "..") || strings.HasSuffix(subj, ".") {
		return false
	}
	for _, p := range r.cfg.ReplyPrefixes {
		if strings.HasPrefix(subj, p) && len(subj) > len(p) {
			return true
		}
	}
	return false
}

// badReply drops a request whose reply subject the runner may not publish
// to; it reports whether it did.
func (r *Runner) badReply(m *nats.Msg, entityType, rpc string) bool {
	if m.Reply == "" || r.replyAllowed(m.Reply) {
		return false
	}
	r.log.Warn("call refused: reply subject outside the reply prefixes", "entity", entityType, "rpc", rpc, "reply", truncate(m.Reply, 80))
	if o := r.cfg.Observer; o != nil {
		o.CallRefused(entityType, rpc, protocol.CodeBadRequest)
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// handle delivers one call to its entity; c.shard is the shard the caller
// addressed.
func (r *Runner) handle(m *nats.Msg, c protocol.CallSubject) {
	shard, entityType, rpc := c.Shard, c.EntityType, c.RPC
	if r.badReply(m, entityType, rpc) {
		return
	}
	if !r.leaseValid(shard) {
		// The shard's lease is past its local validity: the runner may have
		// been paused (SIGSTOP, a long GC, a frozen VM) and its fencing has
		// not run yet. Silent, as a fenced shard is: the caller's retry
		// reaches the new owner.
		return
	}
	var codec actor.Codec
	var id string
	var err error
	if c.Compact {
		// The subject says it all: headers saying it too are refused, not
		// guessed between.
		if codec, err = protocol.CodecByName(c.Codec); err != nil || c.Codec == "" {
			r.refuse(m, protocol.JSON, nil, fmt.Errorf("%w: codec %q in the subject", ErrBadRequest, c.Codec))
			return
		}
		if m.Header.Get(protocol.HeaderCodec) != "" || m.Header.Get(protocol.HeaderID) != "" || m.Header.Get(protocol.HeaderIDBase64) != "" {
			r.refuse(m, codec, nil, fmt.Errorf("%w: a compact call subject carries the id and codec; %s, %s and %s are not allowed with it", ErrBadRequest, protocol.HeaderID, protocol.HeaderIDBase64, protocol.HeaderCodec))
			return
		}
		id = c.ID
	} else {
		if codec, err = protocol.CodecByName(m.Header.Get(protocol.HeaderCodec)); err != nil {
			r.refuse(m, protocol.JSON, nil, fmt.Errorf("%w: %w", ErrBadRequest, err))
			return
		}
		if id, err = protocol.GetID(m.Header); err != nil {
			r.refuse(m, codec, nil, fmt.Errorf("%w: %w", ErrBadRequest, err))
			return
		}
	}
	if err := actor.ValidateID(id); err != nil {
		r.refuse(m, codec, nil, err)
		return
	}
	// A call addressed to the wrong shard must not activate the entity here:
	// this runner may not own the entity's real shard.
	if g := r.cfg.groupOf(entityType); g != shard.Group || protocol.ShardOf(id, r.cfg.ShardsPerGroup) != shard.N {
		r.refuse(m, codec, nil, fmt.Errorf("%w: entity %s/%s is in shard %s/%d, not %s",
			ErrBadRequest, entityType, id, g, protocol.ShardOf(id, r.cfg.ShardsPerGroup), shard))
		return
	}
	var info actor.RPCInfo
	if e := r.rt.Entity(entityType); e != nil {
		info = e.RPC(rpc)
	}
	ctx, cancel := context.Background(), context.CancelFunc(nil)
	if v := m.Header.Get(protocol.HeaderTimeout); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms <= 0 {
			r.refuse(m, codec, info, fmt.Errorf("%w: %s %q", ErrBadRequest, protocol.HeaderTimeout, v))
			return
		}
		dc := newDeadlineCtx(time.Now().Add(time.Duration(ms) * time.Millisecond))
		ctx, cancel = dc, dc.cancel
	}
	streamReq := m.Header.Get(protocol.HeaderStreamWindow) != ""
	if streamReq && info != nil && info.Kind() != actor.Streaming {
		if cancel != nil {
			cancel()
		}
		r.refuse(m, codec, info, fmt.Errorf("%w: %s.%s is not a streaming rpc", ErrBadRequest, entityType, rpc))
		return
	}
	var obs CallObservation
	if o := r.cfg.Observer; o != nil && info != nil {
		ctx, obs = o.CallReceived(ctx, actor.Address{Type: entityType, ID: id}, rpc, shard, m.Header)
	}
	var rep actor.Replier
	if info != nil && info.Kind() == actor.Streaming {
		if m.Reply == "" {
			if cancel != nil {
				cancel()
			}
			r.refuse(m, codec, info, fmt.Errorf("%w: a streaming call needs a reply subject", ErrBadRequest))
			return
		}
		ctx, cancel = r.newStreamContext(ctx, cancel)
		var sr *streamReplier
		sr, err = r.newStreamReplier(ctx, cancel, m, codec, info)
		if err != nil {
			cancel()
			if obs != nil {
				obs.Done(err)
			}
			r.refuse(m, codec, info, err)
			return
		}
		sr.obs = obs
		rep = sr
	} else {
		rep = &replier{r: r, reply: m.Reply, codec: codec, info: info, cancel: cancel, obs: obs}
	}
	if err := r.rt.Deliver(ctx, entityType, id, rpc, codec, m.Data, rep); err != nil {
		if obs != nil {
			obs.Done(err)
			rep = withoutObservation(rep)
		}
		if _, ok := rep.(*streamReplier); ok || !streamReq {
			if o := r.cfg.Observer; o != nil && obs == nil {
				o.CallRefused(entityType, rpc, codeOf(err))
			}
			rep.Reply(nil, err)
			return
		}
		// A stream request for an unknown type or rpc: answer it as a
		// refused stream (with the end marker), as the protocol says.
		if cancel != nil {
			cancel()
		}
		r.refuse(m, codec, nil, err)
	}
}

// fenceShard stops serving s at once because its lease is lost. It stops
// processing first, in memory, before anything that needs the NATS
// connection or r.mu: the connection may be unreachable or wedged, and
// serveShard holds r.mu across a subscription that can wait for a wedged
// connection (nats.go's flusher holds the connection's lock in a blocked
// write until its timeout), which once delayed fencing by seconds (the
// long chaos run). The fenced shard answers nothing from now on
// (errFenced): its subscription may linger on the server (a partition
// hides our unsubscription) while the new owner's receives the same calls,
// so a NotServing from here could make a caller retry a call the new owner
// ran. Its callers get the new owner's answer, or time out.
func (r *Runner) fenceShard(ctx context.Context, s ShardID, abort error) error {
	abort = fmt.Errorf("%w (%w)", errFenced, abort)
	part := r.partition(s)
	_ = r.rt.FencePartition(part, abort)
	for _, sg := range r.singletonsOf(s) {
		sg.cancelNow()
	}
	err := r.rt.ClosePartition(ctx, part, abort)
	sub, pc, ok := r.unlistShard(s)
	if !ok {
		return err
	}
	if r.cfg.Observer != nil {
		defer r.cfg.Observer.ShardReleased(s)
	}
	// A set-up of the shard that finished while we waited for r.mu may
	// have reopened the partition or started singletons: stop them again.
	_ = r.rt.FencePartition(part, abort)
	for _, sg := range r.singletonsOf(s) {
		sg.cancelNow()
	}
	if pc != nil {
		pc.remove(s) // no waiting: the connection may be wedged
	}
	// Unsubscribe, not drain: a drain started while the client is
	// reconnecting leaves the subscription on the server.
	if uerr := sub.Unsubscribe(); uerr != nil && !errors.Is(uerr, nats.ErrConnectionClosed) && !errors.Is(uerr, nats.ErrBadSubscription) {
		r.log.Warn("unsubscribe fenced shard", "shard", s.String(), "err", uerr)
	}
	return err
}

// errFenced marks calls refused by a fenced shard: they are not answered.
var errFenced = fmt.Errorf("%w: shard fenced", actor.ErrNotServing)

// errLeaseLapsed refuses a message whose shard's lease lapsed while it
// waited in the mailbox: fenced, so not answered.
var errLeaseLapsed = fmt.Errorf("%w: lease no longer valid", errFenced)

// replier answers one unary call.
type replier struct {
	r      *Runner
	reply  string
	codec  actor.Codec
	info   actor.RPCInfo
	cancel context.CancelFunc
	obs    CallObservation // nil without an Observer
}

// Started implements actor.StartNotifier.
func (p *replier) Started() {
	if p.obs != nil {
		p.obs.Started()
	}
}

// withoutObservation detaches the observation of a call that Deliver
// refused (it was reported done already).
func withoutObservation(rep actor.Replier) actor.Replier {
	switch p := rep.(type) {
	case *replier:
		p.obs = nil
	case *streamReplier:
		p.obs = nil
	}
	return rep
}

func (p *replier) Chunk(context.Context, []byte) error {
	return fmt.Errorf("%w: chunk on a unary call", ErrBadRequest)
}

func (p *replier) Reply(payload []byte, err error) {
	if p.cancel != nil {
		p.cancel()
	}
	if p.obs != nil {
		p.obs.Done(declared(p.info, err))
	}
	if errors.Is(err, errFenced) {
		return // see stopShard: a fenced shard stays silent
	}
	if p.reply == "" {
		if err != nil {
			p.r.log.Debug("send failed", "err", err)
		}
		return
	}
	if err == nil {
		if len(payload) > int(p.r.nc.MaxPayload()) {
			err = fmt.Errorf("%w: reply of %d bytes, limit %d", ErrPayloadTooLarge, len(payload), p.r.nc.MaxPayload())
		} else {
			p.r.replies.publish(p.reply, payload, nil)
			return
		}
	}
	p.r.replyError(p.reply, p.codec, p.info, err)
}

// refuse answers request m with the error envelope of err. A refused
// streaming request gets the stream's end marker too (docs/protocol.md).
func (r *Runner) refuse(m *nats.Msg, codec actor.Codec, info actor.RPCInfo, err error) {
	if errors.Is(err, errFenced) {
		return // see stopShard: a fenced shard stays silent
	}
	if o := r.cfg.Observer; o != nil {
		c, _ := r.subj.ParseCall(m.Subject)
		o.CallRefused(c.EntityType, c.RPC, codeOf(err))
	}
	if m.Reply == "" {
		r.log.Debug("call failed with no reply subject", "subject", m.Subject, "err", err)
		return
	}
	if !r.replyAllowed(m.Reply) {
		r.log.Warn("call refused: reply subject outside the reply prefixes", "subject", m.Subject, "reply", truncate(m.Reply, 80), "err", err)
		return
	}
	out := errorMsg(m.Reply, codec, info, err, r.cfg.ExposeDefectStacks)
	if m.Header.Get(protocol.HeaderStreamWindow) != "" {
		out.Header[protocol.HeaderEnd] = []string{"true"}
		out.Header[protocol.HeaderSeq] = []string{"1"}
	}
	if perr := r.nc.PublishMsg(out); perr != nil {
		r.log.Warn("error reply", "err", perr)
	}
}

// replyError answers reply with the error envelope of err.
func (r *Runner) replyError(reply string, codec actor.Codec, info actor.RPCInfo, err error) {
	if reply == "" {
		r.log.Debug("call failed with no reply subject", "err", err)
		return
	}
	m := errorMsg(reply, codec, info, err, r.cfg.ExposeDefectStacks)
	if perr := r.nc.PublishMsg(m); perr != nil {
		r.log.Warn("error reply", "err", perr)
	}
}

// errorMsg builds the error reply for err.
func errorMsg(reply string, codec actor.Codec, info actor.RPCInfo, err error, stacks bool) *nats.Msg {
	body := protocol.ErrorBody{Code: codeOf(err), Message: err.Error()}
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

// onRoute handles a call on the route subject: it computes the shard and
// serves it here when this runner owns it, else forwards it to the owner and
// relays the answer.
func (r *Runner) onRoute(m *nats.Msg) {
	entityType, rpc, ok := r.subj.ParseRoute(m.Subject)
	if r.badReply(m, entityType, rpc) {
		return
	}
	if !ok {
		r.refuse(m, protocol.JSON, nil, fmt.Errorf("%w: subject %q", ErrBadRequest, m.Subject))
		return
	}
	id, err := protocol.GetID(m.Header)
	if err != nil {
		r.refuse(m, protocol.JSON, nil, fmt.Errorf("%w: %w", ErrBadRequest, err))
		return
	}
	shard := ShardID{Group: r.cfg.groupOf(entityType), N: protocol.ShardOf(id, r.cfg.ShardsPerGroup)}
	r.mu.Lock()
	_, local := r.shards[shard]
	r.mu.Unlock()
	if local {
		r.handle(m, protocol.CallSubject{Shard: shard, EntityType: entityType, RPC: rpc})
		return
	}
	if m.Header.Get(protocol.HeaderStreamWindow) != "" {
		r.refuse(m, protocol.JSON, nil, fmt.Errorf("%w: streams are not routed; call the shard subject", ErrBadRequest))
		return
	}
	go r.forward(m, shard, entityType, rpc)
}

func (r *Runner) forward(m *nats.Msg, shard ShardID, entityType, rpc string) {
	timeout := r.cfg.CallTimeout
	if v := m.Header.Get(protocol.HeaderTimeout); v != "" {
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
			timeout = time.Duration(ms) * time.Millisecond
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req := nats.NewMsg(r.subj.Call(shard, entityType, rpc))
	req.Data = m.Data
	for k, v := range m.Header {
		req.Header[k] = v
	}
	reply, err := r.client.requestRetry(ctx, req)
	if m.Reply == "" {
		return
	}
	if err != nil {
		codec, _ := protocol.CodecByName(m.Header.Get(protocol.HeaderCodec))
		if codec == nil {
			codec = protocol.JSON
		}
		r.refuse(m, codec, nil, err)
		return
	}
	out := &nats.Msg{Subject: m.Reply, Data: reply.Data, Header: reply.Header}
	if err := r.nc.PublishMsg(out); err != nil {
		r.log.Warn("relay reply", "err", err)
	}
}
