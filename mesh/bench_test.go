package mesh_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
)

// BenchmarkCall is one sequential call through a runner, client and server
// in this process; allocs/op counts all three (nats.go and the server too).
func BenchmarkCall(b *testing.B) {
	s := natstest.StartServer(b)
	startRunner(b, s.ClientURL(), testConfig(), counterBehavior(newHooks()))
	c, _ := newClient(b, s.ClientURL(), testConfig())
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := mesh.Call(ctx, c, Increment, "bench", Amount{1}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawRequest is the same round trip with plain NATS request/reply.
func BenchmarkRawRequest(b *testing.B) {
	s := natstest.StartServer(b)
	_, resp := newClient(b, s.ClientURL(), testConfig())
	_, req := newClient(b, s.ClientURL(), testConfig())
	if _, err := resp.Subscribe("raw", func(m *nats.Msg) { _ = m.Respond([]byte("1")) }); err != nil {
		b.Fatal(err)
	}
	_ = resp.Flush()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := req.Request("raw", []byte(`{"amount":1}`), time.Second); err != nil {
			b.Fatal(err)
		}
	}
}
