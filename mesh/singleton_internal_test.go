package mesh

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// A singleton's context ends the moment its lease is seen invalid by a
// call to Err, without waiting for the fencing timer: Done is closed by
// then, as the context contract requires, and the cause names the lease.
func TestLeaseContext(t *testing.T) {
	var valid atomic.Bool
	valid.Store(true)
	ctx, cancel := newLeaseContext(valid.Load)
	defer cancel()
	child, childCancel := context.WithCancel(ctx)
	defer childCancel()
	if err := ctx.Err(); err != nil {
		t.Fatalf("Err = %v while the lease is valid", err)
	}
	select {
	case <-ctx.Done():
		t.Fatal("Done closed while the lease is valid")
	default:
	}
	valid.Store(false)
	if err := ctx.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Err = %v after the lease lapsed, want Canceled", err)
	}
	select {
	case <-ctx.Done():
	default:
		t.Fatal("Err reported the end but Done is open")
	}
	if c := context.Cause(ctx); !errors.Is(c, errLeaseLapsed) {
		t.Fatalf("Cause = %v, want errLeaseLapsed", c)
	}
	<-child.Done() // derived contexts end with it
	valid.Store(true)
	if ctx.Err() == nil {
		t.Fatal("a lapsed lease context came back")
	}

	ctx2, cancel2 := newLeaseContext(func() bool { return true })
	cancel2()
	if err := ctx2.Err(); !errors.Is(err, context.Canceled) || errors.Is(context.Cause(ctx2), errLeaseLapsed) {
		t.Fatalf("stopped singleton: Err %v, Cause %v", err, context.Cause(ctx2))
	}
}
