package protocol

import (
	"encoding/json"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/natsmesh/natsmesh/actor"
)

// ErrorBody is the body of an error reply (docs/protocol.md, "Errors"),
// in the request's codec; a declared failure's value travels beside it as
// the envelope's detail.
type ErrorBody struct {
	Code    string `json:"code" msgpack:"code"`
	Message string `json:"message" msgpack:"message"`
	// Failure names the declared failure (with Code CodeFailure).
	Failure string `json:"failure,omitempty" msgpack:"failure,omitempty"`
	// Stack is a defect's stack, when the runner exposes it.
	Stack string `json:"stack,omitempty" msgpack:"stack,omitempty"`
}

type jsonError struct {
	ErrorBody
	Detail json.RawMessage `json:"detail,omitempty"`
}

type msgpackError struct {
	Code    string             `msgpack:"code"`
	Message string             `msgpack:"message"`
	Failure string             `msgpack:"failure,omitempty"`
	Stack   string             `msgpack:"stack,omitempty"`
	Detail  msgpack.RawMessage `msgpack:"detail,omitempty"`
}

// EncodeError encodes the error envelope of b in codec c, with failure (if
// not nil) as its detail. A codec other than JSON and Msgpack encodes as
// JSON.
func EncodeError(c actor.Codec, b *ErrorBody, failure any) ([]byte, error) {
	if c.Name() == CodecMsgpack {
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
	e := jsonError{ErrorBody: *b}
	if failure != nil {
		d, err := json.Marshal(failure)
		if err != nil {
			return nil, err
		}
		e.Detail = d
	}
	return json.Marshal(e)
}

// DecodeError decodes an error envelope in codec c; detail is the encoded
// value of a declared failure, if any.
func DecodeError(c actor.Codec, data []byte) (body ErrorBody, detail []byte, err error) {
	if c.Name() == CodecMsgpack {
		var e msgpackError
		err := msgpack.Unmarshal(data, &e)
		return ErrorBody{Code: e.Code, Message: e.Message, Failure: e.Failure, Stack: e.Stack}, e.Detail, err
	}
	var e jsonError
	err = json.Unmarshal(data, &e)
	return e.ErrorBody, e.Detail, err
}
