package app

import (
	"context"
	"fmt"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/durablestate"
	"github.com/natsmesh/natsmesh/eventsourced"
	"github.com/natsmesh/natsmesh/mesh"
)

// Installer adds to a runner, once it is made and before it starts, what
// needs the runner itself: behaviours whose store opens on its NATS
// connection, a saga engine, reminders, cron jobs. ctx bounds the set-up
// (creating buckets and streams).
type Installer interface {
	Install(ctx context.Context, r *mesh.Runner) error
}

// InstallFunc is an Installer made of a function:
//
//	app.InstallFunc(func(ctx context.Context, r *mesh.Runner) error {
//		sagas, err := saga.New(ctx, r.Client(), saga.DefaultConfig())
//		if err != nil {
//			return err
//		}
//		if checkout, err = saga.Define(sagas, "checkout", steps...); err != nil {
//			return err
//		}
//		return sagas.Install(r)
//	})
type InstallFunc func(ctx context.Context, r *mesh.Runner) error

// Install calls f.
func (f InstallFunc) Install(ctx context.Context, r *mesh.Runner) error { return f(ctx, r) }

// DurableState installs a durable-state entity type (package
// durablestate): its store uses the runner's connection, prefix, storage
// replicas and logger, and stores states in JSON. For other settings, open
// the store in an InstallFunc.
func DurableState[S any](entity *actor.Entity, spec durablestate.Spec[S], opts ...actor.Option) Installer {
	return InstallFunc(func(ctx context.Context, r *mesh.Runner) error {
		c := r.Client()
		cfg := durablestate.DefaultConfig()
		cfg.Prefix, cfg.Replicas = c.Config().Prefix, c.Config().StorageReplicas
		store, err := durablestate.Open(c.Conn(), cfg, durablestate.WithLogger(c.Logger()))
		if err != nil {
			return fmt.Errorf("durable state of %s: %w", entity.Name(), err)
		}
		b, err := durablestate.New(ctx, store, entity, spec, opts...)
		if err != nil {
			return fmt.Errorf("durable state of %s: %w", entity.Name(), err)
		}
		return r.Register(b)
	})
}

// EventSourced installs an event-sourced entity type (package
// eventsourced): its store uses the runner's connection, prefix, storage
// replicas and logger, and stores events in JSON. For other settings, open
// the store in an InstallFunc.
func EventSourced[S any](entity *actor.Entity, spec eventsourced.Spec[S], opts ...actor.Option) Installer {
	return InstallFunc(func(ctx context.Context, r *mesh.Runner) error {
		c := r.Client()
		cfg := eventsourced.DefaultConfig()
		cfg.Prefix, cfg.Replicas = c.Config().Prefix, c.Config().StorageReplicas
		store, err := eventsourced.Open(ctx, c.Conn(), cfg, eventsourced.WithLogger(c.Logger()))
		if err != nil {
			return fmt.Errorf("event store of %s: %w", entity.Name(), err)
		}
		b, err := eventsourced.New(store, entity, spec, opts...)
		if err != nil {
			return fmt.Errorf("event-sourced %s: %w", entity.Name(), err)
		}
		return r.Register(b)
	})
}
