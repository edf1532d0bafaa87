package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/natsmesh/natsmesh/actor"
)

// Codec names on the wire (HeaderCodec).
const (
	CodecJSON    = "json"
	CodecMsgpack = "msgpack"
)

// The two codecs. Both use the `json` struct tags of the user's types, so
// one field name holds in both and a client may switch codecs freely.
var (
	// JSON is encoding/json.
	JSON actor.Codec = jsonCodec{}
	// Msgpack is msgpack, the Go client's default.
	Msgpack actor.Codec = msgpackCodec{}
)

// ErrUnknownCodec is returned by CodecByName and CodecFor.
var ErrUnknownCodec = fmt.Errorf("protocol: unknown codec")

// CodecByName returns the codec named on the wire; "" is JSON.
func CodecByName(name string) (actor.Codec, error) {
	switch name {
	case CodecJSON, "":
		return JSON, nil
	case CodecMsgpack:
		return Msgpack, nil
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownCodec, name)
}

// CodecFor returns the codec that decodes data stored with the named codec
// (HeaderCodec of a stored value): configured when the names match, JSON
// for "json" or no name, else an error. So a store's codec may change while
// old JSON data stays readable.
func CodecFor(name string, configured actor.Codec) (actor.Codec, error) {
	switch name {
	case configured.Name():
		return configured, nil
	case "", CodecJSON:
		return JSON, nil
	}
	return nil, fmt.Errorf("%w: stored with codec %q, configured %q", ErrUnknownCodec, name, configured.Name())
}

type jsonCodec struct{}

func (jsonCodec) Name() string                    { return CodecJSON }
func (jsonCodec) Marshal(v any) ([]byte, error)   { return json.Marshal(v) }
func (jsonCodec) Unmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// UnmarshalStrict is Unmarshal refusing fields v's type does not have
// (actor.StrictCodec); the error names the field. Runners decode JSON
// requests with it.
func (jsonCodec) UnmarshalStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if len(bytes.TrimSpace(b[dec.InputOffset():])) > 0 {
		return errors.New("json: data after the value")
	}
	return nil
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
