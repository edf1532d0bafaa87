package mesh

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/jetstream"
)

// Version is reported in runner registrations.
const Version = "0.1.0"

// coordinator is a runner's part of the cluster protocol. It keeps the
// runner registered, serves exactly the shards that are both assigned to it
// and whose lease it holds, hands shards off gracefully when the assignment
// moves them, and fences a shard the moment its lease is lost.
type coordinator struct {
	*env
	host coordHost
	st   *stores
	solo bool              // standalone: every shard, no manager (standalone.go)
	reg  *jetstream.Keeper // registration, or the standalone lease; replaced when lost

	stop     chan struct{} // closed by shutdown
	done     chan struct{} // closed when loop returns
	wake     chan struct{}
	stopOnce sync.Once
	looping  atomic.Bool // start was called
	seen     bool        // an assignment names this runner (or predates the list); under mu

	mu      sync.Mutex
	desired map[ShardID]bool
	// assignRev is the revision of each group's assignment last applied.
	assignRev map[string]uint64
	owned     map[ShardID]*heldShard
	// byPart mirrors owned by actor partition (shardSpace.index), read
	// without the lock by valid on every message.
	byPart  []atomic.Pointer[heldShard]
	leaving bool // deregistered: acquire nothing more
	synced  bool // the assignments were read once
	// refused holds, by group, the entity types this runner lacks, when
	// the shard manager refuses it the group's shards (hosting.go).
	refused  map[string][]string
	handoffs sync.WaitGroup
}

// coordHost is what the coordinator needs of its runner: what to register,
// and serving or stopping a shard (serve.go).
type coordHost interface {
	registration() RunnerInfo
	serveShard(s ShardID) error
	stopShard(ctx context.Context, s ShardID, abort error) error
}

type heldShard struct {
	keeper  *jetstream.Keeper
	leaving bool
}

func newCoordinator(ctx context.Context, e *env, host coordHost) (*coordinator, error) {
	st, err := openStores(ctx, e.nc, &e.cfg, e.log)
	if err != nil {
		return nil, err
	}
	c := &coordinator{
		env: e, host: host, st: st, solo: e.cfg.Standalone,
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		wake:      make(chan struct{}, 1),
		desired:   map[ShardID]bool{},
		assignRev: map[string]uint64{},
		owned:     map[ShardID]*heldShard{},
		refused:   map[string][]string{},
		byPart:    make([]atomic.Pointer[heldShard], e.space.size()),
	}
	sctx, cancel := jetstream.SetupContext(ctx)
	defer cancel()
	if c.solo {
		if err := c.claimStandalone(sctx); err != nil {
			return nil, err
		}
		return c, nil
	}
	// Retried: a runner started while its NATS cluster elects leaders (a
	// server restarting) would otherwise exit on the first timeout.
	if err := jetstream.Setup(sctx, "register", c.register); err != nil {
		return nil, err
	}
	if err := c.standaloneLive(sctx); err != nil {
		_ = c.reg.Release(context.WithoutCancel(sctx))
		return nil, err
	}
	return c, nil
}

// register writes (or takes back) the runner's registration and keeps it.
func (c *coordinator) register(ctx context.Context) error {
	meta, _ := json.Marshal(c.host.registration())
	lease, err := c.st.runners.Acquire(ctx, c.id, c.id, jetstream.WithMeta(meta))
	if err != nil {
		return err
	}
	c.reg = c.st.runners.Keep(context.Background(), lease, c.cfg.ShardLockRefreshInterval)
	return nil
}

func (c *coordinator) start() {
	c.looping.Store(true)
	go c.loop()
}

