package jetstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// The requests behind Leases: conditional writes, leader-only reads of a
// key, what a read found, and which errors end an operation.

func (ls *Leases) lease(key, holder string, meta []byte, rev uint64, sent time.Time) Lease {
	return Lease{Key: key, Holder: holder, Meta: meta, Revision: rev, expires: sent.Add(ls.cfg.validity())}
}

// acquiredLease is the lease of an acquisition at rev, recorded as the
// key's newest.
func (ls *Leases) acquiredLease(key, holder string, meta []byte, rev uint64, sent time.Time) Lease {
	ls.acquiredAt(key, rev)
	l := ls.lease(key, holder, meta, rev, sent)
	l.acquired = rev
	return l
}

// attempt runs one request bounded by the attempt timeout and by deadline
// (if not zero).
func (ls *Leases) attempt(ctx context.Context, deadline time.Time, f func(context.Context) (uint64, error)) (uint64, error) {
	d := time.Now().Add(ls.cfg.attemptTimeout())
	if !deadline.IsZero() && deadline.Before(d) {
		d = deadline
	}
	ctx, cancel := context.WithDeadline(ctx, d)
	defer cancel()
	return f(ctx)
}

// cas writes value to key if the key's last revision is rev (0: absent),
// with the lease TTL. This is the renewal KeyValue.Update cannot do.
func (ls *Leases) cas(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	m := nats.NewMsg(ls.subjPrefix + key)
	m.Data = value
	m.Header.Set(natsjs.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	m.Header.Set(natsjs.MsgTTLHeader, strconv.FormatInt(int64(ls.cfg.TTL/time.Second), 10))
	pa, err := ls.js.PublishMsg(ctx, m)
	if err != nil {
		return 0, err
	}
	return pa.Sequence, nil
}

// entry is what a leader-only read found for a key.
type entry struct {
	rev     uint64 // 0 if absent
	op      entryOp
	holder  string
	meta    []byte
	written time.Time // server time of the write
}

type entryOp uint8

const (
	opAbsent entryOp = iota
	opPut
	opDeleted
	opExpired
	// opCorrupt: a put without Nats-TTL. Every lease this package writes
	// carries one, so this is not a lease (garbage from a tool or a bug);
	// it is treated as free, else it would name a holder forever.
	opCorrupt
)

func (e entry) held() bool { return e.op == opPut }

func (e entry) String() string {
	switch e.op {
	case opPut:
		return fmt.Sprintf("held by %q at revision %d", e.holder, e.rev)
	case opDeleted:
		return fmt.Sprintf("released at revision %d", e.rev)
	case opExpired:
		return fmt.Sprintf("expired at revision %d", e.rev)
	case opCorrupt:
		return fmt.Sprintf("not a lease (no TTL) at revision %d", e.rev)
	}
	return "absent"
}

// read gets the last message of key from the stream leader with
// $JS.API.STREAM.MSG.GET, which only the leader answers, unlike the Direct
// Get behind KeyValue.Get. One attempt, bounded like attempt.
func (ls *Leases) read(ctx context.Context, key string, deadline time.Time) (entry, error) {
	var e entry
	_, err := ls.attempt(ctx, deadline, func(ctx context.Context) (uint64, error) {
		var err error
		e, err = ls.readOnce(ctx, key)
		return 0, err
	})
	return e, err
}

func (ls *Leases) readOnce(ctx context.Context, key string) (entry, error) {
	m, err := LeaderGet(ctx, ls.nc, ls.stream, GetRequest{LastBySubject: ls.subjPrefix + key})
	if errors.Is(err, ErrNotFound) {
		return entry{op: opAbsent}, nil
	}
	if err != nil {
		return entry{}, err
	}
	e := entry{rev: m.Seq, op: opCorrupt, written: m.Time} // no headers: no TTL
	if len(m.Header) > 0 {
		e.op = headerOp(m.Header)
		if e.op == opPut && m.Header.Get("Nats-TTL") == "" {
			e.op = opCorrupt
		}
	}
	if e.op == opPut {
		e.holder, e.meta = decodeValue(m.Data)
	}
	return e, nil
}

// headerOp classifies a KV message the way nats.go's KV does: KV-Operation
// for deletes and purges, Nats-Marker-Reason for server-written markers.
func headerOp(h nats.Header) entryOp {
	switch h.Get("KV-Operation") {
	case "DEL":
		return opDeleted
	case "PURGE":
		return opExpired
	case "":
	default:
		return opPut // nats.go's KV: any other operation is a put, marker reason or not
	}
	switch h.Get(natsjs.MarkerReasonHeader) {
	case "MaxAge", "Purge":
		return opExpired
	case "Remove":
		return opDeleted
	}
	return opPut
}

// final returns nil if err leaves the operation worth retrying: a CAS
// conflict (to be disambiguated by a read) or an unknown or transient
// outcome (timeout, no responders, cluster temporarily unavailable). It
// returns the error to give up with otherwise: the caller's context is
// done, the connection is closed, or the server refused the request.
func final(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if WrongLastSequence(err) {
		return nil
	}
	if errors.Is(err, nats.ErrConnectionClosed) {
		return err
	}
	var apiErr *natsjs.APIError
	if errors.As(err, &apiErr) && apiErr.Code >= 400 && apiErr.Code < 500 {
		return err
	}
	return nil
}

// pause waits retryPause, less if deadline (if not zero) comes first, and
// returns the context's error if it is done.
func pause(ctx context.Context, deadline time.Time) error {
	d := retryPause
	if !deadline.IsZero() {
		d = min(d, time.Until(deadline))
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultTimeout)
}

// A lease's value is the holder id, then, if there is metadata, a newline
// and the metadata: readable with `nats kv get` and cheap to parse.
func encodeValue(holder string, meta []byte) []byte {
	if len(meta) == 0 {
		return []byte(holder)
	}
	v := make([]byte, 0, len(holder)+1+len(meta))
	v = append(v, holder...)
	v = append(v, '\n')
	return append(v, meta...)
}

func decodeValue(v []byte) (holder string, meta []byte) {
	if i := bytes.IndexByte(v, '\n'); i >= 0 {
		return string(v[:i]), v[i+1:]
	}
	return string(v), nil
}

func checkKeyHolder(key, holder string) error {
	if !validKey(key) {
		return fmt.Errorf("%w: key %q: want [-/_=.a-zA-Z0-9]+ without leading, trailing or double dots", ErrInvalidOption, key)
	}
	if holder == "" || bytes.IndexByte([]byte(holder), '\n') >= 0 {
		return fmt.Errorf("%w: holder %q: want non-empty, no newline", ErrInvalidOption, holder)
	}
	return nil
}

// validKey mirrors nats.go's KV key rule; wildcards are not keys.
func validKey(key string) bool {
	if key == "" || key[0] == '.' || key[len(key)-1] == '.' {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c == '.' && key[i-1] == '.':
			return false
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '/', c == '_', c == '=', c == '.':
		default:
			return false
		}
	}
	return true
}

func validBucket(b string) bool {
	if b == "" {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func storage(memory bool) natsjs.StorageType {
	if memory {
		return natsjs.MemoryStorage
	}
	return natsjs.FileStorage
}
