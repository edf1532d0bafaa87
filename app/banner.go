package app

import (
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strings"

	"github.com/natsmesh/natsmesh/actor"
)

// banner is what -dev prints once the cluster serves: the commands that
// call each hosted entity type, by every route.
type banner struct {
	url      string // NATS
	gateway  string // host:port, empty: none
	prefix   string
	entities []*actor.Entity
}

// exampleID is the entity id the printed commands use.
const exampleID = "id-1"

// examplePayload is the JSON of t's zero value: a payload with every
// field, for the person to fill in.
func examplePayload(t reflect.Type) string {
	if t == nil {
		return "{}"
	}
	b, err := json.Marshal(reflect.New(t).Elem().Interface())
	if err != nil || string(b) == "null" {
		return "{}"
	}
	return string(b)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// commands returns, per entity type, the lines that call its RPCs.
func (b banner) commands() []string {
	var out []string
	for _, e := range b.entities {
		var natsDone, meshctlDone bool
		for _, rpc := range e.RPCs() {
			payload := shellQuote(examplePayload(rpc.Payload()))
			if b.gateway != "" {
				line := fmt.Sprintf("curl -s http://%s/v1/%s/%s/%s -H 'Content-Type: application/json' -d %s", b.gateway, e.Name(), exampleID, rpc.Name(), payload)
				switch {
				case rpc.Kind() == actor.Streaming:
					line = fmt.Sprintf("curl -sN http://%s/v1/%s/%s/%s -H 'Content-Type: application/json' -H 'Accept: text/event-stream' -d %s", b.gateway, e.Name(), exampleID, rpc.Name(), payload)
				case rpc.Persisted():
					line += " -H 'Idempotency-Key: " + strings.ToLower(rpc.Name()) + "-1'"
				}
				out = append(out, line)
			}
			if !meshctlDone {
				meshctlDone = true
				out = append(out, fmt.Sprintf("go run github.com/natsmesh/natsmesh/cmd/meshctl -nats %s -prefix %s call %s %s %s %s", b.url, b.prefix, e.Name(), exampleID, rpc.Name(), payload))
			}
			if !natsDone && rpc.Kind() == actor.Unary && !rpc.Persisted() {
				natsDone = true
				out = append(out, fmt.Sprintf("nats -s %s req %s.v1.entity.%s.%s %s -H Mesh-Id:%s", b.url, b.prefix, e.Name(), rpc.Name(), payload, exampleID))
			}
		}
	}
	return out
}

// print writes the banner for a person.
func (b banner) print(w io.Writer) {
	var names []string
	for _, e := range b.entities {
		names = append(names, e.Name())
	}
	fmt.Fprintf(w, "natsmesh dev cluster: NATS on %s", b.url)
	if b.gateway != "" {
		fmt.Fprintf(w, ", HTTP gateway on http://%s", b.gateway)
	}
	fmt.Fprintf(w, "\nentity types: %s\n\n", strings.Join(names, ", "))
	for _, line := range b.commands() {
		fmt.Fprintf(w, "  %s\n", line)
	}
	fmt.Fprintf(w, "\nmeshctl status, meshctl types: the cluster and what it hosts (docs/protocol.md has the wire details).\nPress Ctrl-C to stop.\n")
}
