package mesh

import (
	"encoding/json"
	"testing"

	"github.com/natsmesh/natsmesh/actor"
)

func FuzzShardKey(f *testing.F) {
	f.Add("default", 17)
	f.Add("a.b", 0)
	f.Add("", -1)
	f.Fuzz(func(t *testing.T, group string, n int) {
		s, ok := parseShardKey(shardKey(ShardID{Group: group, N: n}))
		if actor.ValidName(group) && n >= 0 {
			if !ok || s.Group != group || s.N != n {
				t.Fatalf("parseShardKey(shardKey(%q, %d)) = %v, %v", group, n, s, ok)
			}
		}
		_, _ = parseShardKey(group) // garbage must not panic
	})
}

// Assignment records from KV never panic the decoder.
func FuzzAssignment(f *testing.F) {
	f.Add([]byte(`{"group":"default","shards":["r1","r2"],"manager":"m"}`))
	f.Add([]byte(`{"shards":null}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		a, err := decodeAssignment(raw)
		if err == nil {
			b, _ := json.Marshal(a)
			if _, err := decodeAssignment(b); err != nil {
				t.Fatalf("re-decoding %s: %v", b, err)
			}
		}
	})
}
