package reminder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/cronexpr"
	"github.com/natsmesh/natsmesh/internal/records"
	"github.com/natsmesh/natsmesh/mesh"
)

// Errors of the package.
var (
	// ErrInvalidOption wraps every rejected argument (name, time, period,
	// cron expression, an RPC that is not a reminder RPC); it is
	// actor.ErrInvalidOption.
	ErrInvalidOption = actor.ErrInvalidOption
	// ErrNotFound is returned by Get for a reminder that is not registered.
	ErrNotFound = errors.New("reminder: not found")
)

// RPCName is the name of the reminder RPC NewRPC declares.
const RPCName = "Remind"

// MinPeriod is the shortest period: JetStream schedules have a resolution of
// one second.
const MinPeriod = time.Second

// Message is the payload of an entity's reminder RPC: a tick, or a register
// or cancel command applied in the entity's message order. Only this package
// builds them.
type Message struct {
	Op   string `json:"op"`
	Name string `json:"name"`
	// Gen is the registration a tick belongs to: a tick of an earlier
	// registration of the same name is dropped.
	Gen string `json:"gen,omitempty"`
	// At is a tick's due time, or a registration's first due time (0: the
	// cron expression's next time), in Unix nanoseconds.
	At   int64 `json:"at,omitempty"`
	Spec Spec  `json:"spec"`
}

const (
	opTick     = "tick"
	opRegister = "register"
	opCancel   = "cancel"
)

// Spec is how a reminder repeats.
type Spec struct {
	// Period repeats the reminder every Period after its first due time
	// (0: no period).
	Period time.Duration `json:"period,omitempty"`
	// Cron repeats it at the times of a cron expression in time zone TZ
	// (IANA name; "" is UTC).
	Cron string `json:"cron,omitempty"`
	TZ   string `json:"tz,omitempty"`
	// CatchUp delivers every tick missed while the entity could not run
	// (one after the other, late), instead of one late tick for all.
	CatchUp bool `json:"catchUp,omitempty"`
}

func (s Spec) repeats() bool { return s.Period > 0 || s.Cron != "" }

// Tick is one delivery of a reminder to its entity.
type Tick struct {
	// Name is the reminder's name.
	Name string
	// Due is the tick's scheduled time; the handler runs at or after it.
	Due time.Time
}

// Info describes a registered reminder.
type Info struct {
	Entity string
	ID     string
	Name   string
	Spec   Spec
	// Due is the next tick's time.
	Due time.Time
	// Registered is when the reminder was (last) registered.
	Registered time.Time
}

// record is a reminder's state in the bucket, written only from its
// entity's mailbox.
type record struct {
	Entity string `json:"entity"`
	ID     string `json:"id"`
	Name   string `json:"name"`
	Gen    string `json:"gen"`
	Spec   Spec   `json:"spec"`
	// First is the requested first due time (0 for a cron reminder
	// registered without one): with Spec, what makes a registration equal
	// to another.
	First int64 `json:"first"`
	// Origin anchors a period's grid of tick times.
	Origin int64 `json:"origin"`
	// Due is the armed tick: its message is stored (scheduled or fired).
	Due int64 `json:"due"`
	// Last is the tick whose handling armed Due: a redelivery of it (its
	// runner died before acknowledging it) runs the handler again.
	Last       int64     `json:"last,omitempty"`
	Registered time.Time `json:"registered"`
}

// Option configures a registration.
type Option func(*Spec) error

// Every repeats a reminder every d (at least MinPeriod) after its first due
// time.
func Every(d time.Duration) Option {
	return func(s *Spec) error {
		if d < MinPeriod {
			return fmt.Errorf("%w: period %v below %v", ErrInvalidOption, d, MinPeriod)
		}
		s.Period = d
		return nil
	}
}

// Cron repeats a reminder at the times of a cron expression (see package
// cron for the syntax) read in loc (nil: UTC).
func Cron(expr string, loc *time.Location) Option {
	return func(s *Spec) error {
		if loc == nil {
			loc = time.UTC
		}
		// The zone travels by name to whichever runner computes the next
		// tick: it must be one time.LoadLocation knows.
		if _, err := time.LoadLocation(loc.String()); err != nil {
			return fmt.Errorf("%w: time zone %q is not loadable by name", ErrInvalidOption, loc.String())
		}
		if _, err := cronexpr.Parse(expr, loc); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidOption, err)
		}
		s.Cron, s.TZ = expr, loc.String()
		return nil
	}
}

// CatchUp delivers every tick missed while the entity could not run, in
// order, instead of one late tick standing for all of them.
func CatchUp() Option { return func(s *Spec) error { s.CatchUp = true; return nil } }

// Service registers, cancels and delivers reminders. One serves a whole
// process (runner or client); it is safe for concurrent use.
type Service struct {
	client *mesh.Client
	store  *records.Store
	log    *slog.Logger
}

