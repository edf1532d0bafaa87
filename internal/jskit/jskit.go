// Package jskit holds the JetStream plumbing that the eventsourced and
// durablestate packages share: entity ids as subject tokens and KV keys,
// reads answered by a stream's leader, recognising a refused expected-sequence
// condition, and retried setup of streams and buckets.
package jskit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Token encodes an entity id as one NATS subject token that is also a valid
// KV key: bytes in [A-Za-z0-9_-] stay as they are (ids like "user-123" stay
// readable in `nats stream view`), every other byte becomes '=' and two
// upper-case hex digits. The encoding is injective ('=' itself is escaped),
// so two ids never share a subject. An id of 1 KiB (actor.MaxIDLength)
// becomes at most 3 KiB, within NATS's default 4 KiB control line.
func Token(id string) string {
	const hex = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(id); i++ {
		if !plain(id[i]) {
			n++
		}
	}
	if n == 0 {
		return id
	}
	var b strings.Builder
	b.Grow(len(id) + 2*n)
	for i := 0; i < len(id); i++ {
		c := id[i]
		if plain(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('=')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

// ParseToken reverses Token. It rejects anything Token cannot produce
// (lower-case hex, escaped plain bytes, stray characters), so that each id
// has exactly one token.
func ParseToken(tok string) (string, error) {
	if tok == "" {
		return "", errors.New("jskit: empty token")
	}
	var b strings.Builder
	b.Grow(len(tok))
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if plain(c) {
			b.WriteByte(c)
			continue
		}
		if c != '=' || i+2 >= len(tok) {
			return "", fmt.Errorf("jskit: bad token %q at %d", tok, i)
		}
		hi, ok1 := unhex(tok[i+1])
		lo, ok2 := unhex(tok[i+2])
		v := hi<<4 | lo
		if !ok1 || !ok2 || plain(v) {
			return "", fmt.Errorf("jskit: bad escape in token %q at %d", tok, i)
		}
		b.WriteByte(v)
		i += 2
	}
	return b.String(), nil
}

func plain(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// Msg is a stored message as a leader read returns it.
type Msg struct {
	Subject string
	Seq     uint64
	Header  nats.Header
	Data    []byte
	Time    time.Time
}

// ErrNotFound is returned by LeaderGet when no message matches.
var ErrNotFound = errors.New("jskit: no message")

// LeaderGet reads one message of stream through $JS.API.STREAM.MSG.GET,
// which only the stream's leader answers. A KV Get or a direct get may be
// answered by a replica that has not yet applied the latest acknowledged
// write (nats-notes §1), which would hand a freshly activated entity a stale
// state; the leader has applied every write it acknowledged.
//
// req selects the message: LastBySubject (the last message on a subject), or
// NextBySubject with Seq (the first message on a subject at or after Seq), or
// Seq alone. It returns ErrNotFound when none matches.
func LeaderGet(ctx context.Context, nc *nats.Conn, stream string, req GetRequest) (*Msg, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	resp, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, body)
	if err != nil {
		return nil, fmt.Errorf("get from %s: %w", stream, err)
	}
	var r struct {
		Message *struct {
			Subject string    `json:"subject"`
			Seq     uint64    `json:"seq"`
			Header  []byte    `json:"hdrs"`
			Data    []byte    `json:"data"`
			Time    time.Time `json:"time"`
		} `json:"message"`
		Error *natsjs.APIError `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return nil, fmt.Errorf("get from %s: decode: %w", stream, err)
	}
	if r.Error != nil {
		if r.Error.ErrorCode == natsjs.JSErrCodeMessageNotFound {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("get from %s: %w", stream, r.Error)
	}
	if r.Message == nil {
		return nil, fmt.Errorf("get from %s: empty answer", stream)
	}
	m := &Msg{Subject: r.Message.Subject, Seq: r.Message.Seq, Data: r.Message.Data, Time: r.Message.Time}
	if len(r.Message.Header) > 0 {
		if m.Header, err = nats.DecodeHeadersMsg(r.Message.Header); err != nil {
			return nil, fmt.Errorf("get from %s: headers: %w", stream, err)
		}
	}
	return m, nil
}

// GetRequest selects the message LeaderGet reads.
type GetRequest struct {
	Seq           uint64 `json:"seq,omitempty"`
	LastBySubject string `json:"last_by_subj,omitempty"`
	NextBySubject string `json:"next_by_subj,omitempty"`
}

// WrongLastSequence reports whether err is the server refusing a publish
// whose Nats-Expected-Last-Subject-Sequence (or KV revision) did not match:
// another writer got there first. Code 10071 on R1 streams; replicated
// streams answer 10164 in some paths (nats-notes §1), which nats.go maps to
// ErrKeyRevisionMismatch for KV.
func WrongLastSequence(err error) bool {
	if errors.Is(err, natsjs.ErrKeyExists) || errors.Is(err, natsjs.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *natsjs.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == natsjs.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == 10164
	}
	return false
}

// attemptTimeout bounds one try of a setup request; see Setup.
const attemptTimeout = 3 * time.Second

// Setup runs an idempotent stream or bucket setup with short attempts until
// ctx ends (30 s when ctx has no deadline). On a NATS cluster two processes
// creating the same replicated asset at once can leave the losing request
// unanswered, while a second attempt finds the asset at once, so several
// short attempts beat one long one. Errors that retrying cannot fix
// (nats.go's invalid-configuration errors) return at once.
func Setup(ctx context.Context, what string, setup func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	for {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := setup(actx)
		cancel()
		if err == nil {
			return nil
		}
		var apiErr *natsjs.APIError
		if ctx.Err() != nil || errors.As(err, &apiErr) && apiErr.Code == 400 {
			return fmt.Errorf("open %s: %w", what, err)
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("open %s: %w", what, err)
		}
	}
}

// maxBatch is how many messages one direct-get batch asks for.
const maxBatch = 1000

// ReadSubject calls fn, in stream order, for each message on subject whose
// sequence is at least from, until it has handled one at or past upTo. It
// reads with batched direct gets (stream AllowDirect, nats-server 2.11+),
// which any replica may answer: a replica that has not yet applied upTo
// ends its batch early, and ReadSubject asks again (the next request may
// reach another replica) until ctx ends. So the caller must learn upTo from
// the leader (LeaderGet) and gets every message up to it, never fewer.
// Messages past upTo that arrive in a batch are handed to fn too.
//
// Each message's Header holds its stored headers plus the server's
// Nats-Sequence, Nats-Subject and Nats-Time-Stamp.
func ReadSubject(ctx context.Context, nc *nats.Conn, stream, subject string, from, upTo uint64, fn func(*Msg) error) error {
	if from > upTo {
		return nil
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	next := from
	wait := 10 * time.Millisecond
	for next <= upTo {
		before := next
		if err := readBatch(ctx, nc, sub, stream, subject, &next, upTo, fn); err != nil {
			return err
		}
		if next > before {
			wait = 10 * time.Millisecond
			continue
		}
		// Nothing new: a lagging replica, an election, or no responder.
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("read %s from %d to %d: at %d: %w", subject, from, upTo, next, ctx.Err())
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
	return nil
}

// readBatch asks for one batch and handles it up to its end-of-batch
// marker; *next advances past every message handled. It returns nil when
// the batch ended early or went unanswered (the caller retries) and fn's
// error or ctx's end otherwise.
func readBatch(ctx context.Context, nc *nats.Conn, sub *nats.Subscription, stream, subject string, next *uint64, upTo uint64, fn func(*Msg) error) error {
	body, err := json.Marshal(struct {
		Seq           uint64 `json:"seq"`
		NextBySubject string `json:"next_by_subj"`
		Batch         int    `json:"batch"`
	}{*next, subject, int(min(upTo-*next+1, maxBatch))})
	if err != nil {
		return err
	}
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+stream, sub.Subject, body); err != nil {
		return err
	}
	// A batch that stops arriving (its server went away) is asked again.
	actx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	for {
		m, err := sub.NextMsgWithContext(actx)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("read %s: %w", subject, ctx.Err())
			}
			return nil
		}
		if status := m.Header.Get("Status"); status != "" {
			return nil // 204 end of batch, 404 nothing (yet), 503 no responders
		}
		seq, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		if err != nil {
			return fmt.Errorf("read %s: bad sequence %q", subject, m.Header.Get("Nats-Sequence"))
		}
		if seq < *next {
			continue // late answer to an earlier request that was asked again
		}
		msg := &Msg{Subject: m.Header.Get("Nats-Subject"), Seq: seq, Header: m.Header, Data: m.Data}
		if ts := m.Header.Get("Nats-Time-Stamp"); ts != "" {
			msg.Time, _ = time.Parse(time.RFC3339Nano, ts)
		}
		if err := fn(msg); err != nil {
			return err
		}
		*next = seq + 1
	}
}

// ValidName reports whether s is a name that is one subject token:
// [A-Za-z0-9_-]{1,64}; with dots, up to 128 bytes that may also hold '.'
// (several tokens).
func ValidName(s string, dots bool) bool {
	if len(s) == 0 || len(s) > 128 || !dots && len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || dots && c == '.') {
			return false
		}
	}
	return true
}
