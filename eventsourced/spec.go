package eventsourced

import (
	"context"
	"fmt"
	"reflect"
	"strings"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/guard"
)

// Spec describes an event-sourced entity type: its state S, the events
// that change it and the handlers that decide them.
type Spec[S any] struct {
	// Initial is the state of an entity with no events. Nil: the zero S.
	Initial func(id string) S
	// Events declares every event type, each with its fold step.
	Events []EventType[S]
	// Handlers handle the entity's RPCs; an RPC without a handler fails
	// with actor.ErrNotImplemented.
	Handlers []Handler[S]
	// SnapshotEvery writes a snapshot of the state after every N events,
	// so that activation replays at most about N events. 0: no snapshots
	// (activation replays the whole history).
	SnapshotEvery int
	// StateVersion is the version of S's encoding. A snapshot written
	// with another version is ignored and the state rebuilt from the
	// events: bump it whenever S changes shape.
	StateVersion int
}

// EventType is one declared event: its stored name, its Go type, its fold
// step and its schema history. Build it with Event.
type EventType[S any] struct {
	name    string
	typ     reflect.Type
	apply   func(S, any) S
	decode  func(c actor.Codec, data []byte) (any, error)
	version int
	aliases []string
	upcasts map[int]func([]byte) ([]byte, error)
	err     error // a bad option, reported by New
}

// Event declares an event type E stored under name, and apply, the step of
// the fold: the state after the event from the state before it. apply must
// be deterministic and must not fail: the event is already stored when it
// runs, and every activation runs it again. It may change S in place when
// S holds maps or slices (the previous state is never used again).
//
// name must match [A-Za-z0-9_.-]{1,128}: it is stored in every event's
// Mesh-Event-Type header and is the event's identity forever, unlike the Go
// type's name (rename the Go type freely; rename the event with Alias).
func Event[S, E any](name string, apply func(S, E) S, opts ...EventOption) EventType[S] {
	et := EventType[S]{
		name:    name,
		typ:     reflect.TypeFor[E](),
		version: 1,
		decode: func(c actor.Codec, data []byte) (any, error) {
			var e E
			err := c.Unmarshal(data, &e)
			return e, err
		},
	}
	if apply != nil {
		et.apply = func(s S, e any) S { return apply(s, e.(E)) }
	}
	o := eventOptions{version: 1}
	for _, opt := range opts {
		if err := opt(&o); err != nil && o.err == nil {
			o.err = err
		}
	}
	et.version, et.aliases, et.upcasts, et.err = o.version, o.aliases, o.upcasts, o.err
	return et
}

type eventOptions struct {
	version int
	aliases []string
	upcasts map[int]func([]byte) ([]byte, error)
	err     error
}

// EventOption describes an event's schema history. A bad one is reported
// by New, with the event's name.
type EventOption func(*eventOptions) error

// Version sets the current version of the event's schema (default 1). New
// events are stored with it; stored events of an older version go through
// the upcasters from their version up to it before they are decoded.
func Version(n int) EventOption {
	return func(o *eventOptions) error {
		if n < 1 {
			return fmt.Errorf("Version %d: want at least 1", n)
		}
		o.version = n
		return nil
	}
}

// Upcast registers how stored data of version from becomes data of version
// from+1, in the Codec's encoding (with JSON, decode into a map or an old
// struct, change it, encode it). Upcasters run at every replay and never
// rewrite the stream. An event stored at version v < Version decodes only
// if upcasters exist for v, v+1, ..., Version-1; otherwise activation fails
// with ErrUnknownEvent rather than guess.
func Upcast(from int, fn func(data []byte) ([]byte, error)) EventOption {
	return func(o *eventOptions) error {
		if fn == nil || from < 1 {
			return fmt.Errorf("Upcast(%d): want from >= 1 and a function", from)
		}
		if o.upcasts == nil {
			o.upcasts = map[int]func([]byte) ([]byte, error){}
		}
		if _, dup := o.upcasts[from]; dup {
			return fmt.Errorf("Upcast(%d) registered twice", from)
		}
		o.upcasts[from] = fn
		return nil
	}
}

// Alias lets stored events written under old names decode as this event
// (after a rename). Their versions continue this event's numbering.
func Alias(oldNames ...string) EventOption {
	return func(o *eventOptions) error { o.aliases = append(o.aliases, oldNames...); return nil }
}

// Handler binds one RPC of the entity to a command handler. Build it with
// Handle.
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

