package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh"
)

func main() {
	dir, err := os.MkdirTemp("", "natsmesh-bank-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// A NATS server inside this process (use a real cluster in production).
	ns, err := server.NewServer(&server.Options{DontListen: true, JetStream: true, JetStreamMaxStore: -1, NoSigs: true, StoreDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats-server not ready")
	}
	defer ns.Shutdown()
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	ctx := context.Background()
	cfg := mesh.DefaultConfig()
	cfg.Standalone = true // one runner: no shard manager needed
	runner, err := mesh.NewRunner(nc, cfg)
	if err != nil {
		log.Fatal(err)
	}
	bank, err := Install(ctx, nc, cfg, runner, 2*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	if err := runner.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		_ = runner.Shutdown(sctx)
	}()
	if err := run(ctx, bank); err != nil {
		log.Fatal(err)
	}
}

// run tells both stories, printing what happens.
func run(ctx context.Context, bank *Bank) error {
	fmt.Println("Story 1: 50 clients deposit 1, 20 times each, into one account at once.")
	total, err := bank.ConcurrentDeposits(ctx, "shared", 50, 20)
	if err != nil {
		return err
	}
	fmt.Printf("  balance %d (want 1000: no update lost)\n", total)

	fmt.Println("Story 2: Alice sends 30 to Bob, whose account is closed.")
	c := bank.Client
	if _, err := mesh.Call(ctx, c, Deposit, "alice", Amount{100}, mesh.MessageID("open-alice")); err != nil {
		return err
	}
	if _, err := mesh.Call(ctx, c, CloseAccount, "bob", actor.Empty{}, mesh.MessageID("close-bob")); err != nil {
		return err
	}
	_, err = bank.Transfer.Run(ctx, "alice-to-bob-1", Transfer{From: "alice", To: "bob", Amount: 30})
	var refused *Refused
	if !errors.As(err, &refused) {
		return fmt.Errorf("transfer to a closed account: %v", err)
	}
	alice, err := mesh.Call(ctx, c, Balance, "alice", actor.Empty{})
	if err != nil {
		return err
	}
	fmt.Printf("  %v; Alice has %d (refunded)\n", refused, alice)

	fmt.Printf("Story 3: Alice sends 60 to Carol: above %d, it waits for an approval.\n", ApprovalThreshold)
	if err := bank.Transfer.Start(ctx, "alice-to-carol-1", Transfer{From: "alice", To: "carol", Amount: 60}); err != nil {
		return err
	}
	if err := bank.Approve(ctx, "alice-to-carol-1", "dana"); err != nil {
		return err
	}
	receipt, err := bank.Transfer.Result(ctx, "alice-to-carol-1")
	if err != nil {
		return err
	}
	fmt.Printf("  sent %d, approved by %s\n", receipt.Amount, receipt.ApprovedBy)

	fmt.Println("Story 4: Carol sends 55 back; nobody approves within 2 s.")
	_, err = bank.Transfer.Run(ctx, "carol-to-alice-1", Transfer{From: "carol", To: "alice", Amount: 55})
	carol, berr := mesh.Call(ctx, c, Balance, "carol", actor.Empty{})
	if berr != nil {
		return berr
	}
	fmt.Printf("  %v; Carol has %d (refunded)\n", err, carol)
	return nil
}
