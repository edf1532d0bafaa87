package mesh

import "sync/atomic"

// hooks are test hooks, reached through export_test.go only. Each runner
// has its own (a test's runners do not share them, and tests may run in
// parallel); a production runner has none: a nil *hooks runs nothing, at
// the cost of a nil check.
type hooks struct {
	// loseDelivery drops the persisted deliveries it returns true for, as a
	// consumer leader change can lose them in flight.
	loseDelivery atomic.Pointer[func(streamSeq, numDelivered uint64) bool]
	// failReplyLookup runs before each look-up of a stored reply and fails
	// it with the error it returns (nil: the look-up goes ahead), as a
	// look-up across a pause or a lost connection fails.
	failReplyLookup atomic.Pointer[func(msgID string) error]
	// holdRebuilds holds persisted-consumer rebuilds until it is closed.
	holdRebuilds atomic.Pointer[chan struct{}]
	// takeShardsListed runs in takeShards between listing the consumers and
	// acting on the listing.
	takeShardsListed atomic.Pointer[func()]
	// stallWatch makes the coordinator ignore the assignment watch, as a
	// watch stalled on a lost NATS server would.
	stallWatch atomic.Bool
}

func (h *hooks) lost(streamSeq, numDelivered uint64) bool {
	if h == nil {
		return false
	}
	f := h.loseDelivery.Load()
	return f != nil && (*f)(streamSeq, numDelivered)
}

func (h *hooks) replyLookup(msgID string) error {
	if h == nil {
		return nil
	}
	if f := h.failReplyLookup.Load(); f != nil {
		return (*f)(msgID)
	}
	return nil
}

// rebuildHold returns the channel to wait on before a rebuild, or nil.
func (h *hooks) rebuildHold() chan struct{} {
	if h == nil {
		return nil
	}
	if ch := h.holdRebuilds.Load(); ch != nil {
		return *ch
	}
	return nil
}

func (h *hooks) listed() {
	if h == nil {
		return
	}
	if f := h.takeShardsListed.Load(); f != nil {
		(*f)()
	}
}

func (h *hooks) watchStalled() bool { return h != nil && h.stallWatch.Load() }
