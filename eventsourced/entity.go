package eventsourced

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/guard"
	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Entity is one activation of an event-sourced entity, as its handlers see
// it: the state folded from its events, and Persist to add events. Its
// methods are for the entity's own handlers (which never run concurrently);
// calling them from other goroutines is a data race.
type Entity[S any] struct {
	d       *definition[S]
	addr    actor.Address
	self    *actor.Instance
	subject string
	snapKey string

	g      guard.Guard // commands one at a time; stale and failed appends
	state  S
	seq    uint64 // stream sequence of the last event folded (0: none)
	events uint64 // events folded since the entity's first
	since  int    // events since the last snapshot written or read

	snapMu   sync.Mutex
	snapping bool
	snapDone chan struct{}
}

func newEntity[S any](d *definition[S], addr actor.Address, self *actor.Instance) *Entity[S] {
	e := &Entity[S]{
		d:       d,
		addr:    addr,
		self:    self,
		subject: d.store.Subject(addr.Type, addr.ID),
		snapKey: snapshotKey(addr.Type, addr.ID),
	}
	e.g.Rebuild = func(ctx context.Context) error {
		if err := e.load(ctx, true); err != nil {
			return fmt.Errorf("rebuild %s: %w", e.addr, err)
		}
		return nil
	}
	return e
}

// State returns the current state: the fold of every event stored for the
// entity. When S holds maps or slices they are shared with the entity:
// change the state only through events.
func (e *Entity[S]) State() S { return e.state }

// Seq returns the stream sequence of the entity's last event (0 for none):
// the expected last sequence of its next append.
func (e *Entity[S]) Seq() uint64 { return e.seq }

// Events returns how many events the entity has.
func (e *Entity[S]) Events() uint64 { return e.events }

// Address returns the entity's address.
func (e *Entity[S]) Address() actor.Address { return e.addr }

// Actor returns the underlying activation (for OnStop, KeepAlive).
func (e *Entity[S]) Actor() *actor.Instance { return e.self }

// Persist stores events, in order and all or none, at the end of the
// entity's stream on condition that nobody else appended since this
// instance last read it, then applies them to the state. It returns once
// the server acknowledged the append (on R3, once a majority stored it), so
// a reply sent after it describes durable state.
//
// Errors:
//   - ErrUnknownEvent: an event's Go type was not declared; nothing stored.
//   - ErrTooManyEvents: more than MaxEventsPerAppend; nothing stored.
//   - *ConflictError (ErrConflict): another writer appended first; nothing
//     stored. The instance rebuilds from the stream before its next command.
//   - ErrUnknownOutcome: ctx ended before an answer; the events may be
//     stored. The instance rebuilds before its next command.
//   - the server's or the codec's error otherwise; nothing stored.
//
// After an error the state is unchanged and later Persist calls in the same
// command return the same error.
func (e *Entity[S]) Persist(ctx context.Context, events ...any) error {
	if err := e.g.Failed(); err != nil {
		return err
	}
	if err := e.g.Stale(); err != nil {
		return e.g.Fail(fmt.Errorf("%s: %w", e.addr, err))
	}
	if len(events) == 0 {
		return nil
	}
	if len(events) > MaxEventsPerAppend {
		return e.g.Fail(fmt.Errorf("%w: %d events, limit %d", ErrTooManyEvents, len(events), MaxEventsPerAppend))
	}
	st := e.d.store
	codec := st.cfg.Codec
	msgs := make([]*nats.Msg, len(events))
	types := make([]*EventType[S], len(events))
	for i, ev := range events {
		et := e.d.byType[reflect.TypeOf(ev)]
		if et == nil {
			return e.g.Fail(fmt.Errorf("%w: Go type %T is not declared for %s", ErrUnknownEvent, ev, e.addr.Type))
		}
		data, err := codec.Marshal(ev)
		if err != nil {
			return e.g.Fail(fmt.Errorf("encode event %s: %w", et.name, err))
		}
		h := nats.Header{
			HeaderEventType:      []string{et.name},
			protocol.HeaderCodec: []string{codec.Name()},
		}
		if et.version != 1 {
			h[HeaderEventVersion] = []string{strconv.Itoa(et.version)}
		}
		msgs[i] = &nats.Msg{Header: h, Data: data}
		types[i] = et
	}
	last, err := e.append(ctx, msgs)
	if err != nil {
		return e.g.Fail(err)
	}
	e.applyStored(types, events, last)
	e.maybeSnapshot()
	return nil
}

// applyStored folds events that are stored, the last at sequence last.
func (e *Entity[S]) applyStored(types []*EventType[S], events []any, last uint64) {
	// If a fold step panics, the state is half applied while the events
	// are stored: rebuild before anything else runs (the actor runtime
	// turns the panic into a Defect for this caller).
	e.g.MarkStale(errRebuild)
	for i, ev := range events {
		e.state = types[i].apply(e.state, ev)
	}
	e.g.MarkFresh()
	e.seq = last
	e.events += uint64(len(events))
	e.since += len(events)
}

