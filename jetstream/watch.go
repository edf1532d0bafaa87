package jetstream

import (
	"context"
	"fmt"
	"sync"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

// EventKind says what happened to a lease key.
type EventKind uint8

const (
	// EventHeld: the key was written by a holder (acquired or renewed).
	EventHeld EventKind = iota + 1
	// EventReleased: the holder released the key (or it was deleted).
	EventReleased
	// EventExpired: the server expired the key (or it was purged).
	EventExpired
	// EventSynced: every key's value at the start of the watch has been
	// delivered; later events are changes. It carries no key.
	EventSynced
)

func (k EventKind) String() string {
	switch k {
	case EventHeld:
		return "held"
	case EventReleased:
		return "released"
	case EventExpired:
		return "expired"
	case EventSynced:
		return "synced"
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// Event is a change of a lease key seen by a Watcher.
type Event struct {
	Kind EventKind
	Key  string
	// Holder and Meta are set for EventHeld.
	Holder string
	Meta   []byte
	// Revision is the KV revision of the change.
	Revision uint64
	// Written is when the server stored the change, by its clock.
	Written time.Time
}

// Watcher delivers lease events. Create one with Leases.Watch.
type Watcher struct {
	kw       natsjs.KeyWatcher
	cancel   context.CancelFunc
	events   chan Event
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// Watch watches the keys matching patterns (KV key patterns; '*' and '>'
// wildcards allowed), or all keys if there are none. It first delivers the
// current value of every matching key (including release and expiry
// markers still stored), then one EventSynced, then every change in stream
// order, until ctx is done or Stop is called; then Events is closed.
//
// nats.go marks the end of the initial values with a nil entry; Watch turns
// it into EventSynced, which is delivered at once if no key matches. After
// the underlying ordered consumer recovers from a gap it re-delivers from
// where it was, without another EventSynced.
//
// Events is unbuffered and a slow reader delays only this watcher (nats.go
// buffers 256 entries, then stops reading this subscription).
func (ls *Leases) Watch(ctx context.Context, patterns ...string) (*Watcher, error) {
	// nats.go registers ctx with the subscription and keeps a goroutine
	// waiting on it; cancelling our own child context on Stop ends it.
	ctx, cancel := context.WithCancel(ctx)
	var kw natsjs.KeyWatcher
	var err error
	if len(patterns) == 0 {
		kw, err = ls.kv.WatchAll(ctx)
	} else {
		// WatchFiltered rewrites its slice in place: give it a copy.
		kw, err = ls.kv.WatchFiltered(ctx, append([]string(nil), patterns...))
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch %s: %w", ls.cfg.Bucket, err)
	}
	w := &Watcher{
		kw:     kw,
		cancel: cancel,
		events: make(chan Event),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	go w.run()
	return w, nil
}

// Events returns the channel of events, closed when the watch ends.
func (w *Watcher) Events() <-chan Event { return w.events }

// Stop ends the watch and waits for its goroutine to exit. It is
// idempotent.
func (w *Watcher) Stop() {
	w.stopOnce.Do(func() {
		close(w.stop)
		w.cancel()
		_ = w.kw.Stop() // already unsubscribed if ctx was done or the connection closed
	})
	<-w.done
}

func (w *Watcher) run() {
	defer close(w.done)
	defer close(w.events)
	updates := w.kw.Updates()
	// nats.go's subscription callback blocks while updates is full and
	// closes updates once the subscription is gone; drain it on stop so
	// that callback can return and its goroutine exit.
	defer func() {
		for range updates {
		}
	}()
	for {
		var e natsjs.KeyValueEntry
		select {
		case <-w.stop:
			return
		case u, ok := <-updates:
			if !ok {
				return
			}
			e = u
		}
		select {
		case w.events <- event(e):
		case <-w.stop:
			return
		}
	}
}

func event(e natsjs.KeyValueEntry) Event {
	if e == nil {
		return Event{Kind: EventSynced}
	}
	ev := Event{Key: e.Key(), Revision: e.Revision(), Written: e.Created()}
	switch e.Operation() {
	case natsjs.KeyValuePut:
		ev.Kind = EventHeld
		ev.Holder, ev.Meta = decodeValue(e.Value())
	case natsjs.KeyValueDelete:
		ev.Kind = EventReleased
	default:
		ev.Kind = EventExpired
	}
	return ev
}
