package ticket

import (
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Text limits of DESIGN §1. Each field is bounded twice: in characters (runes), which is
// what a person counts, and in bytes of its UTF-8 encoding, which is what every layer
// stores and sends (the event, the read model, the Redis document, the outbox row). A
// character takes 1 to 4 bytes, so a limit of 4x the characters would bound nothing; the
// byte limits are chosen so that ordinary text in any script fits its character limit
// and only text of wide characters (emoji, other 4-byte characters) is cut shorter:
//
//   - short fields (title, names): 3 bytes a character, so 200 characters of any script
//     of the Basic Multilingual Plane (Latin, Cyrillic, CJK, Devanagari...) fit, and 150
//     emoji;
//   - long fields (description, comment body): 2 bytes a character, so 10,000 characters
//     of Latin, Cyrillic, Greek, Arabic or Hebrew fit, about 6,666 of CJK and 5,000
//     emoji. These are the fields that make a document large.
//   - the email is at most 254 bytes (RFC 5321), whatever its characters.
const (
	MaxTitle       = 200
	MaxDescription = 10_000
	MaxComment     = 10_000
	MaxName        = 200
	MaxEmail       = 254 // RFC 5321 path limit, in bytes (and so in characters too)

	MaxTitleBytes       = 3 * MaxTitle       // 600
	MaxDescriptionBytes = 2 * MaxDescription // 20,000
	MaxCommentBytes     = 2 * MaxComment     // 20,000
	MaxNameBytes        = 3 * MaxName        // 600
)

// checkText enforces a length range, in characters and in bytes, and refuses what
// Postgres text or a reader's terminal would choke on: invalid UTF-8, NUL and other
// control characters (tab and newlines are allowed in multi-line fields). A required
// field (min > 0) must hold something visible: text made only of whitespace and
// invisible fillers (see Blank) is refused as blank.
func checkText(field, v string, min, max, maxBytes int, multiline bool) error {
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
	if min > 0 && Blank(v) {
		return &ValidationError{Field: field, Reason: "is required and must not be blank (whitespace and invisible fillers do not count)"}
	}
	if n := utf8.RuneCountInString(v); n > max {
		return &ValidationError{Field: field, Reason: "must be at most " + itoa(max) + " characters"}
	}
	if len(v) > maxBytes {
		reason := "must be at most " + itoa(maxBytes) + " bytes in UTF-8"
		if maxBytes > max {
			reason += " (" + itoa(max) + " characters of most scripts; an emoji takes 4 bytes)"
		}
		return &ValidationError{Field: field, Reason: reason}
	}
	return nil
}

// Blank reports whether s shows nothing: it is empty or made only of whitespace
// (Unicode White_Space), default-ignorable code points (see DefaultIgnorable: Hangul
// fillers U+115F, U+1160, U+3164 and U+FFA0, the combining grapheme joiner U+034F,
// variation selectors, zero-width and format characters...) and the Braille blank
// U+2800, which renders as an empty cell.
func Blank(s string) bool {
	for _, r := range s {
		if !unicode.IsSpace(r) && !DefaultIgnorable(r) && r != '\u2800' {
			return false
		}
	}
	return true
}

// DefaultIgnorable reports whether r has the Unicode property Default_Ignorable_Code_Point:
// code points a renderer shows as nothing when it does not support them. The property is
// derived, not in Go's tables; this is its derivation as DerivedCoreProperties.txt gives
// it (Unicode 15), over the tables of the unicode package:
//
//	  Other_Default_Ignorable_Code_Point
//	+ Cf (format characters)
//	+ Variation_Selector
//	- White_Space
//	- FFF9..FFFB (interlinear annotation format characters)
//	- 13430..1343F (Egyptian hieroglyph format characters)
//	- Prepended_Concatenation_Mark (format characters that should be visible)
func DefaultIgnorable(r rune) bool {
	switch {
	case r < 0xAD:
		return false // fast path: nothing below the soft hyphen is default-ignorable
	case unicode.Is(unicode.White_Space, r),
		r >= 0xFFF9 && r <= 0xFFFB,
		r >= 0x13430 && r <= 0x1343F,
		unicode.Is(unicode.Prepended_Concatenation_Mark, r):
		return false
	}
	return unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r) ||
		unicode.Is(unicode.Cf, r) ||
		unicode.Is(unicode.Variation_Selector, r)
}

