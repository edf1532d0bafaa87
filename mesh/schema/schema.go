// Package schema derives the JSON Schema of RPC payloads, results and
// failure details from their Go types, for mesh.WithSchemas: with it, a
// runner's entity types describe themselves to meshctl types and to the
// gateway's OpenAPI document.
//
//	r, err := mesh.NewRunner(nc, cfg, mesh.WithSchemas(schema.Of))
//
// The schemas follow JSON Schema draft 2020-12 and describe the JSON
// encoding (encoding/json, with its json tags); the msgpack codec uses the
// same field names. A struct field is required unless its tag says
// omitempty or omitzero (what natsmesh encodes always has it; a runner
// decoding a request reads a missing field as its zero value), and a
// struct admits no other property, as a runner decodes JSON: it refuses
// unknown fields unless the RPC allows them (actor.AllowUnknownFields,
// shown in the RPC's description). Named
// struct types are defined once under $defs and referenced, so recursive
// types are described too.
package schema

import (
	"encoding/json"
	"reflect"
	"sync"

	"github.com/invopop/jsonschema"
)

var cache sync.Map // reflect.Type -> json.RawMessage

// Of returns the JSON Schema of t's JSON encoding. It matches
// mesh.SchemaFunc.
func Of(t reflect.Type) json.RawMessage {
	if s, ok := cache.Load(t); ok {
		return s.(json.RawMessage)
	}
	b := reflectType(t)
	if b == nil {
		return nil
	}
	s, _ := cache.LoadOrStore(t, json.RawMessage(b))
	return s.(json.RawMessage)
}

// reflectType returns t's schema, or nil for a type the reflector cannot
// describe (a channel, a func), which it panics on: say nothing rather
// than something wrong.
func reflectType(t reflect.Type) (b []byte) {
	defer func() {
		if recover() != nil {
			b = nil
		}
	}()
	r := &jsonschema.Reflector{
		// Schemas are values in a description, not documents with an
		// address.
		Anonymous: true,
	}
	b, err := json.Marshal(r.ReflectFromType(t))
	if err != nil {
		return nil
	}
	return b
}
