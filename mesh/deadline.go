package mesh

import (
	"context"
	"sync"
	"time"
)

// deadlineCtx is the context of a call that arrived with a time budget. Most
// handlers never wait on Done, so unlike context.WithDeadline it starts no
// timer unless Done is called: at tens of thousands of calls per second the
// timers were a tenth of the runner's CPU.
type deadlineCtx struct {
	deadline time.Time

	mu    sync.Mutex
	done  chan struct{}
	timer *time.Timer
	err   error
}

func newDeadlineCtx(d time.Time) *deadlineCtx { return &deadlineCtx{deadline: d} }

func (c *deadlineCtx) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *deadlineCtx) Value(any) any               { return nil }

func (c *deadlineCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err != nil {
			close(c.done)
		} else {
			c.timer = time.AfterFunc(time.Until(c.deadline), func() { c.finish(context.DeadlineExceeded) })
		}
	}
	return c.done
}

// Err reports the deadline as soon as it has passed, closing Done first so
// that Err is never non-nil while Done is open.
func (c *deadlineCtx) Err() error {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err == nil && !time.Now().Before(c.deadline) {
		c.finish(context.DeadlineExceeded)
		return context.DeadlineExceeded
	}
	return err
}

// finish ends the context with err (first caller wins).
func (c *deadlineCtx) finish(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
}

// cancel ends the context once its call is answered.
func (c *deadlineCtx) cancel() { c.finish(context.Canceled) }
