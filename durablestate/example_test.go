package durablestate_test

import (
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/durablestate"
	"github.com/natsmesh/natsmesh/internal/devnats"
)

var (
	Cart  = actor.NewEntity("Cart")
	Add   = actor.NewRPC[string, int](Cart, "Add", actor.Failure[*durablestate.ConflictError]("Conflict"))
	Items = actor.NewRPC[actor.Empty, []string](Cart, "Items")
)

type cart struct {
	Items []string `json:"items"`
}

var cartSpec = durablestate.Spec[cart]{
	Handlers: []durablestate.Handler[cart]{
		durablestate.Handle(Add, func(ctx context.Context, e *durablestate.Entity[cart], item string) (int, error) {
			s := e.State()
			s.Items = append(slices.Clone(s.Items), item)
			if err := e.Save(ctx, s); err != nil {
				return 0, err
			}
			return len(s.Items), nil
		}),
		durablestate.Handle(Items, func(_ context.Context, e *durablestate.Entity[cart], _ actor.Empty) ([]string, error) {
			return e.State().Items, nil
		}),
	},
}

// A cart whose state is saved in KV on every change: a runtime started
// later (another runner, after a crash) finds it.
func Example() {
	dir, _ := os.MkdirTemp("", "ds-example")
	defer os.RemoveAll(dir)
	srv, err := devnats.Start(devnats.Options{StoreDir: dir})
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()
	nc, err := nats.Connect("", nats.InProcessServer(srv))
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	ctx := context.Background()
	store, err := durablestate.Open(nc, durablestate.DefaultConfig())
	if err != nil {
		panic(err)
	}
	host := func() *actor.Runtime {
		b, err := durablestate.New(ctx, store, Cart, cartSpec)
		if err != nil {
			panic(err)
		}
		rt, err := actor.NewTestClient(b)
		if err != nil {
			panic(err)
		}
		return rt
	}

	rt := host()
	fmt.Println(actor.Call(ctx, rt, Add, "cart-1", "apple"))
	fmt.Println(actor.Call(ctx, rt, Add, "cart-1", "pear"))
	_ = rt.Shutdown(ctx)

	rt = host()
	defer rt.Shutdown(ctx)
	fmt.Println(actor.Call(ctx, rt, Items, "cart-1", actor.Empty{}))
	// Output:
	// 1 <nil>
	// 2 <nil>
	// [apple pear] <nil>
}
