package mesh

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Taking shards from another runner's consumer. A work-queue stream refuses
// two consumers with overlapping filters, so a runner taking over a shard
// first deletes the consumer that still has it: its crashed or fenced
// previous owner's (see the top of persist_consumer.go for why it deletes,
// never edits).

// create creates the runner's consumer; if another consumer still has one of
// its shards (a crashed or fenced runner's), it deletes that consumer
// first.
func (pc *persistConsumer) create(ctx context.Context, filters []string, version uint64) (natsjs.Consumer, error) {
	cfg := natsjs.ConsumerConfig{
		Durable:        pc.name,
		Description:    "natsmesh runner " + pc.id,
		FilterSubjects: filters,
		AckPolicy:      natsjs.AckExplicitPolicy,
		AckWait:        30 * time.Second,
		MaxAckPending:  pc.cfg.PersistMaxInFlight,
		DeliverPolicy:  natsjs.DeliverAllPolicy,
		// The consumer's state in memory: it lives as long as the runner,
		// and the stream (a work queue) holds exactly the unacknowledged
		// messages whatever happens to it.
		MemoryStorage: true,
	}
	if len(filters) == 1 {
		cfg.FilterSubject, cfg.FilterSubjects = filters[0], nil
	}
	cons, err := pc.p.stream.CreateConsumer(ctx, cfg)
	var apiErr *natsjs.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == errWQNotUnique {
		// Take shards only while they are still ours: a rebuild planned
		// before this runner lost a shard (fenced) must not take it back
		// from its new owner. A lost shard always changes the version
		// before its lease expires, so before anyone else can hold it.
		pc.mu.Lock()
		stale := pc.version != version || pc.closed
		shards := slices.Collect(maps.Keys(pc.want))
		pc.mu.Unlock()
		if stale {
			return nil, errStaleRebuild
		}
		// Nor while a lease has lapsed here (a pause; a renewal failing):
		// the shard may be someone else's already, and deleting that
		// runner's consumer would only make it take the shard back from
		// this one's, until this runner notices the loss.
		for _, s := range shards {
			if !pc.host.leaseValid(s) {
				return nil, fmt.Errorf("create consumer %s: %w; the lease of shard %s has lapsed here: not taking it from another runner's consumer", pc.name, err, s)
			}
		}
		if err := pc.takeShards(ctx, filters); err != nil {
			return nil, err
		}
		cons, err = pc.p.stream.CreateConsumer(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("create consumer %s: %w", pc.name, err)
	}
	return cons, nil
}

// takeShards deletes every other runner's consumer that filters on one of
// the given filters. This runner holds the shards' leases, so their
// previous owners have stopped acting on them; such an owner still alive
// rebuilds its consumer for the shards it keeps (its unacknowledged
// messages stay in the stream). A consumer is deleted, never edited to
// drop the shards: the edit would be computed from a listing that may be
// stale by the time it lands, and could give a consumer rebuilt meanwhile
// filters it does not have, whose messages the server then removes (see
// the top of this file).
func (pc *persistConsumer) takeShards(ctx context.Context, filters []string) error {
	list := pc.p.stream.ListConsumers(ctx)
	var infos []*natsjs.ConsumerInfo
	for info := range list.Info() {
		infos = append(infos, info)
	}
	if err := list.Err(); err != nil {
		return fmt.Errorf("list consumers: %w", err)
	}
	pc.hooks.listed()
	for _, info := range infos {
		if info.Name == pc.name {
			continue
		}
		all := info.Config.FilterSubjects
		if info.Config.FilterSubject != "" {
			all = append(all, info.Config.FilterSubject)
		}
		taken := 0
		for _, f := range all {
			if slices.ContainsFunc(filters, func(mine string) bool { return subjectsCollide(f, mine) }) {
				taken++
			}
		}
		if taken == 0 {
			continue
		}
		// Only consumers natsmesh made (one per runner, or one per shard in
		// earlier versions) are touched.
		if !strings.HasPrefix(info.Name, "runner-") && !strings.HasPrefix(info.Name, "shard-") {
			return fmt.Errorf("consumer %s (not natsmesh's) consumes shards of this runner: remove it", info.Name)
		}
		pc.log.Info("persisted messages: deleting another runner's consumer that has shards of this runner", "consumer", info.Name, "shards", taken, "filters", len(all))
		err := pc.p.stream.DeleteConsumer(ctx, info.Name)
		if err != nil && !errors.Is(err, natsjs.ErrConsumerNotFound) {
			return fmt.Errorf("take shards from consumer %s: %w", info.Name, err)
		}
	}
	return nil
}

// subjectsCollide reports whether some subject matches both subject
// filters a and b.
func subjectsCollide(a, b string) bool {
	ta, tb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(ta) && i < len(tb); i++ {
		x, y := ta[i], tb[i]
		if x == ">" || y == ">" {
			return true
		}
		if x != y && x != "*" && y != "*" {
			return false
		}
	}
	return len(ta) == len(tb)
}
