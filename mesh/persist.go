package mesh

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// persistence holds the stream and buckets of persisted messages.
type persistence struct {
	js      natsjs.JetStream
	stream  natsjs.Stream
	replies natsjs.KeyValue
	dead    natsjs.Stream
}

func openPersistence(ctx context.Context, nc *nats.Conn, cfg *ClientConfig, log *slog.Logger) (*persistence, error) {
	subj := protocol.Subjects{Prefix: cfg.Prefix}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, jetstream.SetupTimeout)
		defer cancel()
	}
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, err
	}
	p := &persistence{js: js}
	if p.stream, err = openStream(ctx, js, natsjs.StreamConfig{
		Name:        cfg.Prefix + "_persist",
		Description: "natsmesh persisted messages, one durable consumer per runner",
		Subjects:    []string{subj.PersistAll(), subj.ScheduleAll()},
		Retention:   natsjs.WorkQueuePolicy,
		Storage:     cfg.storageType(),
		Replicas:    cfg.StorageReplicas,
		Duplicates:  cfg.PersistDedupWindow,
		// DeliverAt: the server publishes a scheduled message to its
		// shard's subject at its time (nats-server 2.12+).
		AllowMsgSchedules: true,
	}, log); err != nil {
		return nil, err
	}
	if p.replies, err = openKV(ctx, js, natsjs.KeyValueConfig{
		Bucket:      cfg.Prefix + "_replies",
		Description: "natsmesh replies of persisted messages, by message id",
		History:     1,
		TTL:         cfg.PersistReplyRetention,
		Replicas:    cfg.StorageReplicas,
		Storage:     cfg.storageType(),
	}, log); err != nil {
		return nil, err
	}
	if p.dead, err = openStream(ctx, js, natsjs.StreamConfig{
		Name:        cfg.Prefix + "_deadletters",
		Description: "natsmesh persisted messages that could not be handled, with the reason",
		Subjects:    []string{subj.DeadAll()},
		Storage:     cfg.storageType(),
		Replicas:    cfg.StorageReplicas,
	}, log); err != nil {
		return nil, err
	}
	return p, nil
}
