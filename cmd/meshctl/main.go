// Command meshctl observes and pokes a natsmesh cluster:
//
//	meshctl status                       runners, weights, shard counts, leading shard manager
//	meshctl shards                       every shard: assigned runner, lease holder, lease revision
//	meshctl singletons                   where each singleton runs
//	meshctl call TYPE ID RPC [JSON]      call an entity (route subject, JSON payload)
//	meshctl deadletters                  persisted messages that could not be handled
//	meshctl deadletters redrive SEQ      send dead letter SEQ again (after fixing its cause)
//
// Output is a table, or JSON with -o json. Connection flags as for the
// other binaries (-nats, -creds, ... or NATS_URL, NATS_CREDS, ...).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/cli"
	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cli.Exit("meshctl", run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: meshctl [flags] status | shards | singletons | call TYPE ID RPC [JSON] | deadletters [redrive SEQ]`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s := cli.NewSettings("meshctl", stderr)
	s.SetOutput(stdout)
	fs := s.FlagSet()
	fs.Usage = func() { fmt.Fprintln(stderr, usage); fs.PrintDefaults() }
	var (
		conn    cli.Conn
		output  string
		timeout time.Duration
	)
	conn.RegisterTool(s)
	settings := cli.RegisterMesh(s, cli.Cluster)
	s.String(&output, "table", cli.Spec{Name: "o", Env: "NATSMESH_OUTPUT", Usage: "output: table or json"})
	s.Duration(&timeout, 10*time.Second, cli.Spec{Name: "timeout", Usage: "time limit of the command"})
	s.Check(func() error {
		if output != "table" && output != "json" {
			return cli.Bad("o", "want table or json, got %q", output)
		}
		return nil
	})
	if err := s.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return errors.New(usage)
	}
	cfg, err := settings.Config()
	if err != nil {
		return err
	}
	conn.Name = "natsmesh-meshctl"
	nc, err := conn.Connect(ctx, nil)
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	switch cmd := rest[0]; cmd {
	case "status", "shards", "singletons":
		if len(rest) != 1 {
			return errors.New(usage)
		}
		st, err := mesh.Inspect(ctx, nc, cfg)
		if err != nil {
			return err
		}
		if output == "json" {
			return writeJSON(stdout, st, cmd)
		}
		return writeTable(stdout, st, cmd)
	case "call":
		if len(rest) < 4 || len(rest) > 5 {
			return errors.New(usage)
		}
		payload := ""
		if len(rest) == 5 {
			payload = rest[4]
		}
		return call(ctx, nc, cfg, stdout, rest[1], rest[2], rest[3], payload, output)
	case "deadletters":
		switch {
		case len(rest) == 1:
			dls, err := mesh.DeadLetters(ctx, nc, cfg.ClientConfig, 0, 1000)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(dls)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tENTITY\tRPC\tMSG ID\tCODE\tATTEMPTS\tREASON")
			for _, d := range dls {
				fmt.Fprintf(tw, "%d\t%s\t%s/%s\t%s\t%s\t%s\t%d\t%s\n", d.Seq, d.Time.Format(time.RFC3339), d.EntityType, d.EntityID, d.RPC, d.MsgID, d.Code, d.Attempts, d.Reason)
			}
			return tw.Flush()
		case len(rest) == 3 && rest[1] == "redrive":
			seq, err := strconv.ParseUint(rest[2], 10, 64)
			if err != nil {
				return fmt.Errorf("redrive %q: want a sequence number", rest[2])
			}
			if err := mesh.Redrive(ctx, nc, cfg.ClientConfig, seq); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "re-driven dead letter %d\n", seq)
			return nil
		}
		return errors.New(usage)
	default:
		return fmt.Errorf("unknown command %q\n%s", cmd, usage)
	}
}

func writeJSON(w io.Writer, st *mesh.ClusterStatus, cmd string) error {
	var v any = st
	switch cmd {
	case "shards":
		v = st.Shards
	case "singletons":
		v = st.Singletons
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeTable(w io.Writer, st *mesh.ClusterStatus, cmd string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	switch cmd {
	case "status":
		manager := st.Manager
		if manager == "" {
			manager = "(none: runners keep their shards)"
		}
		fmt.Fprintf(w, "shard manager: %s\n\n", manager)
		fmt.Fprintln(tw, "RUNNER\tWEIGHT\tASSIGNED\tHELD\tHOST\tVERSION\tSTARTED\tENTITY TYPES")
		for _, r := range st.Runners {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", r.ID, r.Weight, r.Assigned, r.Held, r.Host, r.Version,
				r.Started.Format(time.RFC3339), strings.Join(r.EntityTypes, ","))
		}
		moving := 0
		for _, s := range st.Shards {
			if s.Assigned != s.Holder {
				moving++
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(w, "\n%d shards, %d moving or unowned\n", len(st.Shards), moving)
		return nil
	case "shards":
		fmt.Fprintln(tw, "SHARD\tASSIGNED\tHOLDER\tLEASE REV")
		for _, s := range st.Shards {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", s.Shard, dash(s.Assigned), dash(s.Holder), s.LeaseRevision)
		}
	case "singletons":
		fmt.Fprintln(tw, "SINGLETON\tSHARD\tRUNNER")
		for _, s := range st.Singletons {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Name, s.Shard, dash(s.Runner))
		}
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// call sends a JSON call on the route subject (docs/protocol.md).
func call(ctx context.Context, nc *nats.Conn, cfg mesh.Config, w io.Writer, typ, id, rpc, payload, output string) error {
	m := nats.NewMsg(cfg.Prefix + "." + protocol.Version + ".entity." + typ + "." + rpc)
	m.Header.Set(protocol.HeaderIDBase64, b64(id))
	m.Header.Set(protocol.HeaderCodec, protocol.CodecJSON)
	m.Data = []byte(payload)
	reply, err := nc.RequestMsgWithContext(ctx, m)
	if errors.Is(err, nats.ErrNoResponders) {
		return errors.New("no runner is serving (none running, or none hosts the route subject)")
	}
	if err != nil {
		return err
	}
	if code := reply.Header.Get(protocol.HeaderError); code != "" {
		if output == "json" {
			fmt.Fprintln(w, string(reply.Data))
		}
		return fmt.Errorf("%s: %s", code, reply.Data)
	}
	fmt.Fprintln(w, string(reply.Data))
	return nil
}
