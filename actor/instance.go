package actor

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Activation states of an Instance.
const (
	stInactive uint8 = iota // no handlers yet
	stActive                // handlers built by init
	stFailed                // init failed or a fatal defect: re-create after backoff
)

// Instance is one activation of an entity. See the methods in behavior.go
// for what an entity's own code may call.
//
// Locking: Instance.mu guards the mailbox and state. The partition's lock is
// taken before an instance's lock, never after.
type Instance struct {
	addr Address
	ts   *typeState

	mu         sync.Mutex
	head       message   // the mailbox, an intrusive FIFO list
	tail       *envelope // last of the mailbox when head != nil
	queued     int32     // messages in the mailbox
	running    int32     // drainer goroutines
	pidx       uint32    // partition index
	state      uint8
	closing    bool // stopping: takes no new messages
	keepAlive  bool
	activated  bool // Activated was reported for this activation
	reason     StopReason
	lastActive int64 // runtime clock when it last went idle
	handlers   []Handler
	finalizers []func(context.Context)
	stopped    chan struct{} // made by beginStop, closed when finalized
	cold       *coldState    // rarely needed; nil for most entities

	failures atomic.Int32 // consecutive defects or failed inits
	probe    bool         // Register's probe of init: never activated
}

// coldState holds what only entities that failed or were re-created while
// their previous activation was finishing need.
type coldState struct {
	prev    *Instance // the previous activation, still finalizing
	retryAt int64     // runtime clock before which a failed entity is not re-created
}

func (in *Instance) coldState() *coldState {
	if in.cold == nil {
		in.cold = &coldState{}
	}
	return in.cold
}

// limit is how many drainers may run; i.mu is held.
func (in *Instance) limit() int32 {
	if in.state == stActive {
		return in.ts.concurrency
	}
	return 1
}

func (in *Instance) push(m message) {
	if in.head == nil {
		in.head = m
	} else {
		in.tail.next = m
	}
	in.tail = m.base()
	in.queued++
}

func (in *Instance) pop() message {
	m := in.head
	if m == nil {
		return nil
	}
	e := m.base()
	in.head = e.next
	e.next = nil
	if in.head == nil {
		in.tail = nil
	}
	in.queued--
	return m
}

// drain runs queued messages until the mailbox is empty. An entity has a
// goroutine only while it has work: this is what keeps an idle entity at a
// few hundred bytes.
func (in *Instance) drain() {
	for {
		in.mu.Lock()
		// After a failure only one drainer may go on, to re-create the entity.
		if in.state != stActive && in.running > 1 {
			in.running--
			in.mu.Unlock()
			return
		}
		m := in.pop()
		if m == nil {
			in.running--
			in.lastActive = in.ts.rt.clock.Load()
			last := in.closing && in.running == 0
			in.mu.Unlock()
			if last {
				in.finalize()
			}
			return
		}
		active := in.state == stActive
		hs := in.handlers
		in.mu.Unlock()

		e := m.base()
		// A call cancelled before it started is not run.
		if err := e.ctx.Err(); err != nil {
			m.fail(err)
			continue
		}
		if g := in.ts.rt.opts.gate; g != nil {
			if err := g(int(in.pidx)); err != nil {
				m.fail(err)
				continue
			}
		}
		if !active {
			var err error
			if hs, err = in.activate(); err != nil {
				m.fail(err)
				continue
			}
		}
		h := hs[e.d.index].fn
		if h == nil {
			m.fail(fmt.Errorf("%w: %s.%s", ErrNotImplemented, in.addr.Type, e.d.name))
			continue
		}
		if d := m.invoke(h); d != nil {
			in.defect(d)
		} else if in.failures.Load() != 0 {
			in.failures.Store(0)
		}
	}
}

