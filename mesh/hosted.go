package mesh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

// ErrNotHosted is returned at once for a call to an entity type that no
// live runner hosts, as the shard manager's assignment of the type's shard
// group says (Assignment.Types): rather than a wait for a runner until the
// deadline, or an UnknownEntity from a runner that happens to serve the
// shard. It matches actor.ErrUnknownEntity too, and its wire code is
// UnknownEntity. Without a shard manager (a standalone runner), or
// without read access to the assignments, nothing is known and calls go
// out as usual.
var ErrNotHosted = fmt.Errorf("%w: hosted by no live runner", errUnknownEntity)

const (
	// hostedTTL is how long a client trusts what it read of a group's
	// types.
	hostedTTL = time.Second
	// hostedLookup bounds one read of the assignments: this runs on the
	// path of a call that found no runner, and a client not allowed to
	// read them (its permissions) only learns it by a timeout.
	hostedLookup = 500 * time.Millisecond
	// hostedRetry is how long a client that could not open the
	// assignments waits before trying again.
	hostedRetry = 30 * time.Second
)

// hostedView is a client's cache of which entity types each shard group's
// runners host.
type hostedView struct {
	mu      sync.Mutex
	kv      natsjs.KeyValue // nil until opened; stays nil when unreadable
	tried   time.Time       // last attempt to open kv
	entries map[string]hostedEntry
}

type hostedEntry struct {
	types []string // sorted; nil: unknown (no manager wrote any)
	read  time.Time
}

// notHosted returns ErrNotHosted when the assignment of entityType's group
// lists the group's types and entityType is not among them; nil when it is,
// or when that cannot be told.
func (c *Client) notHosted(ctx context.Context, entityType string) error {
	group := c.cfg.groupOf(entityType)
	types, ok := c.hosted.typesOf(ctx, c, group)
	if !ok {
		return nil
	}
	if _, found := slices.BinarySearch(types, entityType); found {
		return nil
	}
	hosted := "none"
	if len(types) > 0 {
		hosted = strings.Join(types, ", ")
	}
	return fmt.Errorf("%w: entity type %s (group %s, whose runners host: %s)", ErrNotHosted, entityType, group, hosted)
}

// typesOf returns group's entity types and whether they are known.
func (v *hostedView) typesOf(ctx context.Context, c *Client, group string) ([]string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e, ok := v.entries[group]; ok && time.Since(e.read) < hostedTTL {
		return e.types, e.types != nil
	}
	if v.kv == nil {
		if !v.tried.IsZero() && time.Since(v.tried) < hostedRetry {
			return nil, false
		}
		v.tried = time.Now()
		js, err := natsjs.New(c.nc)
		if err != nil {
			return nil, false
		}
		actx, cancel := context.WithTimeout(ctx, hostedLookup)
		kv, err := js.KeyValue(actx, c.cfg.Prefix+"_assignments")
		cancel()
		if err != nil {
			return nil, false // no cluster yet, or not allowed to read it
		}
		v.kv = kv
	}
	actx, cancel := context.WithTimeout(ctx, hostedLookup)
	defer cancel()
	var types []string
	e, err := v.kv.Get(actx, group)
	switch {
	case err == nil:
		if a, derr := decodeAssignment(e.Value()); derr == nil && a.Types != nil {
			types = slices.Sorted(slices.Values(a.Types))
		}
	case !errors.Is(err, natsjs.ErrKeyNotFound):
		return nil, false // unknown now: ask again next time
	}
	if v.entries == nil {
		v.entries = map[string]hostedEntry{}
	}
	v.entries[group] = hostedEntry{types: types, read: time.Now()}
	return types, types != nil
}
