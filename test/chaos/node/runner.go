package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/test/chaos/internal/model"
)

// writeTimeout bounds one write of an account's state.
const writeTimeout = 3 * time.Second

// runRunner runs a runner hosting Account and the singletons until ctx
// ends, then shuts it down gracefully.
func runRunner(ctx context.Context, args []string, stderr io.Writer) error {
	s := cli.NewSettings("node runner", stderr)
	var (
		conn    cli.Conn
		logging cli.Logging
		records string
	)
	conn.Register(s)
	settings := cli.RegisterMesh(s, cli.Cluster|cli.Coordination|cli.Entities|cli.Calls|cli.Runner)
	logging.Register(s)
	s.String(&records, "", cli.Spec{Name: "records", Usage: "file the records are appended to"})
	if err := s.Parse(args); err != nil {
		return err
	}
	cfg, err := settings.Config()
	if err != nil {
		return err
	}
	if cfg.RunnerID == "" || records == "" {
		return errors.New("runner: -id and -records are required")
	}
	log := logging.Logger(stderr)
	rec, err := model.Create(records)
	if err != nil {
		return err
	}
	defer rec.Close()
	conn.Name = cfg.RunnerID
	// The suite reaches the servers through proxies it controls: never
	// connect around them to an address a server gossips.
	nc, err := conn.Connect(ctx, log, nats.IgnoreDiscoveredServers(), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := natsjs.New(nc)
	if err != nil {
		return err
	}
	var kv natsjs.KeyValue
	for kv == nil { // the suite creates the bucket; NATS may be electing a leader
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		kv, err = js.KeyValue(octx, model.StateBucket)
		cancel()
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("state bucket: %w", err)
		}
	}

	r, err := mesh.NewRunner(nc, cfg, mesh.WithLogger(log), mesh.WithRuntimeOptions(actor.WithObserver(observer{rec})))
	if err != nil {
		return err
	}
	if err := r.Register(account(nc, kv, rec, cfg.EntityMaxIdleTime)); err != nil {
		return err
	}
	for _, name := range model.Singletons {
		if err := r.RegisterSingleton(name, singleton(name, rec)); err != nil {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = r.Start(sctx)
	cancel()
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	fmt.Fprintln(stderr, "runner", r.ID(), "started")
	<-ctx.Done()
	dctx, cancel := context.WithTimeout(context.Background(), cfg.EntityTerminationTimeout+10*time.Second)
	defer cancel()
	if err := r.Shutdown(dctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	fmt.Fprintln(stderr, "runner", r.ID(), "stopped")
	return nil
}

// must ends the process on a record it could not write: a run with
// records missing proves nothing, and the suite reports the exit.
func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "node: record:", err)
		os.Exit(3)
	}
}

// observer records activations and deactivations.
type observer struct{ rec *model.Writer }

func (o observer) Activated(addr actor.Address) {
	must(o.rec.Write(model.Record{Kind: model.Activated, Start: time.Now(), Addr: addr.ID}))
}

func (o observer) Deactivated(addr actor.Address, reason actor.StopReason) {
	must(o.rec.Write(model.Record{Kind: model.Deactivated, Start: time.Now(), Addr: addr.ID, Op: reason.String()}))
}

