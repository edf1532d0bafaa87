package gateway

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/natsmesh/natsmesh/mesh"
)

// OpenAPIPath is where the gateway serves its OpenAPI document (GET).
const OpenAPIPath = "/openapi.json"

// serveOpenAPI answers GET /openapi.json with the document of the types the
// runners host now.
func (g *Gateway) serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSONError(w, http.StatusMethodNotAllowed, &errorBody{Code: CodeMethodNotAllowed, Message: r.Method + " not allowed: GET the document"})
		return
	}
	if g.types == nil {
		writeJSONError(w, http.StatusNotFound, &errorBody{Code: CodeNotFound, Message: "this gateway does not read the runners' type descriptions (gateway.WithTypes), so it has no OpenAPI document"})
		return
	}
	types, _ := g.types.get(r.Context(), "")
	doc, err := OpenAPI(types, g.persisted)
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, &errorBody{Code: CodeInternal, Message: err.Error()})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(doc)
}

// OpenAPI returns the OpenAPI 3.1 document of the gateway's API for the
// given entity types: one POST operation per RPC, its request body the
// payload's JSON Schema, its 200 response the result's (for a streaming
// RPC, the NDJSON and Server-Sent Events forms of its chunks), 422 its
// declared failures and every other status the error envelope. The schemas
// are those the runners published (mesh.WithSchemas); an RPC without one
// admits any JSON. Of several versions of a type (a rolling upgrade), the
// one most runners host is described. persisted names more persisted RPCs
// ("Type.Rpc"), as Config.Persisted.
func OpenAPI(types []mesh.ClusterType, persisted map[string]bool) ([]byte, error) {
	b := &apiBuilder{components: map[string]any{"Error": errorSchema()}, defs: map[string]string{}}
	paths := map[string]any{}
	var tags []any
	for _, ct := range types {
		v, ok := mainVersion(ct)
		if !ok {
			continue
		}
		tags = append(tags, map[string]any{"name": ct.Name, "description": fmt.Sprintf("entity type %s (shard group %s), version %s, hosted by %s",
			ct.Name, ct.Group, v.Fingerprint, strings.Join(v.Runners, ", "))})
		for _, rpc := range v.RPCs {
			op, err := b.operation(ct.Name, rpc, rpc.Persisted || persisted[ct.Name+"."+rpc.Name])
			if err != nil {
				return nil, fmt.Errorf("%s.%s: %w", ct.Name, rpc.Name, err)
			}
			paths["/v1/"+ct.Name+"/{id}/"+rpc.Name] = map[string]any{"post": op}
		}
	}
	doc := map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{
			"title":       "natsmesh gateway",
			"version":     "v1",
			"description": "Calls natsmesh entities over HTTP: POST /v1/{type}/{id}/{rpc} with the RPC's JSON payload. Generated from the entity types the live runners host.",
		},
		"tags":       tags,
		"paths":      paths,
		"components": map[string]any{"schemas": b.components},
	}
	if tags == nil {
		doc["tags"] = []any{}
	}
	return json.MarshalIndent(doc, "", "  ")
}

// mainVersion is the described version of ct the most runners host.
func mainVersion(ct mesh.ClusterType) (mesh.TypeVersion, bool) {
	var best mesh.TypeVersion
	found := false
	for _, v := range ct.Versions {
		if v.Described && (!found || len(v.Runners) > len(best.Runners)) {
			best, found = v, true
		}
	}
	return best, found
}

// apiBuilder collects the schemas' definitions as components.
type apiBuilder struct {
	components map[string]any
	defs       map[string]string // component name -> its JSON, to tell two apart
}

