package eventsourced

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/jetstream"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// Headers of a stored event. Other programs (projections, tools in any
// language) read events from the stream with them; docs/patterns.md lists
// them.
const (
	// HeaderEventType is the event's declared name (Event's name).
	HeaderEventType = "Mesh-Event-Type"
	// HeaderEventVersion is the version of the event's schema (Version),
	// "1" when absent.
	HeaderEventVersion = "Mesh-Event-Version"
	// HeaderAppendID is the same on every event of one Persist call, and
	// unique per call: it groups the events of one command, and tells an
	// append that landed from one that did not after an unanswered attempt.
	HeaderAppendID = "Mesh-Append-Id"
)

// MaxEventsPerAppend is the most events one Persist call stores atomically
// (the server's atomic batch limit).
const MaxEventsPerAppend = 1000

// SnapshotStorage chooses where snapshots are kept.
type SnapshotStorage int

const (
	// SnapshotsKV keeps each entity's latest snapshot as one KV value: one
	// message, so a state must fit in the server's max payload (1 MiB by
	// default) with its envelope.
	SnapshotsKV SnapshotStorage = iota
	// SnapshotsObjectStore keeps snapshots in an object store, chunked:
	// for states larger than a message, at the cost of a few more requests
	// per snapshot and activation.
	SnapshotsObjectStore
)

// Config configures a Store. Start from DefaultConfig.
type Config struct {
	// Prefix names the stream <Prefix>_events, whose subjects are
	// <Prefix>.events.<EntityType>.<escaped id>, and the snapshot bucket
	// <Prefix>_snapshots: the mesh's prefix.
	Prefix string
	// Replicas is the replication of the stream and the snapshot bucket:
	// 1 on a single server, 3 on a cluster.
	Replicas int
	// Snapshots chooses where snapshots are kept.
	Snapshots SnapshotStorage
	// Codec encodes new events and snapshots.
	Codec actor.Codec
	// ActivationTimeout bounds rebuilding an entity (snapshot plus replay)
	// and writing a snapshot.
	ActivationTimeout time.Duration
	// AppendAttemptTimeout bounds one attempt to append; an attempt with
	// no answer is retried with the same expected sequence until the
	// handler's context ends.
	AppendAttemptTimeout time.Duration
}

// DefaultConfig returns prefix "mesh" (the mesh's default), one replica,
// snapshots in KV, JSON, a 30 s activation timeout and 5 s append attempts.
func DefaultConfig() Config {
	return Config{Prefix: "mesh", Replicas: 1, Snapshots: SnapshotsKV, Codec: protocol.JSON,
		ActivationTimeout: 30 * time.Second, AppendAttemptTimeout: 5 * time.Second}
}

// Validate reports the first bad field, wrapping ErrInvalidOption.
func (c *Config) Validate() error {
	switch {
	case !actor.ValidName(c.Prefix):
		return fmt.Errorf("%w: Prefix %q: want [A-Za-z0-9_-]{1,64}", ErrInvalidOption, c.Prefix)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("%w: Replicas %d: want 1 to 5", ErrInvalidOption, c.Replicas)
	case c.Snapshots != SnapshotsKV && c.Snapshots != SnapshotsObjectStore:
		return fmt.Errorf("%w: Snapshots %d", ErrInvalidOption, c.Snapshots)
	case c.Codec == nil:
		return fmt.Errorf("%w: no Codec", ErrInvalidOption)
	case c.ActivationTimeout <= 0 || c.AppendAttemptTimeout <= 0:
		return fmt.Errorf("%w: ActivationTimeout %v, AppendAttemptTimeout %v: want positive timeouts", ErrInvalidOption, c.ActivationTimeout, c.AppendAttemptTimeout)
	}
	return nil
}

// Option configures a Store beyond its Config.
type Option func(*Store) error

// WithLogger sends the store's warnings to l: snapshots that could not be
// read or written (the stream is the truth: such failures cost time, never
// correctness). Without it they are discarded.
func WithLogger(l *slog.Logger) Option {
	return func(st *Store) error {
		if l == nil {
			return fmt.Errorf("%w: WithLogger(nil)", ErrInvalidOption)
		}
		st.log = l
		return nil
	}
}

// hooks are test hooks, set by tests only: nil runs none.
type hooks struct {
	// loaded hears of every rebuild.
	loaded func(addr actor.Address, fromSnapshot uint64, replayed int)
	// attempt runs each append attempt (jetstream.Append.Attempt).
	attempt func(attempt int, publish func() (uint64, error)) (uint64, error)
}

