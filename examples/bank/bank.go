// Command bank tells the seed's two stories end to end on one embedded
// NATS server and a standalone runner:
//
//  1. Many clients deposit to one account at once and no update is lost:
//     the account is an entity that handles one message at a time, its
//     deposits are persisted messages, and its balance is durable state.
//  2. A transfer from Alice to Bob whose credit step fails (Bob's account is
//     closed) refunds Alice: a saga whose debit step is compensated.
//
// Run it with `go run ./examples/bank`.
package main

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/durablestate"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/saga"
)

// Amount is the payload of deposits and withdrawals.
type Amount struct {
	Amount int `json:"amount"`
}

// InsufficientFunds refuses a withdrawal larger than the balance.
type InsufficientFunds struct {
	Balance int `json:"balance"`
	Wanted  int `json:"wanted"`
}

func (e *InsufficientFunds) Error() string {
	return fmt.Sprintf("insufficient funds: balance %d, wanted %d", e.Balance, e.Wanted)
}

// AccountClosed refuses any movement on a closed account.
type AccountClosed struct{}

func (*AccountClosed) Error() string { return "account closed" }

var (
	Account  = actor.NewEntity("Account")
	Deposit  = actor.NewRPC[Amount, int](Account, "Deposit", actor.Persisted(), actor.Failure[*AccountClosed]("AccountClosed"))
	Withdraw = actor.NewRPC[Amount, int](Account, "Withdraw", actor.Persisted(),
		actor.Failure[*InsufficientFunds]("InsufficientFunds"), actor.Failure[*AccountClosed]("AccountClosed"))
	CloseAccount = actor.NewRPC[actor.Empty, actor.Empty](Account, "Close", actor.Persisted())
	Balance      = actor.NewRPC[actor.Empty, int](Account, "Balance")
)

type account struct {
	Balance int  `json:"balance"`
	Closed  bool `json:"closed"`
}

// accountBehavior keeps each account's balance in KV, written before each
// reply (durablestate's write-through).
func accountBehavior(ctx context.Context, nc *nats.Conn, cfg mesh.Config) (*actor.Behavior, error) {
	scfg := durablestate.DefaultConfig()
	scfg.Prefix, scfg.Replicas = cfg.Prefix, cfg.StorageReplicas
	store, err := durablestate.Open(nc, scfg)
	if err != nil {
		return nil, err
	}
	move := func(ctx context.Context, e *durablestate.Entity[account], delta int) (int, error) {
		s := e.State()
		switch {
		case s.Closed:
			return 0, &AccountClosed{}
		case s.Balance+delta < 0:
			return 0, &InsufficientFunds{Balance: s.Balance, Wanted: -delta}
		}
		s.Balance += delta
		if err := e.Save(ctx, s); err != nil {
			return 0, err
		}
		return s.Balance, nil
	}
	return durablestate.New(ctx, store, Account, durablestate.Spec[account]{
		Handlers: []durablestate.Handler[account]{
			durablestate.Handle(Deposit, func(ctx context.Context, e *durablestate.Entity[account], a Amount) (int, error) {
				return move(ctx, e, a.Amount)
			}),
			durablestate.Handle(Withdraw, func(ctx context.Context, e *durablestate.Entity[account], a Amount) (int, error) {
				return move(ctx, e, -a.Amount)
			}),
			durablestate.Handle(CloseAccount, func(ctx context.Context, e *durablestate.Entity[account], _ actor.Empty) (actor.Empty, error) {
				s := e.State()
				s.Closed = true
				return actor.Empty{}, e.Save(ctx, s)
			}),
			durablestate.Handle(Balance, func(_ context.Context, e *durablestate.Entity[account], _ actor.Empty) (int, error) {
				return e.State().Balance, nil
			}),
		},
	})
}

// Transfer is the input of the transfer saga.
type Transfer struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Amount int    `json:"amount"`
}

// defineTransfer defines the transfer saga: debit From (compensated by a
// refund), then credit To. Every call carries the step's idempotency key,
// so a step retried after a crash moves no money twice.
func defineTransfer(ss *saga.Sagas, client *mesh.Client) (*saga.Definition[Transfer], error) {
	// A refusal by the account is final: abort (and compensate). Any other
	// error leaves the outcome unknown: the saga tries the same key again.
	refused := func(err error) error {
		var insufficient *InsufficientFunds
		var closed *AccountClosed
		if errors.As(err, &insufficient) || errors.As(err, &closed) {
			return saga.Abort(err)
		}
		return err
	}
	return saga.Define(ss, "transfer",
		saga.Step[Transfer]{
			Name: "debit",
			Do: func(ctx context.Context, x saga.Exec[Transfer]) error {
				_, err := mesh.Call(ctx, client, Withdraw, x.Input.From, Amount{x.Input.Amount}, mesh.MessageID(x.Key()))
				return refused(err)
			},
			Compensate: func(ctx context.Context, x saga.Exec[Transfer]) error {
				_, err := mesh.Call(ctx, client, Deposit, x.Input.From, Amount{x.Input.Amount}, mesh.MessageID(x.Key()))
				return err
			},
		},
		saga.Step[Transfer]{
			Name: "credit",
			Do: func(ctx context.Context, x saga.Exec[Transfer]) error {
				_, err := mesh.Call(ctx, client, Deposit, x.Input.To, Amount{x.Input.Amount}, mesh.MessageID(x.Key()))
				return refused(err)
			},
		},
	)
}

// Bank is what a process of the bank needs: a client, and the transfer
// saga.
type Bank struct {
	Client   *mesh.Client
	Transfer *saga.Definition[Transfer]
}

// Install registers the Account entity and the transfer saga on r (before
// r.Start).
func Install(ctx context.Context, nc *nats.Conn, cfg mesh.Config, r *mesh.Runner) (*Bank, error) {
	b, err := accountBehavior(ctx, nc, cfg)
	if err != nil {
		return nil, err
	}
	if err := r.Register(b); err != nil {
		return nil, err
	}
	bank, ss, err := open(ctx, nc, cfg)
	if err != nil {
		return nil, err
	}
	return bank, ss.Install(r)
}

// Open returns the bank as a client process (hosting nothing) sees it.
func Open(ctx context.Context, nc *nats.Conn, cfg mesh.Config) (*Bank, error) {
	bank, _, err := open(ctx, nc, cfg)
	return bank, err
}

func open(ctx context.Context, nc *nats.Conn, cfg mesh.Config) (*Bank, *saga.Sagas, error) {
	client, err := mesh.NewClient(nc, cfg.ClientConfig)
	if err != nil {
		return nil, nil, err
	}
	ss, err := saga.New(ctx, client, saga.DefaultConfig())
	if err != nil {
		return nil, nil, err
	}
	t, err := defineTransfer(ss, client)
	if err != nil {
		return nil, nil, err
	}
	return &Bank{Client: client, Transfer: t}, ss, nil
}

// ConcurrentDeposits has clients deposit 1 each times into account at
// once, each deposit a persisted message with its own id, and returns the
// balance after.
func (b *Bank) ConcurrentDeposits(ctx context.Context, account string, clients, each int) (int, error) {
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("deposit-%s-%d-%d", account, c, i)
				if _, err := mesh.Call(ctx, b.Client, Deposit, account, Amount{1}, mesh.MessageID(id)); err != nil {
					errs <- fmt.Errorf("%s: %w", id, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return mesh.Call(ctx, b.Client, Balance, account, actor.Empty{})
}
