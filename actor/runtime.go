package actor

import (
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults mirror @effect/cluster's ShardingConfig names.
const (
	DefaultMaxIdleTime        = time.Minute
	DefaultMailboxCapacity    = 4096
	DefaultTerminationTimeout = 15 * time.Second
	defaultPartitions         = 64
)

// DefaultDefectRetryPolicy waits 10 ms before re-creating an entity after its
// first defect, doubling up to 5 s for consecutive ones.
var DefaultDefectRetryPolicy = ExponentialBackoff(10*time.Millisecond, 5*time.Second)

// StopReason tells an Observer why an activation ended.
type StopReason uint8

const (
	// StopIdle: passivated after maxIdleTime without messages.
	StopIdle StopReason = iota
	// StopShutdown: the runtime shut down.
	StopShutdown
	// StopPartitionClosed: the partition holding the entity was closed (the
	// mesh moved its shard away).
	StopPartitionClosed
	// StopDefect: a handler panicked and the entity will be re-created.
	StopDefect
	// StopRequested: the entity called Instance.Stop; the next message
	// re-creates it.
	StopRequested
)

func (r StopReason) String() string {
	switch r {
	case StopIdle:
		return "idle"
	case StopShutdown:
		return "shutdown"
	case StopPartitionClosed:
		return "partition-closed"
	case StopDefect:
		return "defect"
	case StopRequested:
		return "requested"
	}
	return fmt.Sprintf("StopReason(%d)", uint8(r))
}

// Runtime hosts entities in one process: it activates them on their first
// message, runs their handlers, passivates them when idle, and recovers them
// from defects. It is safe for concurrent use.
type Runtime struct {
	opts  runtimeOptions
	start time.Time

	regMu  sync.Mutex
	types  atomic.Pointer[map[*Entity]*typeState]
	byName atomic.Pointer[map[string]*typeState]

	parts []partition
	seed  maphash.Seed

	clock     atomic.Int64 // nanoseconds since start, advanced by the sweeper
	tick      atomic.Int64 // sweep interval in nanoseconds
	sweepPoke chan struct{}
	sweepStop chan struct{}
	sweepDone chan struct{}

	instances    sync.WaitGroup // one per live Instance
	shutdownOnce sync.Once
	closed       atomic.Bool
}

// New returns a running Runtime with no entity types. Stop it with Shutdown.
// It returns an error wrapping ErrInvalidOption for a bad option.
func New(opts ...RuntimeOption) (*Runtime, error) {
	o := runtimeOptions{
		defaults: entityOptions{
			maxIdle:     DefaultMaxIdleTime,
			concurrency: 1,
			capacity:    DefaultMailboxCapacity,
			retry:       DefaultDefectRetryPolicy,
		},
		termTimeout: DefaultTerminationTimeout,
		partitions:  defaultPartitions,
	}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	rt := &Runtime{
		opts:      o,
		start:     time.Now(),
		parts:     make([]partition, o.partitions),
		seed:      maphash.MakeSeed(),
		sweepPoke: make(chan struct{}, 1),
		sweepStop: make(chan struct{}),
		sweepDone: make(chan struct{}),
	}
	rt.types.Store(&map[*Entity]*typeState{})
	rt.byName.Store(&map[string]*typeState{})
	rt.tick.Store(int64(tickFor(o.defaults.maxIdle)))
	go rt.sweep()
	return rt, nil
}

// NewTestClient returns a Runtime hosting the given behaviours: the
// equivalent of @effect/cluster's Entity.makeTestClient. Call entities with
// Call and Stream, and stop it with Shutdown. Everything runs in-process with
// the same semantics the mesh gives (mailboxes, passivation, defects).
func NewTestClient(behaviors ...*Behavior) (*Runtime, error) {
	rt, err := New()
	if err != nil {
		return nil, err
	}
	for _, b := range behaviors {
		if err := rt.Register(b); err != nil {
			_ = rt.Shutdown(context.Background())
			return nil, err
		}
	}
	return rt, nil
}

// tickFor is the sweep interval for a maxIdleTime: passivation happens
// between maxIdle and maxIdle plus one tick after the last message.
func tickFor(maxIdle time.Duration) time.Duration {
	return min(max(maxIdle/10, time.Millisecond), time.Second)
}

// Register adds an entity type's behaviour. It runs the behaviour's init
// once on a probe instance (Instance.Probe) and checks the handlers it
// returns. It returns an error wrapping ErrInvalidOption, naming the RPC,
// for a declared RPC without a handler, a handler for another entity
// type's RPC or two for one, an init that fails or panics when probed, a
// bad option, or an entity type already registered.
// After Register the entity type accepts no new RPC declarations.
func (rt *Runtime) Register(b *Behavior) error {
	if b == nil || b.entity == nil || b.init == nil {
		return fmt.Errorf("%w: incomplete behavior", ErrInvalidOption)
	}
	o := rt.opts.defaults
	for _, opt := range b.opts {
		if err := opt(&o); err != nil {
			return fmt.Errorf("entity %s: %w", b.entity.name, err)
		}
	}
	if err := probe(b, rt.opts.termTimeout); err != nil {
		return err
	}
	rt.regMu.Lock()
	defer rt.regMu.Unlock()
	old := *rt.byName.Load()
	if _, dup := old[b.entity.name]; dup {
		return fmt.Errorf("%w: entity type %s registered twice", ErrInvalidOption, b.entity.name)
	}
	b.entity.sealed.Store(true)
	ts := &typeState{
		rt:          rt,
		b:           b,
		maxIdle:     int64(o.maxIdle),
		concurrency: int32(min(o.concurrency, Unbounded)),
		capacity:    int32(o.capacity),
		noFatal:     o.noFatal,
		retry:       o.retry,
		pools:       make([]sync.Pool, len(b.entity.rpcs)),
		idx:         len(old),
	}
	for i, d := range b.entity.rpcs {
		ts.pools[i].New = d.newCall
	}
	byName := make(map[string]*typeState, len(old)+1)
	types := make(map[*Entity]*typeState, len(old)+1)
	for k, v := range old {
		byName[k] = v
		types[v.b.entity] = v
	}
	byName[b.entity.name] = ts
	types[b.entity] = ts
	for i := range rt.parts {
		p := &rt.parts[i]
		p.mu.Lock()
		p.maps = append(p.maps, map[string]*Instance{})
		p.mu.Unlock()
	}
	rt.byName.Store(&byName)
	rt.types.Store(&types)
	if t := int64(tickFor(o.maxIdle)); t < rt.tick.Load() {
		rt.tick.Store(t)
		select {
		case rt.sweepPoke <- struct{}{}:
		default:
		}
	}
	return nil
}

// Entities returns the registered entity types, sorted by name.
func (rt *Runtime) Entities() []*Entity {
	m := *rt.byName.Load()
	out := make([]*Entity, 0, len(m))
	for _, ts := range m {
		out = append(out, ts.b.entity)
	}
	slices.SortFunc(out, func(a, b *Entity) int { return strings.Compare(a.name, b.name) })
	return out
}

// Entity returns the registered entity type with this name, or nil.
func (rt *Runtime) Entity(name string) *Entity {
	if ts := (*rt.byName.Load())[name]; ts != nil {
		return ts.b.entity
	}
	return nil
}

func (rt *Runtime) partitionOf(addr Address) uint32 {
	if rt.opts.partFn != nil {
		return uint32(rt.opts.partFn(addr))
	}
	return uint32(maphash.String(rt.seed, addr.ID) % uint64(len(rt.parts)))
}

// enqueue places m in the mailbox of the entity at addr, activating the
// entity if needed. On error m was not queued and will not be answered.
func (rt *Runtime) enqueue(ts *typeState, id string, msg message) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	addr := Address{Type: ts.b.entity.name, ID: id}
	pidx := rt.partitionOf(addr)
	p := &rt.parts[pidx]
	p.mu.Lock()
	if p.err != nil {
		err := p.err
		p.mu.Unlock()
		return err
	}
	m := p.maps[ts.idx]
	in := m[id]
	if in != nil {
		in.mu.Lock()
		if in.closing {
			prev := in
			in.mu.Unlock()
			in = rt.newInstance(ts, pidx, addr, prev)
			m[id] = in
			in.mu.Lock()
		}
	} else {
		in = rt.newInstance(ts, pidx, addr, nil)
		m[id] = in
		in.mu.Lock()
	}
	p.mu.Unlock()
	if in.queued >= ts.capacity {
		in.mu.Unlock()
		return ErrMailboxFull
	}
	in.push(msg)
	spawn := in.running < in.limit()
	if spawn {
		in.running++
	}
	in.mu.Unlock()
	if spawn {
		rt.startDrain(in)
	}
	return nil
}