// New opens the reminder bucket (<prefix>_reminders, created if absent) of
// client's cluster; the service sends reminder messages and logs through
// client.
func New(ctx context.Context, client *mesh.Client) (*Service, error) {
	mc := client.Config()
	store, err := records.Open(ctx, client.Conn(), records.Config{
		Bucket:      mc.Prefix + "_reminders",
		Description: "natsmesh reminders, by entity and name",
		Replicas:    mc.StorageReplicas,
	})
	if err != nil {
		return nil, err
	}
	return &Service{client: client, store: store, log: client.Logger()}, nil
}

// Logger returns the logger the service logs through (its client's).
func (s *Service) Logger() *slog.Logger { return s.log }

// NewRPC declares entity e's reminder RPC (persisted, named RPCName). Its
// behaviour must handle it with Service.Handle.
func NewRPC(e *actor.Entity) actor.RPC[Message, actor.Empty] {
	return actor.NewRPC[Message, actor.Empty](e, RPCName, actor.Persisted())
}

func checkRPC(rpc actor.RPC[Message, actor.Empty]) error {
	info := rpc.Info()
	if info == nil || info.Name() != RPCName || !info.Persisted() {
		return fmt.Errorf("%w: not a reminder RPC (declare it with reminder.NewRPC)", ErrInvalidOption)
	}
	return nil
}

func checkName(name string) error {
	if name == "" || len(name) > 256 || !utf8.ValidString(name) {
		return fmt.Errorf("%w: name %q (1-256 bytes of UTF-8)", ErrInvalidOption, name)
	}
	return nil
}

// Register registers (or replaces) the reminder name of entity id: its first
// tick is due at due, and it repeats as opts say (Every, Cron; none: once).
// A cron reminder may leave due zero to start at the expression's next
// time. Registering a name again with the same due time and options changes
// nothing; with others it replaces the reminder (the old one's pending tick
// is dropped).
//
// The registration is a persisted message to the entity, applied in its
// message order (never concurrently with its ticks): Register returns once
// it is stored, and it takes effect before the entity handles any message
// sent after. It may be called from anywhere, the entity's own handlers
// included.
//
// Errors: ErrInvalidOption, or the mesh's errors for a persisted Send.
func (s *Service) Register(ctx context.Context, rpc actor.RPC[Message, actor.Empty], id, name string, due time.Time, opts ...Option) error {
	if err := checkRPC(rpc); err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return err
	}
	var spec Spec
	for _, o := range opts {
		if err := o(&spec); err != nil {
			return err
		}
	}
	if spec.Period > 0 && spec.Cron != "" {
		return fmt.Errorf("%w: both a period and a cron expression", ErrInvalidOption)
	}
	if due.IsZero() && spec.Cron == "" {
		return fmt.Errorf("%w: no due time", ErrInvalidOption)
	}
	var at int64
	if !due.IsZero() {
		at = due.UnixNano()
	}
	return mesh.Send(ctx, s.client, rpc, id, Message{Op: opRegister, Name: name, At: at, Spec: spec})
}

// Cancel cancels the reminder name of entity id, in the entity's message
// order like Register: it returns once stored, and no tick the entity
// handles after it runs the handler. A tick due before Cancel was called
// may still be delivered. Cancelling an unknown name does nothing.
func (s *Service) Cancel(ctx context.Context, rpc actor.RPC[Message, actor.Empty], id, name string) error {
	if err := checkRPC(rpc); err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return err
	}
	return mesh.Send(ctx, s.client, rpc, id, Message{Op: opCancel, Name: name})
}

// Get returns the registered reminder name of entity id, read from the
// bucket's leader. Errors: ErrNotFound, ErrInvalidOption.
func (s *Service) Get(ctx context.Context, rpc actor.RPC[Message, actor.Empty], id, name string) (Info, error) {
	if err := checkRPC(rpc); err != nil {
		return Info{}, err
	}
	var rec record
	_, err := s.store.Get(ctx, records.Key(rpc.Info().Entity().Name(), id, name), &rec)
	if errors.Is(err, records.ErrNotFound) {
		return Info{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return Info{}, err
	}
	return rec.info(), nil
}

// List returns the names of entity id's registered reminders.
func (s *Service) List(ctx context.Context, rpc actor.RPC[Message, actor.Empty], id string) ([]string, error) {
	if err := checkRPC(rpc); err != nil {
		return nil, err
	}
	keys, err := s.store.Keys(ctx, records.Key(rpc.Info().Entity().Name(), id)+".>")
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(keys))
	for _, k := range keys {
		names = append(names, records.Part(k, 2))
	}
	return names, nil
}

func (r *record) info() Info {
	return Info{Entity: r.Entity, ID: r.ID, Name: r.Name, Spec: r.Spec, Due: time.Unix(0, r.Due), Registered: r.Registered}
}
