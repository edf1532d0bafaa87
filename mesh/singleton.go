package mesh

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// A singleton runs on exactly one runner of the cluster: the one serving
// the shard its name hashes to (ShardOf(name) in the first shard group). It
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
func (r *Runner) RegisterSingleton(name string, run func(ctx context.Context) error) error {
	if !validToken(name) || run == nil {
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
		shard: ShardID{Group: r.cfg.ShardGroups[0], N: ShardOf(name, r.cfg.ShardsPerGroup)},
		run:   run,
	}
	return nil
}

// SingletonShard returns the shard whose owner runs the singleton name.
func (c *Config) SingletonShard(name string) ShardID {
	return ShardID{Group: c.ShardGroups[0], N: ShardOf(name, c.ShardsPerGroup)}
}

func (s *singleton) start(r *Runner) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	done := s.done
	log := r.log.With("singleton", s.name, "shard", s.shard.String()) // r.log names the runner
	obs := r.cfg.Observer
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
