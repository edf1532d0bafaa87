package main

import (
	"context"
	"io"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// run is the binary's Run, as main runs it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return gw.Run(ctx, args, stdout, stderr)
}
