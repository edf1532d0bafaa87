// Command meshctl observes and pokes a natsmesh cluster:
//
//	meshctl status                       runners (versions, weights, shards), refused runners, the leading shard manager
//	meshctl shards                       every shard: assigned runner, lease holder, lease revision
//	meshctl singletons                   where each singleton runs
//	meshctl types [TYPE]                 the entity types live runners host: versions, runners, RPCs and their shapes
//	meshctl call TYPE ID RPC [JSON]      call an entity with a JSON payload; a streaming RPC prints each chunk as it comes,
//	                                     a persisted one is sent through the persisted stream (-msg-id to re-attach)
//	meshctl deadletters                  persisted messages that could not be handled
//	meshctl deadletters redrive SEQ      send dead letter SEQ again (after fixing its cause)
//
// Flags go before or after the command. Output is a table, or JSON with
// -o json. Connection flags as for the other binaries (-nats, -creds, ...
// or NATS_URL, NATS_CREDS, ...); docs/configuration.md lists them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/mesh"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	cli.Exit("meshctl", err)
}

const commands = `usage: meshctl [flags] COMMAND [ARGS] [flags]

commands:
  status                        runners (versions, weights, shards), refused runners, the leading shard manager
  shards                        every shard: assigned runner, lease holder, lease revision
  singletons                    where each singleton runs
  types [TYPE]                  entity types the live runners host: versions, runners, RPCs, payload shapes
  call TYPE ID RPC [JSON]       call an entity (JSON payload); streams print each chunk as it comes;
                                persisted RPCs go through the persisted stream (-msg-id to re-attach)
  deadletters                   persisted messages that could not be handled
  deadletters redrive SEQ       send dead letter SEQ again

flags:
`

// tool is one meshctl invocation.
type tool struct {
	stdout io.Writer
	output string // table or json
	msgID  string
	cfg    mesh.Config
	nc     *nats.Conn
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := cli.NewSettings("meshctl", stderr)
	s.SetOutput(stdout)
	fs := s.FlagSet()
	fs.Usage = func() { fmt.Fprint(stderr, commands); fs.PrintDefaults() }
	var (
		conn    cli.Conn
		timeout time.Duration
		t       = tool{stdout: stdout}
	)
	conn.RegisterTool(s)
	settings := cli.RegisterMesh(s, cli.Cluster)
	s.String(&t.output, "table", cli.Spec{Name: "o", Env: "NATSMESH_OUTPUT", Usage: "output: table or json"})
	s.Duration(&timeout, 10*time.Second, cli.Spec{Name: "timeout", Usage: "time limit of the command (a stream's too)"})
	s.String(&t.msgID, "", cli.Spec{Name: "msg-id", Usage: "call of a persisted RPC: its message id (the idempotency key; generated when empty)"})
	s.Check(func() error {
		if t.output != "table" && t.output != "json" {
			return cli.Bad("o", "want table or json, got %q", t.output)
		}
		return nil
	})
	flags, rest := splitArgs(fs, args)
	if err := s.Parse(flags); err != nil {
		return err
	}
	if len(rest) == 0 {
		fs.Usage()
		return errors.New("no command")
	}
	var err error
	if t.cfg, err = settings.Config(); err != nil {
		return err
	}
	conn.Name = "natsmesh-meshctl"
	if t.nc, err = conn.Connect(ctx, nil); err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", conn.URL, err)
	}
	defer t.nc.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return t.command(ctx, rest)
}

// command runs the command args names.
func (t *tool) command(ctx context.Context, args []string) error {
	bad := func() error {
		return fmt.Errorf("%s: wrong arguments %q\n%s", args[0], args[1:], strings.TrimSuffix(commands, "\nflags:\n"))
	}
	switch args[0] {
	case "status", "shards", "singletons":
		if len(args) != 1 {
			return bad()
		}
		st, err := mesh.Inspect(ctx, t.nc, t.cfg)
		if err != nil {
			return err
		}
		return t.status(st, args[0])
	case "types":
		if len(args) > 2 {
			return bad()
		}
		return t.types(ctx, args[1:])
	case "call":
		if len(args) < 4 || len(args) > 5 {
			return bad()
		}
		payload := ""
		if len(args) == 5 {
			payload = args[4]
		}
		return t.call(ctx, args[1], args[2], args[3], payload)
	case "deadletters":
		switch {
		case len(args) == 1:
			return t.deadLetters(ctx)
		case len(args) == 3 && args[1] == "redrive":
			seq, err := strconv.ParseUint(args[2], 10, 64)
			if err != nil {
				return fmt.Errorf("redrive %q: want a sequence number", args[2])
			}
			if err := mesh.Redrive(ctx, t.nc, t.cfg.ClientConfig, seq); err != nil {
				return err
			}
			fmt.Fprintf(t.stdout, "re-driven dead letter %d\n", seq)
			return nil
		}
		return bad()
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], strings.TrimSuffix(commands, "\nflags:\n"))
}

// splitArgs separates flags from the command and its arguments, wherever
// they are: "meshctl call Counter a Increment -o json" and "meshctl -o json
// call Counter a Increment" are the same. After "--" everything is an
// argument; so is "-5" (a JSON payload), and a flag's value.
func splitArgs(fs *flag.FlagSet, args []string) (flags, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return flags, append(rest, args[i+1:]...)
		case len(a) < 2 || a[0] != '-' || (a[1] >= '0' && a[1] <= '9'):
			rest = append(rest, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // Parse reports it
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return flags, rest
}