// activate re-creates the entity: waits for the previous activation's
// finalizers, ends a failed activation, honours the retry backoff, runs init.
// Only one drainer runs it (limit is 1 while not active).
func (in *Instance) activate() ([]Handler, error) {
	rt := in.ts.rt
	in.mu.Lock()
	var prev *Instance
	var retryAt int64
	if c := in.cold; c != nil {
		prev, retryAt = c.prev, c.retryAt
		c.prev = nil
	}
	failed := in.state == stFailed
	fins := in.finalizers
	in.finalizers = nil
	in.mu.Unlock()
	if prev != nil {
		<-prev.stopped
	}
	if failed {
		in.runFinalizers(fins)
		if wait := time.Duration(retryAt - int64(time.Since(rt.start))); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-rt.sweepStop:
				t.Stop()
				return nil, ErrShuttingDown
			}
		}
	}
	handlers, err := in.callInit()
	if err != nil {
		n := in.failures.Add(1)
		in.mu.Lock()
		in.state = stFailed
		in.coldState().retryAt = int64(time.Since(rt.start)) + int64(in.ts.retry(int(n)))
		in.mu.Unlock()
		return nil, err
	}
	// The gate again, now that the handler is about to run: drain consulted
	// it before this activation began, and init (which may wait for
	// storage), the previous activation's finalizers and the retry backoff
	// all came between. A gate that closed meanwhile (a process paused
	// while init waited for a reply) means this activation must not begin:
	// it is abandoned before anyone hears of it, its finalizers run, and
	// the next message activates the entity afresh, if its gate allows.
	if g := rt.opts.gate; g != nil {
		if err := g(int(in.pidx)); err != nil {
			in.mu.Lock()
			fins := in.finalizers
			in.finalizers = nil
			in.mu.Unlock()
			in.runFinalizers(fins)
			return nil, err
		}
	}
	in.mu.Lock()
	in.handlers = handlers
	in.state = stActive
	in.activated = true
	// Now that the entity may run several messages at once, start drainers
	// for what queued up during activation.
	extra := min(in.queued, in.ts.concurrency-in.running)
	in.running += max(extra, 0)
	in.mu.Unlock()
	if obs := rt.opts.observer; obs != nil {
		obs.Activated(in.addr)
	}
	for range extra {
		rt.startDrain(in)
	}
	return handlers, nil
}

// callInit runs the behaviour's init and orders its handlers by RPC index.
func (in *Instance) callInit() (hs []Handler, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = newDefect(r)
		}
	}()
	hs, err = in.ts.b.init(in)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrActivation, in.addr, err)
	}
	return arrangeHandlers(in.ts.b.entity, hs)
}

