package durablestate

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/guard"
	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Spec describes a durable-state entity type.
type Spec[S any] struct {
	// Initial is the state of an entity never saved (or deleted). Nil: the
	// zero S.
	Initial func(id string) S
	// Handlers handle the entity's RPCs; an RPC without a handler fails
	// with actor.ErrNotImplemented.
	Handlers []Handler[S]
	// WriteBehind, when set, makes Save return before the state is written
	// (see WriteBehind for what a crash can lose). Nil: write-through,
	// Save returns once the server stored the state.
	WriteBehind *WriteBehind
	// StateVersion is the version of S's encoding, stored with each state.
	// A state stored with an older version goes through Migrate before it
	// is decoded.
	StateVersion int
	// Migrate turns a stored state of version from into one of version
	// from+1, in the codec's encoding. Nil: states of an older version fail
	// activation with ErrDecode.
	Migrate func(from int, data []byte) ([]byte, error)
}

// WriteBehind bounds what a write-behind entity keeps unsaved. Changes are
// flushed Interval after the first unsaved one, as soon as MaxChanges are
// unsaved, and when the activation ends (passivation, shutdown, its shard
// moving away). A crash of the runner loses the unsaved changes: at most
// those of the last Interval, and fewer than MaxChanges. A flush refused
// because another instance wrote first loses them too (logged).
type WriteBehind struct {
	// Interval is the longest a change stays unsaved while the runner
	// lives. It must be positive.
	Interval time.Duration
	// MaxChanges, when positive, flushes within the Save that makes that
	// many changes unsaved (that Save waits for the write).
	MaxChanges int
}

// Handler binds one RPC of the entity to a command handler. Build it with
// Handle or HandleStream.
type Handler[S any] struct{ b guard.Binding[Entity[S]] }

// bindings returns the handlers' bindings, for guard.Check.
func bindings[S any](hs []Handler[S]) []guard.Binding[Entity[S]] {
	out := make([]guard.Binding[Entity[S]], len(hs))
	for i, h := range hs {
		out[i] = h.b
	}
	return out
}

// guardOf is the guard of an instance, for guard.Bind.
func guardOf[S any](e *Entity[S]) *guard.Guard { return &e.g }

// Handle binds rpc to fn. fn reads the state with e.State(), saves a new
// one with e.Save, and returns the reply. Handlers of one entity never run
// concurrently (even with actor.Concurrency), nor with a write-behind
// flush.
//
// If a write fails during fn, the caller receives that error whatever fn
// returns: a handler cannot report success for a state that was not
// stored. Before fn runs, an instance whose last write was refused or
// unanswered reloads its state.
func Handle[S, Req, Resp any](rpc actor.RPC[Req, Resp], fn func(ctx context.Context, e *Entity[S], req Req) (Resp, error)) Handler[S] {
	return Handler[S]{guard.Bind(rpc, guardOf[S], fn)}
}

// HandleStream binds a streaming rpc to fn, as Handle does a unary one:
// fn emits the chunks, with the entity held for the whole stream (no other
// command runs meanwhile).
func HandleStream[S, Req, Chunk any](rpc actor.StreamRPC[Req, Chunk], fn func(ctx context.Context, e *Entity[S], req Req, emit func(Chunk) error) error) Handler[S] {
	return Handler[S]{guard.BindStream(rpc, guardOf[S], fn)}
}

type definition[S any] struct {
	store   *Store
	entity  *actor.Entity
	spec    Spec[S]
	bucket  string
	stream  string
	subject string // "$KV.<bucket>."
}

