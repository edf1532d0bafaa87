package mesh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
)

// Entities that describe themselves. Each runner publishes, at start, the
// description of every entity type it hosts (TypeInfo) in the KV bucket
// <prefix>_types, under <Type>.<fingerprint>, and registers the
// fingerprints it hosts (RunnerInfo.Types). Types reads both: which
// versions of each type live runners host, and what each looks like, for
// meshctl types and the gateway's OpenAPI document.

// TypeInfo describes an entity type: its shard group and RPCs.
type TypeInfo struct {
	Name  string    `json:"name"`
	Group string    `json:"group"`
	RPCs  []RPCDesc `json:"rpcs"`
	// Fingerprint identifies this version of the type: a hash of its
	// RPCs' descriptions.
	Fingerprint string `json:"fingerprint"`
}

// RPCDesc describes one RPC of an entity type.
type RPCDesc struct {
	Name string `json:"name"`
	// Kind is "unary" or "stream".
	Kind string `json:"kind"`
	// Persisted RPCs are sent through the persisted-message stream
	// (docs/persistence.md), never by request/reply.
	Persisted bool `json:"persisted,omitempty"`
	// AllowUnknownFields: a JSON request may carry fields the payload
	// type lacks (actor.AllowUnknownFields); by default it is refused.
	AllowUnknownFields bool `json:"allowUnknownFields,omitempty"`
	// Payload is the request; Result the success of a unary RPC, or each
	// chunk of a streaming one.
	Payload  Shape     `json:"payload"`
	Result   Shape     `json:"result"`
	Failures []Failure `json:"failures,omitempty"`
	// Fingerprint identifies this version of the RPC.
	Fingerprint string `json:"fingerprint"`
}

// Shape is a payload's type: its Go name and, when the runner was given a
// schema function (WithSchemas), its JSON Schema (draft 2020-12), which
// describes the JSON encoding and the msgpack one alike.
type Shape struct {
	GoType string          `json:"goType"`
	Schema json.RawMessage `json:"schema,omitempty"`
}

// Failure is one declared failure of an RPC: its code (the error
// envelope's "failure") and the shape of its detail.
type Failure struct {
	Code   string `json:"code"`
	Detail Shape  `json:"detail"`
}

// SchemaFunc returns the JSON Schema of a Go type, or nil when it has
// none (package mesh/schema provides one).
type SchemaFunc func(t reflect.Type) json.RawMessage

// describe returns the description of e, in group, with schemas from
// schemaOf (nil: none).
func describe(e *actor.Entity, group string, schemaOf SchemaFunc) TypeInfo {
	shape := func(t reflect.Type) Shape {
		s := Shape{GoType: t.String()}
		if schemaOf != nil {
			s.Schema = schemaOf(t)
		}
		return s
	}
	ti := TypeInfo{Name: e.Name(), Group: group}
	for _, r := range e.RPCs() {
		ri := RPCDesc{
			Name: r.Name(), Kind: "unary", Persisted: r.Persisted(), AllowUnknownFields: r.AllowsUnknownFields(),
			Payload: shape(r.Payload()), Result: shape(r.Result()),
		}
		if r.Kind() == actor.Streaming {
			ri.Kind = "stream"
		}
		for _, f := range r.Failures() {
			ri.Failures = append(ri.Failures, Failure{Code: f.Code, Detail: shape(f.Type)})
		}
		ri.Fingerprint = fingerprint(ri)
		ti.RPCs = append(ti.RPCs, ri)
	}
	ti.Fingerprint = fingerprint(ti.RPCs)
	return ti
}

// fingerprint is the first 16 hex digits of the SHA-256 of v's JSON: the
// same for two descriptions that encode the same (struct fields and sorted
// map keys make the encoding deterministic).
func fingerprint(v any) string {
	b, _ := json.Marshal(v)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// publishTypes stores the descriptions of the hosted entity types in the
// types bucket, under <Type>.<fingerprint>: one write per version, ever
// (an existing key holds the same description). A failure is logged: the
// types are still served; only the tools see less.
func (c *coordinator) publishTypes(ctx context.Context, types []TypeInfo) {
	kv, err := openTypes(ctx, c.nc, &c.cfg, c.log)
	if err != nil {
		c.log.Warn("open the bucket of entity type descriptions", "err", err)
		return
	}
	for _, t := range types {
		b, err := json.Marshal(t)
		if err == nil {
			_, err = kv.Create(ctx, t.Name+"."+t.Fingerprint, b)
		}
		if err != nil && !errors.Is(err, natsjs.ErrKeyExists) {
			c.log.Warn("publish entity type description", "type", t.Name, "err", err)
		}
	}
}

// ClusterType is an entity type as a cluster hosts it: each version of it
// (by fingerprint) that live runners host, with the runners hosting it.
// Several versions show a rolling upgrade, or runners that disagree.
type ClusterType struct {
	Name     string        `json:"name"`
	Group    string        `json:"group"`
	Versions []TypeVersion `json:"versions"`
}

// TypeVersion is one version of an entity type and the runners hosting
// it. Described is false when its description could not be read (the
// runner predates descriptions, or could not write its own).
type TypeVersion struct {
	TypeInfo
	Described bool     `json:"described"`
	Runners   []string `json:"runners"`
}

// Types returns the entity types that live runners host, read from their
// registrations and the types bucket, sorted by name.
func Types(ctx context.Context, nc *nats.Conn, cfg Config) ([]ClusterType, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	st, err := openStores(ctx, nc, &cfg, nil)
	if err != nil {
		return nil, err
	}
	infos, _, err := registrations(ctx, st)
	if err != nil {
		return nil, err
	}
	kv, err := openTypes(ctx, nc, &cfg, nil)
	if err != nil {
		return nil, err
	}
	type version struct{ name, fp string }
	hosts := map[version][]string{}
	groups := map[string]string{}
	for id, info := range infos {
		hosted := info.Types
		if hosted == nil { // a runner that predates Types
			for _, t := range info.EntityTypes {
				hosted = append(hosted, HostedType{Name: t, Group: cfg.groupOf(t)})
			}
		}
		for _, t := range hosted {
			v := version{t.Name, t.Fingerprint}
			hosts[v] = append(hosts[v], id)
			groups[t.Name] = t.Group
		}
	}
	byName := map[string]*ClusterType{}
	for v, runners := range hosts {
		ct := byName[v.name]
		if ct == nil {
			ct = &ClusterType{Name: v.name, Group: groups[v.name]}
			byName[v.name] = ct
		}
		slices.Sort(runners)
		tv := TypeVersion{TypeInfo: TypeInfo{Name: v.name, Group: groups[v.name], Fingerprint: v.fp, RPCs: []RPCDesc{}}, Runners: runners}
		if v.fp != "" {
			if e, err := kv.Get(ctx, v.name+"."+v.fp); err == nil && json.Unmarshal(e.Value(), &tv.TypeInfo) == nil {
				tv.Described = true
			}
		}
		ct.Versions = append(ct.Versions, tv)
	}
	out := make([]ClusterType, 0, len(byName))
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		ct := byName[name]
		slices.SortFunc(ct.Versions, func(a, b TypeVersion) int { return strings.Compare(a.Fingerprint, b.Fingerprint) })
		out = append(out, *ct)
	}
	return out, nil
}
