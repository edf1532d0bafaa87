package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/natsmesh/natsmesh/mesh"
)

// writeJSON prints v indented; a nil slice prints as [].
func (t *tool) writeJSON(v any) error {
	enc := json.NewEncoder(t.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// status prints the cluster's status (cmd status), its shards or its
// singletons.
func (t *tool) status(st *mesh.ClusterStatus, cmd string) error {
	if t.output == "json" {
		var v any = st
		switch cmd {
		case "shards":
			v = st.Shards
		case "singletons":
			v = st.Singletons
		}
		return t.writeJSON(v)
	}
	w := t.stdout
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	switch cmd {
	case "status":
		switch {
		case st.Standalone != "":
			fmt.Fprintf(w, "standalone runner: %s (serves every shard; no shard manager)\n\n", st.Standalone)
		case st.Manager == "":
			fmt.Fprintf(w, "shard manager: (none: runners keep their shards)\n\n")
		default:
			fmt.Fprintf(w, "shard manager: %s\n\n", st.Manager)
		}
		fmt.Fprintln(tw, "RUNNER\tVERSION\tWEIGHT\tASSIGNED\tHELD\tHOST\tSTARTED\tENTITY TYPES")
		for _, r := range st.Runners {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\n", r.ID, dash(r.Version), r.Weight, r.Assigned, r.Held, dash(r.Host),
				r.Started.Format(time.RFC3339), dash(strings.Join(r.EntityTypes, ",")))
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
		if len(st.Refused) > 0 {
			fmt.Fprintf(w, "\nrefused (they lack entity types their group's other runners host, so serve none of its shards):\n")
			for _, r := range st.Refused {
				fmt.Fprintf(w, "  runner %s, group %s: lacks %s\n", r.Runner, r.Group, strings.Join(r.Missing, ", "))
			}
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

// deadLetters lists the dead letters.
func (t *tool) deadLetters(ctx context.Context) error {
	dls, err := mesh.DeadLetters(ctx, t.nc, t.cfg.ClientConfig, 0, 1000)
	if err != nil {
		return err
	}
	if t.output == "json" {
		if dls == nil {
			dls = []mesh.DeadLetter{}
		}
		return t.writeJSON(dls)
	}
	tw := tabwriter.NewWriter(t.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tENTITY\tRPC\tMSG ID\tCODE\tATTEMPTS\tREASON")
	for _, d := range dls {
		fmt.Fprintf(tw, "%d\t%s\t%s/%s\t%s\t%s\t%s\t%d\t%s\n", d.Seq, d.Time.Format(time.RFC3339), d.EntityType, d.EntityID, d.RPC, d.MsgID, d.Code, d.Attempts, d.Reason)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
