package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/natsmesh/natsmesh/jetstream"
)

// A standalone runner (Config.Standalone) serves every shard of its prefix
// without a shard manager. It holds every shard's lease, as the runners of
// a cluster hold theirs, so that it and a cluster of the same prefix on the
// same NATS account can never serve one shard at once: a lease has one
// holder. On top of that guarantee, the two refuse to start beside each
// other, so that the mistake is reported rather than left to show as
// shards nobody can take:
//
//   - a standalone runner first takes the lease "standalone" (waiting while
//     a previous incarnation's lease lives, after a crash), then refuses to
//     start if a cluster is live: a registered runner, a leading shard
//     manager, or a held shard lease;
//   - a cluster's runner first registers, then refuses to start if the
//     lease "standalone" is held.
//
// Each writes before it reads what the other writes, so of two that start
// at once at least one sees the other.

const standaloneKey = "standalone"

// errClusterConflict marks a runner refusing to start beside a cluster or a
// standalone runner of its prefix.
var errClusterConflict = errors.New("another runner mode serves this prefix")

// errPredecessorLeases: shard leases are held, but by no registered runner
// and with no shard manager leading: a previous standalone runner's, which
// expire within a lease TTL of its end.
var errPredecessorLeases = fmt.Errorf("%w: shard leases held", errClusterConflict)

// claimStandalone takes the standalone lease and checks that no cluster of
// the prefix is live; on success every shard is desired.
func (c *coordinator) claimStandalone(ctx context.Context) error {
	meta, _ := json.Marshal(c.host.registration())
	deadline := time.Now().Add(c.cfg.ShardLockExpiration + 2*time.Second)
	for {
		lease, err := c.st.leases.Acquire(ctx, standaloneKey, c.id, jetstream.WithMeta(meta))
		if err == nil {
			c.reg = c.st.leases.Keep(context.Background(), lease, c.cfg.ShardLockRefreshInterval)
			break
		}
		if !errors.Is(err, jetstream.ErrLeaseHeld) || time.Now().After(deadline) {
			return fmt.Errorf("standalone: %w (a standalone runner of prefix %s runs, or ran less than %v ago)", err, c.cfg.Prefix, c.cfg.ShardLockExpiration)
		}
		c.log.Warn("waiting for the lease of the previous standalone runner of this prefix to expire", "err", err)
		t := time.NewTimer(500 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	for {
		err := c.clusterLive(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, errPredecessorLeases) || time.Now().After(deadline) {
			_ = c.reg.Release(context.WithoutCancel(ctx))
			return err
		}
		c.log.Warn("waiting for shard leases held by no registered runner to expire (a previous standalone runner's)", "err", err)
		t := time.NewTimer(250 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			_ = c.reg.Release(context.WithoutCancel(ctx))
			return ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for g := range c.space.groups {
		for n := range c.cfg.ShardsPerGroup {
			c.desired[ShardID{Group: g, N: n}] = true
		}
	}
	c.synced = true
	return nil
}

// clusterLive returns an error naming what shows a cluster of the prefix
// live, or nil.
func (c *coordinator) clusterLive(ctx context.Context) error {
	var live []string
	if holder, _, err := c.st.leases.Holder(ctx, managerKey); err == nil {
		live = append(live, "shard manager "+holder+" leads")
	} else if !errors.Is(err, jetstream.ErrNoLease) {
		return err
	}
	runners, err := snapshot(ctx, c.st.runners)
	if err != nil {
		return err
	}
	for _, id := range slices.Sorted(maps.Keys(runners)) {
		live = append(live, "runner "+id+" is registered")
	}
	leases, err := snapshot(ctx, c.st.leases, "shard.>")
	if err != nil {
		return err
	}
	holders := map[string]int{}
	for _, ev := range leases {
		if ev.Holder != c.id {
			holders[ev.Holder]++
		}
	}
	for _, h := range slices.Sorted(maps.Keys(holders)) {
		live = append(live, fmt.Sprintf("runner %s holds %d shard leases", h, holders[h]))
	}
	if len(live) == 0 {
		return nil
	}
	if len(runners) == 0 && !strings.HasPrefix(live[0], "shard manager") {
		return fmt.Errorf("%w (%s)", errPredecessorLeases, strings.Join(live, "; "))
	}
	return fmt.Errorf("%w: a standalone runner cannot start where a cluster of prefix %s is live on this NATS account (%s): it would serve the cluster's shards; stop the cluster, or give the standalone runner another prefix",
		errClusterConflict, c.cfg.Prefix, strings.Join(live, "; "))
}

// standaloneLive returns an error if a standalone runner holds the prefix
// (checked by a cluster's runner once registered), or nil.
func (c *coordinator) standaloneLive(ctx context.Context) error {
	holder, _, err := c.st.leases.Holder(ctx, standaloneKey)
	switch {
	case errors.Is(err, jetstream.ErrNoLease):
		return nil
	case err != nil:
		return err
	}
	return fmt.Errorf("%w: standalone runner %s serves every shard of prefix %s on this NATS account: a cluster's runner cannot start beside it; stop it, or give this cluster another prefix",
		errClusterConflict, holder, c.cfg.Prefix)
}

// reclaimStandalone takes the standalone lease back after losing it (a
// pause, NATS unreachable): the shard leases decide what is served; this
// lease only tells a cluster's runners not to start.
func (c *coordinator) reclaimStandalone(ctx context.Context) error {
	meta, _ := json.Marshal(c.host.registration())
	lease, err := c.st.leases.Acquire(ctx, standaloneKey, c.id, jetstream.WithMeta(meta))
	if err != nil {
		return err
	}
	c.reg = c.st.leases.Keep(context.Background(), lease, c.cfg.ShardLockRefreshInterval)
	return nil
}

// acquireAll takes the lease of every shard, for a standalone runner's
// Start; a lease held by another runner fails it.
func (c *coordinator) acquireAll(ctx context.Context) error {
	c.reconcile(ctx)
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var missing []string
	for s := range c.desired {
		if c.owned[s] == nil {
			missing = append(missing, s.String())
		}
	}
	if len(missing) == 0 {
		return nil
	}
	slices.Sort(missing)
	return fmt.Errorf("%w: standalone runner: %d shard leases held by another runner of prefix %s (%s): a cluster started beside it",
		errClusterConflict, len(missing), c.cfg.Prefix, strings.Join(missing[:min(len(missing), 5)], ", "))
}

// releaseAll releases every lease still held, once the runner has stopped
// serving (a standalone runner's shutdown), then the standalone lease.
func (c *coordinator) releaseAll(ctx context.Context) {
	c.mu.Lock()
	held := make(map[ShardID]*heldShard, len(c.owned))
	for s, h := range c.owned {
		held[s] = h
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for s, h := range held {
		wg.Go(func() {
			if err := h.keeper.Release(ctx); err != nil && !errors.Is(err, jetstream.ErrLeaseLost) {
				c.log.Warn("release shard lease", "shard", s.String(), "err", err)
			}
			c.mu.Lock()
			c.dropOwned(s, h)
			c.mu.Unlock()
		})
	}
	wg.Wait()
	if c.solo {
		if err := c.reg.Release(ctx); err != nil && !errors.Is(err, jetstream.ErrLeaseLost) {
			c.log.Warn("release the standalone lease", "err", err)
		}
	}
}