// waitLoop waits for the loop to end, if it was started, or for ctx; it
// reports whether the loop ended.
func (c *coordinator) waitLoop(ctx context.Context) bool {
	if !c.looping.Load() {
		return true
	}
	select {
	case <-c.done:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *coordinator) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *coordinator) loop() {
	defer close(c.done)
	log := c.log
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	var updates <-chan natsjs.KeyValueEntry
	var aw natsjs.KeyWatcher
	var lw *jetstream.Watcher
	defer func() {
		if aw != nil {
			_ = aw.Stop()
		}
		if lw != nil {
			lw.Stop()
		}
	}()
	var leaseEvents <-chan jetstream.Event
	tick := time.NewTicker(c.cfg.RefreshAssignmentsInterval)
	defer tick.Stop()
	for {
		// (Re)establish the watches; a failed watch is retried each tick.
		if aw == nil && !c.solo {
			if w, err := c.st.assignments.WatchAll(ctx); err == nil {
				aw, updates = w, w.Updates()
			} else if ctx.Err() == nil {
				log.Warn("watch assignments", "err", err)
			}
		}
		if lw == nil {
			if w, err := c.st.leases.Watch(ctx, "shard.>"); err == nil {
				lw, leaseEvents = w, w.Events()
			} else if ctx.Err() == nil {
				log.Warn("watch leases", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case e, ok := <-updates:
			if !ok {
				aw, updates = nil, nil
				continue
			}
			if c.hooks.watchStalled() {
				continue
			}
			if e != nil {
				c.onAssignment(e)
			} else {
				c.mu.Lock()
				c.synced = true
				c.mu.Unlock()
			}
		case ev, ok := <-leaseEvents:
			if !ok {
				lw, leaseEvents = nil, nil
				continue
			}
			if ev.Kind != jetstream.EventReleased && ev.Kind != jetstream.EventExpired {
				continue // only a freed lease can let us take a shard
			}
		case <-c.wake:
		case <-tick.C:
			c.keepRegistered(ctx)
			if !c.solo {
				c.rereadAssignments(ctx)
			}
		}
		c.reconcile(ctx)
	}
}

// keepRegistered re-registers if the registration was lost (for example
// after a long pause): the shard manager would otherwise move our shards.
func (c *coordinator) keepRegistered(ctx context.Context) {
	c.mu.Lock()
	leaving := c.leaving
	c.mu.Unlock()
	if leaving {
		return
	}
	select {
	case <-c.reg.Lost():
	default:
		return
	}
	c.log.Warn("registration lost; registering again", "err", c.reg.Err())
	rctx, cancel := context.WithTimeout(ctx, c.cfg.RefreshAssignmentsInterval)
	defer cancel()
	register := c.register
	if c.solo {
		register = c.reclaimStandalone
	}
	if err := register(rctx); err != nil {
		c.log.Warn("register", "err", err)
	}
}

// reconcile acquires the leases of assigned shards it does not hold yet and
// hands off held shards that are no longer assigned.
func (c *coordinator) reconcile(ctx context.Context) {
	c.mu.Lock()
	var acquire []ShardID
	for s := range c.desired {
		if c.owned[s] == nil && !c.leaving {
			acquire = append(acquire, s)
		}
	}
	for s, h := range c.owned {
		if !c.desired[s] && !h.leaving {
			h.leaving = true
			c.handoffs.Add(1)
			go c.handoff(s, h)
		}
	}
	c.mu.Unlock()
	slices.SortFunc(acquire, func(a, b ShardID) int {
		return cmp.Or(strings.Compare(a.Group, b.Group), a.N-b.N)
	})
	for _, s := range acquire {
		if ctx.Err() != nil {
			return
		}
		c.acquire(ctx, s)
	}
}

func (c *coordinator) acquire(ctx context.Context, s ShardID) {
	actx, cancel := context.WithTimeout(ctx, c.cfg.RefreshAssignmentsInterval)
	defer cancel()
	lease, err := c.st.leases.Acquire(actx, shardKey(s), c.id)
	if errors.Is(err, jetstream.ErrLeaseHeld) {
		return // its owner is still handing it off, or crashed: wait for the release or expiry
	}
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("acquire shard lease", "shard", s.String(), "err", err)
		}
		return
	}
	h := &heldShard{keeper: c.st.leases.Keep(context.Background(), lease, c.cfg.ShardLockRefreshInterval)}
	c.mu.Lock()
	c.setOwned(s, h)
	c.mu.Unlock()
	if err := c.host.serveShard(s); err != nil {
		c.log.Warn("serve shard", "shard", s.String(), "err", err)
		c.mu.Lock()
		c.dropOwned(s, h)
		c.mu.Unlock()
		_ = h.keeper.Release(context.Background())
		return
	}
	c.log.Debug("serving shard", "shard", s.String(), "lease", lease.Revision)
	go c.watchLoss(s, h)
}

// watchLoss fences a shard whose lease is lost: it stops serving it at once,
// failing queued calls with NotServing so that their callers retry on the
// new owner.
func (c *coordinator) watchLoss(s ShardID, h *heldShard) {
	<-h.keeper.Lost()
	if errors.Is(h.keeper.Err(), jetstream.ErrStopped) {
		return // released by a hand-off or shutdown
	}
	c.log.Warn("shard lease lost: fencing", "shard", s.String(), "err", h.keeper.Err())
	if c.obs != nil {
		c.obs.LeaseRenewFailed(s, h.keeper.Err())
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.EntityTerminationTimeout)
	defer cancel()
	if err := c.host.stopShard(ctx, s, actor.ErrNotServing); err != nil {
		c.log.Warn("fence shard", "shard", s.String(), "err", err)
	}
	c.mu.Lock()
	c.dropOwned(s, h)
	c.mu.Unlock()
	c.poke()
}

