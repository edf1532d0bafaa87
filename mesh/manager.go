package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh/internal/assign"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// ShardManager computes which runner should own each shard and publishes the
// assignment in KV. Several may run: the one holding the "manager" lease
// leads, the others wait to take over. Runners keep serving the shards they
// hold while no manager runs.
type ShardManager struct {
	nc      *nats.Conn
	cfg     Config
	id      string
	log     *slog.Logger
	leader  atomic.Bool
	running atomic.Bool
}

// NewShardManager returns a shard manager on nc; Run it. It returns an
// error wrapping ErrInvalidOption for a bad configuration or option
// (WithLogger is the one that applies).
func NewShardManager(nc *nats.Conn, cfg Config, opts ...Option) (*ShardManager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o, err := applyOptions("NewShardManager", false, opts)
	if err != nil {
		return nil, err
	}
	id := "manager-" + nuid.Next()
	return &ShardManager{nc: nc, cfg: cfg, id: id, log: o.log.With("manager", id)}, nil
}

// ID returns the manager's id.
func (m *ShardManager) ID() string { return m.id }

// IsLeader reports whether this manager currently leads.
func (m *ShardManager) IsLeader() bool { return m.leader.Load() }

// Ready reports whether the manager runs (leading or standing by) and is
// connected to NATS. Fit for a readiness probe.
func (m *ShardManager) Ready() bool { return m.running.Load() && m.nc.IsConnected() }

// Run campaigns for leadership and, while leading, keeps the assignment
// balanced over the live runners. It returns nil when ctx ends (releasing
// the leadership), or an error if the KV buckets cannot be opened.
func (m *ShardManager) Run(ctx context.Context) error {
	st, err := openStores(ctx, m.nc, &m.cfg, m.log)
	if err != nil {
		return err
	}
	// Retried, as the buckets are: a manager started while its NATS
	// cluster elects leaders (a server restarting) exited on the first
	// timeout (chaos seed 2254528045206132035).
	var w *jetstream.Watcher
	sctx, cancel := jetstream.SetupContext(ctx)
	err = jetstream.Setup(sctx, "watch the leadership lease", func(context.Context) (err error) {
		w, err = st.leases.Watch(ctx, managerKey) // ctx: the watch lives on
		return err
	})
	cancel()
	if err != nil {
		return err
	}
	defer w.Stop()
	m.running.Store(true)
	defer m.running.Store(false)
	retry := time.NewTicker(m.cfg.RefreshAssignmentsInterval)
	defer retry.Stop()
	for {
		actx, cancel := context.WithTimeout(ctx, m.cfg.RefreshAssignmentsInterval)
		lease, err := st.leases.Acquire(actx, managerKey, m.id)
		cancel()
		switch {
		case err == nil:
			m.lead(ctx, st, lease)
		case errors.Is(err, jetstream.ErrLeaseHeld):
		case ctx.Err() == nil:
			m.log.Warn("campaign", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.Events(): // the leader let go or expired: try at once
		case <-retry.C:
		}
	}
}

// lead runs one term of leadership, until the lease is lost or ctx ends.
func (m *ShardManager) lead(ctx context.Context, st *stores, lease jetstream.Lease) {
	k := st.leases.Keep(ctx, lease, m.cfg.ShardLockRefreshInterval)
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), m.cfg.RefreshAssignmentsInterval)
		defer cancel()
		_ = k.Release(rctx)
	}()
	m.leader.Store(true)
	defer m.leader.Store(false)
	m.log.Info("leading")

	rw, err := st.runners.Watch(ctx)
	if err != nil {
		m.log.Warn("watch runners", "err", err)
		return
	}
	defer rw.Stop()
	t := term{m: m, st: st, k: k, live: map[string]RunnerInfo{}, suspects: map[string]RunnerInfo{}, current: map[string]current{}}
	tick := time.NewTicker(m.cfg.RefreshAssignmentsInterval)
	defer tick.Stop()
	// Runner events are debounced: runners that start together are placed
	// in one assignment instead of shards moving once per arrival.
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	synced, pending := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.Lost():
			m.log.Warn("leadership lost", "err", k.Err())
			return
		case ev, ok := <-rw.Events():
			if !ok {
				return
			}
			t.onRunner(ev)
			if ev.Kind == jetstream.EventSynced {
				synced = true
			}
			if synced && !pending {
				pending = true
				debounce.Reset(rebalanceDebounce(m.cfg))
			}
			continue
		case <-debounce.C:
		case <-tick.C:
			if synced {
				t.resync(ctx)
			}
		}
		pending = false
		if synced {
			t.checkSuspects(ctx)
			t.rebalance(ctx)
		}
	}
}

