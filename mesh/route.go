package mesh

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// The route subject (<prefix>.v1.entity.<Type>.<Rpc>) needs no hashing by
// the caller: any runner takes the call, computes the shard, and serves it
// or forwards it to the shard's owner (docs/protocol.md).

// onRoute handles a call on the route subject: it computes the shard and
// serves it here when this runner owns it, else forwards it to the owner and
// relays the answer.
func (r *Runner) onRoute(m *nats.Msg) {
	entityType, rpc, ok := r.subj.ParseRoute(m.Subject)
	if r.out.badReply(m, entityType, rpc) {
		return
	}
	if !ok {
		r.out.refuse(m, protocol.JSON, nil, fmt.Errorf("%w: subject %q", ErrBadRequest, m.Subject))
		return
	}
	id, err := protocol.GetID(m.Header)
	if err != nil {
		r.out.refuse(m, protocol.JSON, nil, fmt.Errorf("%w: %w", ErrBadRequest, err))
		return
	}
	shard := r.cfg.shardOf(entityType, id)
	r.mu.Lock()
	_, local := r.shards[shard]
	r.mu.Unlock()
	if local {
		r.handle(m, protocol.CallSubject{Shard: shard, EntityType: entityType, RPC: rpc})
		return
	}
	if m.Header.Get(protocol.HeaderStreamWindow) != "" {
		r.out.refuse(m, protocol.JSON, nil, fmt.Errorf("%w: streams are not routed; call the shard subject", ErrBadRequest))
		return
	}
	go r.forward(m, shard, entityType, rpc)
}

// forward sends a route call to its shard's subject, with the retries of
// any call, and relays the answer.
func (r *Runner) forward(m *nats.Msg, shard ShardID, entityType, rpc string) {
	timeout := r.cfg.CallTimeout
	if v := m.Header.Get(protocol.HeaderTimeout); v != "" {
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
			timeout = time.Duration(ms) * time.Millisecond
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req := nats.NewMsg(r.subj.Call(shard, entityType, rpc))
	req.Data = m.Data
	for k, v := range m.Header {
		req.Header[k] = v
	}
	// Counted as a call of the runner's client, like any other it makes.
	done := r.client.callSent(ctx, entityType, rpc, req.Header)
	reply, err := r.client.requestRetry(ctx, entityType, req)
	done(replyErr(reply, err))
	if m.Reply == "" {
		return
	}
	if err != nil {
		codec, _ := protocol.CodecByName(m.Header.Get(protocol.HeaderCodec))
		if codec == nil {
			codec = protocol.JSON
		}
		r.out.refuse(m, codec, nil, err)
		return
	}
	out := &nats.Msg{Subject: m.Reply, Data: reply.Data, Header: reply.Header}
	if err := r.nc.PublishMsg(out); err != nil {
		r.log.Warn("relay reply", "err", err)
	}
}
