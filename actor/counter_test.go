package actor_test

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/natsmesh/natsmesh/actor"
)

// The seed's Counter, used by tests and examples.
type Amount struct {
	Amount int `json:"amount" msgpack:"amount"`
}

var (
	Counter   = actor.NewEntity("Counter")
	Increment = actor.NewRPC[Amount, int](Counter, "Increment")
	Decrement = actor.NewRPC[Amount, int](Counter, "Decrement")
	GetValue  = actor.NewRPC[actor.Empty, int](Counter, "GetValue")
)

// counterProbe records what counters do, for assertions.
type counterProbe struct {
	inits     atomic.Int64
	finalized sync.Map // Address -> *atomic.Int64
}

func (p *counterProbe) finals(a actor.Address) int64 {
	v, ok := p.finalized.Load(a)
	if !ok {
		return 0
	}
	return v.(*atomic.Int64).Load()
}

func counterBehavior(p *counterProbe, opts ...actor.Option) *actor.Behavior {
	return actor.Implement(Counter, func(self *actor.Instance) ([]actor.Handler, error) {
		if p != nil && !self.Probe() {
			p.inits.Add(1)
		}
		state := 0
		self.OnStop(func(context.Context) {
			if p != nil {
				v, _ := p.finalized.LoadOrStore(self.Address(), new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
			}
		})
		return []actor.Handler{
			actor.Handle(Increment, func(_ context.Context, a Amount) (int, error) {
				state += a.Amount
				return state, nil
			}),
			actor.Handle(Decrement, func(_ context.Context, a Amount) (int, error) {
				state -= a.Amount
				return state, nil
			}),
			actor.Handle(GetValue, func(context.Context, actor.Empty) (int, error) {
				return state, nil
			}),
		}, nil
	}, opts...)
}
