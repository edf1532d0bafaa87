package schema_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/schema"
)

type Address struct {
	Street string `json:"street"`
	Zip    string `json:"zip,omitempty"`
}

type Order struct {
	ID       string            `json:"id"`
	Lines    []Line            `json:"lines"`
	Ship     *Address          `json:"ship,omitempty"`
	Tags     map[string]string `json:"tags,omitempty"`
	At       time.Time         `json:"at"`
	Priority int               `json:"priority"`
	Parent   *Order            `json:"parent,omitempty"` // recursive
}

type Line struct {
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}

// compile turns a schema into a validator with a real JSON Schema
// implementation (kin-openapi's 2020-12 validator): the schema is checked
// against values, not against its own text.
func compile(t *testing.T, raw json.RawMessage) func(v any) error {
	t.Helper()
	if raw == nil {
		t.Fatal("no schema")
	}
	// $defs are resolved by kin-openapi as components: hoist them.
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	defs, _ := doc["$defs"].(map[string]any)
	delete(doc, "$defs")
	delete(doc, "$schema")
	spec := map[string]any{
		"openapi": "3.1.0", "info": map[string]any{"title": "t", "version": "1"}, "paths": map[string]any{},
		"components": map[string]any{"schemas": map[string]any{"Root": doc}},
	}
	comps := spec["components"].(map[string]any)["schemas"].(map[string]any)
	for k, v := range defs {
		comps[k] = v
	}
	b, _ := json.Marshal(spec)
	b = []byte(strings.ReplaceAll(string(b), `"#/$defs/`, `"#/components/schemas/`))
	loader := openapi3.NewLoader()
	d, err := loader.LoadFromData(b)
	if err != nil {
		t.Fatalf("load: %v\n%s", err, b)
	}
	root := d.Components.Schemas["Root"].Value
	return func(v any) error {
		// Validate the JSON encoding, as a caller sends it.
		enc, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var decoded any
		if err := json.Unmarshal(enc, &decoded); err != nil {
			t.Fatal(err)
		}
		return root.VisitJSON(decoded, openapi3.EnableJSONSchema2020())
	}
}

func TestSchemasDescribeEncodings(t *testing.T) {
	valid := compile(t, schema.Of(reflect.TypeFor[Order]()))
	ok := Order{ID: "o1", Lines: []Line{{SKU: "a", Qty: 2}}, At: time.Now(), Parent: &Order{ID: "o0", Lines: []Line{}, At: time.Now()}}
	if err := valid(ok); err != nil {
		t.Fatalf("a valid order refused: %v", err)
	}
	for name, bad := range map[string]any{
		"missing required field": map[string]any{"lines": []any{}, "at": "2026-01-01T00:00:00Z", "priority": 1},
		"unknown field":          map[string]any{"id": "x", "lines": []any{}, "at": "2026-01-01T00:00:00Z", "priority": 1, "color": "red"},
		"wrong type":             map[string]any{"id": 5, "lines": []any{}, "at": "2026-01-01T00:00:00Z", "priority": 1},
		"bad nested":             map[string]any{"id": "x", "lines": []any{map[string]any{"sku": "a", "qty": "two"}}, "at": "2026-01-01T00:00:00Z", "priority": 1},
		"bad recursive":          map[string]any{"id": "x", "lines": []any{}, "at": "2026-01-01T00:00:00Z", "priority": 1, "parent": map[string]any{"id": 1}},
	} {
		if err := valid(bad); err == nil {
			t.Errorf("%s: accepted %v", name, bad)
		}
	}

	for _, c := range []struct {
		typ       reflect.Type
		good, bad any
	}{
		{reflect.TypeFor[int](), 3, "3"},
		{reflect.TypeFor[string](), "x", 1},
		{reflect.TypeFor[[]int](), []int{1, 2}, []string{"a"}},
		{reflect.TypeFor[actor.Empty](), actor.Empty{}, map[string]int{"a": 1}},
		{reflect.TypeFor[*Address](), &Address{Street: "s"}, map[string]any{"zip": "1"}},
		{reflect.TypeFor[map[string]int](), map[string]int{"a": 1}, map[string]string{"a": "b"}},
	} {
		v := compile(t, schema.Of(c.typ))
		if err := v(c.good); err != nil {
			t.Errorf("%v: %v refused: %v", c.typ, c.good, err)
		}
		if err := v(c.bad); err == nil {
			t.Errorf("%v: %v accepted", c.typ, c.bad)
		}
	}
}

func TestUndescribableTypes(t *testing.T) {
	if s := schema.Of(reflect.TypeFor[chan int]()); s != nil {
		t.Fatalf("a channel's schema: %s", s)
	}
	// The same type gives the same schema (descriptions are fingerprinted).
	a, b := schema.Of(reflect.TypeFor[Order]()), schema.Of(reflect.TypeFor[Order]())
	if string(a) != string(b) {
		t.Fatal("two schemas of one type differ")
	}
}
