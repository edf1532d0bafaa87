package jetstream

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Outcomes of Append besides success and the server's other refusals.
var (
	// ErrRefused: the subject's last sequence was not the expected one
	// (another writer appended first); nothing was stored. Append returns
	// it as a *RefusedError.
	ErrRefused = errors.New("jetstream: expected last sequence refused")
	// ErrOutcomeUnknown: no attempt was answered before ctx ended; the
	// messages may or may not be stored.
	ErrOutcomeUnknown = errors.New("jetstream: append outcome unknown")
)

// RefusedError is a refused conditional append: the subject was at Actual
// (0 when it could not be read) instead of Expected.
type RefusedError struct{ Expected, Actual uint64 }

func (e *RefusedError) Error() string {
	return fmt.Sprintf("jetstream: expected last sequence %d refused, subject at %d", e.Expected, e.Actual)
}

// Is reports whether target is ErrRefused.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// Append appends messages to one subject of a stream on condition that the
// subject's last sequence is Expected (Nats-Expected-Last-Subject-Sequence;
// 0 for a subject with no message). Several messages go as one atomic batch
// (stream AllowAtomicPublish, nats-server 2.12+): all are stored,
// consecutively, or none.
//
// An attempt that gets no answer is repeated with the same condition until
// ctx ends. The repeat either succeeds, or is refused because an earlier
// attempt landed: Append tells that from a conflict by reading, from the
// stream's leader, the first message after Expected, whose IDHeader carries
// the id of the append that stored it. A refusal while the subject is still
// at Expected (a replicated stream refuses a condition on a subject with a
// write in flight, with the code of a mismatch) is repeated too.
type Append struct {
	NC             *nats.Conn
	JS             natsjs.JetStream
	Stream         string
	Subject        string
	Expected       uint64
	IDHeader       string        // header set to a unique id on every message
	AttemptTimeout time.Duration // bounds one attempt

	// Attempt, when set (tests), runs each attempt in place of publish:
	// it may call publish, or not, and change what it returned.
	Attempt func(attempt int, publish func() (uint64, error)) (uint64, error)
}

// ErrNoAnswer marks an attempt that got no answer, so may or may not have
// stored (an Attempt hook returns it to simulate a lost acknowledgement).
var ErrNoAnswer = errors.New("jetstream: no answer")

// Do publishes msgs (their Subject is set to a.Subject) and returns the
// sequence of the last one. Errors: *RefusedError (ErrRefused),
// ErrOutcomeUnknown wrapping ctx's error, or the server's or client's
// refusal, after which nothing was stored.
func (a *Append) Do(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	if len(msgs) == 0 {
		return 0, errors.New("jetstream: nothing to append")
	}
	id := newID()
	for _, m := range msgs {
		m.Subject = a.Subject
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		m.Header[a.IDHeader] = []string{id}
	}
	msgs[0].Header[natsjs.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(a.Expected, 10)}
	ambiguous := false
	wait := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		publish := func() (uint64, error) { return a.publish(ctx, msgs) }
		var last uint64
		var err error
		if a.Attempt != nil {
			last, err = a.Attempt(attempt, publish)
		} else {
			last, err = publish()
		}
		switch {
		case err == nil:
			return last, nil
		case WrongLastSequence(err):
			seq, settled, err := a.refused(ctx, id, len(msgs))
			if settled || err != nil {
				return seq, err
			}
		case errors.Is(err, ErrNoAnswer):
			ambiguous = true
		default:
			return 0, err
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			if !ambiguous { // every attempt was answered: nothing of this append is stored
				return 0, fmt.Errorf("append to %s after %d: %w", a.Subject, a.Expected, ctx.Err())
			}
			return 0, fmt.Errorf("%w: %s after %d: %w", ErrOutcomeUnknown, a.Subject, a.Expected, ctx.Err())
		}
		wait = min(2*wait, max(a.AttemptTimeout/4, 20*time.Millisecond))
	}
}

const (
	batchIDHeader     = "Nats-Batch-Id"
	batchSeqHeader    = "Nats-Batch-Sequence"
	batchCommitHeader = "Nats-Batch-Commit"
)

// publish makes one attempt; an error wrapping ErrNoAnswer means the
// attempt may or may not have stored the messages.
func (a *Append) publish(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	actx, cancel := context.WithTimeout(ctx, a.AttemptTimeout)
	defer cancel()
	if len(msgs) > 1 {
		// The staged messages of a batch need no answer: the commit's
		// acknowledgement covers all, and a lost one fails the commit.
		batchID := newID()
		for i, m := range msgs {
			m.Header[batchIDHeader] = []string{batchID}
			m.Header[batchSeqHeader] = []string{strconv.Itoa(i + 1)}
			if i < len(msgs)-1 {
				if err := a.NC.PublishMsg(m); err != nil {
					return 0, fmt.Errorf("%w: %w", ErrNoAnswer, err)
				}
			}
		}
		commit := msgs[len(msgs)-1]
		commit.Header[batchCommitHeader] = []string{"1"}
		defer delete(commit.Header, batchCommitHeader)
	}
	ack, err := a.JS.PublishMsg(actx, msgs[len(msgs)-1])
	if err != nil {
		var apiErr *natsjs.APIError
		if errors.As(err, &apiErr) || errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject) {
			return 0, err // the server (or client) refused: nothing stored
		}
		return 0, fmt.Errorf("%w: %w", ErrNoAnswer, err)
	}
	return ack.Sequence, nil
}

// refused finds out what a refused condition means from the message after
// Expected, read from the stream's leader:
//   - it carries this append's id: an earlier attempt landed (settled,
//     with the sequence of the last message of the append);
//   - it carries another id: another writer appended first (settled, with
//     a *RefusedError);
//   - there is none: the subject is still at Expected. A replicated stream
//     also refuses a condition on a subject with a write still in flight
//     (code 10164, as for a real mismatch), and that write may be an
//     earlier attempt of this append: not settled, the caller tries again.
func (a *Append) refused(ctx context.Context, id string, n int) (seq uint64, settled bool, err error) {
	m, err := LeaderGet(ctx, a.NC, a.Stream, GetRequest{Seq: a.Expected + 1, NextBySubject: a.Subject})
	switch {
	case errors.Is(err, ErrNotFound):
		return 0, false, nil
	case err != nil:
		return 0, false, nil // unknown yet: the caller tries again until ctx ends
	case m.Header.Get(a.IDHeader) == id:
		return m.Seq + uint64(n) - 1, true, nil // a batch occupies consecutive sequences
	}
	re := &RefusedError{Expected: a.Expected, Actual: m.Seq}
	if last, err := LeaderGet(ctx, a.NC, a.Stream, GetRequest{LastBySubject: a.Subject}); err == nil {
		re.Actual = last.Seq
	}
	return 0, true, re
}

// newID returns a random id for an append or a batch: 96 bits, as
// unguessable as a NUID, in 16 URL-safe characters.
func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}
