package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
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
// actor runtime, and answers on the call's reply subject. Its parts: the
// shards it serves (serve.go), inbound calls (inbound.go), the route
// subject (route.go), its answers (outbox.go), the cluster protocol
// (coordinator.go), persisted messages (persist_*.go) and singletons
// (singleton.go).
type Runner struct {
	env
	rt      *actor.Runtime
	client  *Client // forwards calls that arrive on the route subject
	out     *outbox
	schemas SchemaFunc // nil: types are described without schemas
	types   []TypeInfo // the hosted entity types, described at Start

	// Every shard subscription feeds inbox; one dispatcher goroutine hands
	// the messages to entity mailboxes (which never blocks). That keeps each
	// shard's order and costs one goroutine instead of one per shard.
	inbox chan *nats.Msg
	// wallNow reads the wall clock where it is compared with times from
	// elsewhere (DeliverAt); tests move it to play a wrong or jumping clock.
	wallNow      func() time.Time
	barriers     sync.Map // *nats.Msg marker -> chan struct{}
	stopDispatch chan struct{}
	dispatchDone chan struct{}

	mu          sync.Mutex
	shards      map[ShardID]*nats.Subscription
	routeSub    *nats.Subscription
	pingSub     *nats.Subscription
	singletons  map[string]*singleton
	coord       *coordinator // nil when standalone
	persist     *persistence
	pc          *persistConsumer // nil unless a hosted entity has persisted rpcs
	started     bool
	dispatching bool                            // the dispatcher runs (listen)
	running     atomic.Bool                     // Start returned without error
	coordp      atomic.Pointer[coordinator]     // coord, for the dispatch path without r.mu
	pcp         atomic.Pointer[persistConsumer] // pc, for fencing without r.mu
	closed      bool
}

// env is what a runner's parts share: its connection, settings and
// identity, and where it reports. Set by NewRunner, read-only after.
type env struct {
	nc      *nats.Conn
	cfg     Config
	id      string
	subj    protocol.Subjects
	space   shardSpace
	log     *slog.Logger // names the runner
	obs     Observer     // nil: none
	version string       // the build (WithVersion)
	hooks   *hooks       // nil in production
}

// NewRunner returns a runner on nc that serves no shard yet. Register
// behaviours, then Start. It returns an error wrapping ErrInvalidOption for a
// bad configuration or option.
func NewRunner(nc *nats.Conn, cfg Config, opts ...Option) (*Runner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o, err := applyOptions("NewRunner", true, opts)
	if err != nil {
		return nil, err
	}
	id := cfg.RunnerID
	if id == "" {
		id = "runner-" + nuid.Next()
	}
	r := &Runner{
		env: env{
			nc: nc, cfg: cfg, id: id,
			subj:    protocol.Subjects{Prefix: cfg.Prefix},
			space:   newShardSpace(&cfg.ClientConfig),
			log:     o.log.With("runner", id),
			obs:     o.obs,
			version: o.version,
			hooks:   o.hooks,
		},
		schemas:      o.schemas,
		shards:       map[ShardID]*nats.Subscription{},
		singletons:   map[string]*singleton{},
		wallNow:      time.Now,
		inbox:        make(chan *nats.Msg, inboxSize),
		stopDispatch: make(chan struct{}),
		dispatchDone: make(chan struct{}),
	}
	if r.rt, err = r.newRuntime(o.runtime); err != nil {
		return nil, err
	}
	copts := []Option{WithLogger(o.log)}
	if o.obs != nil {
		copts = append(copts, WithObserver(o.obs))
	}
	if r.client, err = NewClient(nc, cfg.ClientConfig, copts...); err != nil {
		return nil, err
	}
	r.out = newOutbox(nc, &r.cfg, r.log, r.obs)
	return r, nil
}

