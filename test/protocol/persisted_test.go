package protocol_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// Persisted messages as docs/protocol.md ("Persisted messages") describes
// them, sent and read with plain NATS requests and nothing of natsmesh: the
// JetStream publish is a request to the persist subject, answered by a
// PubAck; the stored reply is read with a JetStream direct get.
func TestPersistedByPlainNATS(t *testing.T) {
	s := natstest.StartServer(t)
	startRunner(t, s.ClientURL())
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	shardOf := func(id string) uint64 { return xxhash.Sum64String(id) % 300 }
	persist := func(id, msgID, replyTo string, amount int) (dup bool) {
		t.Helper()
		m := nats.NewMsg(fmt.Sprintf("mesh.v1.persist.default.%d.Counter.Deposit", shardOf(id)))
		m.Header.Set("Mesh-Id", id)
		m.Header.Set("Nats-Msg-Id", msgID)
		m.Header.Set("Mesh-Msg-Id", msgID)
		if replyTo != "" {
			m.Header.Set("Mesh-Reply-To", replyTo)
		}
		m.Data = fmt.Appendf(nil, `{"amount":%d}`, amount)
		ack, err := nc.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatalf("publish %s: %v", msgID, err)
		}
		var pa struct {
			Stream    string `json:"stream"`
			Seq       uint64 `json:"seq"`
			Duplicate bool   `json:"duplicate"`
			Error     *struct {
				Description string `json:"description"`
			} `json:"error"`
		}
		if err := json.Unmarshal(ack.Data, &pa); err != nil || pa.Error != nil || pa.Seq == 0 {
			t.Fatalf("PubAck of %s: %s (%v)", msgID, ack.Data, err)
		}
		return pa.Duplicate
	}
	directGet := func(key string) *nats.Msg {
		t.Helper()
		m, err := nc.Request("$JS.API.DIRECT.GET.KV_mesh_replies.$KV.mesh_replies."+key, nil, 5*time.Second)
		if err != nil {
			t.Fatalf("direct get %s: %v", key, err)
		}
		return m
	}
	next := func(sub *nats.Subscription, what string) *nats.Msg {
		t.Helper()
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return m
	}

	inbox := nc.NewInbox()
	replies, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if dup := persist("wallet-p", "dep-1", inbox, 3); dup {
		t.Fatal("a first publish acknowledged as a duplicate")
	}
	reply := next(replies, "reply of dep-1")
	if reply.Header.Get("Mesh-Error") != "" || string(reply.Data) != "3" || reply.Header.Get("Mesh-Msg-Id") != "dep-1" {
		t.Fatalf("reply of dep-1: %q %v", reply.Data, reply.Header)
	}
	// The stored reply: status '0', codec 'j', no code, newline, body.
	if got := directGet("k.dep-1"); string(got.Data) != "0j\n3" {
		t.Fatalf("stored reply of dep-1: %q %v", got.Data, got.Header)
	}
	if got := directGet("k.never-sent"); got.Header.Get("Status") != "404" {
		t.Fatalf("direct get of a missing reply: %q %v", got.Data, got.Header)
	}

	// A duplicate: acknowledged as one, not run, nothing published. The
	// entity handles its messages in order, so once a later message's
	// reply is here, a reply of the duplicate would have been too.
	if dup := persist("wallet-p", "dep-1", inbox, 3); !dup {
		t.Fatal("a re-publish of dep-1 not acknowledged as a duplicate")
	}
	persist("wallet-p", "dep-2", inbox, 4)
	if reply := next(replies, "reply of dep-2"); string(reply.Data) != "7" || reply.Header.Get("Mesh-Msg-Id") != "dep-2" {
		t.Fatalf("after the duplicate, dep-2 answered %q %v (want 7: the duplicate not run, nor answered)", reply.Data, reply.Header)
	}

	// A reply subject outside the reply prefixes: run and stored, never
	// published there.
	evil, err := nc.SubscribeSync("not.an.inbox")
	if err != nil {
		t.Fatal(err)
	}
	persist("wallet-p", "dep-3", "not.an.inbox", 5)
	persist("wallet-p", "dep-4", inbox, 1)
	if reply := next(replies, "reply of dep-4"); string(reply.Data) != "13" {
		t.Fatalf("dep-4 answered %q (want 13: dep-3 run)", reply.Data)
	}
	if m, err := evil.NextMsg(0); err == nil {
		t.Fatalf("a reply published outside the reply prefixes: %q", m.Data)
	}
	if got := directGet("k.dep-3"); string(got.Data) != "0j\n12" {
		t.Fatalf("stored reply of dep-3: %q", got.Data)
	}

	// An id outside [A-Za-z0-9_-]{1,64} is stored under b.<base64url>.
	persist("wallet-p", "order 17/a", inbox, 1)
	next(replies, "reply of 'order 17/a'")
	if got := directGet("b.b3JkZXIgMTcvYQ"); string(got.Data) != "0j\n14" {
		t.Fatalf("stored reply of 'order 17/a': %q %v", got.Data, got.Header)
	}

	// By plain request/reply, a persisted RPC is refused, saying how to
	// send it.
	for _, subject := range []string{"mesh.v1.entity.Counter.Deposit", fmt.Sprintf("mesh.v1.call.default.%d.Counter.Deposit", shardOf("wallet-p"))} {
		m := nats.NewMsg(subject)
		m.Header.Set("Mesh-Id", "wallet-p")
		m.Data = []byte(`{"amount":100}`)
		reply, err := nc.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if reply.Header.Get("Mesh-Error") != "BadRequest" || !strings.Contains(string(reply.Data), "mesh.v1.persist.default.") {
			t.Fatalf("persisted RPC by request/reply on %s: %q %v", subject, reply.Data, reply.Header)
		}
	}
	persist("wallet-p", "dep-5", inbox, 0)
	if reply := next(replies, "reply of dep-5"); string(reply.Data) != "14" {
		t.Fatalf("the refused requests ran: balance %q, want 14", reply.Data)
	}
}
