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
	version string
	schemas SchemaFunc
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

// WithVersion names the build a runner runs, for its registration
// (meshctl status shows it; a rolling upgrade shows two); default Version.
func WithVersion(v string) Option {
	return func(o *options) error {
		if v == "" || len(v) > 128 {
			return fmt.Errorf("%w: WithVersion(%q): want 1 to 128 bytes", ErrInvalidOption, v)
		}
		o.version = v
		return nil
	}
}

// WithSchemas gives a runner the JSON Schemas of its payload types, which
// it publishes with the descriptions of its entity types (TypeInfo): for
// meshctl types and the gateway's OpenAPI document. Package mesh/schema
// has one (schema.Of).
func WithSchemas(fn SchemaFunc) Option {
	return func(o *options) error {
		if fn == nil {
			return fmt.Errorf("%w: WithSchemas(nil)", ErrInvalidOption)
		}
		o.schemas = fn
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
	if !runner && (len(o.runtime) > 0 || o.version != "" || o.schemas != nil) {
		return o, fmt.Errorf("%w: %s: WithRuntimeOptions, WithVersion and WithSchemas apply to runners only", ErrInvalidOption, what)
	}
	if o.version == "" {
		o.version = Version
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	return o, nil
}
