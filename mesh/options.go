package mesh

import (
	"fmt"
	"log/slog"

	"github.com/natsmesh/natsmesh/actor"
)

// Option configures a Runner, Client or ShardManager with what is not a
// setting: the collaborators it reports to. Settings are in Config and
// ClientConfig (data, loaded from files by the binaries); options are
// checked when the constructor runs, and a bad one fails it with an error
// wrapping ErrInvalidOption.
type Option func(*options) error

type options struct {
	log     *slog.Logger
	obs     Observer
	runtime []actor.RuntimeOption
	hooks   *hooks // tests only (export_test.go); nil in production
}

// WithLogger sends the mesh's structured logs to l (without it they are
// discarded).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) error {
		if l == nil {
			return fmt.Errorf("%w: WithLogger(nil)", ErrInvalidOption)
		}
		o.log = l
		return nil
	}
}

// WithObserver reports calls, activations, shard moves and
// persisted-message events to obs, for metrics and tracing (packages
// observe/prom and observe/otel). Without it nothing is reported, at no
// cost on the hot path.
func WithObserver(obs Observer) Option {
	return func(o *options) error {
		if obs == nil {
			return fmt.Errorf("%w: WithObserver(nil)", ErrInvalidOption)
		}
		o.obs = obs
		return nil
	}
}

// WithRuntimeOptions passes options to a runner's actor runtime (an
// actor.WithObserver of its own, say). Runners only.
func WithRuntimeOptions(opts ...actor.RuntimeOption) Option {
	return func(o *options) error {
		o.runtime = append(o.runtime, opts...)
		return nil
	}
}

// applyOptions checks opts for a constructor; runtime options are refused
// where there is no runtime (what names the constructor).
func applyOptions(what string, runner bool, opts []Option) (options, error) {
	var o options
	for _, opt := range opts {
		if opt == nil {
			return o, fmt.Errorf("%w: %s: nil option", ErrInvalidOption, what)
		}
		if err := opt(&o); err != nil {
			return o, fmt.Errorf("%s: %w", what, err)
		}
	}
	if len(o.runtime) > 0 && !runner {
		return o, fmt.Errorf("%w: %s: WithRuntimeOptions applies to runners only", ErrInvalidOption, what)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	return o, nil
}