func (b *apiBuilder) operation(typ string, rpc mesh.RPCDesc, persisted bool) (map[string]any, error) {
	payload, err := b.schema(rpc.Payload.Schema)
	if err != nil {
		return nil, err
	}
	result, err := b.schema(rpc.Result.Schema)
	if err != nil {
		return nil, err
	}
	params := []any{
		map[string]any{"name": "id", "in": "path", "required": true, "description": "the entity id (1 to 1024 bytes of UTF-8), path-escaped",
			"schema": map[string]any{"type": "string", "minLength": 1}},
		map[string]any{"name": HeaderTimeout, "in": "header", "description": "the call's time budget in milliseconds, capped by the gateway",
			"schema": map[string]any{"type": "integer", "minimum": 1}},
	}
	kind := rpc.Kind
	ok := map[string]any{"description": "the RPC's result", "content": map[string]any{"application/json": map[string]any{"schema": result}}}
	if rpc.Kind == "stream" {
		ok = map[string]any{"description": "the chunks as they come: NDJSON lines {\"chunk\":...} then {\"end\":true} or {\"error\":...}, or with Accept: text/event-stream, events (data: chunk; event: end; event: error)",
			"content": map[string]any{
				MediaNDJSON: map[string]any{"schema": map[string]any{"oneOf": []any{
					map[string]any{"type": "object", "required": []any{"chunk"}, "properties": map[string]any{"chunk": result}},
					map[string]any{"type": "object", "required": []any{"end"}, "properties": map[string]any{"end": map[string]any{"const": true}}},
					map[string]any{"type": "object", "required": []any{"error"}, "properties": map[string]any{"error": map[string]any{"$ref": "#/components/schemas/Error"}}},
				}}},
				MediaSSE: map[string]any{"schema": map[string]any{"type": "string"}},
			}}
	}
	if persisted {
		kind += ", persisted"
		params = append(params, map[string]any{"name": HeaderIdempotencyKey, "in": "header",
			"description": "the message's idempotency key: a call with a key already used is answered with the first call's reply",
			"schema":      map[string]any{"type": "string", "minLength": 1, "maxLength": MaxIdempotencyKey}})
		ok["headers"] = map[string]any{HeaderMsgID: map[string]any{"description": "the message id the call was stored under",
			"schema": map[string]any{"type": "string"}}}
	}
	responses := map[string]any{
		"200":     ok,
		"default": map[string]any{"description": "an error: its code and message (docs/protocol.md lists the codes)", "content": jsonContent(map[string]any{"$ref": "#/components/schemas/Error"})},
	}
	if len(rpc.Failures) > 0 {
		var codes, details []any
		for _, f := range rpc.Failures {
			d, err := b.schema(f.Detail.Schema)
			if err != nil {
				return nil, err
			}
			codes = append(codes, f.Code)
			details = append(details, d)
		}
		responses["422"] = map[string]any{"description": "a declared failure", "content": jsonContent(map[string]any{
			"allOf": []any{map[string]any{"$ref": "#/components/schemas/Error"}},
			"properties": map[string]any{
				"code":    map[string]any{"const": "Failure"},
				"failure": map[string]any{"enum": codes},
				"detail":  map[string]any{"oneOf": details},
			},
			"required": []any{"failure"},
		})}
	}
	return map[string]any{
		"operationId": typ + "." + rpc.Name,
		"summary":     fmt.Sprintf("%s.%s (%s)", typ, rpc.Name, kind),
		"tags":        []any{typ},
		"parameters":  params,
		"requestBody": map[string]any{"required": false, "description": "the payload (an empty body is its zero value)", "content": jsonContent(payload)},
		"responses":   responses,
	}, nil
}

func jsonContent(schema any) map[string]any {
	return map[string]any{"application/json": map[string]any{"schema": schema}}
}

// errorSchema is the error envelope's (docs/protocol.md, "Reply").
func errorSchema() map[string]any {
	return map[string]any{
		"type":     "object",
		"required": []any{"code", "message"},
		"properties": map[string]any{
			"code":    map[string]any{"type": "string"},
			"message": map[string]any{"type": "string"},
			"failure": map[string]any{"type": "string", "description": "a declared failure's code (code Failure)"},
			"detail":  map[string]any{"description": "a declared failure's value (code Failure)"},
		},
	}
}

// schema returns raw (a JSON Schema document) as a schema of the OpenAPI
// document: its $defs become components (renamed when two types of one
// name differ) and its references point there. No schema admits any JSON.
func (b *apiBuilder) schema(raw json.RawMessage) (any, error) {
	if len(raw) == 0 {
		return map[string]any{}, nil
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("schema: %w", err)
	}
	defs, _ := doc["$defs"].(map[string]any)
	delete(doc, "$defs")
	delete(doc, "$schema")
	delete(doc, "$id")
	rename := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(defs)) {
		enc, _ := json.Marshal(defs[name])
		final := name
		for i := 2; ; i++ {
			if have, ok := b.defs[final]; !ok || have == string(enc) {
				break
			}
			final = fmt.Sprintf("%s_%d", name, i)
		}
		rename[name] = final
		b.defs[final] = string(enc)
	}
	for name, def := range defs {
		b.components[rename[name]] = relink(def, rename)
	}
	return relink(doc, rename), nil
}

// relink rewrites the references of v to $defs into references to the
// components, renamed.
func relink(v any, rename map[string]string) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok && k == "$ref" {
				if name, ok := strings.CutPrefix(s, "#/$defs/"); ok {
					if r, ok := rename[name]; ok {
						name = r
					}
					x[k] = "#/components/schemas/" + name
				}
				continue
			}
			x[k] = relink(e, rename)
		}
	case []any:
		for i, e := range x {
			x[i] = relink(e, rename)
		}
	}
	return v
}
