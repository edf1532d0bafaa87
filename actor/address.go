package actor

import (
	"fmt"
	"unicode/utf8"
)

// Address names one virtual actor: an entity type and an id within it.
type Address struct {
	Type string
	ID   string
}

func (a Address) String() string { return a.Type + "/" + a.ID }

// ValidateID reports whether id is acceptable as an entity id: non-empty, at
// most MaxIDLength bytes, valid UTF-8. The error wraps ErrInvalidID.
func ValidateID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrInvalidID)
	case len(id) > MaxIDLength:
		return fmt.Errorf("%w: %d bytes, limit %d", ErrInvalidID, len(id), MaxIDLength)
	case !utf8.ValidString(id):
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalidID)
	}
	return nil
}