// rebalanceDebounce is how long the manager waits after a runner event for
// more before rebalancing.
func rebalanceDebounce(cfg Config) time.Duration {
	return min(cfg.RefreshAssignmentsInterval/4, 250*time.Millisecond)
}

// term is the state of one leadership term.
type term struct {
	m        *ShardManager
	st       *stores
	k        *jetstream.Keeper
	live     map[string]RunnerInfo // registered, or unregistered but answering pings
	suspects map[string]RunnerInfo // registration expired: ping before dropping
	current  map[string]current    // per group, as last read or written
}

type current struct {
	a   Assignment
	rev uint64
	ok  bool
}

func (t *term) onRunner(ev jetstream.Event) {
	switch ev.Kind {
	case jetstream.EventHeld:
		var info RunnerInfo
		if err := json.Unmarshal(ev.Meta, &info); err != nil || info.ID != ev.Key {
			t.m.log.Warn("ignoring corrupt runner registration", "key", ev.Key, "err", err)
			return
		}
		t.live[ev.Key] = info
		delete(t.suspects, ev.Key)
	case jetstream.EventReleased: // the runner left gracefully
		delete(t.live, ev.Key)
		delete(t.suspects, ev.Key)
	case jetstream.EventExpired: // silent: confirm with a ping first
		if info, ok := t.live[ev.Key]; ok {
			t.suspects[ev.Key] = info
		}
	}
}

// resync re-reads the registrations: a watch can lag by seconds (its
// consumer is re-created after missed heartbeats when the NATS server
// serving it dies), and an expiry it has not reported yet must not delay a
// failover by that much.
func (t *term) resync(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, t.m.cfg.RefreshAssignmentsInterval)
	defer cancel()
	held, err := snapshot(ctx, t.st.runners)
	if err != nil {
		return // the watch is all we have until the servers answer
	}
	// A registration whose last renewal is more than twice the TTL older
	// than the newest one (server time) outlived its TTL on the server
	// (docs/reliability.md, K5): its runner stopped renewing long ago.
	// Counted as gone; a runner still alive answers the ping and keeps
	// its shards.
	var newest time.Time
	for _, ev := range held {
		if ev.Written.After(newest) {
			newest = ev.Written
		}
	}
	for id, ev := range held {
		if newest.Sub(ev.Written) <= 2*t.st.runners.Config().TTL {
			continue
		}
		delete(held, id)
		if _, err := t.m.nc.Request(protocol.Subjects{Prefix: t.m.cfg.Prefix}.Ping(id), nil, t.m.cfg.RunnerHealthCheckTimeout); err == nil {
			continue // alive: it will register again; meanwhile a suspect
		}
		// Gone: remove the key too, so that the registry (meshctl status)
		// no longer shows it; a conditional delete, in case it renews.
		err := t.st.runners.Remove(ctx, id, ev.Revision)
		t.m.log.Warn("runner registration outlived its TTL and the runner is gone; removed it", "runner", id, "written", ev.Written, "newest", newest, "err", err)
	}
	for id, info := range t.live {
		if _, ok := held[id]; !ok {
			if _, suspect := t.suspects[id]; !suspect {
				t.m.log.Info("runner registration gone (found by re-reading)", "runner", id)
				t.suspects[id] = info
			}
		}
	}
	for id, ev := range held {
		if _, ok := t.live[id]; !ok {
			t.onRunner(ev)
		}
	}
}

