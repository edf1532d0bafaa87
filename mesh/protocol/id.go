package protocol

import (
	"encoding/base64"
	"fmt"

	"github.com/nats-io/nats.go"
)

// idHeaderSafe reports whether id can travel in HeaderID unchanged: header
// values lose leading and trailing white space and cannot hold line breaks.
func idHeaderSafe(id string) bool {
	if id == "" || id[0] == ' ' || id[0] == '\t' || id[len(id)-1] == ' ' || id[len(id)-1] == '\t' {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// SetID puts id in h, in the form the protocol prescribes for it: HeaderID
// when the header can carry it unchanged, else HeaderIDBase64.
func SetID(h nats.Header, id string) {
	if idHeaderSafe(id) {
		h[HeaderID] = []string{id}
	} else {
		h[HeaderIDBase64] = []string{base64.StdEncoding.EncodeToString([]byte(id))}
	}
}

// GetID reads the entity id from a request's headers; HeaderIDBase64 takes
// precedence.
func GetID(h nats.Header) (string, error) {
	if v := h[HeaderIDBase64]; len(v) > 0 {
		b, err := base64.StdEncoding.DecodeString(v[0])
		if err != nil {
			return "", fmt.Errorf("%s: %w", HeaderIDBase64, err)
		}
		return string(b), nil
	}
	if v := h[HeaderID]; len(v) > 0 {
		return v[0], nil
	}
	return "", fmt.Errorf("missing %s or %s header", HeaderID, HeaderIDBase64)
}
