package actor

import (
	"fmt"
	"reflect"
	"sync/atomic"
)

// Empty is the payload of an RPC that takes none, and the success type of
// one that returns nothing.
type Empty struct{}

// Entity is an entity type: a name and the RPCs it declares. Declare it once,
// at package level, with NewEntity, then its RPCs with NewRPC and
// NewStreamRPC. An Entity is immutable once registered with a runtime.
type Entity struct {
	name   string
	rpcs   []*rpcDesc
	byName map[string]*rpcDesc
	sealed atomic.Bool
}

// NewEntity declares an entity type. The name must match [A-Za-z0-9_-]{1,64}
// because it travels in NATS subject tokens. NewEntity panics on a bad name:
// that is a programming error found at start-up.
func NewEntity(name string) *Entity {
	if !ValidName(name) {
		panic(fmt.Sprintf("actor: invalid entity type name %q: want [A-Za-z0-9_-]{1,64}", name))
	}
	return &Entity{name: name, byName: map[string]*rpcDesc{}}
}

// Name returns the entity type's name.
func (e *Entity) Name() string { return e.name }

// RPCs returns the declared RPCs in declaration order.
func (e *Entity) RPCs() []RPCInfo {
	out := make([]RPCInfo, len(e.rpcs))
	for i, d := range e.rpcs {
		out[i] = d
	}
	return out
}

// RPC returns the declared RPC with this name, or nil.
func (e *Entity) RPC(name string) RPCInfo {
	if d, ok := e.byName[name]; ok {
		return d
	}
	return nil
}

// ValidName reports whether s is a name: 1 to 64 bytes of [A-Za-z0-9_-],
// one NATS subject token and one KV key. Entity types, RPCs, declared
// failures, singletons, shard groups, cluster prefixes and runner ids are
// names; natsmesh checks each with this one function.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// RPCKind tells a unary RPC from a streaming one.
type RPCKind uint8

const (
	// Unary RPCs answer one reply.
	Unary RPCKind = iota
	// Streaming RPCs answer a sequence of chunks then an end or error marker.
	Streaming
)

// RPCInfo describes a declared RPC without its Go types: what the mesh and
// tools need to route and document it.
type RPCInfo interface {
	Name() string
	Entity() *Entity
	Kind() RPCKind
	// Persisted reports whether messages of this RPC are stored before
	// delivery (see the mesh's persistence).
	Persisted() bool
	// Failures lists the failure types the RPC declares.
	Failures() []FailureInfo
	// Payload is the Go type of the request; Result that of the success
	// (of each chunk, for a streaming RPC). Tools derive schemas from them.
	Payload() reflect.Type
	Result() reflect.Type
	// AllowsUnknownFields reports whether a JSON request may carry fields
	// its payload type does not have (AllowUnknownFields).
	AllowsUnknownFields() bool
}

// FailureInfo is one declared failure of an RPC: a stable code and the Go
// type that carries it.
type FailureInfo struct {
	Code string
	Type reflect.Type
}

// rpcDesc is the non-generic core of an RPC.
type rpcDesc struct {
	entity    *Entity
	name      string
	index     int
	kind      RPCKind
	persisted bool
	lenient   bool // AllowUnknownFields
	failures  []FailureInfo
	payload   reflect.Type
	result    reflect.Type
	newCall   func() any // a fresh *call[Req, Resp], for unary RPCs
	codec     codecOps   // typed decode/encode for calls arriving as bytes
}

func (d *rpcDesc) Name() string              { return d.name }
func (d *rpcDesc) Entity() *Entity           { return d.entity }
func (d *rpcDesc) Kind() RPCKind             { return d.kind }
func (d *rpcDesc) Persisted() bool           { return d.persisted }
func (d *rpcDesc) Failures() []FailureInfo   { return d.failures }
func (d *rpcDesc) Payload() reflect.Type     { return d.payload }
func (d *rpcDesc) Result() reflect.Type      { return d.result }
func (d *rpcDesc) AllowsUnknownFields() bool { return d.lenient }

// RPC is a declared unary RPC with payload type Req and success type Resp.
// The Go compiler checks both at every Handle and Call site.
type RPC[Req, Resp any] struct{ d *rpcDesc }

