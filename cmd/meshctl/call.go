package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/natsmesh/natsmesh/mesh"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// call calls an entity with a JSON payload and prints the reply: a
// streaming RPC's chunks one per line as they arrive. What kind of RPC it
// is comes from the runners' type descriptions; an RPC they do not
// describe is called as a unary one.
func (t *tool) call(ctx context.Context, typ, id, rpc, payload string) error {
	client, err := mesh.NewClient(t.nc, t.cfg.ClientConfig)
	if err != nil {
		return err
	}
	kind, persisted := t.kindOf(ctx, typ, rpc)
	call := mesh.RawCall{EntityType: typ, ID: id, RPC: rpc, Codec: protocol.CodecJSON, Payload: []byte(payload)}
	switch {
	case kind == "stream":
		for chunk, err := range client.StreamRaw(ctx, call) {
			if err != nil {
				return t.callError(err)
			}
			fmt.Fprintln(t.stdout, string(chunk))
		}
		return nil
	case persisted:
		call.Persisted, call.MessageID = true, t.msgID
	}
	reply, err := client.CallRaw(ctx, call)
	if err != nil {
		return t.callError(err)
	}
	fmt.Fprintln(t.stdout, string(reply))
	return nil
}

// kindOf returns an RPC's kind and whether it is persisted, as the types
// registry says; "unary", false when it says nothing (or cannot be read).
func (t *tool) kindOf(ctx context.Context, typ, rpc string) (string, bool) {
	types, err := mesh.Types(ctx, t.nc, t.cfg)
	if err != nil {
		return "unary", false
	}
	for _, ct := range types {
		if ct.Name != typ {
			continue
		}
		for _, v := range ct.Versions {
			for _, r := range v.RPCs {
				if r.Name == rpc {
					return r.Kind, r.Persisted
				}
			}
		}
	}
	return "unary", false
}

// callError returns the error of a call, printing its envelope first with
// -o json.
func (t *tool) callError(err error) error {
	var me *mesh.Error
	if t.output == "json" && errors.As(err, &me) {
		body := map[string]any{"code": me.Code, "message": me.Message}
		if me.Failure != "" {
			body["failure"] = me.Failure
			body["detail"] = json.RawMessage(me.Detail)
		}
		_ = t.writeJSON(body)
	}
	return err
}
