package protocol

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/natsmesh/natsmesh/actor"
)

// ReplyKey is the key, in the bucket <prefix>_replies, of a persisted
// message's stored reply: "k." and the id itself when it is a name
// (actor.ValidName), else "b." and its unpadded base64url encoding (KV keys
// allow few characters).
func ReplyKey(msgID string) string {
	if actor.ValidName(msgID) {
		return "k." + msgID
	}
	return "b." + base64.RawURLEncoding.EncodeToString([]byte(msgID))
}

// EncodeStored encodes a stored reply: one status byte ('0' ok, '1' error),
// the codec ('j' or 'm'), the error code and a newline (just the newline
// when ok), then the body: a success payload or an error envelope.
func EncodeStored(codec actor.Codec, code string, body []byte) []byte {
	out := make([]byte, 0, 3+len(code)+len(body))
	if code == "" {
		out = append(out, '0')
	} else {
		out = append(out, '1')
	}
	if codec.Name() == CodecMsgpack {
		out = append(out, 'm')
	} else {
		out = append(out, 'j')
	}
	out = append(out, code...)
	out = append(out, '\n')
	return append(out, body...)
}

// DecodeStored decodes a stored reply made by EncodeStored.
func DecodeStored(v []byte) (codec actor.Codec, code string, body []byte, err error) {
	if len(v) < 3 {
		return nil, "", nil, errors.New("stored reply too short")
	}
	switch v[1] {
	case 'm':
		codec = Msgpack
	case 'j':
		codec = JSON
	default:
		return nil, "", nil, fmt.Errorf("stored reply: codec %q", v[1])
	}
	i := strings.IndexByte(string(v[2:]), '\n')
	if i < 0 {
		return nil, "", nil, errors.New("stored reply: no header end")
	}
	code = string(v[2 : 2+i])
	if (v[0] == '1') != (code != "") {
		return nil, "", nil, errors.New("stored reply: status and code disagree")
	}
	return codec, code, v[3+i:], nil
}
