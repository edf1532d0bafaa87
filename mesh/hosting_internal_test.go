package mesh

import (
	"encoding/json"
	"log/slog"
	"maps"
	"slices"
	"testing"
)

// The assignment the manager writes, read back, is what it would compute
// again: with the same runners it is not rewritten (a field lost on the
// way made every manager tick rewrite every group), whatever they host.
func TestAssignmentStable(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ShardsPerGroup = 12
	cfg.ShardGroups = []string{"default", "orders"}
	cfg.EntityGroups = map[string]string{"Order": "orders"}
	m := &ShardManager{cfg: cfg, id: "m1", log: slog.New(slog.DiscardHandler)}
	for name, live := range map[string]map[string]RunnerInfo{
		"none": {},
		"one":  {"a": {ID: "a", Weight: 1, Types: []HostedType{{Name: "Counter", Group: "default"}}}},
		"mixed": {
			"a": {ID: "a", Weight: 1, Types: []HostedType{{Name: "Counter", Group: "default"}}},
			"b": {ID: "b", Weight: 2, Types: []HostedType{{Name: "Counter", Group: "default"}, {Name: "Order", Group: "orders"}}},
			"c": {ID: "c", Weight: 1, Types: []HostedType{{Name: "Order", Group: "orders"}, {Name: "Invoice", Group: "orders"}}},
		},
		"old registration": {"a": {ID: "a", Weight: 1, EntityTypes: []string{"Counter"}}},
	} {
		tm := &term{m: m, live: live}
		for _, g := range cfg.ShardGroups {
			first, changed := tm.next(g, Assignment{Group: g})
			if !changed && len(live) > 0 {
				t.Fatalf("%s/%s: a first assignment unchanged", name, g)
			}
			stored := first
			stored.Group, stored.Manager = g, "m1"
			b, err := json.Marshal(stored)
			if err != nil {
				t.Fatal(err)
			}
			read, err := decodeAssignment(b)
			if err != nil {
				t.Fatal(err)
			}
			if again, changed := tm.next(g, read); changed {
				t.Fatalf("%s/%s: recomputed after a round trip:\n%+v\n%+v", name, g, read, again)
			}
			if !slices.Equal(read.Runners, slices.Sorted(maps.Keys(live))) {
				t.Fatalf("%s/%s: runners %v", name, g, read.Runners)
			}
		}
	}
}
