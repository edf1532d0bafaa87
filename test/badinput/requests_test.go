package badinput_test

import (
	"context"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/examples/counter"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Requests, replies and stream chunks larger than the server's max_payload
// fail with ErrPayloadTooLarge, on the side that would have sent them; the
// runner keeps serving.
func TestOversizedPayloads(t *testing.T) {
	c, cl, _ := started(t)
	ctx := context.Background()
	big := strings.Repeat("x", maxPayload+1)
	tests := []struct {
		name string
		call func() error
	}{
		{"request", func() error {
			_, err := mesh.Call(ctx, cl, echo, "a", big)
			return err
		}},
		{"raw request", func() error {
			_, err := cl.CallRaw(ctx, mesh.RawCall{EntityType: "Blob", ID: "a", RPC: "Echo", Codec: protocol.CodecJSON, Payload: []byte(big)})
			return err
		}},
		{"send", func() error { return mesh.Send(ctx, cl, echo, "a", big) }},
		{"persisted request", func() error {
			_, err := mesh.Call(ctx, cl, echoP, "a", big)
			return err
		}},
		{"persisted send", func() error { return mesh.Send(ctx, cl, echoP, "a", big) }},
		{"reply", func() error {
			_, err := mesh.Call(ctx, cl, make_, "a", maxPayload+1)
			return err
		}},
		{"stream chunk", func() error {
			for _, err := range mesh.Stream(ctx, cl, chunks, "a", maxPayload+1) {
				if err != nil {
					return err
				}
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, mesh.ErrPayloadTooLarge) {
				t.Fatalf("%s over max_payload: %v, want ErrPayloadTooLarge", tt.name, err)
			}
			c.answered(cl, "after an oversized "+tt.name)
		})
	}
}

// A persisted RPC whose reply is too large to store is answered with
// PayloadTooLarge and dead-lettered after one run of its handler, like any
// message that can never succeed.
func TestOversizedPersistedReply(t *testing.T) {
	c, cl, _ := started(t)
	before := blobRuns.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := mesh.Call(ctx, cl, makeP, "a", maxPayload+1)
	if !errors.Is(err, mesh.ErrPayloadTooLarge) {
		t.Fatalf("persisted call with an oversized reply = %v (handler ran %d times), want ErrPayloadTooLarge", err, blobRuns.Load()-before)
	}
	if runs := blobRuns.Load() - before; runs != 1 {
		t.Fatalf("handler ran %d times, want 1", runs)
	}
	c.answered(cl, "after an oversized persisted reply")
}

// Calls to entity types and RPCs no runner hosts are answered with typed
// errors, volatile or persisted, by the Go client or on the wire. A
// persisted call to an unknown rpc is dead-lettered, not retried; one to a
// type no runner hosts is refused by the Go client before it is stored
// (ErrNotHosted), as the shard manager's assignment names the hosted types.
func TestUnknownTypesAndRPCs(t *testing.T) {
	c, cl, nc := started(t)
	ctx := context.Background()
	if _, err := mesh.Call(ctx, cl, ghostCall, "a", 1); !errors.Is(err, actor.ErrUnknownEntity) {
		t.Errorf("call to an unhosted type = %v, want ErrUnknownEntity", err)
	}
	if _, err := mesh.Call(ctx, cl, nope, "a", 1); !errors.Is(err, actor.ErrUnknownRPC) {
		t.Errorf("call to an unknown rpc = %v, want ErrUnknownRPC", err)
	}
	if _, err := mesh.Call(ctx, cl, ghostPost, "a", 1); !errors.Is(err, actor.ErrUnknownEntity) || !errors.Is(err, mesh.ErrNotHosted) {
		t.Errorf("persisted call to an unhosted type = %v, want ErrNotHosted (an ErrUnknownEntity)", err)
	}
	if _, err := mesh.Call(ctx, cl, nopePost, "a", 1); !errors.Is(err, actor.ErrUnknownRPC) {
		t.Errorf("persisted call to an unknown rpc = %v, want ErrUnknownRPC", err)
	}
	dls, err := mesh.DeadLetters(ctx, nc, c.cfg.ClientConfig, 0, 10)
	if err != nil || len(dls) != 1 {
		t.Fatalf("DeadLetters = %d, %v; want the persisted call to the unknown rpc", len(dls), err)
	}
	for _, dl := range dls {
		if dl.Code != protocol.CodeUnknownEntity && dl.Code != protocol.CodeUnknownRPC || dl.Attempts != 0 {
			t.Errorf("dead letter %+v: want an unknown entity or rpc, never retried", dl)
		}
	}
	for _, tt := range []struct{ subject, code string }{
		{"mesh.v1.entity.Ghost.Boo", protocol.CodeUnknownEntity},
		{"mesh.v1.entity.Counter.Nope", protocol.CodeUnknownRPC},
		{"mesh.v1.call.default.0.Ghost.Boo", ""}, // the shard check comes first: see below
	} {
		id := idInShard(0, c.cfg.ShardsPerGroup)
		reply, err := nc.RequestMsg(&nats.Msg{Subject: tt.subject, Header: nats.Header{protocol.HeaderID: {id}}}, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", tt.subject, err)
		}
		want := tt.code
		if want == "" {
			want = protocol.CodeUnknownEntity
		}
		if got := errorCode(reply); got != want {
			t.Errorf("%s = %q %s, want %s", tt.subject, got, reply.Data, want)
		}
	}
	c.answered(cl, "after unknown types and rpcs")
}

// Ids the protocol refuses (empty, over 1 KiB, invalid UTF-8) fail with
// actor.ErrInvalidID in the Go client before anything is sent, and with
// an InvalidId error reply (a dead letter, for a persisted message) when
// another client sends them anyway.
func TestInvalidIDs(t *testing.T) {
	c, cl, nc := started(t)
	ctx := context.Background()
	ids := map[string]string{
		"empty":         "",
		"over 1 KiB":    strings.Repeat("é", actor.MaxIDLength/2+1),
		"invalid UTF-8": "a\xff\xfeb",
	}
	for name, id := range ids {
		t.Run(name, func(t *testing.T) {
			if _, err := mesh.Call(ctx, cl, counter.Increment, id, counter.Amount{Amount: 1}); !errors.Is(err, actor.ErrInvalidID) {
				t.Errorf("Call = %v, want ErrInvalidID", err)
			}
			if _, err := mesh.Call(ctx, cl, echoP, id, "x"); !errors.Is(err, actor.ErrInvalidID) {
				t.Errorf("persisted Call = %v, want ErrInvalidID", err)
			}
			if err := mesh.Send(ctx, cl, echo, id, "x"); !errors.Is(err, actor.ErrInvalidID) {
				t.Errorf("Send = %v, want ErrInvalidID", err)
			}
			// On the wire, where no client checked: the id in base64 (the
			// only header that can carry every byte), on the route and on
			// the shard the id hashes to.
			h := nats.Header{protocol.HeaderIDBase64: {base64.StdEncoding.EncodeToString([]byte(id))}, protocol.HeaderCodec: {protocol.CodecJSON}}
			shard := protocol.ShardOf(id, c.cfg.ShardsPerGroup)
			for _, subj := range []string{"mesh.v1.entity.Counter.GetValue", "mesh.v1.call.default." + itoa(shard) + ".Counter.GetValue"} {
				reply, err := nc.RequestMsg(&nats.Msg{Subject: subj, Header: h}, 5*time.Second)
				if err != nil || errorCode(reply) != protocol.CodeInvalidID {
					t.Errorf("%s: %v %v, want an InvalidId reply", subj, err, reply)
				}
			}
			msgID := "invalid-" + strings.ReplaceAll(name, " ", "-")
			pm := &nats.Msg{Subject: "mesh.v1.persist.default." + itoa(shard) + ".Blob.EchoPersisted", Data: []byte(`"x"`), Header: h}
			pm.Header.Set(protocol.HeaderMsgID, msgID)
			if _, err := nc.RequestMsg(pm, 5*time.Second); err != nil {
				t.Fatalf("store the persisted message: %v", err)
			}
			if _, err := mesh.Reply(ctx, cl, echoP, msgID); !errors.Is(err, actor.ErrInvalidID) {
				t.Errorf("Reply of the persisted message = %v, want ErrInvalidID", err)
			}
		})
	}
	c.answered(cl, "after invalid ids")
}

func itoa(n int) string { return strconv.Itoa(n) }

// A persisted message whose id is too long (protocol.MaxMessageIDLen) is
// dead-lettered; one whose reply subject is too long (or outside the reply
// prefixes) is handled and its reply stored but not published. It must not make the
// runner send a protocol line the server refuses: the server closes the
// runner's connection, and the message, redelivered, does it again to
// every runner that takes the shard.
func TestLongMessageIDAndReplySubject(t *testing.T) {
	for _, tt := range []struct{ name, msgID, replyTo string }{
		{"message id", strings.Repeat("m", 3500), ""},
		{"reply subject", "long-reply", "_INBOX." + strings.Repeat("r", 5000)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, cl, nc := started(t)
			disconnected := make(chan struct{}, 1)
			c.conns["r1"].SetDisconnectErrHandler(func(*nats.Conn, error) {
				select {
				case disconnected <- struct{}{}:
				default:
				}
			})
			id := idInShard(0, c.cfg.ShardsPerGroup)
			m := &nats.Msg{Subject: "mesh.v1.persist.default.0.Blob.EchoPersisted", Data: []byte(`"x"`), Header: nats.Header{
				protocol.HeaderID: {id}, protocol.HeaderCodec: {protocol.CodecJSON}, protocol.HeaderMsgID: {tt.msgID},
			}}
			if tt.replyTo != "" {
				m.Header.Set(protocol.HeaderReplyTo, tt.replyTo)
			}
			if _, err := nc.RequestMsg(m, 5*time.Second); err != nil {
				t.Fatalf("store the persisted message: %v", err)
			}
			ctx := context.Background()
			if tt.replyTo != "" {
				// A reply subject outside the runner's reply prefixes (or
				// too long): handled, its reply stored, not published.
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := mesh.Reply(rctx, cl, echoP, tt.msgID)
				cancel()
				if err != nil {
					t.Fatalf("Reply of the message with a long reply subject: %v", err)
				}
			} else {
				natstest.WaitFor(t, 10*time.Second, func() bool {
					dls, err := mesh.DeadLetters(ctx, nc, c.cfg.ClientConfig, 0, 10)
					return err == nil && len(dls) == 1
				}, "the message dead-lettered")
			}
			select {
			case <-disconnected:
				t.Fatal("the runner's connection was closed")
			default:
			}
			c.answered(cl, "after a persisted message with a long "+tt.name)
		})
	}
}
