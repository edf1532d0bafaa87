//go:build chaos && linux

package chaos_test

import (
	"fmt"
	"os"
	"strings"

	"github.com/natsmesh/natsmesh/test/chaos/internal/check"
	"github.com/natsmesh/natsmesh/test/internal/leaselog"
)

// writeLeases writes the lease log and its gaps to path, as evidence.
func writeLeases(path string, l *leaselog.Log) error {
	var b strings.Builder
	for _, e := range l.Entries() {
		fmt.Fprintf(&b, "%s rev=%d shard=%d held=%v holder=%s\n", e.At.Format("15:04:05.000000"), e.Rev, e.Shard.N, e.Held(), e.Holder)
	}
	for _, g := range l.Gaps() {
		fmt.Fprintf(&b, "gap: revisions %d..%d missed\n", g[0]+1, g[1]-1)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// leaseEvents converts the lease log for the checker.
func leaseEvents(l *leaselog.Log) []check.LeaseEvent {
	var out []check.LeaseEvent
	for _, e := range l.Entries() {
		out = append(out, check.LeaseEvent{At: e.At, Rev: e.Rev, Shard: e.Shard.N, Holder: e.Holder, Held: e.Held()})
	}
	return out
}
