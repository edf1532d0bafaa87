package mesh

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// A singleton runs on exactly one runner of the cluster: the one serving
// the shard its name hashes to (protocol.ShardOf(name) in the first shard group). It
// starts when that shard starts being served here and its context is
// cancelled when the shard stops (hand-off, fencing or shutdown), so the
// shard lease that fences entities fences singletons too.
type singleton struct {
	name  string
	shard ShardID
	run   func(ctx context.Context) error

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// RegisterSingleton adds a singleton: run is called on the one runner that
// owns its shard, with a context cancelled when the singleton must stop. If
// run returns an error it is restarted after a backoff; if it returns nil it
// stays stopped until the singleton moves to another runner. Register
// singletons before Start; every runner of the cluster should register the
// same ones (a runner that does not know a singleton cannot run it).
//
// Check ctx.Err() right before each unit of work: it reads the clock
// against the shard lease at that moment, so a runner resumed after a pause
// longer than its lease sees it end at once, before the lease's fencing has
// run. What no check can cover is a pause between the check and the work
// itself: work with effects outside the process should carry a fencing
// token the resource checks (docs/operations.md, Fencing).
func (r *Runner) RegisterSingleton(name string, run func(ctx context.Context) error) error {
	if !actor.ValidName(name) || run == nil {
		return fmt.Errorf("%w: singleton %q: want a [A-Za-z0-9_-]{1,64} name and a function", ErrInvalidOption, name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return fmt.Errorf("%w: singleton %s registered after Start", ErrInvalidOption, name)
	}
	if _, dup := r.singletons[name]; dup {
		return fmt.Errorf("%w: singleton %s registered twice", ErrInvalidOption, name)
	}
	r.singletons[name] = &singleton{
		name:  name,
		shard: r.cfg.SingletonShard(name),
		run:   run,
	}
	return nil
}

// SingletonShard returns the shard whose owner runs the singleton name.
func (c *ClientConfig) SingletonShard(name string) ShardID {
	return ShardID{Group: c.ShardGroups[0], N: protocol.ShardOf(name, c.ShardsPerGroup)}
}

// start runs the singleton, with a context that ends when valid (its
// shard's lease) no longer holds.
func (s *singleton) start(valid func() bool, e *env) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return
	}
	ctx, cancel := newLeaseContext(valid)
	s.cancel, s.done = cancel, make(chan struct{})
	done := s.done
	log := e.log.With("singleton", s.name, "shard", s.shard.String()) // e.log names the runner
	obs := e.obs
	go func() {
		defer close(done)
		if obs != nil {
			obs.SingletonStarted(s.name)
			defer obs.SingletonStopped(s.name)
		}
		backoff := 100 * time.Millisecond
		for {
			log.Info("singleton starting")
			err := runGuarded(ctx, s.run)
			if ctx.Err() != nil {
				log.Info("singleton stopped")
				return
			}
			if err == nil {
				log.Info("singleton finished")
				return
			}
			log.Warn("singleton failed; restarting", "err", err, "after", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			backoff = min(backoff*2, 10*time.Second)
		}
	}()
}

// stop cancels the singleton and waits for it up to timeout.
func (s *singleton) stop(timeout time.Duration) {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.cancel, s.done = nil, nil
	s.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// cancelNow cancels the singleton without waiting for it (fencing).
func (s *singleton) cancelNow() {
	s.mu.Lock()
	cancel := s.cancel
	s.cancel, s.done = nil, nil
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// leaseContext is a singleton's context: besides being cancelled when the
// singleton stops, it checks the lease of the singleton's shard each time
// its Err is called, and if the lease is no longer locally valid it cancels
// itself (cause errLeaseLapsed) before answering. The lease's fencing
// cancels it too, but from a timer, which after a long pause of the process
// runs only after other goroutines may have resumed: a singleton that
// checks ctx.Err() before each unit of work does no work once its lease has
// lapsed, from the first instant the process runs again.
type leaseContext struct {
	context.Context
	cancel context.CancelCauseFunc
	valid  func() bool
}

func newLeaseContext(valid func() bool) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.Background())
	lc := &leaseContext{Context: ctx, cancel: cancel, valid: valid}
	return lc, func() { cancel(context.Canceled) }
}

func (c *leaseContext) Err() error {
	if err := c.Context.Err(); err != nil {
		return err
	}
	if !c.valid() {
		c.cancel(errLeaseLapsed)
	}
	return c.Context.Err()
}

// runGuarded runs f, turning a panic into an error.
func runGuarded(ctx context.Context, f func(context.Context) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("singleton panicked: %v", p)
		}
	}()
	return f(ctx)
}

func (r *Runner) singletonsOf(s ShardID) []*singleton {
	var out []*singleton
	for _, sg := range r.singletons {
		if sg.shard == s {
			out = append(out, sg)
		}
	}
	return out
}
