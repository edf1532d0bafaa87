package protocol

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
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
		SetID(h, id)
		got, err := GetID(h)
		if err != nil || got != id {
			t.Fatalf("SetID/GetID(%q) = %q, %v", id, got, err)
		}
	})
}

// Call subjects parse back to what built them, and parsing never accepts
// a subject that does not round-trip.
func FuzzParseCall(f *testing.F) {
	s := Subjects{Prefix: "mesh"}
	f.Add("mesh.v1.call.default.17.Counter.Increment")
	f.Add("mesh.v1.call.default.-1.Counter.Increment")
	f.Add("mesh.v1.call.a.b.c.d.e")
	f.Add("mesh.v1.call.default.01.X.Y")
	f.Add("mesh.v1.entity.Counter.Increment")
	f.Add("mesh.v1.call.default.17.Counter.Increment.msgpack.user-1")
	f.Add("mesh.v1.call.default.17.Counter.Increment.json.a.b")
	f.Add("mesh.v1.call.default.17.Counter.Increment.json.")
	f.Fuzz(func(t *testing.T, subject string) {
		if c, ok := s.ParseCall(subject); ok && c.Compact {
			if !IDSubjectSafe(c.ID) || strings.Contains(c.Codec, ".") {
				t.Fatalf("ParseCall(%q) accepted id %q, codec %q", subject, c.ID, c.Codec)
			}
			if rebuilt := CompactCall(s.Call(c.Shard, c.EntityType, c.RPC), c.Codec, c.ID); rebuilt != subject && shardToken(subject) == shardToken(rebuilt) {
				t.Fatalf("ParseCall(%q) = %+v, which builds %q", subject, c, rebuilt)
			}
		}
		c, ok := s.ParseCall(subject)
		if !ok || c.Compact {
			return
		}
		shard, typ, rpc := c.Shard, c.EntityType, c.RPC
		if rebuilt := s.Call(shard, typ, rpc); rebuilt != subject && shardToken(subject) == shardToken(rebuilt) {
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
		for _, c := range []actor.Codec{JSON, Msgpack} {
			_, _, _ = DecodeError(c, raw) // must not panic
			if !utf8.ValidString(code) || !utf8.ValidString(msg) {
				continue // JSON replaces invalid UTF-8; the runner's messages are valid
			}
			b, err := EncodeError(c, &ErrorBody{Code: code, Message: msg}, map[string]int{"n": len(msg)})
			if err != nil {
				t.Fatalf("%s encode: %v", c.Name(), err)
			}
			body, detail, err := DecodeError(c, b)
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
		for _, c := range []actor.Codec{JSON, Msgpack} {
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
		_, _, _, _ = DecodeStored(raw)
		if strings.ContainsRune(code, '\n') {
			return
		}
		for _, c := range []actor.Codec{JSON, Msgpack} {
			codec, gotCode, gotBody, err := DecodeStored(EncodeStored(c, code, body))
			if err != nil || codec.Name() != c.Name() || gotCode != code || !bytes.Equal(gotBody, body) {
				t.Fatalf("round trip of (%s, %q, %q): %v %q %q %v", c.Name(), code, body, codec, gotCode, gotBody, err)
			}
		}
	})
}

// Shard lease keys parse back to what built them.
// Route and persisted subjects parse back to what built them, with
// dot-free type and rpc tokens.
func FuzzParseSubjects(f *testing.F) {
	s := Subjects{Prefix: "mesh"}
	f.Add("mesh.v1.entity.Counter.Increment")
	f.Add("mesh.v1.entity.Counter.Increment.extra")
	f.Add("mesh.v1.persist.default.3.Ledger.Post")
	f.Add("mesh.v1.persist.default.-3.Ledger.Post")
	f.Add("mesh.v1.persist.default.03.Ledger.Post.x")
	f.Add("mesh.v1.call.default.3.Ledger.Post")
	f.Fuzz(func(t *testing.T, subject string) {
		if typ, rpc, ok := s.ParseRoute(subject); ok {
			if s.Route(typ, rpc) != subject || strings.Contains(typ, ".") || strings.Contains(rpc, ".") {
				t.Fatalf("parseRoute(%q) = %q %q, which builds %q", subject, typ, rpc, s.Route(typ, rpc))
			}
		}
		if shard, typ, rpc, ok := s.ParsePersist(subject); ok {
			rebuilt := s.Persist(shard, typ, rpc)
			if shard.N < 0 || strings.Contains(typ, ".") || strings.Contains(rpc, ".") ||
				rebuilt != subject && shardToken(strings.Replace(subject, ".persist.", ".call.", 1)) == shardToken(strings.Replace(rebuilt, ".persist.", ".call.", 1)) {
				t.Fatalf("parsePersist(%q) = %v %q %q, which builds %q", subject, shard, typ, rpc, rebuilt)
			}
		}
	})
}

// Message ids map to distinct reply keys that KV accepts, and to schedule
// subjects of one token each.
func FuzzReplyKey(f *testing.F) {
	f.Add("order-1", "order-2")
	f.Add("k.x", "x")
	f.Add("a b", "a+b")
	f.Add("日本", "\x00")
	f.Fuzz(func(t *testing.T, a, b string) {
		if a == "" {
			return // never a message id: MessageID("") means "generate one"
		}
		k := ReplyKey(a)
		if !validKVKey(k) {
			t.Fatalf("ReplyKey(%q) = %q: not a KV key", a, k)
		}
		if a != b && b != "" && ReplyKey(b) == k {
			t.Fatalf("ReplyKey(%q) = ReplyKey(%q) = %q", a, b, k)
		}
		sub := (Subjects{Prefix: "mesh"}).Schedule(a)
		if tok := strings.TrimPrefix(sub, "mesh.v1.sched."); tok == "" || strings.ContainsAny(tok, ".*> \t\r\n") {
			t.Fatalf("schedule(%q) = %q: want one plain token", a, sub)
		}
	})
}

// validKVKey is nats.go's rule for KV keys.
func validKVKey(k string) bool {
	if k == "" || k[0] == '.' || k[len(k)-1] == '.' {
		return false
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-/_=.", c)) {
			return false
		}
	}
	return true
}

// Strict JSON decoding accepts what Unmarshal accepts, less unknown fields:
// the same value, and an error naming an unknown field.
func FuzzStrictJSON(f *testing.F) {
	f.Add([]byte(`{"amount":5}`))
	f.Add([]byte(`{"amount":5,"extra":1}`))
	f.Add([]byte(`{"amount":5} x`))
	f.Add([]byte(`5}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		type amount struct {
			Amount int `json:"amount"`
		}
		var loose, strict amount
		lerr := JSON.Unmarshal(data, &loose)
		serr := JSON.(actor.StrictCodec).UnmarshalStrict(data, &strict)
		if serr == nil && (lerr != nil || loose != strict) {
			t.Fatalf("strict accepted %q as %+v; Unmarshal: %+v, %v", data, strict, loose, lerr)
		}
		if serr != nil && lerr == nil && !strings.Contains(serr.Error(), "unknown field") {
			t.Fatalf("strict refused %q (%v), which Unmarshal accepts, for another reason than an unknown field", data, serr)
		}
	})
}
