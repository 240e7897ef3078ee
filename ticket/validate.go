package ticket

import (
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Text limits of DESIGN §1, counted in characters (runes), not bytes.
const (
	MaxTitle       = 200
	MaxDescription = 10_000
	MaxComment     = 10_000
	MaxName        = 200
	MaxEmail       = 254 // RFC 5321 path limit
)

// checkText enforces a length range and refuses what Postgres text or a reader's
// terminal would choke on: invalid UTF-8, NUL and other control characters (tab and
// newlines are allowed in multi-line fields).
func checkText(field, v string, min, max int, multiline bool) error {
	if !utf8.ValidString(v) {
		return &ValidationError{Field: field, Reason: "must be valid UTF-8"}
	}
	for _, r := range v {
		if r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Cf, r) {
			// invisible format characters (bidi overrides, zero-width spaces) hide what
			// a reader sees from what is stored
			return &ValidationError{Field: field, Reason: "must not contain invisible formatting characters"}
		}
		if unicode.IsControl(r) && !(multiline && (r == '\n' || r == '\r' || r == '\t')) {
			return &ValidationError{Field: field, Reason: "must not contain control characters"}
		}
	}
	if min > 0 && strings.TrimSpace(v) == "" {
		return &ValidationError{Field: field, Reason: "is required and must not be blank"}
	}
	if n := utf8.RuneCountInString(v); n > max {
		return &ValidationError{Field: field, Reason: "must be at most " + itoa(max) + " characters"}
	}
	return nil
}

// checkEmail accepts a bare address (user@domain), not a display-name form.
func checkEmail(field, v string, required bool) error {
	if v == "" && !required {
		return nil
	}
	if err := checkText(field, v, 1, MaxEmail, false); err != nil {
		return err
	}
	if len(v) > MaxEmail {
		return &ValidationError{Field: field, Reason: "must be at most " + itoa(MaxEmail) + " bytes"}
	}
	a, err := mail.ParseAddress(v)
	if err != nil || a.Address != v || !strings.Contains(v[strings.LastIndexByte(v, '@')+1:], ".") {
		return &ValidationError{Field: field, Reason: "must be an email address like user@example.com"}
	}
	return nil
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