// probe runs b's init on a probe instance and checks the handlers it
// returns: one for each RPC the entity declares, none for another type's,
// none twice. An init that has not returned within timeout fails it (the
// init goes on by itself); so do its errors and panics, which would
// otherwise surface at the first activation.
func probe(b *Behavior, timeout time.Duration) error {
	e := b.entity
	type result struct {
		hs  []Handler
		err error
	}
	done := make(chan result, 1)
	go func() {
		in := &Instance{addr: Address{Type: e.name}, probe: true}
		var r result
		defer func() {
			if p := recover(); p != nil {
				r.err = fmt.Errorf("panicked: %v", p)
			}
			done <- r
		}()
		r.hs, r.err = b.init(in)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	var r result
	select {
	case r = <-done:
	case <-t.C:
		return fmt.Errorf("%w: entity %s: init did not return within %v when probed (it must return its handlers at once when Instance.Probe reports true)", ErrInvalidOption, e.name, timeout)
	}
	if r.err != nil {
		return fmt.Errorf("%w: entity %s: init failed when probed (it must return its handlers at once, without I/O, when Instance.Probe reports true): %w", ErrInvalidOption, e.name, r.err)
	}
	return checkHandlers(e, r.hs)
}

// checkHandlers checks that hs has one handler for each RPC e declares,
// none for another type's, none twice.
func checkHandlers(e *Entity, hs []Handler) error {
	have := make([]bool, len(e.rpcs))
	for _, h := range hs {
		switch {
		case h.d == nil:
			return fmt.Errorf("%w: entity %s: a handler bound to no rpc", ErrInvalidOption, e.name)
		case h.d.entity != e:
			return fmt.Errorf("%w: entity %s: handler for rpc %s of entity %s", ErrInvalidOption, e.name, h.d.name, h.d.entity.name)
		case have[h.d.index]:
			return fmt.Errorf("%w: entity %s: two handlers for rpc %s", ErrInvalidOption, e.name, h.d.name)
		}
		have[h.d.index] = true
	}
	for i, d := range e.rpcs {
		if !have[i] {
			return fmt.Errorf("%w: entity %s: no handler for rpc %s", ErrInvalidOption, e.name, d.name)
		}
	}
	return nil
}

// arrangeHandlers returns hs indexed by RPC index. It sorts hs in place and
// uses it as the table when it has one handler per RPC, the common case, to
// save an allocation per activation.
func arrangeHandlers(e *Entity, hs []Handler) ([]Handler, error) {
	for i := range hs {
		if hs[i].d == nil || hs[i].d.entity != e {
			return nil, fmt.Errorf("%w: %s: handler %d is not for an rpc of this entity", ErrActivation, e.name, i)
		}
		for j := i; j > 0 && hs[j].d.index < hs[j-1].d.index; j-- {
			hs[j], hs[j-1] = hs[j-1], hs[j]
		}
	}
	for i := 1; i < len(hs); i++ {
		if hs[i].d == hs[i-1].d {
			return nil, fmt.Errorf("%w: %s: two handlers for rpc %s", ErrActivation, e.name, hs[i].d.name)
		}
	}
	if len(hs) == len(e.rpcs) {
		return hs, nil
	}
	table := make([]Handler, len(e.rpcs))
	for _, h := range hs {
		table[h.d.index] = h
	}
	return table, nil
}

// defect handles a handler's panic: unless fatal defects are disabled, the
// activation ends and the next message re-creates the entity after backoff.
func (in *Instance) defect(*Defect) {
	if in.ts.noFatal {
		return
	}
	n := in.failures.Add(1)
	rt := in.ts.rt
	in.mu.Lock()
	if in.state != stActive {
		in.mu.Unlock()
		return
	}
	in.state = stFailed
	in.handlers = nil
	in.coldState().retryAt = int64(time.Since(rt.start)) + int64(in.ts.retry(int(n)))
	wasActive := in.activated
	in.activated = false
	in.mu.Unlock()
	if obs := rt.opts.observer; obs != nil && wasActive {
		obs.Deactivated(in.addr, StopDefect)
	}
}

// beginStop marks the instance closing; in.mu is held. It reports whether
// the instance is idle (the caller must then call finalizeSoon) and, when
// abort is non-nil, returns the queued messages, detached, for the caller to
// fail with abort outside the lock.
func (in *Instance) beginStop(reason StopReason, abort error) (idle bool, dropped message) {
	if in.closing {
		return false, nil
	}
	in.closing = true
	in.reason = reason
	in.stopped = make(chan struct{})
	if abort != nil {
		dropped = in.head
		in.head, in.tail, in.queued = nil, nil, 0
	}
	return in.running == 0, dropped
}

// finalizeSoon finalizes an idle, closing instance: inline when it has no
// finalizers, else on its own goroutine so one slow finalizer delays no other.
func (in *Instance) finalizeSoon() {
	in.mu.Lock()
	slow := len(in.finalizers) > 0
	in.mu.Unlock()
	if slow {
		go in.finalize()
	} else {
		in.finalize()
	}
}

// finalize ends a closing instance after its last message: finalizers,
// observer, unmapping, and release of the next activation.
func (in *Instance) finalize() {
	rt := in.ts.rt
	in.mu.Lock()
	fins := in.finalizers
	in.finalizers, in.handlers = nil, nil
	wasActive := in.activated
	in.activated = false
	in.mu.Unlock()
	in.runFinalizers(fins)
	if obs := rt.opts.observer; obs != nil && wasActive {
		obs.Deactivated(in.addr, in.reason)
	}
	p := &rt.parts[in.pidx]
	p.mu.Lock()
	if m := p.maps[in.ts.idx]; m[in.addr.ID] == in {
		delete(m, in.addr.ID)
	}
	p.mu.Unlock()
	close(in.stopped)
	rt.instances.Done()
}

// runFinalizers runs fns in reverse order within the termination timeout. A
// panicking finalizer does not stop the others.
func (in *Instance) runFinalizers(fns []func(context.Context)) {
	if len(fns) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), in.ts.rt.opts.termTimeout)
	defer cancel()
	for i := len(fns) - 1; i >= 0; i-- {
		func() {
			defer func() { _ = recover() }()
			fns[i](ctx)
		}()
	}
}
