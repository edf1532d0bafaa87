package reminder

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nuid"
	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/cronexpr"
	"github.com/natsmesh/natsmesh/internal/records"
	"github.com/natsmesh/natsmesh/mesh"
)

// Delivery: the reminder RPC's handler applies registrations and
// cancellations in the entity's mailbox, runs ticks, and arms the next one.

// Handle returns the handler of the reminder RPC for the activation self:
// it applies registrations and cancellations, and calls fn for each tick of
// a registered reminder. Put it among the entity's handlers:
//
//	actor.Handle(...), rem.Handle(Remind, self, func(ctx context.Context, t reminder.Tick) error { ... })
//
// fn runs in the entity's mailbox like any handler. Its error is the tick's
// reply (the tick counts as delivered); a panic retries the tick as any
// persisted message (PersistMaxAttempts, then a dead letter).
func (s *Service) Handle(rpc actor.RPC[Message, actor.Empty], self *actor.Instance, fn func(ctx context.Context, t Tick) error) actor.Handler {
	if err := checkRPC(rpc); err != nil {
		panic(err) // programmer error at setup
	}
	addr := self.Address()
	return actor.Handle(rpc, func(ctx context.Context, m Message) (actor.Empty, error) {
		return actor.Empty{}, s.handle(ctx, rpc, addr, m, fn)
	})
}

func (s *Service) handle(ctx context.Context, rpc actor.RPC[Message, actor.Empty], addr actor.Address, m Message, fn func(context.Context, Tick) error) error {
	if err := checkName(m.Name); err != nil {
		return err
	}
	// The store's operations are bounded; the user's handler keeps the
	// message's own context.
	run := func(t Tick) error { return fn(ctx, t) }
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, storeTimeout)
		defer cancel()
	}
	key := records.Key(addr.Type, addr.ID, m.Name)
	// The record is written only from this mailbox, so a conflict means a
	// stale instance (a fenced runner) or a stale read raced us: read again.
	for attempt := 1; ; attempt++ {
		var err error
		switch m.Op {
		case opRegister:
			err = s.register(ctx, rpc, addr, key, m)
		case opCancel:
			err = s.store.Delete(ctx, key, 0)
		case opTick:
			return s.tick(ctx, rpc, addr, key, m, run)
		default:
			return fmt.Errorf("%w: operation %q", ErrInvalidOption, m.Op)
		}
		if errors.Is(err, ErrInvalidOption) {
			return err // cannot succeed: answered, not retried
		}
		if !errors.Is(err, records.ErrConflict) || attempt == 3 {
			return retryable(err)
		}
	}
}

// storeTimeout bounds the bucket and stream operations of one message.
const storeTimeout = 10 * time.Second

// retryable turns a storage failure into a panic, which the mesh answers by
// retrying the persisted message with backoff (and dead-lettering it after
// PersistMaxAttempts): returning the error would count the message handled.
func retryable(err error) error {
	if err != nil {
		panic(fmt.Sprintf("reminder: %v (the message is retried)", err))
	}
	return nil
}

func (s *Service) register(ctx context.Context, rpc actor.RPC[Message, actor.Empty], addr actor.Address, key string, m Message) error {
	var cur record
	rev, err := s.store.Get(ctx, key, &cur)
	switch {
	case errors.Is(err, records.ErrNotFound):
	case err != nil:
		return err
	case cur.First == m.At && cur.Spec == m.Spec:
		// Registered already: keep its ticks going. Arming the armed tick
		// again restores it if its message was lost (a purged stream); if
		// not, it is deduplicated or answered from its stored reply.
		return s.arm(ctx, rpc, addr.ID, cur.Name, cur.Gen, cur.Due)
	}
	now := time.Now()
	first := m.At
	if first == 0 {
		sched, err := parseCron(m.Spec)
		if err != nil {
			return err
		}
		next := sched.Next(now)
		if next.IsZero() {
			return fmt.Errorf("%w: cron %q has no next time", ErrInvalidOption, m.Spec.Cron)
		}
		first = next.UnixNano()
	}
	rec := record{
		Entity: addr.Type, ID: addr.ID, Name: m.Name, Gen: nuid.Next(), Spec: m.Spec,
		First: m.At, Origin: first, Due: first, Registered: now,
	}
	// Tick first, record second: a crash in between leaves a tick of an
	// unknown generation (dropped when it fires) and this message
	// unacknowledged (applied again). The tick cannot run before the record
	// is written: it queues behind this message.
	if err := s.arm(ctx, rpc, addr.ID, rec.Name, rec.Gen, first); err != nil {
		return err
	}
	_, err = s.store.Put(ctx, key, &rec, rev)
	return err
}

