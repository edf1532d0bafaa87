package jetstream

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

func appendEnv(t *testing.T) (*nats.Conn, natsjs.JetStream) {
	t.Helper()
	s := natstest.StartServer(t)
	nc := natstest.Connect(t, s)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(context.Background(), natsjs.StreamConfig{
		Name: "S", Subjects: []string{"s.>"}, AllowAtomicPublish: true,
	}); err != nil {
		t.Fatal(err)
	}
	return nc, js
}

func msgs(n int) []*nats.Msg {
	out := make([]*nats.Msg, n)
	for i := range out {
		out[i] = &nats.Msg{Data: []byte{byte(i)}}
	}
	return out
}

// Each way an attempt can end, and what Append makes of it.
func TestAppendOutcomes(t *testing.T) {
	refusal := &natsjs.APIError{Code: 400, ErrorCode: 10164, Description: "wrong last sequence"}
	tests := []struct {
		name string
		// other: messages another writer stores before the append.
		other   int
		n       int
		attempt func(attempt int, publish func() (uint64, error)) (uint64, error)
		want    error // nil: stored
	}{
		{name: "stored", n: 1},
		{name: "batch stored", n: 3},
		{name: "conflict", other: 1, n: 1, want: ErrRefused},
		{name: "conflict, batch", other: 2, n: 3, want: ErrRefused},
		{name: "lost acknowledgement", n: 1, attempt: func(i int, publish func() (uint64, error)) (uint64, error) {
			seq, err := publish()
			if i == 1 && err == nil {
				return 0, ErrNoAnswer
			}
			return seq, err
		}},
		{name: "lost acknowledgement, batch", n: 4, attempt: func(i int, publish func() (uint64, error)) (uint64, error) {
			seq, err := publish()
			if i <= 2 && err == nil {
				return 0, ErrNoAnswer
			}
			return seq, err
		}},
		// A replicated stream refuses a condition while a write to the
		// subject is in flight, with the same code as a mismatch.
		{name: "transient refusal", n: 1, attempt: func(i int, publish func() (uint64, error)) (uint64, error) {
			if i == 1 {
				return 0, refusal
			}
			return publish()
		}},
		{name: "never answered", n: 1, attempt: func(int, func() (uint64, error)) (uint64, error) {
			return 0, ErrNoAnswer
		}, want: ErrOutcomeUnknown},
		{name: "server refuses otherwise", n: 1, attempt: func(int, func() (uint64, error)) (uint64, error) {
			return 0, &natsjs.APIError{Code: 503, ErrorCode: 10077, Description: "resources exceeded"}
		}, want: &natsjs.APIError{ErrorCode: 10077}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, js := appendEnv(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			a := Append{NC: nc, JS: js, Stream: "S", Subject: "s.x", IDHeader: "Id", AttemptTimeout: time.Second, Attempt: tt.attempt}
			for range tt.other {
				if _, err := js.Publish(ctx, "s.x", nil); err != nil {
					t.Fatal(err)
				}
			}
			last, err := a.Do(ctx, msgs(tt.n))
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("Do = %d, %v; want %v", last, err, tt.want)
				}
				var re *RefusedError
				if errors.As(err, &re) && re.Actual != uint64(tt.other) {
					t.Fatalf("RefusedError = %+v, want Actual %d", re, tt.other)
				}
				return
			}
			if err != nil {
				t.Fatalf("Do: %v", err)
			}
			st, _ := js.Stream(ctx, "S")
			if n := st.CachedInfo().State.Msgs; n != uint64(tt.n) || last != uint64(tt.n) {
				t.Fatalf("stream holds %d messages, Do returned %d; want %d and %d (each stored once)", n, last, tt.n, tt.n)
			}
		})
	}
}
