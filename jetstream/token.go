package jetstream

import (
	"errors"
	"fmt"
	"strings"
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
		return "", errors.New("jetstream: empty token")
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
			return "", fmt.Errorf("jetstream: bad token %q at %d", tok, i)
		}
		hi, ok1 := unhex(tok[i+1])
		lo, ok2 := unhex(tok[i+2])
		v := hi<<4 | lo
		if !ok1 || !ok2 || plain(v) {
			return "", fmt.Errorf("jetstream: bad escape in token %q at %d", tok, i)
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
