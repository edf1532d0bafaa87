package mesh_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

func TestCallRaw(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	id := "raw id/with.dots *>"
	for _, tt := range []struct {
		name    string
		call    mesh.RawCall
		want    string
		code    string
		failure string
	}{
		{name: "json", call: mesh.RawCall{EntityType: "Counter", ID: id, RPC: "Increment", Codec: protocol.CodecJSON, Payload: []byte(`{"amount":5}`)}, want: "5"},
		{name: "json again", call: mesh.RawCall{EntityType: "Counter", ID: id, RPC: "GetValue", Codec: protocol.CodecJSON, Payload: []byte(`{}`)}, want: "5"},
		{name: "declared failure", call: mesh.RawCall{EntityType: "Counter", ID: id, RPC: "Withdraw", Codec: protocol.CodecJSON, Payload: []byte(`{"amount":9}`)}, code: protocol.CodeFailure, failure: "InsufficientFunds"},
		{name: "unknown rpc", call: mesh.RawCall{EntityType: "Counter", ID: id, RPC: "Nope", Codec: protocol.CodecJSON, Payload: []byte(`{}`)}, code: protocol.CodeUnknownRPC},
		{name: "unknown entity", call: mesh.RawCall{EntityType: "Nope", ID: id, RPC: "Nope", Codec: protocol.CodecJSON, Payload: []byte(`{}`)}, code: protocol.CodeUnknownEntity},
		{name: "malformed", call: mesh.RawCall{EntityType: "Counter", ID: id, RPC: "Increment", Codec: protocol.CodecJSON, Payload: []byte(`{"amount":`)}, code: protocol.CodeMalformed},
		{name: "defect", call: mesh.RawCall{EntityType: "Counter", ID: "other", RPC: "Panic", Codec: protocol.CodecJSON, Payload: []byte(`"boom"`)}, code: protocol.CodeDefect},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := e.c.CallRaw(ctx, tt.call)
			if tt.code == "" {
				if err != nil || string(got) != tt.want {
					t.Fatalf("CallRaw = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			var me *mesh.Error
			if !errors.As(err, &me) || me.Code != tt.code || me.Failure != tt.failure {
				t.Fatalf("CallRaw error = %#v; want code %s failure %q", err, tt.code, tt.failure)
			}
			if mesh.CodeOf(err) != tt.code {
				t.Fatalf("CodeOf = %q, want %q", mesh.CodeOf(err), tt.code)
			}
			if tt.failure != "" {
				var f InsufficientFunds
				if err := json.Unmarshal(me.Detail, &f); err != nil || f.Wanted != 9 {
					t.Fatalf("failure detail %q: %+v, %v", me.Detail, f, err)
				}
			}
		})
	}
	// The msgpack client's codec round-trips too, and the value is shared.
	if v, err := mesh.Call(ctx, e.c, GetValue, id, actor.Empty{}); err != nil || v != 5 {
		t.Fatalf("GetValue after raw calls = %d, %v", v, err)
	}
	if _, err := e.c.CallRaw(ctx, mesh.RawCall{EntityType: "Counter", ID: id, RPC: "GetValue", Codec: "xml"}); !errors.Is(err, mesh.ErrInvalidOption) {
		t.Fatalf("unknown codec: %v", err)
	}
	if _, err := e.c.CallRaw(ctx, mesh.RawCall{EntityType: "Counter", ID: "", RPC: "GetValue"}); !errors.Is(err, actor.ErrInvalidID) {
		t.Fatalf("empty id: %v", err)
	}
	if _, err := e.c.CallRaw(ctx, mesh.RawCall{EntityType: "Co.unter", ID: "x", RPC: "GetValue"}); !errors.Is(err, mesh.ErrBadRequest) {
		t.Fatalf("bad type token: %v", err)
	}
}

func TestStreamRaw(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	collect := func(call mesh.RawCall) ([]string, error) {
		var got []string
		for chunk, err := range e.c.StreamRaw(ctx, call) {
			if err != nil {
				return got, err
			}
			got = append(got, string(chunk))
		}
		return got, nil
	}
	got, err := collect(mesh.RawCall{EntityType: "Counter", ID: "s", RPC: "Countdown", Codec: protocol.CodecJSON, Payload: []byte("3")})
	if err != nil || strings.Join(got, ",") != "3,2,1" {
		t.Fatalf("StreamRaw = %q, %v", got, err)
	}
	// More chunks than the window: acknowledged as they are read.
	got, err = collect(mesh.RawCall{EntityType: "Counter", ID: "s", RPC: "Countdown", Codec: protocol.CodecJSON, Payload: []byte("200")})
	if err != nil || len(got) != 200 || got[199] != "1" {
		t.Fatalf("StreamRaw of 200: %d chunks, %v", len(got), err)
	}
	// A stream that fails after its chunks yields them, then the error.
	got, err = collect(mesh.RawCall{EntityType: "Counter", ID: "s", RPC: "Countdown", Codec: protocol.CodecJSON, Payload: []byte("13")})
	if len(got) != 13 || mesh.CodeOf(err) != protocol.CodeError || !strings.Contains(err.Error(), "unlucky") {
		t.Fatalf("failing stream: %d chunks, %v", len(got), err)
	}
	for _, c := range []struct {
		call mesh.RawCall
		code string
	}{
		{mesh.RawCall{EntityType: "Counter", ID: "s", RPC: "Increment", Codec: protocol.CodecJSON, Payload: []byte(`{"amount":1}`)}, protocol.CodeBadRequest},
		{mesh.RawCall{EntityType: "Counter", ID: "s", RPC: "Countdown", Codec: protocol.CodecJSON, Payload: []byte(`"x"`)}, protocol.CodeMalformed},
		{mesh.RawCall{EntityType: "Counter", ID: "s", RPC: "Nope", Codec: protocol.CodecJSON}, protocol.CodeUnknownRPC},
	} {
		if _, err := collect(c.call); mesh.CodeOf(err) != c.code {
			t.Errorf("%s: %v, want code %s", c.call.RPC, err, c.code)
		}
	}
	if _, err := collect(mesh.RawCall{EntityType: "Counter", ID: "s", RPC: "Countdown", Persisted: true}); !errors.Is(err, mesh.ErrInvalidOption) {
		t.Fatalf("a persisted stream: %v", err)
	}
	// Breaking out early cancels the handler on the runner.
	for chunk, err := range e.c.StreamRaw(ctx, mesh.RawCall{EntityType: "Counter", ID: "s", RPC: "Countdown", Codec: protocol.CodecJSON, Payload: []byte("100000")}) {
		if err != nil || string(chunk) != "100000" {
			t.Fatalf("first chunk %q, %v", chunk, err)
		}
		break
	}
	if err := <-drainStreamEnded(e.hooks, 4); err == nil {
		t.Fatal("the abandoned stream's handler ran to the end")
	}
}

// drainStreamEnded returns the outcome of the n-th stream handler to end
// (the earlier ones are skipped).
func drainStreamEnded(h *hooks, n int) <-chan error {
	out := make(chan error, 1)
	go func() {
		var err error
		for range n {
			err = <-h.streamEnded
		}
		out <- err
	}()
	return out
}

func TestRunnerReady(t *testing.T) {
	s := natstest.StartServer(t)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	r, err := mesh.NewRunner(nc, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if r.Ready() {
		t.Fatal("Ready before Start")
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !r.Ready() {
		t.Fatal("standalone runner not Ready after Start")
	}
	if err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r.Ready() {
		t.Fatal("Ready after Shutdown")
	}
}
