package mesh

import (
	"fmt"
	"slices"
	"strings"
)

// Which runners may serve a shard group. Every runner registers the entity
// types it hosts, each with its group (HostedType). A shard holds the
// entities of every type of its group with an id that hashes to it, so
// only a runner that hosts every type of the group can serve the group's
// shards: given one that lacks a type, the calls to that type's entities
// in its shards would fail with UnknownEntity while other runners host the
// type (half the ids failing, depending on where their shard went). So:
//
//   - a runner hosting no type of a group does not serve it;
//   - the group's types are every type its runners host;
//   - a runner hosting some of them but not all is refused the group's
//     shards, with the types it lacks (Assignment.Refused): it says so in
//     its log and its readiness, and meshctl status shows it;
//   - a group no runner hosts a type of is served by every runner (a
//     singleton's shard may be in it).
//
// Two runners that each lack a type the other hosts leave no runner able
// to serve the group: the group's assignment is then left as it was (not
// emptied), and both are reported as refused.

// HostedType is an entity type a runner hosts: its shard group, and the
// fingerprint of its protocol (its RPCs and their payloads; see
// TypeInfo), which tells two versions of one type apart.
type HostedType struct {
	Name        string `json:"name"`
	Group       string `json:"group"`
	Fingerprint string `json:"fingerprint,omitempty"`
}

// Refusal is a runner the shard manager gives none of a group's shards
// because it lacks some of the group's entity types.
type Refusal struct {
	Runner  string   `json:"runner"`
	Missing []string `json:"missing"`
}

func (r Refusal) String() string {
	return fmt.Sprintf("runner %s lacks entity types %s", r.Runner, strings.Join(r.Missing, ", "))
}

// groupPlan is who may serve one group.
type groupPlan struct {
	types    []string // the group's entity types, sorted
	servers  []string // runners that may serve it, sorted
	refused  []Refusal
	conflict bool // no runner hosts every type: keep the current assignment
}

// typesIn returns the entity types info hosts in group, sorted. A
// registration without Types (a runner of an earlier version) is read with
// groupOf, the reader's own mapping of types to groups.
func typesIn(info RunnerInfo, group string, groupOf func(string) string) []string {
	var out []string
	if info.Types != nil {
		for _, t := range info.Types {
			if t.Group == group {
				out = append(out, t.Name)
			}
		}
	} else {
		for _, t := range info.EntityTypes {
			if groupOf(t) == group {
				out = append(out, t)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// planGroup decides which of the live runners may serve group.
func planGroup(group string, live map[string]RunnerInfo, groupOf func(string) string) groupPlan {
	hosted := map[string][]string{}
	var all []string
	for id, info := range live {
		if ts := typesIn(info, group, groupOf); len(ts) > 0 {
			hosted[id] = ts
			all = append(all, ts...)
		}
	}
	var p groupPlan
	if len(hosted) == 0 {
		p.types = []string{}
		for id := range live {
			p.servers = append(p.servers, id)
		}
		slices.Sort(p.servers)
		return p
	}
	slices.Sort(all)
	p.types = slices.Compact(all)
	for id, ts := range hosted {
		if len(ts) == len(p.types) {
			p.servers = append(p.servers, id)
			continue
		}
		var missing []string
		for _, t := range p.types {
			if _, ok := slices.BinarySearch(ts, t); !ok {
				missing = append(missing, t)
			}
		}
		p.refused = append(p.refused, Refusal{Runner: id, Missing: missing})
	}
	slices.Sort(p.servers)
	slices.SortFunc(p.refused, func(a, b Refusal) int { return strings.Compare(a.Runner, b.Runner) })
	p.conflict = len(p.servers) == 0
	return p
}