var errRebuild = errors.New("state must be rebuilt from the stream")

// append stores msgs after the entity's last event, on condition that it is
// still e.seq, and returns the sequence of the last one (see jetstream.Append
// for how an unanswered attempt is resolved). A refusal or an unknown
// outcome makes the instance stale.
func (e *Entity[S]) append(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	st := e.d.store
	a := jetstream.Append{
		NC: st.nc, JS: st.js, Stream: st.stream, Subject: e.subject,
		Expected: e.seq, IDHeader: HeaderAppendID,
		AttemptTimeout: st.cfg.AppendAttemptTimeout,
	}
	if st.hooks != nil {
		a.Attempt = st.hooks.attempt
	}
	last, err := a.Do(ctx, msgs)
	var re *jetstream.RefusedError
	switch {
	case err == nil:
		return last, nil
	case errors.As(err, &re):
		// Another writer went ahead: this activation's state is stale. It
		// ends after this command; the next one re-creates the entity
		// from storage (actor.Instance.Stop).
		e.g.MarkStale(ErrConflict)
		if e.self != nil {
			e.self.Stop()
		}
		return 0, &ConflictError{Entity: e.addr.String(), Expected: re.Expected, Actual: re.Actual}
	case errors.Is(err, jetstream.ErrOutcomeUnknown):
		e.g.MarkStale(ErrUnknownOutcome)
		return 0, fmt.Errorf("%w: %s: %w", ErrUnknownOutcome, e.addr, err)
	}
	return 0, fmt.Errorf("append to %s: %w", e.addr, err)
}

// load rebuilds the state: the latest usable snapshot, then every event
// after it up to the last sequence the stream's leader reports.
func (e *Entity[S]) load(ctx context.Context, useSnapshot bool) error {
	st := e.d.store
	var last uint64
	m, err := jetstream.LeaderGet(ctx, st.nc, st.stream, jetstream.GetRequest{LastBySubject: e.subject})
	switch {
	case err == nil:
		last = m.Seq
	case errors.Is(err, jetstream.ErrNotFound):
	default:
		return fmt.Errorf("read last event of %s: %w", e.addr, err)
	}
	var state S
	if init := e.d.spec.Initial; init != nil {
		state = init(e.addr.ID)
	}
	var seq, events, fromSnapshot uint64
	if useSnapshot && last > 0 && e.d.spec.SnapshotEvery > 0 {
		if snap, ok := e.readSnapshot(ctx, last); ok {
			state, seq, events = snap.state, snap.Seq, snap.Events
			fromSnapshot = seq
		}
	}
	replayed := 0
	if last > seq {
		err := jetstream.ReadSubject(ctx, st.nc, st.stream, e.subject, seq+1, last, func(m *jetstream.Msg) error {
			et, ev, err := e.d.decode(m.Header, m.Data, st.cfg.Codec)
			if err != nil {
				return fmt.Errorf("event at %d: %w", m.Seq, err)
			}
			state = et.apply(state, ev)
			seq = m.Seq
			events++
			replayed++
			return nil
		})
		if err != nil {
			return fmt.Errorf("replay %s: %w", e.addr, err)
		}
	}
	e.state, e.seq, e.events, e.since = state, seq, events, replayed
	e.g.MarkFresh()
	if h := e.d.store.hooks; h != nil && h.loaded != nil {
		h.loaded(e.addr, fromSnapshot, replayed)
	}
	e.maybeSnapshot()
	return nil
}

// decode turns a stored event into its Go value, upcasting old versions.
func (d *definition[S]) decode(h nats.Header, data []byte, codec actor.Codec) (*EventType[S], any, error) {
	name := h.Get(HeaderEventType)
	et := d.byName[name]
	if et == nil {
		return nil, nil, fmt.Errorf("%w: type %q is not declared for %s", ErrUnknownEvent, name, d.entity.Name())
	}
	v := 1
	if s := h.Get(HeaderEventVersion); s != "" {
		var err error
		if v, err = strconv.Atoi(s); err != nil || v < 1 {
			return nil, nil, fmt.Errorf("%w: %s: bad version %q", ErrDecode, name, s)
		}
	}
	if v > et.version {
		return nil, nil, fmt.Errorf("%w: %s version %d is newer than the declared %d", ErrUnknownEvent, name, v, et.version)
	}
	for ; v < et.version; v++ {
		up := et.upcasts[v]
		if up == nil {
			return nil, nil, fmt.Errorf("%w: %s version %d: no upcaster to %d", ErrUnknownEvent, name, v, v+1)
		}
		var err error
		if data, err = up(data); err != nil {
			return nil, nil, fmt.Errorf("%w: %s: upcast from version %d: %w", ErrDecode, name, v, err)
		}
	}
	codec, err := protocol.CodecFor(h.Get(protocol.HeaderCodec), codec)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrDecode, name, err)
	}
	ev, err := et.decode(codec, data)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrDecode, name, err)
	}
	return et, ev, nil
}

