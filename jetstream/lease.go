package jetstream

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Lease is one holder's claim on a key, as last confirmed by the server.
// It is a value: Renew returns a new one.
type Lease struct {
	// Key is the KV key of the lease.
	Key string
	// Holder identifies the holder; unique per process incarnation.
	Holder string
	// Meta is the holder's optional metadata stored with the lease
	// (read-only).
	Meta []byte
	// Revision is the KV revision of the holder's last confirmed write. It
	// strictly increases and is never reused within the bucket, so it is
	// the fencing token: carry it in everything written on the lease's
	// behalf.
	Revision uint64

	// expires is the local validity deadline: the time the confirmed write
	// was sent plus TTL minus Margin. It carries Go's monotonic clock
	// reading, so wall-clock jumps do not move it.
	expires time.Time
	// acquired is the revision of the acquisition this lease descends from
	// (0 if not acquired through this process's Leases).
	acquired uint64
}

// Valid reports whether the holder may still act on the lease at now
// (pass time.Now(), whose monotonic reading is what makes the comparison
// safe).
func (l Lease) Valid(now time.Time) bool {
	return !l.expires.IsZero() && now.Before(l.expires)
}

// Expires returns the local validity deadline: the time the last confirmed
// write was sent plus TTL minus Margin. The server expires the key no
// earlier than Margin after it.
func (l Lease) Expires() time.Time { return l.expires }

// AcquireOption configures Acquire; a bad one fails it with an error
// wrapping ErrInvalidOption.
type AcquireOption func(*acquireOptions) error

type acquireOptions struct {
	meta []byte
}

