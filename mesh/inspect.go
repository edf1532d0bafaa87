package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/jetstream"
)

// ClusterStatus is a snapshot of a cluster's coordination state, read from
// its KV buckets. Reads may lag the leaders slightly: it is for observing,
// never for deciding ownership (runners decide from their lease writes).
type ClusterStatus struct {
	// Manager is the leading shard manager's id ("" when none leads).
	Manager string `json:"manager"`
	// Standalone is the standalone runner serving the prefix, if one does
	// (it is then in Runners too).
	Standalone string `json:"standalone,omitempty"`
	// Runners are the registered runners, by id.
	Runners []RunnerStatus `json:"runners"`
	// Refused are the runners the shard manager gives none of a group's
	// shards, because they lack some of the group's entity types.
	Refused []GroupRefusal `json:"refused"`
	// Shards lists every shard of every group.
	Shards []ShardStatus `json:"shards"`
	// Singletons lists the singletons the runners registered.
	Singletons []SingletonStatus `json:"singletons"`
}

// RunnerStatus is one registered runner.
type RunnerStatus struct {
	RunnerInfo
	// Assigned and Held count the shards assigned to it and the shard
	// leases it holds.
	Assigned int `json:"assigned"`
	Held     int `json:"held"`
}

// ShardStatus is one shard: whom the manager assigned it to, and who holds
// its lease (they differ while it moves).
type ShardStatus struct {
	Shard    ShardID `json:"shard"`
	Assigned string  `json:"assigned"`
	Holder   string  `json:"holder"`
	// LeaseRevision is the lease's KV revision: its fencing token.
	LeaseRevision uint64 `json:"leaseRevision,omitempty"`
}

// GroupRefusal is a runner refused a group's shards (Refusal).
type GroupRefusal struct {
	Group string `json:"group"`
	Refusal
}

// SingletonStatus is where a singleton runs: the holder of its shard.
type SingletonStatus struct {
	Name   string  `json:"name"`
	Shard  ShardID `json:"shard"`
	Runner string  `json:"runner"`
}

// Inspect reads the cluster's registrations, assignments and leases.
func Inspect(ctx context.Context, nc *nats.Conn, cfg Config) (*ClusterStatus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	st, err := openStores(ctx, nc, &cfg, nil)
	if err != nil {
		return nil, err
	}
	out := &ClusterStatus{Runners: []RunnerStatus{}, Refused: []GroupRefusal{}, Singletons: []SingletonStatus{}}
	if holder, _, err := st.leases.Holder(ctx, managerKey); err == nil {
		out.Manager = holder
	} else if !errors.Is(err, jetstream.ErrNoLease) {
		return nil, err
	}

	infos, solo, err := registrations(ctx, st)
	if err != nil {
		return nil, err
	}
	out.Standalone = solo
	leases, err := snapshot(ctx, st.leases, "shard.>")
	if err != nil {
		return nil, err
	}
	byRunner := map[string]*RunnerStatus{}
	singletons := map[string]bool{}
	for id, info := range infos {
		byRunner[id] = &RunnerStatus{RunnerInfo: info}
		for _, s := range info.Singletons {
			singletons[s] = true
		}
	}
	holders := map[ShardID]jetstream.Event{}
	for _, ev := range leases {
		if s, ok := parseShardKey(ev.Key); ok {
			holders[s] = ev
		}
	}
	for _, g := range cfg.ShardGroups {
		a, _, err := st.readAssignment(ctx, g)
		if err != nil {
			return nil, err
		}
		for _, r := range a.Refused {
			out.Refused = append(out.Refused, GroupRefusal{Group: g, Refusal: r})
		}
		for n := range cfg.ShardsPerGroup {
			s := ShardID{Group: g, N: n}
			ss := ShardStatus{Shard: s}
			if n < len(a.Shards) {
				ss.Assigned = a.Shards[n]
			}
			if ev, ok := holders[s]; ok {
				ss.Holder, ss.LeaseRevision = ev.Holder, ev.Revision
			}
			if rs := byRunner[ss.Assigned]; rs != nil {
				rs.Assigned++
			}
			if rs := byRunner[ss.Holder]; rs != nil {
				rs.Held++
			}
			out.Shards = append(out.Shards, ss)
		}
	}
	for _, rs := range byRunner {
		out.Runners = append(out.Runners, *rs)
	}
	slices.SortFunc(out.Runners, func(a, b RunnerStatus) int { return strings.Compare(a.ID, b.ID) })
	for name := range singletons {
		s := cfg.SingletonShard(name)
		out.Singletons = append(out.Singletons, SingletonStatus{Name: name, Shard: s, Runner: holders[s].Holder})
	}
	slices.SortFunc(out.Singletons, func(a, b SingletonStatus) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// registrations returns the live runners' registrations by id: the
// registry's, and a standalone runner's, whose registration is its
// standalone lease (solo names it).
func registrations(ctx context.Context, st *stores) (infos map[string]RunnerInfo, solo string, err error) {
	registered, err := snapshot(ctx, st.runners)
	if err != nil {
		return nil, "", err
	}
	standalone, err := snapshot(ctx, st.leases, standaloneKey)
	if err != nil {
		return nil, "", err
	}
	infos = map[string]RunnerInfo{}
	for _, ev := range registered {
		var info RunnerInfo
		if json.Unmarshal(ev.Meta, &info) != nil || info.ID != ev.Key {
			continue // not a registration (the shard manager ignores it too)
		}
		infos[ev.Key] = info
	}
	if ev, ok := standalone[standaloneKey]; ok {
		var info RunnerInfo
		if json.Unmarshal(ev.Meta, &info) == nil && info.ID == ev.Holder {
			infos[info.ID], solo = info, info.ID
		}
	}
	return infos, solo, nil
}

// snapshot returns the keys currently held in a lease bucket.
func snapshot(ctx context.Context, ls *jetstream.Leases, patterns ...string) (map[string]jetstream.Event, error) {
	w, err := ls.Watch(ctx, patterns...)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	held := map[string]jetstream.Event{}
	for {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				return nil, ctx.Err()
			}
			switch ev.Kind {
			case jetstream.EventSynced:
				return held, nil
			case jetstream.EventHeld:
				held[ev.Key] = ev
			default:
				delete(held, ev.Key)
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
