// Command bank tells the seed's stories end to end on one embedded NATS
// server and a standalone runner:
//
//  1. Many clients deposit to one account at once and no update is lost:
//     the account is an entity that handles one message at a time, its
//     deposits are persisted messages, and its balance is durable state.
//  2. A transfer from Alice to Bob whose credit step fails (Bob's account is
//     closed) refunds Alice: a workflow whose debit activity is
//     compensated.
//  3. A large transfer waits, durably, for an approval signal.
//  4. A large transfer nobody approves times out and is refunded.
//
// Run it with `go run ./examples/bank`.
package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/durablestate"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/workflow"
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

// Transfer is the input of the transfer workflow.
type Transfer struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Amount int    `json:"amount"`
}

// Receipt is a completed transfer.
type Receipt struct {
	Transfer
	// ApprovedBy is who approved a transfer above ApprovalThreshold.
	ApprovedBy string `json:"approvedBy,omitempty"`
}

// Refused is the transfer's declared failure: why it moved no money (its
// debit, if any, refunded).
type Refused struct {
	Reason string `json:"reason"`
}

func (e *Refused) Error() string { return "transfer refused: " + e.Reason }

// ApprovalThreshold is the amount above which a transfer waits for an
// approval (Bank.Approve), durably: for as long as the approval timeout,
// holding nothing on the runner meanwhile.
const ApprovalThreshold = 50

// defineTransfer defines the transfer workflow: debit From (compensated by
// a refund), wait for an approval if the amount is large, then credit To.
// Every call carries its activity's idempotency key, so a step retried
// after a crash moves no money twice.
func defineTransfer(eng *workflow.Engine, client *mesh.Client, approvalTimeout time.Duration) (*workflow.Workflow[Transfer, Receipt], error) {
	// A refusal by the account is final; any other error leaves the
	// outcome unknown, and the activity tries the same key again.
	final := func(err error) error {
		var insufficient *InsufficientFunds
		var closed *AccountClosed
		if errors.As(err, &insufficient) || errors.As(err, &closed) {
			return workflow.NonRetryable(err)
		}
		return err
	}
	return workflow.Define(eng, "transfer", func(c *workflow.Context, t Transfer) (Receipt, error) {
		r := Receipt{Transfer: t}
		_, err := workflow.Activity(c, "debit", func(ctx context.Context, a workflow.ActivityInfo) (int, error) {
			v, err := mesh.Call(ctx, client, Withdraw, t.From, Amount{t.Amount}, mesh.MessageID(a.Key))
			return v, final(err)
		}, workflow.Compensate(func(ctx context.Context, a workflow.ActivityInfo) error {
			_, err := mesh.Call(ctx, client, Deposit, t.From, Amount{t.Amount}, mesh.MessageID(a.Key+"/refund"))
			return err
		}))
		if err != nil {
			return r, &Refused{Reason: "debit: " + err.Error()}
		}
		if t.Amount > ApprovalThreshold {
			by, err := workflow.Await[string](c, "approval", workflow.Within(approvalTimeout))
			if err != nil {
				return r, &Refused{Reason: "not approved: " + err.Error()}
			}
			r.ApprovedBy = by
		}
		if _, err := workflow.Activity(c, "credit", func(ctx context.Context, a workflow.ActivityInfo) (int, error) {
			v, err := mesh.Call(ctx, client, Deposit, t.To, Amount{t.Amount}, mesh.MessageID(a.Key))
			return v, final(err)
		}); err != nil {
			return r, &Refused{Reason: "credit: " + err.Error()}
		}
		return r, nil
	}, workflow.Failure[*Refused]("Refused"))
}

// Bank is what a process of the bank needs: a client, the workflow engine
// and the transfer workflow.
type Bank struct {
	Client   *mesh.Client
	Engine   *workflow.Engine
	Transfer *workflow.Workflow[Transfer, Receipt]
}

// Approve approves transfer id (by who), whether it waits yet or not.
func (b *Bank) Approve(ctx context.Context, id, who string) error {
	return workflow.Signal(ctx, b.Engine, "transfer", id, "approval", who)
}

// Reject rejects transfer id: it is refunded.
func (b *Bank) Reject(ctx context.Context, id, why string) error {
	return workflow.SignalError(ctx, b.Engine, "transfer", id, "approval", errors.New(why))
}

// Install registers the Account entity and the transfer workflow on r
// (before r.Start); large transfers wait approvalTimeout for an approval.
func Install(ctx context.Context, nc *nats.Conn, cfg mesh.Config, r *mesh.Runner, approvalTimeout time.Duration) (*Bank, error) {
	b, err := accountBehavior(ctx, nc, cfg)
	if err != nil {
		return nil, err
	}
	if err := r.Register(b); err != nil {
		return nil, err
	}
	bank, err := open(ctx, r.Client(), approvalTimeout)
	if err != nil {
		return nil, err
	}
	return bank, bank.Engine.Install(r)
}

// Open returns the bank as a client process (hosting nothing) sees it.
func Open(ctx context.Context, nc *nats.Conn, cfg mesh.Config) (*Bank, error) {
	client, err := mesh.NewClient(nc, cfg.ClientConfig)
	if err != nil {
		return nil, err
	}
	return open(ctx, client, 0)
}

func open(ctx context.Context, client *mesh.Client, approvalTimeout time.Duration) (*Bank, error) {
	eng, err := workflow.New(ctx, client, workflow.DefaultConfig())
	if err != nil {
		return nil, err
	}
	t, err := defineTransfer(eng, client, approvalTimeout)
	if err != nil {
		return nil, err
	}
	return &Bank{Client: client, Engine: eng, Transfer: t}, nil
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