func acquireOpts(opts []AcquireOption) (acquireOptions, error) {
	var o acquireOptions
	for _, opt := range opts {
		if opt == nil {
			return o, fmt.Errorf("%w: nil AcquireOption", ErrInvalidOption)
		}
		if err := opt(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

// WithMeta stores meta with the lease (e.g. a runner's address), readable
// from Lease.Meta and watch events. Renewals keep it.
func WithMeta(meta []byte) AcquireOption {
	return func(o *acquireOptions) error { o.meta = meta; return nil }
}

// Leases is a lease store on one KV bucket. It is safe for concurrent use.
type Leases struct {
	js  natsjs.JetStream
	nc  *nats.Conn
	kv  natsjs.KeyValue
	cfg LeaseConfig

	subjPrefix string // $KV.<bucket>.
	stream     string // the bucket's stream
	infoSubj   string // the bucket's stream info

	// newest is, per key, the revision of the newest acquisition made
	// through this store. A holder id names a process, not one
	// acquisition: a lease released late (a hand-off whose release waited
	// out a network cut) must not take a newer acquisition of the same key
	// by the same process for a renewal of its own and delete it.
	mu     sync.Mutex
	newest map[string]uint64
}

// acquiredAt records an acquisition of key at rev.
func (ls *Leases) acquiredAt(key string, rev uint64) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.newest == nil {
		ls.newest = map[string]uint64{}
	}
	if rev > ls.newest[key] {
		ls.newest[key] = rev
	}
}

// superseded reports whether this process acquired l's key again after
// the acquisition l descends from: revisions naming l.Holder past that
// point are not l's.
func (ls *Leases) superseded(l Lease) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.newest[l.Key] > l.acquired
}

// OpenLeases creates the lease bucket, or updates it to cfg, and returns
// the store. The bucket keeps one revision per key and has per-key TTLs
// with expiry markers enabled (LimitMarkerTTL = TTL), which needs
// nats-server 2.11 or later.
//
// js must use the default API prefix and no domain: renewals and
// leader-only reads are sent on raw subjects. Errors wrap ErrInvalidOption
// or come from the server.
func OpenLeases(ctx context.Context, js natsjs.JetStream, cfg LeaseConfig) (*Leases, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if o := js.Options(); o.Domain != "" || (o.APIPrefix != "" && o.APIPrefix != natsjs.DefaultAPIPrefix) {
		return nil, fmt.Errorf("%w: JetStream domains and API prefixes are not supported", ErrInvalidOption)
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	kv, err := EnsureKeyValue(ctx, js, natsjs.KeyValueConfig{
		Bucket:   cfg.Bucket,
		History:  1,
		Replicas: cfg.Replicas,
		Storage:  storage(cfg.Memory),
		// Enables per-key TTLs (AllowMsgTTL) and makes the server write a
		// marker when a key expires, so watchers see expiries and Create
		// remains a CAS on the marker's revision.
		LimitMarkerTTL: cfg.TTL,
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("open lease bucket %s: %w", cfg.Bucket, err)
	}
	return &Leases{
		js:         js,
		nc:         js.Conn(),
		kv:         kv,
		cfg:        cfg,
		subjPrefix: "$KV." + cfg.Bucket + ".",
		stream:     "KV_" + cfg.Bucket,
		infoSubj:   natsjs.DefaultAPIPrefix + "STREAM.INFO.KV_" + cfg.Bucket,
	}, nil
}

// Config returns the store's configuration, defaults applied.
func (ls *Leases) Config() LeaseConfig { return ls.cfg }

// Acquire takes the lease on key for holder if nobody holds it, with a
// CAS create carrying the per-key TTL; re-acquiring a released or expired
// key is still a CAS, on the revision of its delete or expiry marker.
//
// If the key already names holder (our own earlier attempt landed but its
// reply was lost, or this incarnation acquired it before), Acquire takes it
// over with a CAS at the revision it read, which also gives a validity we
// can compute. That is safe only because holder ids are unique per process
// incarnation: a key naming holder was written by this incarnation, and the
// CAS fails if anyone wrote the key since it was read.
//
// Errors: ErrLeaseHeld if another holder has it, ErrInvalidOption for a
// bad key or holder, the context's error, or a server error.
func (ls *Leases) Acquire(ctx context.Context, key, holder string, opts ...AcquireOption) (Lease, error) {
	o, err := acquireOpts(opts)
	if err != nil {
		return Lease{}, err
	}
	if err := checkKeyHolder(key, holder); err != nil {
		return Lease{}, err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	value := encodeValue(holder, o.meta)
	// takeOver writes the lease with a CAS at rev, the key's last revision;
	// done is false when the outcome is worth another round.
	takeOver := func(rev uint64, what string) (l Lease, done bool, err error) {
		sent := time.Now()
		n, err := ls.attempt(ctx, time.Time{}, func(ctx context.Context) (uint64, error) {
			return ls.cas(ctx, key, value, rev)
		})
		if err == nil {
			return ls.acquiredLease(key, holder, o.meta, n, sent), true, nil
		}
		if ferr := final(ctx, err); ferr != nil {
			return Lease{}, true, fmt.Errorf("acquire %s: %s%w", key, what, ferr)
		}
		return Lease{}, false, err
	}
	var lastErr error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if err := pause(ctx, time.Time{}); err != nil {
				return Lease{}, fmt.Errorf("acquire %s: %w (last error: %v)", key, err, lastErr)
			}
		}
		sent := time.Now()
		rev, err := ls.attempt(ctx, time.Time{}, func(ctx context.Context) (uint64, error) {
			return ls.kv.Create(ctx, key, value, natsjs.KeyTTL(ls.cfg.TTL))
		})
		if err == nil {
			return ls.acquiredLease(key, holder, o.meta, rev, sent), nil
		}
		if err := final(ctx, err); err != nil {
			return Lease{}, fmt.Errorf("acquire %s: %w", key, err)
		}
		// Conflict or unknown outcome: look at what the key holds now.
		lastErr = err
		e, err := ls.read(ctx, key, time.Time{})
		if err != nil {
			if err := final(ctx, err); err != nil {
				return Lease{}, fmt.Errorf("acquire %s: %w", key, err)
			}
			lastErr = err
			continue
		}
		switch {
		case e.op == opCorrupt:
			// Not a lease (written without a TTL, by something else):
			// it would never expire, so take the key over at its revision.
			l, done, err := takeOver(e.rev, "")
			if done {
				return l, err
			}
			lastErr = err
		case !e.held():
			// Released or expired since our attempt: create again.
		case e.holder != holder && !ls.outlived(ctx, e):
			return Lease{}, fmt.Errorf("acquire %s: %w: %q at revision %d", key, ErrLeaseHeld, e.holder, e.rev)
		default:
			// Our own key (a restart with the same holder id), or a lease
			// that outlived its TTL on the server: take it over at its
			// revision.
			l, done, err := takeOver(e.rev, "take over own key: ")
			if done {
				return l, err
			}
			lastErr = err
		}
	}
}

// outlived reports whether the lease e, held by someone else, is past any
// validity its holder could still claim although the server has not
// expired it: its last write is more than twice the TTL older than the
// newest write to the bucket, both by the server's clock. A holder fences
// itself TTL minus Margin after it sent its last renewal, so such a lease
// binds no one. Per-key TTLs are the server's job, but keys last written
// while a server of the cluster restarted have been seen to outlive them
// by minutes (nats-server v2.15.2; docs/reliability.md, K5); without this
// the shard would stay unserved until an operator deleted the key. It
// assumes the NATS servers' clocks agree within the TTL, and needs other
// keys of the bucket to be written (they are, by every renewal); if in
// doubt it answers false.
func (ls *Leases) outlived(ctx context.Context, e entry) bool {
	if e.written.IsZero() {
		return false
	}
	now, err := ls.newestWrite(ctx)
	return err == nil && now.Sub(e.written) > 2*ls.cfg.TTL
}

// newestWrite returns the server time of the newest message in the
// bucket's stream.
func (ls *Leases) newestWrite(ctx context.Context) (time.Time, error) {
	msg, err := ls.nc.RequestWithContext(ctx, ls.infoSubj, nil)
	if err != nil {
		return time.Time{}, err
	}
	var resp struct {
		Error *natsjs.APIError `json:"error"`
		State struct {
			LastTime time.Time `json:"last_ts"`
		} `json:"state"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return time.Time{}, fmt.Errorf("decode stream info: %w", err)
	}
	if resp.Error != nil {
		return time.Time{}, resp.Error
	}
	return resp.State.LastTime, nil
}

// Renew extends l with a CAS write at l.Revision that carries the TTL again,
// and returns the renewed lease, valid until the time this write was sent
// plus TTL minus Margin.
//
// It does not use KeyValue.Update: Update cannot carry a TTL and silently
// drops the key's per-key TTL, so the key would never expire
// (nats-io/nats.go#1994). It publishes to the key's subject with
// Nats-Expected-Last-Subject-Sequence and Nats-TTL headers instead.
//
// A request whose outcome is unknown (timeout, no responders during a
// leader election) or a revision mismatch is disambiguated with a
// leader-only read: if the key names l.Holder at a newer revision, our
// write landed, and Renew adopts that revision but not a longer validity
// (it cannot know when that write was sent), then renews again at it. It
// retries until a write is confirmed, the key is found to belong to
// someone else, or the lease's local validity passes.
//
// Errors: ErrLeaseLost if the key no longer names l.Holder; ErrLeaseExpired
// if l is not valid at the call or its validity passed before a write was
// confirmed; the context's error; or a server or connection error. On
// error the returned Lease carries the newest revision known to be ours
// (for Release) and l's unchanged validity.
func (ls *Leases) Renew(ctx context.Context, l Lease) (Lease, error) {
	if !l.Valid(time.Now()) {
		return l, fmt.Errorf("renew %s: %w", l.Key, ErrLeaseExpired)
	}
	value := encodeValue(l.Holder, l.Meta)
	cur := l
	var lastErr error
	for {
		if lastErr != nil {
			if err := pause(ctx, cur.expires); err != nil {
				return cur, fmt.Errorf("renew %s: %w (last error: %v)", l.Key, err, lastErr)
			}
		}
		sent := time.Now()
		if !cur.Valid(sent) {
			return cur, fmt.Errorf("renew %s: %w (last error: %v)", l.Key, ErrLeaseExpired, lastErr)
		}
		rev, err := ls.attempt(ctx, cur.expires, func(ctx context.Context) (uint64, error) {
			return ls.cas(ctx, l.Key, value, cur.Revision)
		})
		if err == nil {
			nl := ls.lease(l.Key, l.Holder, l.Meta, rev, sent)
			nl.acquired = l.acquired
			return nl, nil
		}
		if err := final(ctx, err); err != nil {
			return cur, fmt.Errorf("renew %s: %w", l.Key, err)
		}
		lastErr = err
		e, err := ls.read(ctx, l.Key, cur.expires)
		if err != nil {
			if err := final(ctx, err); err != nil {
				return cur, fmt.Errorf("renew %s: %w", l.Key, err)
			}
			lastErr = err
			continue
		}
		switch {
		case !e.held() || e.holder != l.Holder:
			return cur, fmt.Errorf("renew %s: %w: %s", l.Key, ErrLeaseLost, e)
		case e.rev > cur.Revision && ls.superseded(l):
			return cur, fmt.Errorf("renew %s: %w: acquired again by this process at a later revision (%s)", l.Key, ErrLeaseLost, e)
		case e.rev > cur.Revision:
			// An earlier attempt landed. Adopt its revision, keep the
			// validity, and renew again at once for a confirmed write.
			cur.Revision = e.rev
			lastErr = nil
		default:
			// Still at our revision: the attempt did not land (or is in
			// flight; the CAS settles it). Retry.
		}
	}
}

// Release gives up l with a conditional delete at l.Revision, so a stale
// lease never deletes a newer holder's key. Watchers see a release event
// and others can Acquire at once. The holder must have stopped acting on
// the lease before calling Release.
//
// It returns nil once the key no longer names l.Holder because of us or
// because it expired, and ErrLeaseLost if another holder has it (nothing
// to release). Other errors: the context's, or a server error.
//
// A released key keeps a small delete marker until it is written again.
func (ls *Leases) Release(ctx context.Context, l Lease) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	rev := l.Revision
	var lastErr error
	for attempt := 0; ; attempt++ {
		if attempt > 0 && lastErr != nil {
			if err := pause(ctx, time.Time{}); err != nil {
				return fmt.Errorf("release %s: %w (last error: %v)", l.Key, err, lastErr)
			}
		}
		_, err := ls.attempt(ctx, time.Time{}, func(ctx context.Context) (uint64, error) {
			return 0, ls.kv.Delete(ctx, l.Key, natsjs.LastRevision(rev))
		})
		if err == nil {
			return nil
		}
		if err := final(ctx, err); err != nil {
			return fmt.Errorf("release %s: %w", l.Key, err)
		}
		lastErr = err
		e, err := ls.read(ctx, l.Key, time.Time{})
		if err != nil {
			if err := final(ctx, err); err != nil {
				return fmt.Errorf("release %s: %w", l.Key, err)
			}
			lastErr = err
			continue
		}
		switch {
		case !e.held():
			return nil // deleted (by an earlier attempt of ours) or expired
		case e.holder != l.Holder:
			return fmt.Errorf("release %s: %w: %s", l.Key, ErrLeaseLost, e)
		case e.rev > rev && ls.superseded(l):
			// Our holder id, but a newer acquisition of ours: not this
			// lease to release.
			return fmt.Errorf("release %s: %w: acquired again by this process at a later revision (%s)", l.Key, ErrLeaseLost, e)
		case e.rev > rev:
			rev = e.rev // a renewal of ours landed after all
			lastErr = nil
		}
	}
}

// Remove deletes key if it is still at revision rev (a conditional
// delete): for a lease its holder can no longer release, such as one that
// outlived its TTL on the server after its holder was gone. Watchers see a
// release. It fails with the server's error if the key changed since rev.
//
// A key found at rev by a watch may already be gone from the stream
// leader, removed by its TTL without the marker that tells watchers (as
// seen in K5, docs/reliability.md): then the delete is refused with
// "wrong last sequence: 0", and Remove writes the marker itself, on the
// condition that the key still has no message at all.
func (ls *Leases) Remove(ctx context.Context, key string, rev uint64) error {
	if rev == 0 {
		return fmt.Errorf("%w: remove %s: revision 0 (a delete at revision 0 is unconditional)", ErrInvalidOption, key)
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	err := ls.kv.Delete(ctx, key, natsjs.LastRevision(rev))
	if err == nil {
		return nil
	}
	if WrongLastSequence(err) {
		// Refused: either the key changed since rev (then the marker is
		// refused too) or it has no message left.
		m := nats.NewMsg(ls.subjPrefix + key)
		m.Header.Set("KV-Operation", "DEL")
		m.Header.Set(natsjs.ExpectedLastSubjSeqHeader, "0")
		_, perr := ls.js.PublishMsg(ctx, m)
		if perr == nil {
			return nil
		}
		err = fmt.Errorf("%w; marking it deleted: %w", err, perr)
	}
	return fmt.Errorf("remove %s at revision %d: %w", key, rev, err)
}

// Holder returns who holds key and at which revision, read from the
// stream leader (a KV Get is a Direct Get that any replica may answer
// stale). It returns ErrNoLease if the key is absent, released or expired.
//
// A read is only an observation: it may be outdated by the time it
// returns. Ownership is decided by CAS results (Acquire, Renew), never by
// Holder.
func (ls *Leases) Holder(ctx context.Context, key string) (holder string, rev uint64, err error) {
	if !validKey(key) {
		return "", 0, fmt.Errorf("%w: key %q", ErrInvalidOption, key)
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	for {
		e, err := ls.read(ctx, key, time.Time{})
		if err == nil {
			if !e.held() {
				return "", e.rev, fmt.Errorf("holder %s: %w", key, ErrNoLease)
			}
			return e.holder, e.rev, nil
		}
		if ferr := final(ctx, err); ferr != nil {
			return "", 0, fmt.Errorf("holder %s: %w", key, ferr)
		}
		if perr := pause(ctx, time.Time{}); perr != nil {
			return "", 0, fmt.Errorf("holder %s: %w (last error: %v)", key, perr, err)
		}
	}
}
