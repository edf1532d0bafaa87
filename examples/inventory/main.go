// Command inventory is a second example entity type with its own runner
// binary, for a mixed cluster: runners of cmd/runner host the Counter,
// runners of this binary host Inventory, each type in its own shard group
// (docs/operations.md, "Runners that host different entity types"). An
// item's stock is durable state, and Restock is a persisted message.
//
//	nats-server -js &
//	export NATSMESH_SHARD_GROUPS=default,inventory NATSMESH_ENTITY_GROUPS=Inventory=inventory
//	go run ./cmd/shardmgr & go run ./cmd/runner & go run ./examples/inventory & go run ./cmd/gateway &
//	curl localhost:8080/v1/Inventory/sku-1/Restock -H 'Content-Type: application/json' -H 'Idempotency-Key: r1' -d '{"units":5}'
//	curl localhost:8080/v1/Inventory/sku-1/Reserve -H 'Content-Type: application/json' -d '{"units":2}'
package main

import (
	"context"
	"fmt"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/app"
	"github.com/natsmesh/natsmesh/durablestate"
)

// Units is the payload of Restock and Reserve.
type Units struct {
	Units int `json:"units"`
}

// OutOfStock is Reserve's declared failure.
type OutOfStock struct {
	InStock int `json:"inStock"`
	Wanted  int `json:"wanted"`
}

func (e *OutOfStock) Error() string {
	return fmt.Sprintf("out of stock: %d in stock, %d wanted", e.InStock, e.Wanted)
}

// Inventory is one item's stock, by item id.
var (
	Inventory = actor.NewEntity("Inventory")
	// Restock adds units; persisted, so a delivery is never lost.
	Restock = actor.NewRPC[Units, int](Inventory, "Restock", actor.Persisted())
	// Reserve takes units out of stock, or fails with *OutOfStock.
	Reserve = actor.NewRPC[Units, int](Inventory, "Reserve", actor.Failure[*OutOfStock]("OutOfStock"))
	// Stock returns the units in stock.
	Stock = actor.NewRPC[actor.Empty, int](Inventory, "Stock")
)

// Spec is Inventory as a durable-state entity.
func Spec() durablestate.Spec[int] {
	save := func(ctx context.Context, e *durablestate.Entity[int], v int) (int, error) {
		if err := e.Save(ctx, v); err != nil {
			return e.State(), err
		}
		return v, nil
	}
	return durablestate.Spec[int]{Handlers: []durablestate.Handler[int]{
		durablestate.Handle(Restock, func(ctx context.Context, e *durablestate.Entity[int], u Units) (int, error) {
			return save(ctx, e, e.State()+u.Units)
		}),
		durablestate.Handle(Reserve, func(ctx context.Context, e *durablestate.Entity[int], u Units) (int, error) {
			if u.Units > e.State() {
				return e.State(), &OutOfStock{InStock: e.State(), Wanted: u.Units}
			}
			return save(ctx, e, e.State()-u.Units)
		}),
		durablestate.Handle(Stock, func(_ context.Context, e *durablestate.Entity[int], _ actor.Empty) (int, error) {
			return e.State(), nil
		}),
	}}
}

func main() {
	app.Runner{
		Name:    "inventory",
		Install: []app.Installer{app.DurableState(Inventory, Spec())},
	}.Main()
}
