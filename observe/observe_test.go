package observe_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/observe"
)

type ctxKey struct{}

// rec records what it hears, prefixed with its name, and adds its name to
// the context of a received call.
type rec struct {
	mesh.NopObserver
	name string
	log  *[]string
}

func (r rec) add(s string) { *r.log = append(*r.log, r.name+":"+s) }

func (r rec) Activated(a actor.Address) { r.add("activated " + a.ID) }
func (r rec) CallSent(context.Context, string, string, nats.Header) func(error) {
	return func(err error) { r.add("sent " + err.Error()) }
}
func (r rec) CallReceived(ctx context.Context, _ actor.Address, _ string, _ mesh.ShardID, _ nats.Header) (context.Context, mesh.CallObservation) {
	seen, _ := ctx.Value(ctxKey{}).(string)
	r.add("received after " + seen)
	return context.WithValue(ctx, ctxKey{}, seen+r.name), obs(r)
}
func (r rec) SingletonStopped(name string) { r.add("stopped " + name) }

type obs rec

func (o obs) Started()       { rec(o).add("started") }
func (o obs) Done(err error) { rec(o).add("done") }

func TestMulti(t *testing.T) {
	var log []string
	m := observe.Multi(rec{name: "a", log: &log}, nil, rec{name: "b", log: &log})
	m.Activated(actor.Address{Type: "T", ID: "1"})
	m.CallSent(context.Background(), "T", "R", nats.Header{})(errors.New("x"))
	ctx, o := m.CallReceived(context.Background(), actor.Address{}, "R", mesh.ShardID{}, nil)
	o.Started()
	o.Done(nil)
	m.SingletonStopped("s")
	want := []string{
		"a:activated 1", "b:activated 1", "a:sent x", "b:sent x",
		"a:received after ", "b:received after a", "a:started", "b:started", "a:done", "b:done",
		"a:stopped s", "b:stopped s",
	}
	if !slices.Equal(log, want) || ctx.Value(ctxKey{}) != "ab" {
		t.Fatalf("heard %q (context %v), want %q (context ab)", log, ctx.Value(ctxKey{}), want)
	}
	if observe.Multi() != nil || observe.Multi(nil) != nil {
		t.Fatal("Multi of nothing is not nil")
	}
	if one := (rec{name: "a", log: &log}); observe.Multi(one) != one {
		t.Fatal("Multi of one observer is not that observer")
	}
}
