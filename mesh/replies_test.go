package mesh

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
)

// Every reply queued from many goroutines is published exactly once, with
// its own payload, also those queued just before close and after it.
func TestReplyBatcher(t *testing.T) {
	s := natstest.StartServer(t)
	pub, sub := natstest.Connect(t, s), natstest.Connect(t, s)
	got := make(chan *nats.Msg, 4096)
	if _, err := sub.ChanSubscribe("reply.>", got); err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	b := newReplyBatcher(pub, func(err error) { t.Errorf("publish: %v", err) })
	const workers, each = 32, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				b.publish(fmt.Sprintf("reply.%d.%d", w, i), fmt.Appendf(nil, "%d/%d", w, i), nil)
			}
		})
	}
	wg.Wait()
	b.close(context.Background())
	b.publish("reply.after.close", []byte("after/close"), nats.Header{"X": []string{"y"}})
	if err := pub.Flush(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	deadline := time.After(30 * time.Second)
	for len(seen) < workers*each+1 {
		select {
		case m := <-got:
			w, i, _ := strings.Cut(strings.TrimPrefix(m.Subject, "reply."), ".")
			want := w + "/" + i
			if string(m.Data) != want {
				t.Fatalf("reply on %s carries %q, want %q", m.Subject, m.Data, want)
			}
			if seen[m.Subject] {
				t.Fatalf("reply on %s published twice", m.Subject)
			}
			seen[m.Subject] = true
		case <-deadline:
			t.Fatalf("received %d of %d replies", len(seen), workers*each+1)
		}
	}
}

// sync orders what was queued before it ahead of what the caller then
// publishes itself on the same connection (an ack before the deletion of
// its consumer).
func TestReplyBatcherSync(t *testing.T) {
	s := natstest.StartServer(t)
	pub, sub := natstest.Connect(t, s), natstest.Connect(t, s)
	got := make(chan *nats.Msg, 1024)
	if _, err := sub.ChanSubscribe("seq.>", got); err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}
	b := newReplyBatcher(pub, func(err error) { t.Errorf("publish: %v", err) })
	defer b.close(context.Background())
	const n = 500
	for i := range n {
		b.publish("seq.queued", []byte(strconv.Itoa(i)), nil)
	}
	b.sync(context.Background())
	if err := pub.Publish("seq.direct", nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		select {
		case m := <-got:
			if m.Subject == "seq.direct" {
				if i != n {
					t.Fatalf("the message published after sync arrived after %d of the %d queued before it", i, n)
				}
				return
			}
			if string(m.Data) != strconv.Itoa(i) {
				t.Fatalf("queued message %d carries %q: out of order", i, m.Data)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("received %d messages, want %d then the direct one", i, n)
		}
	}
}
