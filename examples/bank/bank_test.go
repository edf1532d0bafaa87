package main

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/internal/testkit/meshtest"
	"github.com/natsmesh/natsmesh/internal/testkit/natstest"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/saga"
)

// Both stories against an embedded server, from a client process separate
// from the runner.
func TestStories(t *testing.T) {
	s := natstest.StartServer(t)
	cfg := meshtest.Standalone()
	ctx := context.Background()
	meshtest.StartRunner(t, s.ClientURL(), cfg, func(nc *nats.Conn, r *mesh.Runner) {
		if _, err := Install(ctx, nc, cfg, r); err != nil {
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
		name       string
		id         string
		transfer   Transfer
		want       saga.Status
		failedStep string
		alice, to  int
	}{
		{"credit fails: refund", "t1", Transfer{From: "alice", To: "bob", Amount: 30}, saga.Compensated, "credit", 100, 0},
		{"completes", "t2", Transfer{From: "alice", To: "carol", Amount: 30}, saga.Completed, "", 70, 30},
		{"same id again: no second move", "t2", Transfer{From: "alice", To: "carol", Amount: 30}, saga.Completed, "", 70, 30},
		{"debit refused", "t3", Transfer{From: "alice", To: "carol", Amount: 500}, saga.Compensated, "debit", 70, 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := bank.Transfer.Run(ctx, tt.id, tt.transfer)
			if err != nil || o.Status != tt.want || o.FailedStep != tt.failedStep {
				t.Fatalf("Run(%s) = %+v, %v, want %s at %q", tt.id, o, err, tt.want, tt.failedStep)
			}
			if a, to := balance("alice"), balance(tt.transfer.To); a != tt.alice || to != tt.to {
				t.Fatalf("after %s: alice %d, %s %d; want %d, %d", tt.id, a, tt.transfer.To, to, tt.alice, tt.to)
			}
		})
	}
}
