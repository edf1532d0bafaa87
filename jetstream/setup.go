package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Start-up steps (opening a bucket or a stream, a first registration, a
// first watch) are retried with short attempts: on a NATS cluster, two
// processes creating the same replicated asset at once can leave the losing
// request unanswered (observed with nats-server 2.15.2: both callers hung
// until their deadline, while a second attempt found the asset at once),
// and a process started while its servers elect leaders would otherwise
// exit on the first timeout.
const (
	// SetupTimeout bounds a start-up step, retries included, when its
	// context has no deadline: creating replicated streams takes seconds
	// on a busy cluster.
	SetupTimeout = 30 * time.Second
	// setupAttempt bounds one attempt of a start-up step.
	setupAttempt = 3 * time.Second
	// setupPause separates the attempts.
	setupPause = 100 * time.Millisecond
)

// Setup runs an idempotent start-up step with short attempts until it
// succeeds, ctx ends (SetupTimeout when ctx has no deadline), or it fails
// in a way another attempt cannot mend (Final). Errors name the step:
// "<what>: <cause>".
func Setup(ctx context.Context, what string, step func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, SetupTimeout)
		defer cancel()
	}
	for {
		actx, cancel := context.WithTimeout(ctx, setupAttempt)
		err := step(actx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || Final(err) {
			return fmt.Errorf("%s: %w", what, err)
		}
		t := time.NewTimer(setupPause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w", what, err)
		}
	}
}

// SetupContext bounds a sequence of start-up steps by SetupTimeout when ctx
// has no deadline of its own.
func SetupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, SetupTimeout)
}

// Final reports whether err is one that retrying the same request cannot
// mend: input this package or nats.go rejects before sending anything, a
// lease another holder has, or a closed connection. Everything else (time
// outs, no responders, the server's refusals, which include passing limits
// such as a stream's maximum number of consumers) may pass.
func Final(err error) bool {
	for _, target := range []error{
		ErrInvalidOption, ErrLeaseHeld, nats.ErrConnectionClosed,
		natsjs.ErrInvalidBucketName, natsjs.ErrInvalidStreamName, natsjs.ErrStreamNameRequired,
		natsjs.ErrInvalidKey, natsjs.ErrInvalidConsumerName, natsjs.ErrBadBucket,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}