// Store is where the events and snapshots of event-sourced entities live:
// one stream for every entity type (one subject per entity) and one
// snapshot bucket. It is safe for concurrent use; open it once per process
// and pass it to New for each entity type.
type Store struct {
	nc      *nats.Conn
	js      natsjs.JetStream
	cfg     Config
	log     *slog.Logger
	hooks   *hooks // tests only; nil in production
	stream  string
	subject string    // subject prefix, "<prefix>.events."
	created time.Time // the stream's creation time, recorded in snapshots
	snaps   snapshotStore
}

// Open creates or updates the stream and the snapshot bucket and returns
// the Store. It returns an error wrapping ErrInvalidOption for a bad Config or option,
// or the server's error (after retrying until ctx ends; 30 s when ctx has
// no deadline).
func Open(ctx context.Context, nc *nats.Conn, cfg Config, opts ...Option) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, err
	}
	st := &Store{nc: nc, js: js, cfg: cfg, log: slog.New(slog.DiscardHandler), stream: cfg.Prefix + "_events", subject: cfg.Prefix + ".events."}
	for _, opt := range opts {
		if err := opt(st); err != nil {
			return nil, err
		}
	}
	var s natsjs.Stream
	err = jetstream.Setup(ctx, "open "+st.stream, func(ctx context.Context) (err error) {
		s, err = jetstream.EnsureStream(ctx, js, natsjs.StreamConfig{
			Name:        st.stream,
			Description: "natsmesh event-sourced entities: one subject per entity",
			Subjects:    []string{st.subject + ">"},
			Storage:     natsjs.FileStorage,
			Replicas:    cfg.Replicas,
			Retention:   natsjs.LimitsPolicy,
			// An entity's history is its state: nothing may age out or be
			// deleted one message at a time (purging a whole entity is
			// allowed: that is how one forgets an entity).
			DenyDelete: true,
			// Several events of one command are stored all or nothing.
			AllowAtomicPublish: true,
			// Replay reads batches from any replica (direct get) up to
			// the last sequence the leader reported.
			AllowDirect: true,
		}, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	st.created = s.CachedInfo().Created
	bucket := cfg.Prefix + "_snapshots"
	switch cfg.Snapshots {
	case SnapshotsKV:
		var kv natsjs.KeyValue
		err = jetstream.Setup(ctx, "open "+bucket, func(ctx context.Context) (err error) {
			kv, err = jetstream.EnsureKeyValue(ctx, js, natsjs.KeyValueConfig{
				Bucket:      bucket,
				Description: "natsmesh snapshots of event-sourced entities",
				History:     1,
				Replicas:    cfg.Replicas,
			}, nil)
			return err
		})
		st.snaps = kvSnapshots{kv}
	case SnapshotsObjectStore:
		var obj natsjs.ObjectStore
		err = jetstream.Setup(ctx, "open "+bucket, func(ctx context.Context) (err error) {
			obj, err = jetstream.EnsureObjectStore(ctx, js, natsjs.ObjectStoreConfig{
				Bucket:      bucket,
				Description: "natsmesh snapshots of event-sourced entities",
				Replicas:    cfg.Replicas,
			})
			return err
		})
		st.snaps = objectSnapshots{nc: nc, js: js, obj: obj, bucket: bucket}
	}
	if err != nil {
		return nil, err
	}
	return st, nil
}

// Stream returns the name of the events stream.
func (st *Store) Stream() string { return st.stream }

// Subject returns the subject of one entity's events.
func (st *Store) Subject(entityType, id string) string {
	return st.subject + entityType + "." + jetstream.Token(id)
}

func snapshotKey(entityType, id string) string { return entityType + "." + jetstream.Token(id) }

// snapshotStore keeps the latest snapshot of each entity. Reads may be
// stale (answered by a replica): any snapshot is a correct state for the
// sequence it records, so an older one only costs a longer replay.
type snapshotStore interface {
	get(ctx context.Context, key string) ([]byte, error) // errSnapshotNotFound
	put(ctx context.Context, key string, data []byte) error
}

var errSnapshotNotFound = errors.New("no snapshot")

type kvSnapshots struct{ kv natsjs.KeyValue }

func (s kvSnapshots) get(ctx context.Context, key string) ([]byte, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, natsjs.ErrKeyNotFound) {
		return nil, errSnapshotNotFound
	}
	if err != nil {
		return nil, err
	}
	return e.Value(), nil
}

func (s kvSnapshots) put(ctx context.Context, key string, data []byte) error {
	_, err := s.kv.Put(ctx, key, data)
	return err
}

type objectSnapshots struct {
	nc     *nats.Conn
	js     natsjs.JetStream
	obj    natsjs.ObjectStore
	bucket string
}

// get reads the object's chunks itself, one leader read each, and checks
// the digest. Another instance of the entity (on a runner that has not yet
// noticed it lost the entity) may replace the object while it is read,
// which purges the chunks being read: nats.go's reader (ObjectStore.Get)
// then waits for them forever, while a leader read answers "not found" at
// once, and get tries the new object (then gives up: the caller replays).
func (s objectSnapshots) get(ctx context.Context, key string) ([]byte, error) {
	var err error
	for range 2 {
		var data []byte
		if data, err = s.read(ctx, key); !errors.Is(err, errReplaced) {
			return data, err
		}
	}
	return nil, err
}

var errReplaced = errors.New("snapshot replaced while read")

func (s objectSnapshots) read(ctx context.Context, key string) ([]byte, error) {
	info, err := s.obj.GetInfo(ctx, key)
	if errors.Is(err, natsjs.ErrObjectNotFound) {
		return nil, errSnapshotNotFound
	}
	if err != nil {
		return nil, err
	}
	stream, subject := "OBJ_"+s.bucket, "$O."+s.bucket+".C."+info.NUID
	data := make([]byte, 0, info.Size)
	sum := sha256.New()
	var next uint64 = 1
	for range info.Chunks {
		m, err := jetstream.LeaderGet(ctx, s.nc, stream, jetstream.GetRequest{Seq: next, NextBySubject: subject})
		if errors.Is(err, jetstream.ErrNotFound) {
			return nil, fmt.Errorf("object %s: %w", key, errReplaced)
		}
		if err != nil {
			return nil, err
		}
		data = append(data, m.Data...)
		sum.Write(m.Data)
		next = m.Seq + 1
	}
	if digest := "SHA-256=" + base64.URLEncoding.EncodeToString(sum.Sum(nil)); uint64(len(data)) != info.Size || digest != info.Digest {
		return nil, fmt.Errorf("object %s: %d bytes with digest %s, want %d bytes with %s", key, len(data), digest, info.Size, info.Digest)
	}
	return data, nil
}

// put stores data as the object key, in the object store's own layout
// (ADR-20: chunks on $O.<bucket>.C.<nuid>, then the meta message with a
// subject rollup, then the old chunks purged), so `nats object` and
// nats.go read it. It publishes synchronously: nats.go's Put (v1.55.0)
// publishes asynchronously on a throwaway JetStream context whose cleanup
// can race the goroutine it starts, leaking one goroutine per Put.
func (s objectSnapshots) put(ctx context.Context, key string, data []byte) error {
	old, err := s.obj.GetInfo(ctx, key, natsjs.GetObjectInfoShowDeleted())
	if err != nil && !errors.Is(err, natsjs.ErrObjectNotFound) {
		return err
	}
	id := nuid.Next()
	chunks := "$O." + s.bucket + ".C." + id
	info := natsjs.ObjectInfo{
		ObjectMeta: natsjs.ObjectMeta{Name: key, Opts: &natsjs.ObjectMetaOptions{ChunkSize: objectChunkSize}},
		Bucket:     s.bucket,
		NUID:       id,
		Size:       uint64(len(data)),
	}
	sum := sha256.Sum256(data)
	info.Digest = "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:])
	for off := 0; off < len(data); off += objectChunkSize {
		if _, err := s.js.Publish(ctx, chunks, data[off:min(off+objectChunkSize, len(data))]); err != nil {
			s.purge(chunks)
			return err
		}
		info.Chunks++
	}
	meta, err := json.Marshal(info)
	if err != nil {
		s.purge(chunks)
		return err
	}
	m := &nats.Msg{Subject: "$O." + s.bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(key)), Data: meta, Header: nats.Header{}}
	m.Header.Set(natsjs.MsgRollup, natsjs.MsgRollupSubject)
	if _, err := s.js.PublishMsg(ctx, m); err != nil {
		s.purge(chunks)
		return err
	}
	if old != nil && !old.Deleted {
		s.purge("$O." + s.bucket + ".C." + old.NUID)
	}
	return nil
}

const objectChunkSize = 128 * 1024

// purge removes chunks no meta names (best effort: leftovers only cost
// space).
func (s objectSnapshots) purge(subject string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if st, err := s.js.Stream(ctx, "OBJ_"+s.bucket); err == nil {
		_ = st.Purge(ctx, natsjs.WithPurgeSubject(subject))
	}
}
