package mesh

import (
	"context"
	"runtime"
	"sync"

	"github.com/nats-io/nats.go"
)

// replyBatcher publishes the replies of unary calls, and the replies and
// acknowledgements of persisted messages, from one goroutine, so that a
// burst of them leaves in one socket write instead of one write each.
//
// Why: every entity handles its call on a goroutine of its own, which exits
// when its mailbox is empty. Were it to publish its reply itself, nats.go's
// flusher, woken by the publish, would take the scheduler's run-next slot
// and write that single reply as soon as the goroutine exits, before the
// next entity's goroutine runs: one write system call per reply, which on
// loopback is most of a call's CPU. Here the handlers append to a queue;
// the publisher yields once before it takes the queue, so the goroutines of
// the same burst append first, then it publishes them all and the flusher
// writes them together. A lone call waits for one yield, a fraction of a
// microsecond. Benchmarks: docs/benchmarks.md (writes per call).
type replyBatcher struct {
	nc *nats.Conn

	mu      sync.Mutex
	pending []pendingReply
	spare   []pendingReply
	closed  bool

	wake chan struct{} // 1 slot: pending became non-empty
	done chan struct{} // closed when the loop has returned
	warn func(error)
}

type pendingReply struct {
	subject string
	payload []byte
	header  nats.Header   // nil: none
	synced  chan struct{} // not nil: a marker of sync, closed when reached
}

func newReplyBatcher(nc *nats.Conn, warn func(error)) *replyBatcher {
	b := &replyBatcher{nc: nc, wake: make(chan struct{}, 1), done: make(chan struct{}), warn: warn}
	go b.loop()
	return b
}

// publish queues payload for subject, with header if not nil. After close
// it publishes directly. Payload and header must not change afterwards.
func (b *replyBatcher) publish(subject string, payload []byte, header nats.Header) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		b.send(pendingReply{subject: subject, payload: payload, header: header})
		return
	}
	b.enqueueLocked(pendingReply{subject: subject, payload: payload, header: header})
	b.mu.Unlock()
}

// sync returns once everything queued before the call is handed to the
// connection (so the server receives it before what the caller sends
// next on the same connection), or ctx ends.
func (b *replyBatcher) sync(ctx context.Context) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return // published directly from now on; the loop has or will finish
	}
	done := make(chan struct{})
	b.enqueueLocked(pendingReply{synced: done})
	b.mu.Unlock()
	select {
	case <-done:
	case <-b.done:
	case <-ctx.Done():
	}
}

// enqueueLocked queues p and wakes the loop; b.mu is held.
func (b *replyBatcher) enqueueLocked(p pendingReply) {
	b.pending = append(b.pending, p)
	if len(b.pending) == 1 {
		select { // under mu: close closes wake under mu too
		case b.wake <- struct{}{}:
		default:
		}
	}
}

func (b *replyBatcher) loop() {
	defer close(b.done)
	for {
		_, ok := <-b.wake
		// Let the goroutines made runnable by the same burst of calls run
		// (and queue their replies) before taking the queue.
		runtime.Gosched()
		b.mu.Lock()
		batch := b.pending
		b.pending, b.spare = b.spare[:0], nil
		b.mu.Unlock()
		for i, p := range batch {
			b.send(p)
			batch[i] = pendingReply{}
		}
		b.mu.Lock()
		if b.spare == nil && cap(batch) <= 4096 {
			b.spare = batch[:0]
		}
		b.mu.Unlock()
		if !ok {
			return
		}
	}
}

func (b *replyBatcher) send(p pendingReply) {
	var err error
	switch {
	case p.synced != nil:
		close(p.synced)
	case p.header == nil:
		err = b.nc.Publish(p.subject, p.payload)
	default:
		err = b.nc.PublishMsg(&nats.Msg{Subject: p.subject, Data: p.payload, Header: p.header})
	}
	if err != nil {
		b.warn(err)
	}
}

// close publishes what is queued and returns once it is handed to the
// connection (or ctx ends); later replies are published directly.
func (b *replyBatcher) close(ctx context.Context) {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.wake)
	}
	b.mu.Unlock()
	select {
	case <-b.done:
	case <-ctx.Done():
	}
}
