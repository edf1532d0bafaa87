package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/workflow"
)

// Both stories against an embedded server, from a client process separate
// from the runner.
func TestStories(t *testing.T) {
	s := natstest.StartServer(t)
	cfg := meshtest.Standalone()
	ctx := context.Background()
	meshtest.StartRunner(t, s.ClientURL(), cfg, func(nc *nats.Conn, r *mesh.Runner) {
		if _, err := Install(ctx, nc, cfg, r, 3*time.Second); err != nil {
			t.Fatal(err)
		}
	})
	bank, err := Open(ctx, meshtest.Connect(t, s.ClientURL()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	balance := func(id string) int {
		t.Helper()
		v, err := mesh.Call(ctx, bank.Client, Balance, id, actor.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}

	t.Run("concurrent deposits", func(t *testing.T) {
		got, err := bank.ConcurrentDeposits(ctx, "shared", 20, 25)
		if err != nil || got != 500 {
			t.Fatalf("ConcurrentDeposits = %d, %v, want 500", got, err)
		}
	})

	if _, err := mesh.Call(ctx, bank.Client, Deposit, "alice", Amount{100}, mesh.MessageID("open-alice")); err != nil {
		t.Fatal(err)
	}
	if _, err := mesh.Call(ctx, bank.Client, CloseAccount, "bob", actor.Empty{}, mesh.MessageID("close-bob")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		id        string
		transfer  Transfer
		refused   string // "" for a completed transfer
		alice, to int
	}{
		{"credit fails: refund", "t1", Transfer{From: "alice", To: "bob", Amount: 30}, "credit: account closed", 100, 0},
		{"completes", "t2", Transfer{From: "alice", To: "carol", Amount: 30}, "", 70, 30},
		{"same id again: no second move", "t2", Transfer{From: "alice", To: "carol", Amount: 30}, "", 70, 30},
		{"debit refused", "t3", Transfer{From: "alice", To: "carol", Amount: 500}, "debit: insufficient funds", 70, 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := bank.Transfer.Run(ctx, tt.id, tt.transfer)
			var refused *Refused
			switch {
			case tt.refused == "" && (err != nil || r.Amount != tt.transfer.Amount):
				t.Fatalf("Run(%s) = %+v, %v", tt.id, r, err)
			case tt.refused != "" && (!errors.As(err, &refused) || !strings.HasPrefix(refused.Reason, tt.refused)):
				t.Fatalf("Run(%s) = %v, want refused with %q", tt.id, err, tt.refused)
			}
			if a, to := balance("alice"), balance(tt.transfer.To); a != tt.alice || to != tt.to {
				t.Fatalf("after %s: alice %d, %s %d; want %d, %d", tt.id, a, tt.transfer.To, to, tt.alice, tt.to)
			}
		})
	}

	t.Run("approved: waits for the signal", func(t *testing.T) {
		if err := bank.Transfer.Start(ctx, "big-1", Transfer{From: "alice", To: "dave", Amount: 60}); err != nil {
			t.Fatal(err)
		}
		natstest.WaitFor(t, 10*time.Second, func() bool {
			x, err := bank.Transfer.Poll(ctx, "big-1")
			return err == nil && x.Status == workflow.Waiting && x.Waiting == `signal "approval"`
		}, "the transfer waiting for its approval")
		if balance("dave") != 0 {
			t.Fatal("credited before the approval")
		}
		if err := bank.Approve(ctx, "big-1", "erin"); err != nil {
			t.Fatal(err)
		}
		r, err := bank.Transfer.Result(ctx, "big-1")
		if err != nil || r.ApprovedBy != "erin" || balance("dave") != 60 || balance("alice") != 10 {
			t.Fatalf("approved transfer: %+v, %v; dave %d, alice %d", r, err, balance("dave"), balance("alice"))
		}
	})
	t.Run("not approved in time: refunded", func(t *testing.T) {
		_, err := bank.Transfer.Run(ctx, "big-2", Transfer{From: "dave", To: "alice", Amount: 55})
		var refused *Refused
		if !errors.As(err, &refused) || !strings.Contains(refused.Reason, "timed out") {
			t.Fatalf("unapproved transfer: %v", err)
		}
		if balance("dave") != 60 || balance("alice") != 10 {
			t.Fatalf("after the timeout: dave %d, alice %d", balance("dave"), balance("alice"))
		}
	})
	t.Run("rejected: refunded", func(t *testing.T) {
		if err := bank.Reject(ctx, "big-3", "suspicious"); err != nil { // before it even starts
			t.Fatal(err)
		}
		_, err := bank.Transfer.Run(ctx, "big-3", Transfer{From: "dave", To: "alice", Amount: 51})
		var refused *Refused
		if !errors.As(err, &refused) || !strings.Contains(refused.Reason, "suspicious") || balance("dave") != 60 {
			t.Fatalf("rejected transfer: %v; dave %d", err, balance("dave"))
		}
	})
}
