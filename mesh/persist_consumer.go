package mesh

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/natsmesh/natsmesh/actor"
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
	*env
	host persistHost
	out  *outbox
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

// persistHost is what the persisted consumer needs of its runner: the
// lease check of the last moment, the hosted RPCs, the mailboxes, and the
// wall clock that DeliverAt is compared with.
type persistHost interface {
	leaseValid(s ShardID) bool
	rpcInfo(entityType, rpc string) actor.RPCInfo
	deliver(ctx context.Context, addr actor.Address, rpc string, codec actor.Codec, payload []byte, rep actor.Replier) error
	wallClock() time.Time
}

func newPersistConsumer(e *env, host persistHost, out *outbox, p *persistence) *persistConsumer {
	name := "runner-" + e.id
	if !actor.ValidName(e.id) || strings.ContainsAny(e.id, `/\`) || len(name) > 200 {
		name = "runner-" + nuid.Next() // a runner id unfit for a consumer name
	}
	pc := &persistConsumer{
		env: e, host: host, out: out, p: p, name: name,
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

// fence ends the contexts of shard s's running handlers: its lease is
// lost, so their messages are the next owner's.
func (pc *persistConsumer) fence(s ShardID) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for _, pm := range pc.held {
		if pm.shard == s && pm.cancel != nil {
			pm.cancel()
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
	if pc.nc.IsConnected() {
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
	backoff := pc.cfg.PersistRetryBackoff
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
		if h := pc.hooks.rebuildHold(); h != nil {
			select {
			case <-h:
			case <-pc.quit:
				return
			}
		}
		select { // the burst's requests are all served by this rebuild
		case <-pc.kick:
		default:
		}
		if err := pc.rebuild(); err != nil && !errors.Is(err, errStaleRebuild) {
			pc.log.Warn("persisted messages: rebuild consumer", "consumer", pc.name, "err", err, "retry", backoff)
			time.AfterFunc(backoff, pc.requestRebuild)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = pc.cfg.PersistRetryBackoff
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
	ctx, cancel := context.WithTimeout(context.Background(), pc.cfg.CallTimeout)
	defer cancel()
	cons, err := pc.p.stream.Consumer(ctx, pc.name)
	if errors.Is(err, natsjs.ErrConsumerNotFound) {
		pc.log.Warn("persisted messages: consumer gone; rebuilding it", "consumer", pc.name)
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
		pc.log.Warn("persisted messages: consumer's filters changed by someone else; rebuilding it", "consumer", pc.name, "have", len(have), "want", len(want))
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
	ctx, cancel := context.WithTimeout(context.Background(), pc.cfg.CallTimeout)
	defer cancel()
	// Acks queued for the old consumer reach the server before its
	// deletion: a message handled here is not redelivered elsewhere.
	pc.out.batch.sync(ctx)
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
			natsjs.PullMaxMessages(min(pc.cfg.PersistMaxInFlight, 1024)),
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
	pc.log.Debug("persisted: consumer rebuilt", "consumer", pc.name, "version", version, "filters", strings.Join(filters, " "))
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
		if perGroup[s.Group] < pc.cfg.ShardsPerGroup {
			filters = append(filters, pc.subj.PersistShard(s))
		}
	}
	for g, n := range perGroup {
		if n >= pc.cfg.ShardsPerGroup {
			filters = append(filters, pc.subj.PersistGroup(g))
		}
	}
	slices.Sort(filters)
	return filters
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
		pc.log.Warn("persisted messages: consumer lost; rebuilding it", "consumer", pc.name, "err", err)
		pc.requestRebuild()
		return
	}
	pc.log.Debug("persisted messages: pull", "consumer", pc.name, "err", err)
}
