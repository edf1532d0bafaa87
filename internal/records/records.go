// Package records keeps small JSON records in a JetStream KV bucket with
// compare-and-set writes and leader-only reads: the durable state of
// reminders, cron schedules and sagas. Reads that decide what to do next
// (drop a tick, resume a saga) must not come from a lagging replica, so Get
// asks the stream leader ($JS.API.STREAM.MSG.GET), never the Direct Get
// behind KeyValue.Get; writes are conditional on the revision read.
package records

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/jetstream"
)

var (
	// ErrNotFound is returned by Get for a key that is absent or deleted.
	ErrNotFound = errors.New("records: not found")
	// ErrConflict is returned by a write whose expected revision is not the
	// key's last (another write came first).
	ErrConflict = errors.New("records: revision conflict")
)

// Store is one bucket of records.
type Store struct {
	nc         *nats.Conn
	kv         natsjs.KeyValue
	stream     string // the bucket's stream
	subjPrefix string
}

// Config describes a bucket.
type Config struct {
	Bucket      string
	Description string
	Replicas    int
	// History is the number of revisions kept per key (default 1).
	History uint8
}

// Open opens the bucket, creating it if missing (an existing bucket keeps
// its configuration: jetstream.EnsureKeyValue), with the retries of
// jetstream.Setup.
func Open(ctx context.Context, nc *nats.Conn, cfg Config) (*Store, error) {
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, err
	}
	if cfg.History == 0 {
		cfg.History = 1
	}
	kcfg := natsjs.KeyValueConfig{Bucket: cfg.Bucket, Description: cfg.Description, History: cfg.History, Replicas: max(cfg.Replicas, 1)}
	var kv natsjs.KeyValue
	err = jetstream.Setup(ctx, "open bucket "+cfg.Bucket, func(ctx context.Context) (err error) {
		kv, err = jetstream.EnsureKeyValue(ctx, js, kcfg, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &Store{nc: nc, kv: kv, stream: "KV_" + cfg.Bucket, subjPrefix: "$KV." + cfg.Bucket + "."}, nil
}

// Key joins parts into a KV key, each part base64url-encoded (KV keys allow
// few characters; entity ids allow any), separated by dots so a prefix of
// parts can be listed with a wildcard.
func Key(parts ...string) string {
	enc := make([]string, len(parts))
	for i, p := range parts {
		enc[i] = "_" + base64.RawURLEncoding.EncodeToString([]byte(p)) // "_" keeps the empty string a valid token
	}
	return strings.Join(enc, ".")
}

// Part returns the i-th part of a key made by Key ("" if it has none).
func Part(key string, i int) string {
	parts := strings.Split(key, ".")
	if i >= len(parts) {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(parts[i], "_"))
	if err != nil {
		return ""
	}
	return string(b)
}

// Get reads key's value and revision from the stream leader and decodes it
// into v. It returns ErrNotFound when the key is absent or deleted.
func (s *Store) Get(ctx context.Context, key string, v any) (uint64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	m, err := jetstream.LeaderGet(ctx, s.nc, s.stream, jetstream.GetRequest{LastBySubject: s.subjPrefix + key})
	if errors.Is(err, jetstream.ErrNotFound) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", key, err)
	}
	if m.Header.Get("KV-Operation") != "" || m.Header.Get("Nats-Marker-Reason") != "" {
		return m.Seq, ErrNotFound // a delete, purge or expiry marker
	}
	if err := json.Unmarshal(m.Data, v); err != nil {
		return 0, fmt.Errorf("read %s: decode record: %w", key, err)
	}
	return m.Seq, nil
}

// Put writes v at key if the key's last revision is rev (0: the key is
// absent or deleted) and returns the new revision. It returns ErrConflict
// when another write came first.
func (s *Store) Put(ctx context.Context, key string, v any, rev uint64) (uint64, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	data, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	var n uint64
	if rev == 0 {
		n, err = s.kv.Create(ctx, key, data)
	} else {
		n, err = s.kv.Update(ctx, key, data, rev)
	}
	if jetstream.WrongLastSequence(err) {
		return 0, fmt.Errorf("%w: %s", ErrConflict, key)
	}
	return n, err
}

// Delete deletes key if its last revision is rev (0: whatever it is).
func (s *Store) Delete(ctx context.Context, key string, rev uint64) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	var opts []natsjs.KVDeleteOpt
	if rev != 0 {
		opts = append(opts, natsjs.LastRevision(rev))
	}
	err := s.kv.Delete(ctx, key, opts...)
	if jetstream.WrongLastSequence(err) {
		return fmt.Errorf("%w: %s", ErrConflict, key)
	}
	return err
}

// Keys lists the keys matching filter (KV wildcards), for observation.
func (s *Store) Keys(ctx context.Context, filter string) ([]string, error) {
	l, err := s.kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		return nil, err
	}
	defer func() { _ = l.Stop() }()
	var keys []string
	for k := range l.Keys() {
		keys = append(keys, k)
	}
	return keys, nil
}

// OpTimeout bounds an operation whose context has no deadline.
const OpTimeout = 10 * time.Second

func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, OpTimeout)
}

// Watch watches key: the watcher's updates start with its current value
// (or a nil entry when it has none), then every change.
func (s *Store) Watch(ctx context.Context, key string) (natsjs.KeyWatcher, error) {
	return s.kv.Watch(ctx, key)
}
