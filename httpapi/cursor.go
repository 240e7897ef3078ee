package httpapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/google/uuid"
)

// cursors signs page positions so a client can hand them back but not forge or edit
// them: a cursor is base64url(JSON) "." base64url(HMAC-SHA256[:16]). The signed
// content includes the filters, so a cursor only continues the listing it came from.
type cursors struct{ key []byte }

type cursorBody struct {
	Scope string    `json:"s"`           // which listing, with its filters
	Time  time.Time `json:"t,omitzero"`  // list: created_at of the last item
	ID    uuid.UUID `json:"i,omitzero"`  // list: id of the last item
	After int       `json:"v,omitempty"` // comments: version of the last comment
}

// cursorEncoding decodes strictly: the unused low bits of a last character must be
// zero, so each byte string has exactly one spelling and a cursor with any character
// changed is refused (lenient decoding took 16 of the 64 letters in the last place).
// Even strict decoding skips CR and LF: open refuses them, and every other byte outside
// the alphabet, before decoding.
var cursorEncoding = base64.RawURLEncoding.Strict()

// cursorChar reports whether b may appear in a cursor: the base64url alphabet and the
// dot between the two parts.
func cursorChar(b byte) bool {
	return b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-' || b == '_' || b == '.'
}

func (c cursors) sign(b cursorBody) string {
	raw, _ := json.Marshal(b)
	m := hmac.New(sha256.New, c.key)
	m.Write(raw)
	return base64.RawURLEncoding.EncodeToString(raw) + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
}

// open verifies a cursor for scope and returns its body, or a 400 problem.
func (c cursors) open(s, scope string) (cursorBody, error) {
	bad := invalidQuery("cursor", "is not a cursor this server issued for this listing")
	dot := -1
	for i := len(s) - 1; i >= 0; i-- {
		if !cursorChar(s[i]) {
			return cursorBody{}, bad
		}
		if s[i] == '.' && dot < 0 {
			dot = i
		}
	}
	if dot < 0 || len(s) > 512 {
		return cursorBody{}, bad
	}
	raw, err1 := cursorEncoding.DecodeString(s[:dot])
	sig, err2 := cursorEncoding.DecodeString(s[dot+1:])
	if err1 != nil || err2 != nil {
		return cursorBody{}, bad
	}
	m := hmac.New(sha256.New, c.key)
	m.Write(raw)
	if !hmac.Equal(sig, m.Sum(nil)[:16]) {
		return cursorBody{}, bad
	}
	var b cursorBody
	if err := json.Unmarshal(raw, &b); err != nil || b.Scope != scope {
		return cursorBody{}, bad
	}
	return b, nil
}