// newRuntime makes the runner's actor runtime, one partition per shard,
// every partition closed: the runner serves a shard only once it owns it.
func (r *Runner) newRuntime(extra []actor.RuntimeOption) (*actor.Runtime, error) {
	cfg := &r.cfg
	opts := []actor.RuntimeOption{
		actor.WithDefaults(
			actor.MailboxCapacity(cfg.EntityMailboxCapacity),
			actor.MaxIdleTime(cfg.EntityMaxIdleTime),
		),
		actor.WithTerminationTimeout(cfg.EntityTerminationTimeout),
		actor.WithPartitions(r.space.size(), func(a actor.Address) int {
			return r.space.index(cfg.shardOf(a.Type, a.ID))
		}),
		// The last check before a handler runs: a message queued before a
		// pause must not run after the lease lapsed, even if fencing has
		// not run yet (the lease's watchdog is a timer like any other).
		actor.WithGate(func(p int) error {
			if c := r.coordp.Load(); c != nil && !c.validPart(p, time.Now()) {
				return errLeaseLapsed
			}
			return nil
		}),
	}
	if r.obs != nil {
		opts = append(opts, actor.WithObserver(r.obs))
	}
	rt, err := actor.New(append(opts, extra...)...)
	if err != nil {
		return nil, err
	}
	for p := range r.space.size() {
		_ = rt.ClosePartition(context.Background(), p, nil)
	}
	return rt, nil
}

// ID returns the runner's id (Config.RunnerID or a generated one).
func (r *Runner) ID() string { return r.id }

// Client returns a client that shares the runner's connection and config.
func (r *Runner) Client() *Client { return r.client }

// Entities returns the entity types the runner hosts, sorted by name.
func (r *Runner) Entities() []*actor.Entity {
	es := r.rt.Entities()
	slices.SortFunc(es, func(a, b *actor.Entity) int { return strings.Compare(a.Name(), b.Name()) })
	return es
}

// Register adds an entity behaviour. Register before Start.
func (r *Runner) Register(b *actor.Behavior) error {
	return r.rt.Register(b)
}

// Start joins the cluster: the runner registers itself, then serves the
// shards the shard manager assigns it once it holds their leases (see
// docs/operations.md). With Config.Standalone it takes every shard's lease
// itself, before Start returns, with no shard manager. Either way it also
// takes calls on the route subjects (no client-side hashing) and answers
// health pings.
//
// A standalone runner refuses to start where a cluster of its prefix is
// live on the NATS account, and a cluster's runner where a standalone one
// serves (standalone.go): the error says what it found.
//
// A Start that fails leaves nothing running: it has shut the runner down.
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
	if err := r.start(ctx); err != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.EntityTerminationTimeout)
		defer cancel()
		if serr := r.Shutdown(sctx); serr != nil {
			r.log.Warn("shut down after a failed start", "err", serr)
		}
		return err
	}
	return nil
}

// start is Start's work once the runner is marked started.
func (r *Runner) start(ctx context.Context) error {
	for _, e := range r.rt.Entities() {
		r.types = append(r.types, describe(e, r.cfg.groupOf(e.Name()), r.schemas))
	}
	// Persisted messages cost a durable consumer: only runners hosting an
	// RPC declared Persisted pay for it.
	if r.hostsPersisted() {
		persist, err := openPersistence(ctx, r.nc, &r.cfg.ClientConfig, r.log)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.persist = persist
		r.pc = newPersistConsumer(&r.env, r, r.out, persist)
		r.pcp.Store(r.pc)
		r.mu.Unlock()
	}
	if err := r.listen(); err != nil {
		return err
	}
	coord, err := newCoordinator(ctx, &r.env, r)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.coord = coord
	r.coordp.Store(coord)
	r.mu.Unlock()
	coord.publishTypes(ctx, r.types)
	if r.cfg.Standalone {
		// Every shard before Start returns, as the caller expects of a
		// runner that needs nobody else.
		if err := coord.acquireAll(ctx); err != nil {
			return err
		}
	}
	coord.start()
	return r.startDone(ctx)
}

// listen starts the dispatcher and the subscriptions every runner has:
// the route subject and its health ping.
func (r *Runner) listen() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dispatching = true
	go r.dispatch()
	sub, err := r.nc.QueueSubscribe(r.subj.RouteAll(), r.cfg.Prefix+"-route", r.onRoute)
	if err != nil {
		return fmt.Errorf("subscribe route: %w", err)
	}
	r.routeSub = sub
	r.pingSub, err = r.nc.Subscribe(r.subj.Ping(r.id), func(m *nats.Msg) { _ = m.Respond([]byte(r.id)) })
	if err != nil {
		return fmt.Errorf("subscribe ping: %w", err)
	}
	return nil
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

