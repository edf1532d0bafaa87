package mesh

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
)

// The id header encoding round-trips every valid id.
func FuzzIDHeader(f *testing.F) {
	for _, s := range []string{"user-123", "a.b", " lead", "trail ", "new\nline", "*", ">", "日本語", "\x7f", "tab\t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if id == "" || !utf8.ValidString(id) {
			return
		}
		h := nats.Header{}
		setID(h, id)
		got, err := getID(h)
		if err != nil || got != id {
			t.Fatalf("setID/getID(%q) = %q, %v", id, got, err)
		}
	})
}

// Call subjects parse back to what built them, and parsing never accepts
// a subject that does not round-trip.
func FuzzParseCall(f *testing.F) {
	s := subjects{prefix: "mesh"}
	f.Add("mesh.v1.call.default.17.Counter.Increment")
	f.Add("mesh.v1.call.default.-1.Counter.Increment")
	f.Add("mesh.v1.call.a.b.c.d.e")
	f.Add("mesh.v1.call.default.01.X.Y")
	f.Add("mesh.v1.entity.Counter.Increment")
	f.Add("mesh.v1.call.default.17.Counter.Increment.msgpack.user-1")
	f.Add("mesh.v1.call.default.17.Counter.Increment.json.a.b")
	f.Add("mesh.v1.call.default.17.Counter.Increment.json.")
	f.Fuzz(func(t *testing.T, subject string) {
		if c, ok := s.parseCallSubject(subject); ok && c.compact {
			if !IDSubjectSafe(c.id) || strings.Contains(c.codecName, ".") {
				t.Fatalf("parseCallSubject(%q) accepted id %q, codec %q", subject, c.id, c.codecName)
			}
			if rebuilt := compactCall(s.call(c.shard, c.entityType, c.rpc), c.codecName, c.id); rebuilt != subject && shardToken(subject) == shardToken(rebuilt) {
				t.Fatalf("parseCallSubject(%q) = %+v, which builds %q", subject, c, rebuilt)
			}
		}
		shard, typ, rpc, ok := s.parseCall(subject)
		if !ok {
			return
		}
		if rebuilt := s.call(shard, typ, rpc); rebuilt != subject && shardToken(subject) == shardToken(rebuilt) {
			t.Fatalf("parseCall(%q) = %v %q %q, which builds %q", subject, shard, typ, rpc, rebuilt)
		}
		if shard.N < 0 {
			t.Fatalf("negative shard from %q", subject)
		}
	})
}

// shardToken is the shard token of a call subject ("017" and "17" parse
// alike; the runner then checks the number against the id's shard).
func shardToken(subject string) string {
	n := 0
	for i := 0; i < len(subject); i++ {
		if subject[i] == '.' {
			n++
			if n == 4 {
				for j := i + 1; j < len(subject); j++ {
					if subject[j] == '.' {
						return subject[i+1 : j]
					}
				}
			}
		}
	}
	return ""
}

// Error envelopes from the network never panic the decoder, and envelopes
// we encode decode to the same fields in both codecs.
func FuzzErrorEnvelope(f *testing.F) {
	f.Add([]byte(`{"code":"Failure","message":"m","failure":"F","detail":{"a":1}}`), "Defect", "boom")
	f.Add([]byte{0x85, 0xa4}, "MailboxFull", "")
	f.Add([]byte{}, "Error", "x\x00y")
	f.Fuzz(func(t *testing.T, raw []byte, code, msg string) {
		for _, c := range []Codec{JSON, Msgpack} {
			_, _, _ = c.decodeError(raw) // must not panic
			if !utf8.ValidString(code) || !utf8.ValidString(msg) {
				continue // JSON replaces invalid UTF-8; the runner's messages are valid
			}
			b, err := c.encodeError(&errorBody{Code: code, Message: msg}, map[string]int{"n": len(msg)})
			if err != nil {
				t.Fatalf("%s encode: %v", c.Name(), err)
			}
			body, detail, err := c.decodeError(b)
			if err != nil || body.Code != code || body.Message != msg || len(detail) == 0 {
				t.Fatalf("%s round trip: %+v %q %v", c.Name(), body, detail, err)
			}
		}
	})
}

// Payload codecs round-trip and never panic on garbage.
func FuzzCodecs(f *testing.F) {
	f.Add([]byte(`{"amount":5}`), 5)
	f.Add([]byte{0x81, 0xa6, 'a', 'm', 'o', 'u', 'n', 't', 0x05}, -1)
	f.Fuzz(func(t *testing.T, raw []byte, n int) {
		type amount struct {
			Amount int `json:"amount"`
		}
		for _, c := range []Codec{JSON, Msgpack} {
			var a amount
			_ = c.Unmarshal(raw, &a) // must not panic
			b, err := c.Marshal(amount{n})
			if err != nil {
				t.Fatal(err)
			}
			var back amount
			if err := c.Unmarshal(b, &back); err != nil || back.Amount != n {
				t.Fatalf("%s round trip of %d: %d, %v", c.Name(), n, back.Amount, err)
			}
		}
	})
}

// Stored replies round-trip, and garbage from the reply bucket is refused,
// never a panic.
func FuzzStoredReply(f *testing.F) {
	f.Add([]byte("0m\n\x05"), "", []byte{1, 2})
	f.Add([]byte("1jFailure\n{}"), "Failure", []byte(`{"code":"Failure"}`))
	f.Add([]byte("0"), "MailboxFull", []byte{})
	f.Fuzz(func(t *testing.T, raw []byte, code string, body []byte) {
		_, _, _, _ = decodeStored(raw)
		if strings.ContainsRune(code, '\n') {
			return
		}
		for _, c := range []Codec{JSON, Msgpack} {
			codec, gotCode, gotBody, err := decodeStored(encodeStored(c, code, body))
			if err != nil || codec.Name() != c.Name() || gotCode != code || !bytes.Equal(gotBody, body) {
				t.Fatalf("round trip of (%s, %q, %q): %v %q %q %v", c.Name(), code, body, codec, gotCode, gotBody, err)
			}
		}
	})
}

// Shard lease keys parse back to what built them.
func FuzzShardKey(f *testing.F) {
	f.Add("default", 17)
	f.Add("a.b", 0)
	f.Add("", -1)
	f.Fuzz(func(t *testing.T, group string, n int) {
		s, ok := parseShardKey(shardKey(ShardID{Group: group, N: n}))
		if validToken(group) && n >= 0 {
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
