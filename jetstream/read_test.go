package jetstream

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// validToken is what a subject token and a KV key both accept.
var validToken = regexp.MustCompile(`^[-_=a-zA-Z0-9]+$`)

func TestToken(t *testing.T) {
	tests := []struct{ id, want string }{
		{"user-123", "user-123"},
		{"a.b", "a=2Eb"},
		{"*", "=2A"},
		{">", "=3E"},
		{"with space", "with=20space"},
		{"=", "=3D"},
		{"é", "=C3=A9"},
		{"a/b_c", "a=2Fb_c"},
	}
	for _, tt := range tests {
		if got := Token(tt.id); got != tt.want {
			t.Errorf("Token(%q) = %q, want %q", tt.id, got, tt.want)
		}
		if back, err := ParseToken(tt.want); err != nil || back != tt.id {
			t.Errorf("ParseToken(%q) = %q, %v; want %q", tt.want, back, err, tt.id)
		}
	}
	for _, bad := range []string{"", "=", "=4", "=2e", "=41", "a.b", "=G0", "a b"} {
		if got, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) = %q, want an error (no id has this token)", bad, got)
		}
	}
}

// Token is injective and its output is a valid subject token and KV key:
// ParseToken inverts it, and accepts nothing Token would not produce.
func FuzzToken(f *testing.F) {
	for _, s := range []string{"a", "a.b", "=3D", "\x00", "ü>*", " "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if s == "" {
			return
		}
		tok := Token(s)
		if !validToken.MatchString(tok) {
			t.Fatalf("Token(%q) = %q: not a valid token", s, tok)
		}
		back, err := ParseToken(tok)
		if err != nil || back != s {
			t.Fatalf("ParseToken(Token(%q)) = %q, %v", s, back, err)
		}
		if id, err := ParseToken(s); err == nil && Token(id) != s {
			t.Fatalf("ParseToken(%q) = %q, but Token of it is %q", s, id, Token(id))
		}
	})
}

func TestLeaderGetAndReadSubject(t *testing.T) {
	s := natstest.StartServer(t)
	nc := natstest.Connect(t, s)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, natsjs.StreamConfig{Name: "S", Subjects: []string{"s.>"}, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := LeaderGet(ctx, nc, "S", GetRequest{LastBySubject: "s.a"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LeaderGet on an empty subject = %v, want ErrNotFound", err)
	}
	// Two subjects interleaved, more messages than one batch.
	const n = 2500
	var last uint64
	for i := range n {
		for _, subj := range []string{"s.a", "s.b"} {
			m := &nats.Msg{Subject: subj, Header: nats.Header{"X": []string{fmt.Sprint(i)}}, Data: []byte(fmt.Sprint(i))}
			if _, err := js.PublishMsgAsync(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishes not acknowledged")
	}
	m, err := LeaderGet(ctx, nc, "S", GetRequest{LastBySubject: "s.a"})
	if err != nil || string(m.Data) != fmt.Sprint(n-1) {
		t.Fatalf("LeaderGet last of s.a = %v, %v; want %d", m, err, n-1)
	}
	last = m.Seq
	next, err := LeaderGet(ctx, nc, "S", GetRequest{Seq: 2, NextBySubject: "s.a"})
	if err != nil || string(next.Data) != "1" || next.Header.Get("X") != "1" {
		t.Fatalf("LeaderGet next of s.a from 2 = %+v, %v; want message 1", next, err)
	}
	from := next.Seq
	var got []string
	err = ReadSubject(ctx, nc, "S", "s.a", from, last, func(m *Msg) error {
		if m.Subject != "s.a" {
			t.Fatalf("ReadSubject gave a message of %s", m.Subject)
		}
		got = append(got, string(m.Data))
		return nil
	})
	if err != nil || len(got) != n-1 || got[0] != "1" || got[len(got)-1] != fmt.Sprint(n-1) {
		t.Fatalf("ReadSubject from %d to %d: %d messages, %v; want %d, 1 to %d", from, last, len(got), err, n-1, n-1)
	}
	// Waiting for a sequence the stream never reaches ends with ctx.
	short, cancel2 := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel2()
	if err := ReadSubject(short, nc, "S", "s.a", from, last+100, func(*Msg) error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ReadSubject past the end = %v, want the context's deadline", err)
	}
}

func TestWrongLastSequence(t *testing.T) {
	s := natstest.StartServer(t)
	nc := natstest.Connect(t, s)
	js, _ := natsjs.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, natsjs.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "s.a", nil, natsjs.WithExpectLastSequencePerSubject(0)); err != nil {
		t.Fatal(err)
	}
	_, err := js.Publish(ctx, "s.a", nil, natsjs.WithExpectLastSequencePerSubject(0))
	if !WrongLastSequence(err) {
		t.Fatalf("WrongLastSequence(%v) = false", err)
	}
	if WrongLastSequence(errors.New("other")) || WrongLastSequence(nil) {
		t.Fatal("WrongLastSequence of another error = true")
	}
}