// arm stores the tick of generation gen due at at. Its message id is
// derived from both, so arming it again is deduplicated (or answered from
// its stored reply).
func (s *Service) arm(ctx context.Context, rpc actor.RPC[Message, actor.Empty], id, name, gen string, at int64) error {
	msgID := "rem." + gen + "." + strconv.FormatInt(at, 10)
	return mesh.Send(ctx, s.client, rpc, id, Message{Op: opTick, Name: name, Gen: gen, At: at},
		mesh.MessageID(msgID), mesh.DeliverAt(time.Unix(0, at)))
}

func (s *Service) tick(ctx context.Context, rpc actor.RPC[Message, actor.Empty], addr actor.Address, key string, m Message, run func(Tick) error) error {
	t := Tick{Name: m.Name, Due: time.Unix(0, m.At)}
	for attempt := 1; ; attempt++ {
		var rec record
		rev, err := s.store.Get(ctx, key, &rec)
		if errors.Is(err, records.ErrNotFound) {
			return nil // cancelled
		}
		if err != nil {
			return retryable(err)
		}
		switch {
		case rec.Gen != m.Gen:
			return nil // a tick of a replaced registration
		case m.At == rec.Last:
			return run(t) // redelivered: its successor is armed already
		case m.At != rec.Due:
			return nil // not the armed tick (a duplicate chain cannot start)
		}
		next, err := rec.next(time.Now())
		if err != nil {
			s.log.Error("reminder: cannot compute the next tick; this is the last", "entity", addr.String(), "name", rec.Name, "err", err)
		}
		if next == 0 {
			// The last tick: deliver, then forget (a crash in between
			// delivers it again).
			ferr := run(t)
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout) // fn may have taken long
			defer cancel()
			if err := s.store.Delete(dctx, key, rev); err != nil && !errors.Is(err, records.ErrConflict) {
				s.log.Warn("reminder: forget fired reminder", "entity", addr.String(), "name", rec.Name, "err", err)
			}
			return ferr
		}
		// Arm the successor before delivering, so that neither a crash nor
		// a failing handler ends the chain; then advance the record.
		if err := s.arm(ctx, rpc, addr.ID, rec.Name, rec.Gen, next); err != nil {
			return retryable(err)
		}
		rec.Last, rec.Due = rec.Due, next
		if _, err := s.store.Put(ctx, key, &rec, rev); err != nil {
			if errors.Is(err, records.ErrConflict) && attempt < 3 {
				continue
			}
			return retryable(err)
		}
		return run(t)
	}
}

// next returns the tick after the armed one (Due), or 0 when there is none.
// Ticks whose time has passed are skipped unless CatchUp.
func (r *record) next(now time.Time) (int64, error) {
	if !r.Spec.repeats() {
		return 0, nil
	}
	after := r.Due
	if !r.Spec.CatchUp && now.UnixNano() > after {
		after = now.UnixNano()
	}
	if p := int64(r.Spec.Period); p > 0 {
		// The smallest Origin + k*Period after `after`: ticks keep their
		// phase however late one was handled.
		k := (after-r.Origin)/p + 1
		return r.Origin + k*p, nil
	}
	sched, err := parseCron(r.Spec)
	if err != nil {
		return 0, err
	}
	n := sched.Next(time.Unix(0, after))
	if n.IsZero() {
		return 0, nil
	}
	return n.UnixNano(), nil
}

// parseCron parses a spec's cron expression in its zone; both were checked
// at registration, but the zone database of this runner may differ.
func parseCron(s Spec) (*cronexpr.Schedule, error) {
	loc := time.UTC
	if s.TZ != "" {
		var err error
		if loc, err = time.LoadLocation(s.TZ); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidOption, err)
		}
	}
	sched, err := cronexpr.Parse(s.Cron, loc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOption, err)
	}
	return sched, nil
}