// registration is what the runner registers in the cluster (coordHost).
func (r *Runner) registration() RunnerInfo {
	host, _ := os.Hostname()
	info := RunnerInfo{ID: r.id, Weight: r.cfg.RunnerWeight, Version: r.version, Protocol: protocol.Version, Host: host, Started: time.Now().UTC(),
		EntityTypes: []string{}, Types: []HostedType{}}
	for _, t := range r.types {
		info.EntityTypes = append(info.EntityTypes, t.Name)
		info.Types = append(info.Types, HostedType{Name: t.Name, Group: t.Group, Fingerprint: t.Fingerprint})
	}
	r.mu.Lock()
	for name := range r.singletons {
		info.Singletons = append(info.Singletons, name)
	}
	r.mu.Unlock()
	slices.Sort(info.Singletons)
	return info
}

// rpcInfo returns a hosted RPC's description, or nil.
func (r *Runner) rpcInfo(entityType, rpc string) actor.RPCInfo {
	if e := r.rt.Entity(entityType); e != nil {
		return e.RPC(rpc)
	}
	return nil
}

// deliver hands a message to its entity's mailbox (persistHost).
func (r *Runner) deliver(ctx context.Context, addr actor.Address, rpc string, codec actor.Codec, payload []byte, rep actor.Replier) error {
	return r.rt.Deliver(ctx, addr.Type, addr.ID, rpc, codec, payload, rep)
}

// wallClock reads the wall clock where it is compared with times from
// elsewhere (persistHost).
func (r *Runner) wallClock() time.Time { return r.wallNow() }

// Ready reports whether the runner serves what it should: started, not
// shutting down, connected to NATS, and, in a cluster, not refused a shard
// group's shards (it lacks entity types the group's other runners host)
// and holding the lease of every shard the shard manager assigned to it (a
// runner assigned nothing, because no manager runs yet, is ready). Fit for
// a readiness probe; NotReady says why not.
func (r *Runner) Ready() bool { return r.NotReady() == nil }

// NotReady returns why the runner is not Ready, or nil.
func (r *Runner) NotReady() error {
	r.mu.Lock()
	started, closed, coord := r.running.Load(), r.closed, r.coord
	r.mu.Unlock()
	switch {
	case closed:
		return errors.New("shutting down")
	case !started:
		return errors.New("not started")
	case !r.nc.IsConnected():
		return fmt.Errorf("not connected to NATS (%s)", r.nc.Status())
	case coord != nil:
		return coord.unsettled()
	}
	return nil
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
	coord, dispatching := r.coord, r.dispatching
	r.mu.Unlock()
	if coord != nil {
		coord.shutdown(ctx)
	}
	ping, subs, served, pc, first := r.unlistAll()
	if ping != nil {
		// Last: the runner answers health pings until it is gone.
		defer func() { _ = ping.Unsubscribe() }()
	}
	if pc != nil {
		defer pc.close(ctx)
	}
	if r.obs != nil {
		for _, s := range served {
			r.obs.ShardReleased(s)
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
		if dispatching {
			close(r.stopDispatch)
		}
	}
	if dispatching {
		select {
		case <-r.dispatchDone:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err := r.rt.Shutdown(ctx)
	if coord != nil {
		coord.releaseAll(ctx) // what a hand-off did not release (every lease, for a standalone runner)
	}
	r.out.batch.close(ctx)
	if ferr := r.flush(ctx); err == nil && ferr != nil && !errors.Is(ferr, nats.ErrConnectionClosed) {
		err = ferr
	}
	return err
}

// unlistAll marks the runner closed and takes every subscription and
// served shard off its lists; first is false if it was closed already.
func (r *Runner) unlistAll() (ping *nats.Subscription, subs []*nats.Subscription, served []ShardID, pc *persistConsumer, first bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	first = !r.closed
	r.closed = true
	ping, r.pingSub = r.pingSub, nil
	if r.routeSub != nil {
		subs = append(subs, r.routeSub)
		r.routeSub = nil
	}
	for s, sub := range r.shards {
		subs = append(subs, sub)
		served = append(served, s)
		delete(r.shards, s)
	}
	return ping, subs, served, r.pc, first
}
