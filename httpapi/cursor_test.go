package httpapi

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestCursorRefusesAnyChangedCharacter: a cursor has exactly one spelling. Each
// character of a real cursor, changed to every other letter of the base64url alphabet
// (and to the separator), makes a cursor that is refused: with lenient decoding the
// last character of either part took 16 of the 64 letters, its unused bits unchecked.
func TestCursorRefusesAnyChangedCharacter(t *testing.T) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
	c := cursors{key: []byte("0123456789abcdef0123456789abcdef")}
	scope := "list:open\x00u@example.com\x00"
	real := c.sign(cursorBody{Scope: scope, Time: time.Date(2026, 11, 27, 10, 0, 0, 123456789, time.UTC), ID: uuid.MustParse("01936f1e-7c4a-7000-8000-000000000000")})
	if _, err := c.open(real, scope); err != nil {
		t.Fatalf("the cursor as issued is refused: %v", err)
	}
	accepted := 0
	for i := range len(real) {
		for _, r := range alphabet {
			if byte(r) == real[i] {
				continue
			}
			changed := real[:i] + string(r) + real[i+1:]
			if _, err := c.open(changed, scope); err == nil {
				accepted++
				t.Errorf("character %d of %q changed to %q: accepted", i, real, r)
			} else {
				wantProblem(t, err, 422, "validation-failed", "cursor")
			}
		}
	}
	if accepted > 0 {
		t.Fatalf("%d changed cursors accepted", accepted)
	}
	// the padding and line breaks lenient decoding would skip
	for _, changed := range []string{real + "=", strings.Replace(real, ".", "\n.", 1), real[:5] + "\r\n" + real[5:]} {
		if _, err := c.open(changed, scope); err == nil {
			t.Errorf("cursor %q accepted", changed)
		}
	}
}