// checkEmail accepts a bare address (user@domain), not a display-name form.
func checkEmail(field, v string, required bool) error {
	if v == "" && !required {
		return nil
	}
	if err := checkText(field, v, 1, MaxEmail, MaxEmail, false); err != nil {
		return err
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

// ValidationErrors is every field of an input that breaks a rule, in the order of the
// command's fields (a field is named once, for the first rule it breaks). Validate
// returns the first of them; an API that answers a person reports them all, so one
// round trip shows everything to fix.
type ValidationErrors []*ValidationError

// Error joins the fields' errors with "; ".
func (e ValidationErrors) Error() string {
	s := make([]string, len(e))
	for i, v := range e {
		s[i] = v.Error()
	}
	return strings.Join(s, "; ")
}

// Unwrap makes errors.Is(err, ErrInvalid) and errors.As(err, **ValidationError) (the
// first field) hold.
func (e ValidationErrors) Unwrap() []error {
	out := make([]error, len(e))
	for i, v := range e {
		out[i] = v
	}
	return out
}

// collect keeps the *ValidationErrors among errs, in order.
func collect(errs ...error) ValidationErrors {
	var out ValidationErrors
	for _, err := range errs {
		if ve, ok := err.(*ValidationError); ok {
			out = append(out, ve)
		}
	}
	return out
}

// FieldErrors checks every field of the command and returns those that break a rule,
// in the order Validate checks them (its error is the first of them); nil if none.
func (c OpenTicket) FieldErrors() ValidationErrors {
	var status error
	if c.Status != "" && c.Status != string(StatusOpen) {
		status = &ValidationError{Field: "status", Reason: "a ticket is created open; omit status or send \"open\""}
	}
	return collect(
		status,
		checkText("title", c.Title, 1, MaxTitle, MaxTitleBytes, false),
		checkText("description", c.Description, 0, MaxDescription, MaxDescriptionBytes, true),
		checkEmail("email", c.Email, true),
		checkText("created_by", c.CreatedBy, 1, MaxName, MaxNameBytes, false),
	)
}

// FieldErrors checks every field of the command and returns those that break a rule,
// in the order Validate checks them (its error is the first of them); nil if none.
func (c AddComment) FieldErrors() ValidationErrors {
	return collect(
		checkText("body", c.Body, 1, MaxComment, MaxCommentBytes, true),
		checkText("created_by", c.CreatedBy, 1, MaxName, MaxNameBytes, false),
		checkEmail("email", c.Email, false),
	)
}

// FieldErrors checks every field of the command and returns those that break a rule,
// in the order Validate checks them (its error is the first of them); nil if none.
func (c ChangeStatus) FieldErrors() ValidationErrors {
	_, status := ParseStatus("status", c.Status)
	return collect(status, checkText("updated_by", c.UpdatedBy, 1, MaxName, MaxNameBytes, false))
}

// CheckEmail checks a required bare email address (user@domain) as the ticket's fields
// are checked; the error is a *ValidationError naming field.
func CheckEmail(field, v string) error { return checkEmail(field, v, true) }

// CheckName checks a required one-line name (1..MaxName characters) as created_by is
// checked; the error is a *ValidationError naming field.
func CheckName(field, v string) error {
	return checkText(field, v, 1, MaxName, MaxNameBytes, false)
}

// ValidEmail checks that v is a bare email address (user@domain), as the commands'
// email fields are checked; the error is a *ValidationError naming field.
func ValidEmail(field, v string) error { return checkEmail(field, v, true) }
