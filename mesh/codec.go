package mesh

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

// Codec encodes payloads on the wire. The two codecs are JSON and msgpack;
// both use the `json` struct tags of the user's types, so one field name
// holds in both and a client may switch codecs freely.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
	// Name is the codec's name in the HeaderCodec header.
	Name() string

	encodeError(b *errorBody, failure any) ([]byte, error)
	decodeError(data []byte) (body errorBody, failure []byte, err error)
}

// JSON is the JSON codec (encoding/json).
var JSON Codec = jsonCodec{}

// Msgpack is the msgpack codec, the Go client's default.
var Msgpack Codec = msgpackCodec{}

// CodecByName returns the codec named on the wire; "" is JSON.
func CodecByName(name string) (Codec, error) {
	switch name {
	case CodecJSON, "":
		return JSON, nil
	case CodecMsgpack:
		return Msgpack, nil
	}
	return nil, fmt.Errorf("%w: unknown codec %q", ErrInvalidOption, name)
}

// errorBody is the body of an error reply (see docs/protocol.md).
type errorBody struct {
	Code    string `json:"code" msgpack:"code"`
	Message string `json:"message" msgpack:"message"`
	// Failure names the declared failure (with Code "Failure").
	Failure string `json:"failure,omitempty" msgpack:"failure,omitempty"`
	// Stack is a defect's stack, when the runner exposes it.
	Stack string `json:"stack,omitempty" msgpack:"stack,omitempty"`
}

type jsonCodec struct{}

func (jsonCodec) Name() string                    { return CodecJSON }
func (jsonCodec) Marshal(v any) ([]byte, error)   { return json.Marshal(v) }
func (jsonCodec) Unmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

type jsonError struct {
	errorBody
	Detail json.RawMessage `json:"detail,omitempty"`
}

func (jsonCodec) encodeError(b *errorBody, failure any) ([]byte, error) {
	e := jsonError{errorBody: *b}
	if failure != nil {
		d, err := json.Marshal(failure)
		if err != nil {
			return nil, err
		}
		e.Detail = d
	}
	return json.Marshal(e)
}

func (jsonCodec) decodeError(data []byte) (errorBody, []byte, error) {
	var e jsonError
	err := json.Unmarshal(data, &e)
	return e.errorBody, e.Detail, err
}

type msgpackCodec struct{}

var (
	encPool = sync.Pool{New: func() any {
		e := &mpEncoder{}
		e.enc = msgpack.NewEncoder(&e.buf)
		e.enc.SetCustomStructTag("json")
		e.enc.UseCompactInts(true)
		return e
	}}
	decPool = sync.Pool{New: func() any {
		d := &mpDecoder{}
		d.dec = msgpack.NewDecoder(&d.r)
		d.dec.SetCustomStructTag("json")
		return d
	}}
)

type mpDecoder struct {
	r   bytes.Reader
	dec *msgpack.Decoder
}

type mpEncoder struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

func (msgpackCodec) Name() string { return CodecMsgpack }

func (msgpackCodec) Marshal(v any) ([]byte, error) {
	e := encPool.Get().(*mpEncoder)
	e.buf.Reset()
	err := e.enc.Encode(v)
	out := bytes.Clone(e.buf.Bytes())
	if e.buf.Cap() <= 64<<10 { // do not keep huge buffers alive
		encPool.Put(e)
	}
	return out, err
}

func (msgpackCodec) Unmarshal(b []byte, v any) error {
	d := decPool.Get().(*mpDecoder)
	d.r.Reset(b)
	d.dec.ResetReader(&d.r)
	err := d.dec.Decode(v)
	if err == nil && d.r.Len() > 0 {
		err = fmt.Errorf("msgpack: %d trailing bytes", d.r.Len())
	}
	d.r.Reset(nil)
	decPool.Put(d)
	return err
}

type msgpackError struct {
	Code    string             `msgpack:"code"`
	Message string             `msgpack:"message"`
	Failure string             `msgpack:"failure,omitempty"`
	Stack   string             `msgpack:"stack,omitempty"`
	Detail  msgpack.RawMessage `msgpack:"detail,omitempty"`
}

func (c msgpackCodec) encodeError(b *errorBody, failure any) ([]byte, error) {
	e := msgpackError{Code: b.Code, Message: b.Message, Failure: b.Failure, Stack: b.Stack}
	if failure != nil {
		d, err := c.Marshal(failure)
		if err != nil {
			return nil, err
		}
		e.Detail = d
	}
	return msgpack.Marshal(&e)
}

func (msgpackCodec) decodeError(data []byte) (errorBody, []byte, error) {
	var e msgpackError
	err := msgpack.Unmarshal(data, &e)
	return errorBody{Code: e.Code, Message: e.Message, Failure: e.Failure, Stack: e.Stack}, e.Detail, err
}