// startDrain gives in a goroutine to drain its mailbox. A plain go statement
// beat a pool of parked workers in every measurement (benchmarks in
// docs/benchmarks.md): the scheduler's run-next slot makes it cheap, and an
// idle entity still holds no goroutine.
func (rt *Runtime) startDrain(in *Instance) { go in.drain() }

// newInstance creates an instance for the caller to map; p.mu is held.
func (rt *Runtime) newInstance(ts *typeState, pidx uint32, addr Address, prev *Instance) *Instance {
	in := &Instance{addr: addr, ts: ts, pidx: pidx, lastActive: rt.clock.Load()}
	if prev != nil {
		in.cold = &coldState{prev: prev}
	}
	rt.instances.Add(1)
	return in
}

func (rt *Runtime) typeOf(e *Entity) (*typeState, error) {
	ts := (*rt.types.Load())[e]
	if ts == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownEntity, e.name)
	}
	return ts, nil
}

// sweep advances the coarse clock and passivates idle entities.
func (rt *Runtime) sweep() {
	defer close(rt.sweepDone)
	timer := time.NewTimer(time.Duration(rt.tick.Load()))
	defer timer.Stop()
	var idle []*Instance
	for {
		select {
		case <-rt.sweepStop:
			return
		case <-rt.sweepPoke:
		case <-timer.C:
		}
		now := int64(time.Since(rt.start))
		rt.clock.Store(now)
		for i := range rt.parts {
			p := &rt.parts[i]
			p.mu.Lock()
			for _, m := range p.maps {
				for _, in := range m {
					in.mu.Lock()
					if !in.closing && in.running == 0 && !in.keepAlive && now-in.lastActive >= in.ts.maxIdle {
						in.beginStop(StopIdle, nil)
						idle = append(idle, in)
					}
					in.mu.Unlock()
				}
			}
			p.mu.Unlock()
			for _, in := range idle {
				in.finalizeSoon()
			}
			clear(idle)
			idle = idle[:0]
		}
		timer.Reset(time.Duration(rt.tick.Load()))
	}
}

// Shutdown stops accepting messages (new ones fail with ErrShuttingDown),
// lets every mailbox drain, runs every finalizer once, and returns when all
// entities are stopped or ctx ends (then with ctx's error; the rest keeps
// stopping in the background). It is idempotent.
func (rt *Runtime) Shutdown(ctx context.Context) error {
	rt.shutdownOnce.Do(func() {
		rt.closed.Store(true)
		rt.beginClose(rt.parts, ErrShuttingDown, StopShutdown, nil)
		close(rt.sweepStop)
	})
	done := make(chan struct{})
	go func() {
		rt.instances.Wait()
		<-rt.sweepDone
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