// New creates (or updates) the entity type's KV bucket,
// <Prefix>_state_<EntityType>, and returns its behaviour: register it with
// a mesh Runner (or an actor Runtime) and call it with mesh.Call. opts are
// the entity's actor options.
//
// Each activation loads the state (from the bucket's stream leader, so it
// sees every acknowledged write) before its first message; a failure there
// is an activation failure (actor.ErrActivation), retried per the entity's
// DefectRetryPolicy.
//
// New returns an error wrapping ErrInvalidOption for a nil store or entity, a
// handler for another entity's RPC or two for one RPC, or a WriteBehind
// without a positive Interval; or the server's error creating the bucket
// (after retrying until ctx ends; 30 s when ctx has no deadline).
func New[S any](ctx context.Context, store *Store, entity *actor.Entity, spec Spec[S], opts ...actor.Option) (*actor.Behavior, error) {
	d, err := define(store, entity, spec)
	if err != nil {
		return nil, err
	}
	err = jetstream.Setup(ctx, "open "+d.bucket, func(ctx context.Context) error {
		_, err := jetstream.EnsureKeyValue(ctx, store.js, natsjs.KeyValueConfig{
			Bucket:      d.bucket,
			Description: "natsmesh durable state of " + entity.Name() + " entities",
			History:     1,
			Replicas:    store.cfg.Replicas,
		}, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	return actor.Implement(entity, func(self *actor.Instance) ([]actor.Handler, error) {
		e := newEntity(d, self.Address(), self)
		hs := make([]actor.Handler, 0, len(spec.Handlers))
		for _, h := range spec.Handlers {
			hs = append(hs, h.b.Handler(e))
		}
		if self.Probe() {
			return hs, nil // Register's check: no state to load
		}
		ctx, cancel := context.WithTimeout(context.Background(), store.cfg.LoadTimeout)
		defer cancel()
		if err := e.load(ctx); err != nil {
			return nil, err
		}
		self.OnStop(e.stop)
		return hs, nil
	}, opts...), nil
}

func define[S any](store *Store, entity *actor.Entity, spec Spec[S]) (*definition[S], error) {
	name := "<nil>"
	if entity != nil {
		name = entity.Name()
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidOption, name, fmt.Sprintf(format, args...))
	}
	switch {
	case store == nil:
		return nil, bad("nil Store")
	case entity == nil:
		return nil, bad("nil entity")
	case spec.WriteBehind != nil && spec.WriteBehind.Interval <= 0:
		return nil, bad("WriteBehind.Interval %v must be positive", spec.WriteBehind.Interval)
	case spec.WriteBehind != nil && spec.WriteBehind.MaxChanges < 0:
		return nil, bad("WriteBehind.MaxChanges %d is negative", spec.WriteBehind.MaxChanges)
	case spec.StateVersion < 0:
		return nil, bad("StateVersion %d is negative", spec.StateVersion)
	}
	if err := guard.Check(name, entity, bindings(spec.Handlers)); err != nil {
		return nil, err
	}
	bucket := store.Bucket(entity.Name())
	return &definition[S]{store: store, entity: entity, spec: spec, bucket: bucket, stream: "KV_" + bucket, subject: "$KV." + bucket + "."}, nil
}

// Entity is one activation of a durable-state entity, as its handlers see
// it. Its methods are for the entity's own handlers (which never run
// concurrently); calling them from other goroutines is a data race.
type Entity[S any] struct {
	d       *definition[S]
	addr    actor.Address
	self    *actor.Instance
	subject string

	g       guard.Guard // held by commands and flushes
	state   S
	rev     uint64 // KV revision of the stored state (0: never stored)
	dirty   int    // write-behind: changes not yet stored
	timer   *time.Timer
	stopped bool
}

func newEntity[S any](d *definition[S], addr actor.Address, self *actor.Instance) *Entity[S] {
	e := &Entity[S]{d: d, addr: addr, self: self, subject: d.subject + Key(addr.ID)}
	e.g.Rebuild = func(ctx context.Context) error {
		if err := e.load(ctx); err != nil {
			return fmt.Errorf("reload %s: %w", e.addr, err)
		}
		return nil
	}
	return e
}

// State returns the current state: the last one saved (with write-behind,
// possibly not yet stored). When S holds maps or slices they are shared
// with the entity: change a copy and Save it.
func (e *Entity[S]) State() S { return e.state }

// Revision returns the KV revision of the stored state (0 if never
// stored).
func (e *Entity[S]) Revision() uint64 { return e.rev }

// Unsaved returns how many changes are not yet stored (write-behind).
func (e *Entity[S]) Unsaved() int { return e.dirty }

// Address returns the entity's address.
func (e *Entity[S]) Address() actor.Address { return e.addr }

// Actor returns the underlying activation (for OnStop, KeepAlive).
func (e *Entity[S]) Actor() *actor.Instance { return e.self }

// Save makes s the entity's state. Write-through (the default), it writes
// s on condition that the stored revision is still the one this instance
// read or wrote, and returns once the server stored it. Write-behind, it
// returns at once and s is stored later (see WriteBehind), unless this Save
// reaches MaxChanges.
//
// Errors (nothing of this Save is stored, the state is unchanged):
//   - *ConflictError (ErrConflict): another writer stored first. The
//     instance reloads before its next command.
//   - ErrUnknownOutcome: ctx ended before an answer; s may be stored. The
//     instance reloads before its next command.
//   - the codec's or the server's error.
//
// After an error later Save calls in the same command return the same error.
func (e *Entity[S]) Save(ctx context.Context, s S) error {
	if err := e.g.Failed(); err != nil {
		return err
	}
	wb := e.d.spec.WriteBehind
	if wb == nil {
		if err := e.write(ctx, s, nil); err != nil {
			return e.g.Fail(err)
		}
		e.state = s
		return nil
	}
	e.state = s
	e.dirty++
	if wb.MaxChanges > 0 && e.dirty >= wb.MaxChanges {
		if err := e.flush(ctx); err != nil {
			return e.g.Fail(err)
		}
		return nil
	}
	if e.timer == nil {
		e.timer = time.AfterFunc(wb.Interval, e.flushLater)
	}
	return nil
}

// Delete removes the stored state (the entity's state becomes Initial's),
// on the same condition as Save, always write-through. Its errors are
// Save's.
func (e *Entity[S]) Delete(ctx context.Context) error {
	if err := e.g.Failed(); err != nil {
		return err
	}
	if err := e.write(ctx, e.state, nats.Header{"KV-Operation": []string{"DEL"}}); err != nil {
		return e.g.Fail(err)
	}
	e.state = e.initial()
	e.dirty = 0
	e.stopTimer()
	return nil
}

func (e *Entity[S]) initial() S {
	var s S
	if init := e.d.spec.Initial; init != nil {
		s = init(e.addr.ID)
	}
	return s
}

// write stores s (or, with a KV-Operation header, a delete marker) at
// revision e.rev.
func (e *Entity[S]) write(ctx context.Context, s S, marker nats.Header) error {
	st := e.d.store
	m := &nats.Msg{Header: nats.Header{}}
	if marker != nil {
		m.Header = marker
	} else {
		data, err := st.cfg.Codec.Marshal(s)
		if err != nil {
			return fmt.Errorf("encode state of %s: %w", e.addr, err)
		}
		m.Data = data
		m.Header[protocol.HeaderCodec] = []string{st.cfg.Codec.Name()}
		if v := e.d.spec.StateVersion; v != 0 {
			m.Header[HeaderStateVersion] = []string{strconv.Itoa(v)}
		}
	}
	a := jetstream.Append{
		NC: st.nc, JS: st.js, Stream: e.d.stream, Subject: e.subject,
		Expected: e.rev, IDHeader: HeaderWriteID,
		AttemptTimeout: st.cfg.WriteAttemptTimeout,
	}
	if st.hooks != nil {
		a.Attempt = st.hooks.attempt
	}
	rev, err := a.Do(ctx, []*nats.Msg{m})
	var re *jetstream.RefusedError
	switch {
	case err == nil:
		e.rev = rev
		return nil
	case errors.As(err, &re):
		// Another writer went ahead: this activation's state is stale. It
		// ends after this command; the next one re-creates the entity
		// from storage (actor.Instance.Stop).
		e.g.MarkStale(ErrConflict)
		if e.self != nil {
			e.self.Stop()
		}
		return &ConflictError{Entity: e.addr.String(), Expected: re.Expected, Actual: re.Actual}
	case errors.Is(err, jetstream.ErrOutcomeUnknown):
		e.g.MarkStale(ErrUnknownOutcome)
		return fmt.Errorf("%w: %s: %w", ErrUnknownOutcome, e.addr, err)
	}
	return fmt.Errorf("write state of %s: %w", e.addr, err)
}

// flush stores the unsaved state; the guard is held.
func (e *Entity[S]) flush(ctx context.Context) error {
	if e.dirty == 0 {
		return nil
	}
	n := e.dirty
	if err := e.write(ctx, e.state, nil); err != nil {
		if e.g.Stale() != nil {
			e.d.store.log.Warn("durablestate: unsaved changes lost", "entity", e.addr.String(), "changes", n, "err", err)
			e.dirty = 0
			e.stopTimer()
		}
		return err
	}
	e.dirty = 0
	e.stopTimer()
	return nil
}

// flushLater is the write-behind timer's flush. A transient failure is
// retried after another interval; a refused one loses the changes (the
// instance reloads before its next command).
func (e *Entity[S]) flushLater() {
	e.g.Lock()
	defer e.g.Unlock()
	e.timer = nil
	if e.stopped || e.g.Stale() != nil || e.dirty == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.d.store.cfg.LoadTimeout)
	defer cancel()
	if err := e.flush(ctx); err != nil && e.g.Stale() == nil {
		e.d.store.log.Warn("durablestate: flush failed, retrying", "entity", e.addr.String(), "err", err)
		e.timer = time.AfterFunc(e.d.spec.WriteBehind.Interval, e.flushLater)
	}
}

func (e *Entity[S]) stopTimer() {
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
}

// stop is the activation's finalizer: it flushes unsaved changes.
func (e *Entity[S]) stop(ctx context.Context) {
	e.g.Lock()
	defer e.g.Unlock()
	e.stopped = true
	e.stopTimer()
	if e.g.Stale() != nil || e.dirty == 0 {
		return
	}
	if err := e.flush(ctx); err != nil && e.g.Stale() == nil {
		e.d.store.log.Warn("durablestate: unsaved changes lost at stop", "entity", e.addr.String(), "changes", e.dirty, "err", err)
	}
}

// load reads the stored state from the bucket stream's leader.
func (e *Entity[S]) load(ctx context.Context) error {
	st := e.d.store
	m, err := jetstream.LeaderGet(ctx, st.nc, e.d.stream, jetstream.GetRequest{LastBySubject: e.subject})
	if errors.Is(err, jetstream.ErrNotFound) {
		e.state, e.rev, e.dirty = e.initial(), 0, 0
		e.g.MarkFresh()
		return nil
	}
	if err != nil {
		return fmt.Errorf("load %s: %w", e.addr, err)
	}
	state, err := e.decode(m)
	if err != nil {
		return fmt.Errorf("%w: %s at revision %d: %w", ErrDecode, e.addr, m.Seq, err)
	}
	e.state, e.rev, e.dirty = state, m.Seq, 0
	e.g.MarkFresh()
	return nil
}

func (e *Entity[S]) decode(m *jetstream.Msg) (S, error) {
	if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		return e.initial(), nil
	}
	var s S
	spec := e.d.spec
	v := 0
	if h := m.Header.Get(HeaderStateVersion); h != "" {
		var err error
		if v, err = strconv.Atoi(h); err != nil || v < 0 {
			return s, fmt.Errorf("bad state version %q", h)
		}
	}
	if v > spec.StateVersion {
		return s, fmt.Errorf("state version %d is newer than the declared %d", v, spec.StateVersion)
	}
	data := m.Data
	for ; v < spec.StateVersion; v++ {
		if spec.Migrate == nil {
			return s, fmt.Errorf("state version %d and no Migrate to %d", v, spec.StateVersion)
		}
		var err error
		if data, err = spec.Migrate(v, data); err != nil {
			return s, fmt.Errorf("migrate from version %d: %w", v, err)
		}
	}
	codec, err := protocol.CodecFor(m.Header.Get(protocol.HeaderCodec), e.d.store.cfg.Codec)
	if err != nil {
		return s, err
	}
	err = codec.Unmarshal(data, &s)
	return s, err
}
