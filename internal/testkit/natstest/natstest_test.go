package natstest

import (
	"context"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

func TestStartServer(t *testing.T) {
	s := StartServer(t)
	nc := Connect(t, s)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, natsjs.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatalf("CreateStream = %v, want nil", err)
	}
	if _, err := js.Publish(ctx, "s.1", []byte("x")); err != nil {
		t.Fatalf("Publish = %v, want nil", err)
	}
}

func TestStartClusterStepDown(t *testing.T) {
	servers := StartCluster(t, 3)
	nc := Connect(t, servers...)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, natsjs.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Replicas: 3}); err != nil {
		t.Fatalf("CreateStream = %v, want nil", err)
	}
	before := StreamLeader(t, servers, nc, "S")
	StepDownStream(t, nc, "S")
	after := StreamLeader(t, servers, nc, "S")
	if after == before {
		t.Fatalf("leader after step-down = %s, want another server", after.Name())
	}
	// The stream keeps accepting writes under its new leader.
	WaitFor(t, 5*time.Second, func() bool {
		_, err := js.Publish(ctx, "s.1", []byte("x"))
		return err == nil
	}, "publish after step-down")
}
