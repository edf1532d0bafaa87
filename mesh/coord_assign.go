package mesh

import (
	"context"
	"slices"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

// The coordinator's view of the assignments: which shards the shard
// manager gives this runner, and whether it refuses it a group.

// rereadAssignments reads each group's assignment: the watch can lag or,
// after a NATS server is lost, stall without closing, and a runner that
// misses its new assignment serves nothing while it is healthy. A newer
// revision than the last one seen is applied as the watch would.
func (c *coordinator) rereadAssignments(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RefreshAssignmentsInterval)
	defer cancel()
	for g := range c.space.groups {
		e, err := c.st.assignments.Get(ctx, g)
		if err != nil {
			continue // none yet, or NATS unreachable: the watch and the next tick
		}
		c.mu.Lock()
		newer := e.Revision() > c.assignRev[g]
		c.mu.Unlock()
		if newer {
			c.log.Info("assignment found by re-reading", "group", g, "revision", e.Revision())
			c.onAssignment(e)
		}
	}
}

// onAssignment records which shards of a group are assigned to this runner.
func (c *coordinator) onAssignment(e natsjs.KeyValueEntry) {
	group := e.Key()
	if _, ok := c.space.groups[group]; !ok {
		return
	}
	var a Assignment
	if e.Operation() == natsjs.KeyValuePut {
		var err error
		if a, err = decodeAssignment(e.Value()); err != nil {
			c.log.Error("ignoring assignment", "group", group, "err", err)
			return
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.Revision() < c.assignRev[group] {
		return // older than what the watch or a re-read already gave
	}
	c.assignRev[group] = e.Revision()
	for n := range c.cfg.ShardsPerGroup {
		s := ShardID{Group: group, N: n}
		if n < len(a.Shards) && a.Shards[n] == c.id {
			c.desired[s] = true
		} else {
			delete(c.desired, s)
		}
	}
	c.noteRefusal(group, a.Refused)
	if a.Runners == nil || slices.Contains(a.Runners, c.id) {
		c.seen = true // by a manager that predates the list, or that planned with this runner
	}
}

// noteRefusal records whether the shard manager refused this runner the
// shards of group, and says so when that changes; c.mu is held.
func (c *coordinator) noteRefusal(group string, refused []Refusal) {
	var missing []string
	for _, r := range refused {
		if r.Runner == c.id {
			missing = r.Missing
		}
	}
	switch {
	case missing != nil && !slices.Equal(missing, c.refused[group]):
		c.refused[group] = missing
		c.log.Error("the shard manager gives this runner none of the group's shards: it does not host every entity type the group's other runners host; deploy them here, or move the new types to their own shard group (docs/operations.md)",
			"group", group, "missing", missing)
	case missing == nil && c.refused[group] != nil:
		delete(c.refused, group)
		c.log.Info("the shard manager no longer refuses this runner the group's shards", "group", group)
	}
}
