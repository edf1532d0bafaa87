package jetstream

// Reads that decide what to do next: from the stream's leader, or, for a
// range of a subject, from any replica but checked against a sequence the
// leader gave.

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Msg is a stored message as a leader read returns it.
type Msg struct {
	Subject string
	Seq     uint64
	Header  nats.Header
	Data    []byte
	Time    time.Time
}

// LeaderGet reads one message of stream through $JS.API.STREAM.MSG.GET,
// which only the stream's leader answers. A KV Get or a direct get may be
// answered by a replica that has not yet applied the latest acknowledged
// write (see the package doc, "Stale reads"), which would hand a freshly
// activated entity a stale state; the leader has applied every write it
// acknowledged.
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

const (
	// maxBatch is how many messages one direct-get batch asks for.
	maxBatch = 1000
	// batchAttempt is how long ReadSubject waits for a batch that stopped
	// arriving before asking again.
	batchAttempt = 3 * time.Second
)

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
	actx, cancel := context.WithTimeout(ctx, batchAttempt)
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
