package actor

import (
	"context"
	"errors"
	"fmt"
)

// Partitions: a runtime's entities split by a pure function of their
// address (WithPartitions); the mesh opens, closes and fences one per shard.

// ClosePartition stops serving partition n: new messages to it fail with
// ErrNotServing (or with abort, when abort wraps ErrNotServing), and every
// entity in it is stopped. With abort nil, messages
// already queued are handled first (a graceful hand-off); otherwise they fail
// with abort at once (fencing: the caller no longer owns the partition). It
// returns when every entity's finalizers have run, or ctx's error.
func (rt *Runtime) ClosePartition(ctx context.Context, n int, abort error) error {
	if n < 0 || n >= len(rt.parts) {
		return fmt.Errorf("%w: partition %d of %d", ErrInvalidOption, n, len(rt.parts))
	}
	return rt.closeParts(ctx, rt.parts[n:n+1], ErrNotServing, StopPartitionClosed, abort)
}

// FencePartition makes partition n refuse new messages with err (which
// should wrap ErrNotServing) at once, without waiting or stopping its
// entities: the first, in-memory step of fencing a partition whose
// ownership is lost. Follow it with ClosePartition. Messages already running
// are not interrupted.
func (rt *Runtime) FencePartition(n int, err error) error {
	if n < 0 || n >= len(rt.parts) {
		return fmt.Errorf("%w: partition %d of %d", ErrInvalidOption, n, len(rt.parts))
	}
	p := &rt.parts[n]
	p.mu.Lock()
	p.err = err
	p.mu.Unlock()
	return nil
}

// OpenPartition serves partition n again after ClosePartition. Entities that
// are still finishing their finalizers are re-created only after them.
func (rt *Runtime) OpenPartition(n int) error {
	if n < 0 || n >= len(rt.parts) {
		return fmt.Errorf("%w: partition %d of %d", ErrInvalidOption, n, len(rt.parts))
	}
	if rt.closed.Load() {
		return ErrShuttingDown
	}
	p := &rt.parts[n]
	p.mu.Lock()
	p.err = nil
	p.mu.Unlock()
	return nil
}

func (rt *Runtime) closeParts(ctx context.Context, parts []partition, closedErr error, reason StopReason, abort error) error {
	if errors.Is(abort, ErrNotServing) {
		closedErr = abort // a fenced partition keeps refusing with the fencing error
	}
	for _, in := range rt.beginClose(parts, closedErr, reason, abort) {
		select {
		case <-in.stopped:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// beginClose closes parts to new messages and starts stopping every entity in
// them; it returns those entities (each closes its stopped channel when done).
func (rt *Runtime) beginClose(parts []partition, closedErr error, reason StopReason, abort error) []*Instance {
	var stopping []*Instance
	for i := range parts {
		p := &parts[i]
		p.mu.Lock()
		p.err = closedErr
		for _, m := range p.maps {
			for _, in := range m {
				stopping = append(stopping, in)
			}
		}
		p.mu.Unlock()
	}
	for _, in := range stopping {
		in.mu.Lock()
		now, dropped := in.beginStop(reason, abort)
		in.mu.Unlock()
		for dropped != nil {
			next := dropped.base().next
			dropped.base().next = nil
			dropped.fail(abort)
			dropped = next
		}
		if now {
			in.finalizeSoon()
		}
	}
	return stopping
}