// account implements model.Account. Each activation loads the state from
// the stream leader and writes every change with compare-and-set on the
// revision it last read or wrote, so a write by anyone else in between is
// refused: the revision is the state's fencing token, as docs/operations.md
// advises for handlers with external effects. After a refused write or one
// of unknown outcome the handler panics: the activation ends (a defect) and
// the next message re-creates the account from the stored state; a
// persisted message is retried, a volatile caller gets the defect.
func account(nc *nats.Conn, kv natsjs.KeyValue, rec *model.Writer, idle time.Duration) *actor.Behavior {
	return actor.Implement(model.Account, func(self *actor.Instance) ([]actor.Handler, error) {
		id := self.Address().ID
		key := model.Key(id)
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		st, rev, err := model.Load(ctx, nc, id)
		cancel()
		if err != nil {
			return nil, err
		}
		// write stores next and makes it the state; it panics if it cannot.
		write := func(ctx context.Context, start time.Time, op string, arg int64, next model.State, value int64) {
			ctx, cancel := context.WithTimeout(ctx, writeTimeout)
			defer cancel()
			var nrev uint64
			var err error
			if rev == 0 {
				nrev, err = kv.Create(ctx, key, model.Encode(next))
			} else {
				nrev, err = kv.Update(ctx, key, model.Encode(next), rev)
			}
			h := model.Record{Kind: model.Handled, Start: start, End: time.Now(), Addr: id, Op: op, Arg: arg, Value: value, Rev: nrev}
			switch {
			case err == nil:
				st, rev = next, nrev
				h.Outcome = model.OK
				must(rec.Write(h))
				return
			case jetstream.WrongLastSequence(err):
				h.Outcome, h.Rev = model.Refused, rev
				must(rec.Write(model.Record{Kind: model.Conflict, Start: h.End, Addr: id, Op: op, Arg: arg, Rev: rev}))
				must(rec.Write(h))
				panic(fmt.Sprintf("account %s: write at revision %d refused: %v", id, rev, err))
			default:
				h.Outcome, h.Rev = model.Failed, rev
				must(rec.Write(h))
				panic(fmt.Sprintf("account %s: write at revision %d: %v", id, rev, err))
			}
		}
		return []actor.Handler{
			actor.Handle(model.Add, func(ctx context.Context, a model.Amount) (int64, error) {
				start := time.Now()
				next := st
				next.Volatile += int64(a.N)
				write(ctx, start, "Add", int64(a.N), next, next.Volatile)
				return st.Volatile, nil
			}),
			actor.Handle(model.Deposit, func(ctx context.Context, d model.Seq) (int64, error) {
				start := time.Now()
				if st.Has(d.Seq) { // a redelivery of an applied deposit
					must(rec.Write(model.Record{Kind: model.Handled, Start: start, End: time.Now(), Addr: id, Op: "Deposit", Arg: d.Seq, Outcome: model.Duplicate, Value: st.Deposits(), Rev: rev}))
					return st.Deposits(), nil
				}
				if top := st.Max(); d.Seq < top {
					must(rec.Write(model.Record{Kind: model.OutOfOrder, Start: start, Addr: id, Op: "Deposit", Arg: d.Seq, Value: top, Rev: rev}))
				}
				next := st.With(d.Seq)
				write(ctx, start, "Deposit", d.Seq, next, next.Deposits())
				return st.Deposits(), nil
			}),
			actor.Handle(model.Get, func(context.Context, actor.Empty) (model.State, error) {
				must(rec.Write(model.Record{Kind: model.Handled, Start: time.Now(), End: time.Now(), Addr: id, Op: "Get", Outcome: model.ReadOnly, Rev: rev}))
				return st, nil
			}),
		}, nil
	}, actor.MaxIdleTime(idle))
}

// singleton records its runs and, every tickEvery while it runs, a tick:
// the work a singleton does, which must never happen on two runners at
// once.
func singleton(name string, rec *model.Writer) func(ctx context.Context) error {
	const tickEvery = 100 * time.Millisecond
	return func(ctx context.Context) error {
		must(rec.Write(model.Record{Kind: model.SingletonStart, Start: time.Now(), Addr: name}))
		defer func() { must(rec.Write(model.Record{Kind: model.SingletonStop, Start: time.Now(), Addr: name})) }()
		t := time.NewTicker(tickEvery) // the singleton's work pace
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				if ctx.Err() != nil { // both ready: stopping wins
					return nil
				}
				must(rec.Write(model.Record{Kind: model.SingletonTick, Start: time.Now(), Addr: name}))
			}
		}
	}
}
