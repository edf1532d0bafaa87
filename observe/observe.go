// Package observe joins mesh observers: metrics (package observe/prom) and
// tracing (package observe/otel) adapt mesh.Observer to Prometheus and
// OpenTelemetry, and Multi lets a process use both. The core packages
// (actor, jetstream, mesh) depend on none of them.
//
// # Usage
//
//	metrics := prom.New(prometheus.DefaultRegisterer)
//	tracing := otel.New(tracerProvider)
//	cfg.Observer = observe.Multi(metrics, tracing)
//
// # Concurrency
//
// The observer Multi returns is safe for concurrent use when its parts are
// (those of this module are); it calls them in the order given.
//
// # Guarantees
//
// Every part hears every event. CallReceived threads the context through
// the parts in order, so a later part sees what an earlier one put in it
// (a span, say).
package observe

import (
	"context"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh"
)

// Multi returns an observer that reports every event to each of obs, in
// order; nil entries are skipped. With one observer it returns it.
func Multi(obs ...mesh.Observer) mesh.Observer {
	var m multi
	for _, o := range obs {
		if o != nil {
			m = append(m, o)
		}
	}
	switch len(m) {
	case 0:
		return nil
	case 1:
		return m[0]
	}
	return m
}

type multi []mesh.Observer

func (m multi) Activated(a actor.Address) {
	for _, o := range m {
		o.Activated(a)
	}
}

func (m multi) Deactivated(a actor.Address, r actor.StopReason) {
	for _, o := range m {
		o.Deactivated(a, r)
	}
}

func (m multi) CallSent(ctx context.Context, entityType, rpc string, h nats.Header) func(error) {
	var dones []func(error)
	for _, o := range m {
		if d := o.CallSent(ctx, entityType, rpc, h); d != nil {
			dones = append(dones, d)
		}
	}
	if len(dones) == 0 {
		return nil
	}
	return func(err error) {
		for _, d := range dones {
			d(err)
		}
	}
}

func (m multi) CallReceived(ctx context.Context, a actor.Address, rpc string, s mesh.ShardID, h nats.Header) (context.Context, mesh.CallObservation) {
	var obs multiObs
	for _, o := range m {
		var c mesh.CallObservation
		ctx, c = o.CallReceived(ctx, a, rpc, s, h)
		if c != nil {
			obs = append(obs, c)
		}
	}
	if len(obs) == 0 {
		return ctx, nil
	}
	return ctx, obs
}

type multiObs []mesh.CallObservation

func (m multiObs) Started() {
	for _, o := range m {
		o.Started()
	}
}

func (m multiObs) Done(err error) {
	for _, o := range m {
		o.Done(err)
	}
}

func (m multi) CallRefused(entityType, rpc, code string) {
	for _, o := range m {
		o.CallRefused(entityType, rpc, code)
	}
}

func (m multi) ShardAcquired(s mesh.ShardID) {
	for _, o := range m {
		o.ShardAcquired(s)
	}
}

func (m multi) ShardReleased(s mesh.ShardID) {
	for _, o := range m {
		o.ShardReleased(s)
	}
}

func (m multi) LeaseRenewFailed(s mesh.ShardID, err error) {
	for _, o := range m {
		o.LeaseRenewFailed(s, err)
	}
}

func (m multi) Redelivered(a actor.Address, rpc string) {
	for _, o := range m {
		o.Redelivered(a, rpc)
	}
}

func (m multi) DeadLettered(a actor.Address, rpc, reason string) {
	for _, o := range m {
		o.DeadLettered(a, rpc, reason)
	}
}

func (m multi) SingletonStarted(name string) {
	for _, o := range m {
		o.SingletonStarted(name)
	}
}

func (m multi) SingletonStopped(name string) {
	for _, o := range m {
		o.SingletonStopped(name)
	}
}
