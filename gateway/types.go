package gateway

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/natsmesh/natsmesh/mesh"
)

// The gateway hosts no entity; it learns what the cluster hosts from the
// runners' type descriptions (mesh.Types, given with WithTypes): which
// RPCs are persisted (sent through the persisted stream) or streaming
// (answered as a stream of chunks), and the OpenAPI document.

// TypesFunc reads the entity types the live runners host: mesh.Types on
// the gateway's connection and configuration.
type TypesFunc func(ctx context.Context) ([]mesh.ClusterType, error)

// WithTypes makes the gateway learn the hosted entity types from load
// (re-read every few seconds): persisted RPCs need not be listed in
// Config.Persisted, streaming RPCs are answered as streams, and GET
// /openapi.json describes them.
func WithTypes(load TypesFunc) Option {
	return func(g *Gateway) error {
		if load == nil {
			return fmt.Errorf("%w: WithTypes(nil)", ErrInvalidOption)
		}
		g.types = &typeCache{load: load}
		return nil
	}
}

const (
	// typesFresh is how long the gateway trusts what it read of the types:
	// a new RPC is known this long after its runner starts.
	typesFresh = 3 * time.Second
	// typesFirstRead bounds a read a request waits for: the first, or one
	// for an RPC the last read did not have.
	typesFirstRead = 2 * time.Second
	// typesRecheck is how often an RPC the types lack makes a request
	// wait for a new read: it may belong to a type deployed since.
	typesRecheck = 250 * time.Millisecond
)

// rpcKind is what the gateway must know of an RPC to call it.
type rpcKind struct {
	stream    bool
	persisted bool
}

// typeCache holds the last read of the types; a stale one is re-read in
// the background while requests use it.
type typeCache struct {
	load TypesFunc

	mu      sync.Mutex
	types   []mesh.ClusterType
	kinds   map[string]rpcKind // "Type.Rpc"
	read    time.Time          // of the last successful read; zero: none yet
	loading bool
	loaded  chan struct{} // closed when the running read ends
}

// get returns the types, reading them if none were read yet, or if they
// lack the RPC key names ("Type.Rpc"; empty: none) and were read more than
// typesRecheck ago (a type deployed since), waiting up to typesFirstRead;
// and starting a background re-read of stale ones.
func (c *typeCache) get(ctx context.Context, key string) ([]mesh.ClusterType, map[string]rpcKind) {
	c.mu.Lock()
	if !c.read.IsZero() {
		_, known := c.kinds[key]
		if known || key == "" || time.Since(c.read) < typesRecheck {
			if time.Since(c.read) > typesFresh && !c.loading {
				c.startLoad()
			}
			types, kinds := c.types, c.kinds
			c.mu.Unlock()
			return types, kinds
		}
	}
	if !c.loading {
		c.startLoad()
	}
	loaded := c.loaded
	c.mu.Unlock()
	t := time.NewTimer(typesFirstRead)
	defer t.Stop()
	select {
	case <-loaded:
	case <-t.C:
	case <-ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.types, c.kinds
}

// startLoad reads the types in the background; c.mu is held.
func (c *typeCache) startLoad() {
	c.loading = true
	c.loaded = make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		types, err := c.load(ctx)
		c.mu.Lock()
		defer c.mu.Unlock()
		if err == nil {
			c.types, c.kinds, c.read = types, kindsOf(types), time.Now()
		}
		c.loading = false
		close(c.loaded)
	}()
}

// kindsOf indexes the RPCs of every version of every type; an RPC that two
// versions declare differently is a stream or persisted if either says so.
func kindsOf(types []mesh.ClusterType) map[string]rpcKind {
	out := map[string]rpcKind{}
	for _, ct := range types {
		for _, v := range ct.Versions {
			for _, r := range v.RPCs {
				k := out[ct.Name+"."+r.Name]
				k.stream = k.stream || r.Kind == "stream"
				k.persisted = k.persisted || r.Persisted
				out[ct.Name+"."+r.Name] = k
			}
		}
	}
	return out
}