// handoff stops serving a shard gracefully, then releases its lease so the
// new owner can take it at once. The lease is renewed until released.
func (c *coordinator) handoff(s ShardID, h *heldShard) {
	defer c.handoffs.Done()
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.EntityTerminationTimeout+c.cfg.RefreshAssignmentsInterval)
	defer cancel()
	start := time.Now()
	if err := c.host.stopShard(ctx, s, nil); err != nil {
		c.log.Warn("hand off shard", "shard", s.String(), "err", err)
	}
	if err := h.keeper.Release(ctx); err != nil && !errors.Is(err, jetstream.ErrLeaseLost) {
		c.log.Warn("release shard lease", "shard", s.String(), "err", err)
	}
	c.mu.Lock()
	c.dropOwned(s, h)
	c.mu.Unlock()
	c.log.Debug("handed off shard", "shard", s.String(), "took", time.Since(start))
	c.poke()
}

// shutdown leaves the cluster: it deregisters first, so the shard manager
// reassigns this runner's shards while it still serves them; each shard is
// handed off as its new owner is named (who is then already waiting for the
// lease, so the shard is unowned for milliseconds). Shards still held after
// a grace period (no shard manager running, say) are handed off anyway.
func (c *coordinator) shutdown(ctx context.Context) {
	c.mu.Lock()
	c.leaving = true
	c.mu.Unlock()
	if c.solo {
		// Nobody takes the shards over: the runner stops them all at once
		// (Runner.Shutdown) and releases their leases after (releaseAll).
		c.stopOnce.Do(func() { close(c.stop) })
		c.waitLoop(ctx)
		return
	}
	if err := c.reg.Release(ctx); err != nil && !errors.Is(err, jetstream.ErrLeaseLost) {
		c.log.Warn("deregister", "err", err)
	}
	grace := time.NewTimer(2*c.cfg.RefreshAssignmentsInterval + rebalanceDebounce(c.cfg))
	defer grace.Stop()
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for c.holding() {
		select {
		case <-grace.C:
		case <-ctx.Done():
		case <-poll.C: // the loop hands shards off as the assignment moves them
			continue
		}
		break
	}
	c.stopOnce.Do(func() { close(c.stop) })
	if !c.waitLoop(ctx) {
		return
	}
	c.mu.Lock()
	clear(c.desired)
	for s, h := range c.owned {
		if !h.leaving {
			h.leaving = true
			c.handoffs.Add(1)
			go c.handoff(s, h)
		}
	}
	c.mu.Unlock()
	waited := make(chan struct{})
	go func() { c.handoffs.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-ctx.Done():
	}
}

// holding reports whether any shard is still held and not being handed off.
func (c *coordinator) holding() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.owned {
		if !h.leaving {
			return true
		}
	}
	return false
}

// valid reports whether this runner holds shard s's lease and it is locally
// valid at now.
func (c *coordinator) valid(s ShardID, now time.Time) bool {
	return c.validPart(c.space.index(s), now)
}

// validPart is valid for the shard of actor partition p; it takes no lock.
func (c *coordinator) validPart(p int, now time.Time) bool {
	h := c.byPart[p].Load()
	return h != nil && h.keeper.Valid(now)
}

// setOwned records h as the holder of s; c.mu must be held.
func (c *coordinator) setOwned(s ShardID, h *heldShard) {
	c.owned[s] = h
	c.byPart[c.space.index(s)].Store(h)
}

// dropOwned forgets h as the holder of s, if it still is; c.mu must be held.
func (c *coordinator) dropOwned(s ShardID, h *heldShard) {
	if c.owned[s] == h {
		delete(c.owned, s)
		c.byPart[c.space.index(s)].CompareAndSwap(h, nil)
	}
}

// unsettled says why the runner does not yet serve what it should: the
// assignments not read yet, leaving, refused a group's shards, or leases
// of assigned shards not held yet; nil when it does.
func (c *coordinator) unsettled() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case !c.synced:
		return errors.New("assignments not read yet")
	case c.leaving:
		return errors.New("leaving the cluster")
	case !c.solo && !c.seen:
		return errors.New("waiting for the shard manager to plan with this runner (no assignment names it yet)")
	}
	if len(c.refused) > 0 {
		g := slices.Min(slices.Collect(maps.Keys(c.refused)))
		return fmt.Errorf("refused the shards of group %s: lacks entity types %s, which the group's other runners host", g, strings.Join(c.refused[g], ", "))
	}
	waiting := 0
	for s := range c.desired {
		if h := c.owned[s]; h == nil || h.leaving {
			waiting++
		}
	}
	if waiting > 0 {
		return fmt.Errorf("acquiring the leases of %d assigned shards", waiting)
	}
	return nil
}
