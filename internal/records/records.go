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
	getSubj    string
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

// Open creates or updates the bucket, retrying short attempts until ctx
// ends (two processes creating one replicated bucket at once can leave a
// request unanswered).
func Open(ctx context.Context, nc *nats.Conn, cfg Config) (*Store, error) {
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, err
	}
	if cfg.History == 0 {
		cfg.History = 1
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	kcfg := natsjs.KeyValueConfig{Bucket: cfg.Bucket, Description: cfg.Description, History: cfg.History, Replicas: max(cfg.Replicas, 1)}
	var kv natsjs.KeyValue
	for {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		kv, err = js.CreateOrUpdateKeyValue(actx, kcfg)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil || errors.Is(err, natsjs.ErrInvalidBucketName) {
			return nil, fmt.Errorf("open bucket %s: %w", cfg.Bucket, err)
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("open bucket %s: %w", cfg.Bucket, err)
		}
	}
	return &Store{
		nc:         nc,
		kv:         kv,
		getSubj:    natsjs.DefaultAPIPrefix + "STREAM.MSG.GET.KV_" + cfg.Bucket,
		subjPrefix: "$KV." + cfg.Bucket + ".",
	}, nil
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
	req, err := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{s.subjPrefix + key})
	if err != nil {
		return 0, err
	}
	msg, err := s.nc.RequestWithContext(ctx, s.getSubj, req)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", key, err)
	}
	var resp struct {
		Error   *natsjs.APIError `json:"error"`
		Message *struct {
			Seq     uint64 `json:"seq"`
			Headers []byte `json:"hdrs"`
			Data    []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return 0, fmt.Errorf("read %s: decode reply: %w", key, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == natsjs.JSErrCodeMessageNotFound {
			return 0, ErrNotFound
		}
		return 0, fmt.Errorf("read %s: %w", key, resp.Error)
	}
	if resp.Message == nil {
		return 0, fmt.Errorf("read %s: reply without message", key)
	}
	if len(resp.Message.Headers) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Headers)
		if err != nil {
			return 0, fmt.Errorf("read %s: headers: %w", key, err)
		}
		if h.Get("KV-Operation") != "" || h.Get("Nats-Marker-Reason") != "" {
			return resp.Message.Seq, ErrNotFound // a delete, purge or expiry marker
		}
	}
	if err := json.Unmarshal(resp.Message.Data, v); err != nil {
		return 0, fmt.Errorf("read %s: decode record: %w", key, err)
	}
	return resp.Message.Seq, nil
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
	if isWrongLast(err) {
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
	if isWrongLast(err) {
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

// isWrongLast reports a failed revision condition: Create finding the key,
// Update or Delete finding another revision (codes 10071, or 10164 on
// replicated streams).
func isWrongLast(err error) bool {
	var apiErr *natsjs.APIError
	return errors.Is(err, natsjs.ErrKeyExists) || errors.Is(err, natsjs.ErrKeyRevisionMismatch) ||
		(errors.As(err, &apiErr) && (apiErr.ErrorCode == natsjs.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == natsjs.JSErrCodeStreamWrongLastSequenceConstant))
}

// OpTimeout bounds an operation whose context has no deadline.
const OpTimeout = 10 * time.Second

func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, OpTimeout)
}