// checkSuspects pings runners whose registration expired: one that answers
// keeps its shards (it will register again), one that does not is dropped.
func (t *term) checkSuspects(ctx context.Context) {
	for id := range t.suspects {
		_, err := t.m.nc.Request(protocol.Subjects{Prefix: t.m.cfg.Prefix}.Ping(id), nil, t.m.cfg.RunnerHealthCheckTimeout)
		if err == nil {
			t.m.log.Warn("runner's registration expired but it answers pings; keeping its shards", "runner", id)
			continue
		}
		t.m.log.Info("runner gone", "runner", id, "ping", err)
		delete(t.live, id)
		delete(t.suspects, id)
	}
}

// rebalance recomputes each group's assignment and writes the ones that
// changed, with compare-and-set so a deposed leader's write is refused.
func (t *term) rebalance(ctx context.Context) {
	for _, g := range t.m.cfg.ShardGroups {
		if !t.k.Lease().Valid(time.Now()) {
			return
		}
		cur := t.current[g]
		if !cur.ok {
			a, rev, err := t.st.readAssignment(ctx, g)
			if err != nil {
				t.m.log.Warn("read assignment", "group", g, "err", err)
				a = Assignment{Group: g} // a corrupt value is overwritten
			}
			cur = current{a: a, rev: rev, ok: true}
			t.current[g] = cur
		}
		next, ok := t.next(g, cur.a)
		if !ok {
			continue
		}
		a := next
		a.Group, a.Manager, a.Updated = g, t.m.id, time.Now().UTC()
		b, _ := json.Marshal(a)
		var rev uint64
		var err error
		if cur.rev == 0 {
			rev, err = t.st.assignments.Create(ctx, g, b)
		} else {
			rev, err = t.st.assignments.Update(ctx, g, b, cur.rev)
		}
		if err != nil {
			// Someone else wrote (a previous leader, or our read was stale):
			// read again next time.
			t.m.log.Warn("write assignment", "group", g, "err", err)
			delete(t.current, g)
			continue
		}
		t.current[g] = current{a: a, rev: rev, ok: true}
		t.m.log.Info("assignment updated", "group", g, "shards", len(a.Shards), "runners", len(a.Runners), "moved", len(assign.Moves(cur.a.Shards, next.Shards)))
	}
}

// next computes group g's assignment from the live runners that may serve
// it (hosting.go) and reports whether it differs from cur. Refusals are
// logged when they change.
func (t *term) next(g string, cur Assignment) (Assignment, bool) {
	plan := planGroup(g, t.live, t.m.cfg.groupOf)
	next := Assignment{Shards: cur.Shards, Types: plan.types, Refused: plan.refused, Runners: slices.Sorted(maps.Keys(t.live))}
	if plan.conflict {
		if !slices.EqualFunc(cur.Refused, plan.refused, refusalEqual) {
			t.m.log.Error("no runner hosts every entity type of the group: its assignment is kept as it was", "group", g, "types", plan.types, "refused", plan.refused)
		}
	} else {
		runners := make([]assign.Runner, 0, len(plan.servers))
		for _, id := range plan.servers {
			runners = append(runners, assign.Runner{ID: id, Weight: t.live[id].Weight})
		}
		next.Shards = assign.Compute(t.m.cfg.ShardsPerGroup, runners, cur.Shards)
		for _, r := range plan.refused {
			if !slices.ContainsFunc(cur.Refused, func(c Refusal) bool { return refusalEqual(c, r) }) {
				t.m.log.Error("runner refused the group's shards: it lacks entity types the group's other runners host", "group", g, "runner", r.Runner, "missing", r.Missing)
			}
		}
	}
	same := slices.Equal(next.Shards, cur.Shards) && slices.Equal(next.Types, cur.Types) && (cur.Types != nil || next.Types == nil) &&
		slices.EqualFunc(next.Refused, cur.Refused, refusalEqual) && slices.Equal(next.Runners, cur.Runners)
	return next, !same
}

func refusalEqual(a, b Refusal) bool {
	return a.Runner == b.Runner && slices.Equal(a.Missing, b.Missing)
}

// String describes an assignment briefly, for logs and meshctl.
func (a Assignment) String() string {
	counts := map[string]int{}
	for _, r := range a.Shards {
		counts[r]++
	}
	return fmt.Sprintf("%s: %d shards over %d runners", a.Group, len(a.Shards), len(counts))
}
