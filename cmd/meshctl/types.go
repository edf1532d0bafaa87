package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/natsmesh/natsmesh/mesh"
)

// types prints the entity types live runners host (all, or the one named).
func (t *tool) types(ctx context.Context, only []string) error {
	types, err := mesh.Types(ctx, t.nc, t.cfg)
	if err != nil {
		return err
	}
	if len(only) == 1 {
		var keep []mesh.ClusterType
		for _, ct := range types {
			if ct.Name == only[0] {
				keep = append(keep, ct)
			}
		}
		if keep == nil {
			return fmt.Errorf("no live runner hosts entity type %q", only[0])
		}
		types = keep
	}
	if t.output == "json" {
		return t.writeJSON(types)
	}
	w := t.stdout
	if len(types) == 0 {
		fmt.Fprintln(w, "no live runner hosts an entity type")
		return nil
	}
	for i, ct := range types {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s (shard group %s)\n", ct.Name, ct.Group)
		for _, v := range ct.Versions {
			fmt.Fprintf(w, "  version %s, hosted by %s\n", dash(v.Fingerprint), strings.Join(v.Runners, ", "))
			if !v.Described {
				fmt.Fprintln(w, "    (no description: the runner predates them, or could not write it)")
				continue
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "    RPC\tKIND\tPAYLOAD\tRESULT\tFAILURES")
			for _, r := range v.RPCs {
				kind := r.Kind
				if r.Persisted {
					kind += ", persisted"
				}
				var fails []string
				for _, f := range r.Failures {
					fails = append(fails, f.Code+" ("+f.Detail.GoType+")")
				}
				fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%s\n", r.Name, kind, r.Payload.GoType, r.Result.GoType, dash(strings.Join(fails, ", ")))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
	}
	fmt.Fprintln(w, "\n(-o json adds each payload's JSON Schema)")
	return nil
}
