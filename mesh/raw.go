package mesh

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/actor"
	"github.com/natsmesh/natsmesh/mesh/protocol"
)

// RawCall is one call whose payload is already encoded, for gateways and
// tools that know an entity only by name (no Go types): see Client.CallRaw.
type RawCall struct {
	EntityType string
	ID         string
	RPC        string
	// Codec names the payload's codec (protocol.CodecJSON or protocol.CodecMsgpack); the
	// reply comes in the same codec. Empty means the client's codec.
	Codec   string
	Payload []byte
	// Persisted sends the call through the persisted-message stream (the
	// RPC should be declared persisted: the runner handles whatever arrives
	// on the stream at least once, and stores its reply). MessageID is then
	// the idempotency key (generated when empty); it is ignored otherwise.
	Persisted bool
	MessageID string
}

// CallRaw sends a call given by names and an encoded payload, with the same
// routing, retries and timeouts as Call, and returns the encoded reply.
//
// Errors: an error reply from the runner is a *Error with its wire code;
// for a declared failure Code is protocol.CodeFailure, Failure its name and Detail
// its encoded value; a defect is Code protocol.CodeDefect. Otherwise as Call:
// ErrShardUnavailable, ErrPayloadTooLarge, ErrInvalidOption for an unknown
// codec, actor.ErrInvalidID, or ctx's error.
func (c *Client) CallRaw(ctx context.Context, call RawCall) ([]byte, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	codec, err := c.rawCodec(call)
	if err != nil {
		return nil, err
	}
	var reply *nats.Msg
	if call.Persisted {
		o, err := applyCallOptions([]CallOption{MessageID(call.MessageID)})
		if err != nil {
			return nil, err
		}
		reply, err = c.callPersisted(ctx, call.EntityType, call.RPC, c.codecHeader(codec), call.ID, call.Payload, o)
		if err != nil {
			return nil, err
		}
	} else {
		m, _, err := c.rawRequest(ctx, call)
		if err != nil {
			return nil, err
		}
		done := c.callSent(ctx, call.EntityType, call.RPC, m.Header)
		reply, err = c.requestRetry(ctx, call.EntityType, m)
		done(replyErr(reply, err))
		if err != nil {
			return nil, err
		}
	}
	if code := reply.Header.Get(protocol.HeaderError); code != "" {
		return nil, decodeRawError(codec, code, reply.Data)
	}
	return reply.Data, nil
}

// rawCodec checks call's names and returns its codec.
func (c *Client) rawCodec(call RawCall) (actor.Codec, error) {
	if !actor.ValidName(call.EntityType) || !actor.ValidName(call.RPC) {
		return nil, fmt.Errorf("%w: entity type %q and rpc %q must be non-empty subject tokens", ErrBadRequest, call.EntityType, call.RPC)
	}
	if call.Codec == "" || call.Codec == c.codec.Name() {
		return c.codec, nil
	}
	codec, err := protocol.CodecByName(call.Codec)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOption, err)
	}
	return codec, nil
}

// rawRequest returns the request message of a call by request/reply (on
// the shard's call subject) and its codec.
func (c *Client) rawRequest(ctx context.Context, call RawCall) (*nats.Msg, actor.Codec, error) {
	codec, err := c.rawCodec(call)
	if err != nil {
		return nil, nil, err
	}
	if err := actor.ValidateID(call.ID); err != nil {
		return nil, nil, err
	}
	if max := c.nc.MaxPayload(); max > 0 && int64(len(call.Payload)) > max {
		return nil, nil, fmt.Errorf("%w: request of %d bytes, limit %d", ErrPayloadTooLarge, len(call.Payload), max)
	}
	m := &nats.Msg{
		Subject: c.subj.Call(c.Shard(call.EntityType, call.ID), call.EntityType, call.RPC),
		Data:    call.Payload,
		Header:  make(nats.Header, 4),
	}
	protocol.SetID(m.Header, call.ID)
	m.Header[protocol.HeaderCodec] = c.codecHeader(codec)
	setTimeout(ctx, m.Header)
	return m, codec, nil
}

// codecHeader is the Mesh-Codec value of codec (the client's own shared,
// not allocated).
func (c *Client) codecHeader(codec actor.Codec) []string {
	if codec == c.codec {
		return c.codecValue
	}
	return []string{codec.Name()}
}

// decodeRawError turns an error reply into a *Error, keeping a declared
// failure's name and encoded value.
func decodeRawError(codec actor.Codec, code string, data []byte) error {
	body, detail, err := protocol.DecodeError(codec, data)
	if err != nil {
		return &Error{Code: code, Message: fmt.Sprintf("undecodable error body: %v", err)}
	}
	e := &Error{Code: body.Code, Message: body.Message, Failure: body.Failure}
	if e.Code == "" {
		e.Code = code
	}
	if len(detail) > 0 {
		e.Detail = append([]byte(nil), detail...)
	}
	return e
}
