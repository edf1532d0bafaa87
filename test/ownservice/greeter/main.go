// Command greeter is a user's own natsmesh service, in its own module, as
// a user would write it (test/ownservice runs it): an entity type, a
// durable one, and a main that is a deployable binary.
package main

import (
	"context"
	"fmt"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/app"
	"github.com/natsmesh/natsmesh/durablestate"
)

// Greeting is Greet's payload.
type Greeting struct {
	Name string `json:"name"`
}

// NoName is Greet's declared failure.
type NoName struct {
	Reason string `json:"reason"`
}

func (e *NoName) Error() string { return "no name: " + e.Reason }

// Greeter greets and counts its greetings, durably.
var (
	Greeter = actor.NewEntity("Greeter")
	Greet   = actor.NewRPC[Greeting, string](Greeter, "Greet", actor.Failure[*NoName]("NoName"))
	Count   = actor.NewRPC[actor.Empty, int](Greeter, "Count")
	// Echo streams the name back, letter by letter.
	Echo = actor.NewStreamRPC[Greeting, string](Greeter, "Echo")
)

func spec() durablestate.Spec[int] {
	return durablestate.Spec[int]{Handlers: []durablestate.Handler[int]{
		durablestate.Handle(Greet, func(ctx context.Context, e *durablestate.Entity[int], g Greeting) (string, error) {
			if g.Name == "" {
				return "", &NoName{Reason: "empty"}
			}
			if err := e.Save(ctx, e.State()+1); err != nil {
				return "", err
			}
			return fmt.Sprintf("hello %s, greeting %d from %s", g.Name, e.State(), e.Address().ID), nil
		}),
		durablestate.Handle(Count, func(_ context.Context, e *durablestate.Entity[int], _ actor.Empty) (int, error) {
			return e.State(), nil
		}),
		durablestate.HandleStream(Echo, func(_ context.Context, _ *durablestate.Entity[int], g Greeting, emit func(string) error) error {
			for _, r := range g.Name {
				if err := emit(string(r)); err != nil {
					return err
				}
			}
			return nil
		}),
	}}
}

func main() {
	app.Runner{
		Name:    "greeter",
		Version: "0.3.0",
		Install: []app.Installer{app.DurableState(Greeter, spec())},
	}.Main()
}