// snapshot is a stored snapshot: a state and the point of the stream it
// folds up to.
type snapshot struct {
	Format       int       `json:"format"`
	Seq          uint64    `json:"seq"`
	Events       uint64    `json:"events"`
	StreamCreate time.Time `json:"streamCreated"`
	StateVersion int       `json:"stateVersion"`
	Codec        string    `json:"codec"`
	State        []byte    `json:"state"`
}

type loadedSnapshot[S any] struct {
	snapshot
	state S
}

// readSnapshot returns the snapshot if it is usable: written for this
// stream (not one deleted and re-created since), for a sequence the stream
// has reached, with the current state version and a known codec. Anything
// else is skipped (logged) and the state rebuilt from the events.
func (e *Entity[S]) readSnapshot(ctx context.Context, last uint64) (loadedSnapshot[S], bool) {
	st := e.d.store
	log := st.log
	var out loadedSnapshot[S]
	data, err := st.snaps.get(ctx, e.snapKey)
	if err != nil {
		if !errors.Is(err, errSnapshotNotFound) {
			log.Warn("eventsourced: snapshot unreadable, replaying all events", "entity", e.addr.String(), "err", err)
		}
		return out, false
	}
	skip := func(why string, args ...any) (loadedSnapshot[S], bool) {
		log.Info("eventsourced: snapshot skipped: "+why, append([]any{"entity", e.addr.String()}, args...)...)
		return out, false
	}
	if err := json.Unmarshal(data, &out.snapshot); err != nil {
		return skip("corrupt", "err", err)
	}
	codec, err := protocol.CodecFor(out.Codec, st.cfg.Codec)
	if err != nil {
		return skip("unknown codec", "err", err)
	}
	switch {
	case out.Format != 1:
		return skip("unknown format", "format", out.Format)
	case !out.StreamCreate.Equal(st.created):
		return skip("written for another incarnation of the stream")
	case out.Seq > last:
		return skip("ahead of the stream", "seq", out.Seq, "last", last)
	case out.StateVersion != e.d.spec.StateVersion:
		return skip("state version changed", "stored", out.StateVersion, "current", e.d.spec.StateVersion)
	}
	if err := codec.Unmarshal(out.State, &out.state); err != nil {
		return skip("state undecodable", "err", err)
	}
	return out, true
}

// maybeSnapshot starts writing a snapshot once SnapshotEvery events have
// been folded since the last one. The state is encoded here, on the
// entity's goroutine; the write runs in the background (one at a time per
// entity; OnStop waits for it), so a command never waits for a snapshot.
func (e *Entity[S]) maybeSnapshot() {
	every := e.d.spec.SnapshotEvery
	if every == 0 || e.since < every || e.seq == 0 {
		return
	}
	st := e.d.store
	e.snapMu.Lock()
	busy := e.snapping
	e.snapMu.Unlock()
	if busy {
		return // the next event tries again
	}
	state, err := st.cfg.Codec.Marshal(e.state)
	if err == nil {
		var data []byte
		data, err = json.Marshal(snapshot{
			Format: 1, Seq: e.seq, Events: e.events, StreamCreate: st.created,
			StateVersion: e.d.spec.StateVersion, Codec: st.cfg.Codec.Name(), State: state,
		})
		if err == nil {
			e.since = 0
			done := make(chan struct{})
			e.snapMu.Lock()
			e.snapping, e.snapDone = true, done
			e.snapMu.Unlock()
			go e.writeSnapshot(data, done)
			return
		}
	}
	e.since = 0 // an unencodable state fails the same way next time: wait another interval
	st.log.Warn("eventsourced: cannot encode snapshot", "entity", e.addr.String(), "err", err)
}

func (e *Entity[S]) writeSnapshot(data []byte, done chan struct{}) {
	st := e.d.store
	ctx, cancel := context.WithTimeout(context.Background(), st.cfg.ActivationTimeout)
	defer cancel()
	if err := st.snaps.put(ctx, e.snapKey, data); err != nil {
		st.log.Warn("eventsourced: snapshot not written", "entity", e.addr.String(), "err", err)
	}
	e.snapMu.Lock()
	e.snapping = false
	e.snapMu.Unlock()
	close(done)
}

// stop is the activation's finalizer: it waits for a snapshot write.
func (e *Entity[S]) stop(ctx context.Context) {
	e.snapMu.Lock()
	done := e.snapDone
	e.snapMu.Unlock()
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}