// StreamRPC is a declared streaming RPC: payload Req, a sequence of Chunk.
type StreamRPC[Req, Chunk any] struct{ d *rpcDesc }

// Info returns the RPC's description.
func (r RPC[Req, Resp]) Info() RPCInfo { return r.d }

// Info returns the RPC's description.
func (r StreamRPC[Req, Chunk]) Info() RPCInfo { return r.d }

// RPCOption configures an RPC at declaration. A bad one makes the
// declaration panic: declarations run at start-up, and a mistake there is
// the program's.
type RPCOption func(*rpcDesc) error

// Persisted marks an RPC as persisted: the mesh stores its messages in a
// JetStream stream before delivery and retries them until handled. The
// in-process runtime delivers them like any other message.
func Persisted() RPCOption { return func(d *rpcDesc) error { d.persisted = true; return nil } }

// AllowUnknownFields lets a JSON request carry fields the payload type does
// not have; they are ignored. By default such a request is refused as
// malformed, naming the field (a misspelt field is a caller's mistake, not
// a value to drop silently). Allow them on an RPC whose callers may be
// newer than its handlers: a new optional field then reaches old runners
// during a rolling upgrade without being refused.
func AllowUnknownFields() RPCOption { return func(d *rpcDesc) error { d.lenient = true; return nil } }

// Failure declares that the RPC may fail with an error of type E, identified
// on the wire by code. A handler returns it as its error; a caller matches it
// with errors.As, locally and across the wire (the mesh encodes E with the
// call's codec). code must match [A-Za-z0-9_-]{1,64}.
func Failure[E error](code string) RPCOption {
	t := reflect.TypeFor[E]()
	return func(d *rpcDesc) error {
		if !ValidName(code) {
			return fmt.Errorf("%w: invalid failure code %q", ErrInvalidOption, code)
		}
		for _, f := range d.failures {
			if f.Code == code || f.Type == t {
				return fmt.Errorf("%w: failure %q declared twice", ErrInvalidOption, code)
			}
		}
		d.failures = append(d.failures, FailureInfo{Code: code, Type: t})
		return nil
	}
}

func (e *Entity) declare(name string, kind RPCKind, opts []RPCOption) *rpcDesc {
	if e.sealed.Load() {
		panic(fmt.Sprintf("actor: entity %s: rpc %s declared after registration", e.name, name))
	}
	if !ValidName(name) {
		panic(fmt.Sprintf("actor: entity %s: invalid rpc name %q: want [A-Za-z0-9_-]{1,64}", e.name, name))
	}
	if _, dup := e.byName[name]; dup {
		panic(fmt.Sprintf("actor: entity %s: rpc %s declared twice", e.name, name))
	}
	d := &rpcDesc{entity: e, name: name, index: len(e.rpcs), kind: kind}
	for _, o := range opts {
		if err := o(d); err != nil {
			panic(fmt.Sprintf("actor: rpc %s/%s: %v", e.name, name, err))
		}
	}
	e.rpcs = append(e.rpcs, d)
	e.byName[name] = d
	return d
}

// NewRPC declares a unary RPC of entity e. It panics on a bad or duplicate
// name, or when e is already registered with a runtime.
func NewRPC[Req, Resp any](e *Entity, name string, opts ...RPCOption) RPC[Req, Resp] {
	d := e.declare(name, Unary, opts)
	d.payload, d.result = reflect.TypeFor[Req](), reflect.TypeFor[Resp]()
	d.newCall = func() any { return &call[Req, Resp]{done: make(chan struct{}, 1)} }
	d.codec = unaryCodec[Req, Resp]{d: d}
	return RPC[Req, Resp]{d: d}
}

// NewStreamRPC declares a streaming RPC of entity e. It panics like NewRPC.
func NewStreamRPC[Req, Chunk any](e *Entity, name string, opts ...RPCOption) StreamRPC[Req, Chunk] {
	d := e.declare(name, Streaming, opts)
	d.payload, d.result = reflect.TypeFor[Req](), reflect.TypeFor[Chunk]()
	d.codec = streamCodec[Req, Chunk]{d: d}
	return StreamRPC[Req, Chunk]{d: d}
}