// Handle binds rpc to fn. fn reads the state with e.State(), decides the
// events, stores and applies them with e.Persist, and returns the reply.
// Handlers of one entity never run concurrently (even with
// actor.Concurrency): each sees the state its predecessor left.
//
// If an append fails during fn, the caller receives that append's error
// whatever fn returns: a handler cannot report success for events that were
// not stored. Before fn runs, an instance whose last append was refused or
// unanswered rebuilds its state from the stream.
func Handle[S, Req, Resp any](rpc actor.RPC[Req, Resp], fn func(ctx context.Context, e *Entity[S], req Req) (Resp, error)) Handler[S] {
	return Handler[S]{guard.Bind(rpc, guardOf[S], fn)}
}

// definition is a validated Spec with its lookup tables.
type definition[S any] struct {
	store    *Store
	entity   *actor.Entity
	spec     Spec[S]
	byName   map[string]*EventType[S] // names and aliases
	byType   map[reflect.Type]*EventType[S]
	handlers []Handler[S]
}

// New returns the behaviour of the event-sourced entity type entity: register
// it with a mesh Runner (or an actor Runtime) like any behaviour, and call
// it with mesh.Call. opts are the entity's actor options (MaxIdleTime, ...).
//
// Each activation rebuilds the state from the latest snapshot and the
// events after it before its first message; a failure there is an
// activation failure (actor.ErrActivation), retried per the entity's
// DefectRetryPolicy.
//
// New returns an error wrapping ErrInvalidOption for a nil store or entity,
// an event without a name, Go type or fold step, a name or Go type declared
// twice, a bad version or upcaster, a handler for another entity's RPC or
// two handlers for one RPC.
func New[S any](store *Store, entity *actor.Entity, spec Spec[S], opts ...actor.Option) (*actor.Behavior, error) {
	d, err := define(store, entity, spec)
	if err != nil {
		return nil, err
	}
	return actor.Implement(entity, func(self *actor.Instance) ([]actor.Handler, error) {
		e := newEntity(d, self.Address(), self)
		hs := make([]actor.Handler, 0, len(d.handlers))
		for _, h := range d.handlers {
			hs = append(hs, h.b.Handler(e))
		}
		if self.Probe() {
			return hs, nil // Register's check: no history to replay
		}
		ctx, cancel := context.WithTimeout(context.Background(), store.cfg.ActivationTimeout)
		defer cancel()
		if err := e.load(ctx, true); err != nil {
			return nil, err
		}
		self.OnStop(e.stop)
		return hs, nil
	}, opts...), nil
}

func define[S any](store *Store, entity *actor.Entity, spec Spec[S]) (*definition[S], error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidOption, entityName(entity), fmt.Sprintf(format, args...))
	}
	switch {
	case store == nil:
		return nil, bad("nil Store")
	case entity == nil:
		return nil, bad("nil entity")
	case spec.SnapshotEvery < 0:
		return nil, bad("SnapshotEvery %d is negative", spec.SnapshotEvery)
	case len(spec.Events) == 0:
		return nil, bad("no events declared")
	}
	d := &definition[S]{
		store: store, entity: entity, spec: spec,
		byName: map[string]*EventType[S]{},
		byType: map[reflect.Type]*EventType[S]{},
	}
	for i := range spec.Events {
		et := &spec.Events[i]
		if et.err != nil {
			return nil, bad("event %q: %v", et.name, et.err)
		}
		if et.apply == nil || et.typ == nil {
			return nil, bad("event %q: no fold step", et.name)
		}
		if et.typ.Kind() == reflect.Interface {
			return nil, bad("event %q: Go type %v is an interface: declare each concrete type", et.name, et.typ)
		}
		if _, dup := d.byType[et.typ]; dup {
			return nil, bad("Go type %v declared twice", et.typ)
		}
		d.byType[et.typ] = et
		for _, n := range append([]string{et.name}, et.aliases...) {
			if !validEventName(n) {
				return nil, bad("event name %q: want names ([A-Za-z0-9_-]{1,64}) joined by dots, 128 bytes at most", n)
			}
			if _, dup := d.byName[n]; dup {
				return nil, bad("event name %q declared twice", n)
			}
			d.byName[n] = et
		}
		for from := range et.upcasts {
			if from >= et.version {
				return nil, bad("event %q: Upcast(%d) but Version is %d", et.name, from, et.version)
			}
		}
	}
	if err := guard.Check(entityName(entity), entity, bindings(spec.Handlers)); err != nil {
		return nil, err
	}
	d.handlers = spec.Handlers
	return d, nil
}

func entityName(e *actor.Entity) string {
	if e == nil {
		return "<nil>"
	}
	return e.Name()
}

// validEventName reports whether n is an event name: names (actor.ValidName)
// joined by dots, as "Deposited" or "bank.Deposited", 128 bytes at most.
func validEventName(n string) bool {
	if len(n) > 128 {
		return false
	}
	for part := range strings.SplitSeq(n, ".") {
		if !actor.ValidName(part) {
			return false
		}
	}
	return true
}
