package mesh

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// DeadLetter is a persisted message that could not be handled, as stored in
// the <prefix>_deadletters stream.
type DeadLetter struct {
	// Seq is its sequence in the dead-letter stream (Redrive takes it).
	Seq uint64 `json:"seq"`
	// Subject is the persisted subject it was sent on.
	Subject    string    `json:"subject"`
	MsgID      string    `json:"msgId"`
	EntityType string    `json:"entityType"`
	EntityID   string    `json:"entityId"`
	RPC        string    `json:"rpc"`
	Code       string    `json:"code"`
	Reason     string    `json:"reason"`
	Attempts   int       `json:"attempts"`
	Time       time.Time `json:"time"`
	Payload    []byte    `json:"payload"`
}

// DeadLetters returns up to limit dead letters, oldest first, starting at
// sequence from (0: the first).
func DeadLetters(ctx context.Context, nc *nats.Conn, cfg ClientConfig, from uint64, limit int) ([]DeadLetter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p, err := openPersistence(ctx, nc, &cfg, nil)
	if err != nil {
		return nil, err
	}
	info, err := p.dead.Info(ctx)
	if err != nil {
		return nil, err
	}
	subj := protocol.Subjects{Prefix: cfg.Prefix}
	var out []DeadLetter
	for seq := max(from, info.State.FirstSeq, 1); seq <= info.State.LastSeq && len(out) < limit; seq++ {
		m, err := p.dead.GetMsg(ctx, seq)
		if errors.Is(err, natsjs.ErrMsgNotFound) {
			continue // re-driven or purged
		}
		if err != nil {
			return nil, err
		}
		dl := DeadLetter{Seq: seq, Time: m.Time, Payload: m.Data, Subject: m.Header.Get(protocol.HeaderDeadSubject),
			MsgID: m.Header.Get(protocol.HeaderMsgID), Code: m.Header.Get(protocol.HeaderDeadCode), Reason: m.Header.Get(protocol.HeaderDeadReason)}
		dl.Attempts, _ = strconv.Atoi(m.Header.Get(protocol.HeaderAttempts))
		if _, t, r, ok := subj.ParsePersist(dl.Subject); ok {
			dl.EntityType, dl.RPC = t, r
		}
		dl.EntityID, _ = protocol.GetID(m.Header)
		out = append(out, dl)
	}
	return out, nil
}

// Redrive sends dead letter seq again: its stored error reply is removed
// and the message is republished on its persisted subject with the same
// message id (so Reply finds the new outcome), then the dead letter is
// deleted. Fix the cause first (deploy the handler, correct the data).
func Redrive(ctx context.Context, nc *nats.Conn, cfg ClientConfig, seq uint64) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	p, err := openPersistence(ctx, nc, &cfg, nil)
	if err != nil {
		return err
	}
	m, err := p.dead.GetMsg(ctx, seq)
	if err != nil {
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	subject, msgID := m.Header.Get(protocol.HeaderDeadSubject), m.Header.Get(protocol.HeaderMsgID)
	if subject == "" || msgID == "" {
		return fmt.Errorf("%w: dead letter %d lacks its subject or message id", ErrBadRequest, seq)
	}
	out := &nats.Msg{Subject: subject, Data: m.Data, Header: nats.Header{}}
	for k, v := range m.Header {
		if !strings.HasPrefix(k, "Mesh-Dead-") && k != protocol.HeaderAttempts && !strings.HasPrefix(k, "Nats-") {
			out.Header[k] = v
		}
	}
	if err := p.replies.Delete(ctx, protocol.ReplyKey(msgID)); err != nil && !errors.Is(err, natsjs.ErrKeyNotFound) {
		return fmt.Errorf("remove stored reply of %s: %w", msgID, err)
	}
	// A fresh dedup id: the original id may still be in the dedup window.
	if _, err := p.js.PublishMsg(ctx, out, natsjs.WithMsgID(msgID+".redrive."+nuid.Next())); err != nil {
		return fmt.Errorf("republish %s: %w", msgID, err)
	}
	if err := p.dead.DeleteMsg(ctx, seq); err != nil {
		return fmt.Errorf("delete dead letter %d (it was re-driven): %w", seq, err)
	}
	return nil
}
