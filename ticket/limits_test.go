package ticket_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ticketd/ticketd/ticket"
)

// Runes of 1 to 4 bytes in UTF-8, to fill fields up to their character and byte limits.
const (
	oneByte   = "a"
	twoBytes  = "я"
	threeByte = "字"
	fourBytes = "😀"
)

// The byte limits are fixed numbers the README and the OpenAPI document give.
func TestByteLimitsAreTheDocumentedOnes(t *testing.T) {
	for name, got := range map[string][2]int{
		"title":       {ticket.MaxTitleBytes, 600},
		"description": {ticket.MaxDescriptionBytes, 20_000},
		"comment":     {ticket.MaxCommentBytes, 20_000},
		"name":        {ticket.MaxNameBytes, 600},
	} {
		if got[0] != got[1] {
			t.Errorf("%s: byte limit %d, documented %d", name, got[0], got[1])
		}
	}
}

// fill returns n copies of r, checking the byte count the case relies on.
func fill(t *testing.T, r string, n int) string {
	t.Helper()
	s := strings.Repeat(r, n)
	if utf8.RuneCountInString(s) != n {
		t.Fatalf("fill: %q is not one rune", r)
	}
	return s
}

func TestTextFieldsAreBoundedInBytes(t *testing.T) {
	type field struct {
		name     string
		chars    int
		bytes    int
		validate func(v string) error
	}
	fields := []field{
		{"title", ticket.MaxTitle, ticket.MaxTitleBytes, func(v string) error { c := validOpen(); c.Title = v; return c.Validate() }},
		{"description", ticket.MaxDescription, ticket.MaxDescriptionBytes, func(v string) error { c := validOpen(); c.Description = v; return c.Validate() }},
		{"created_by", ticket.MaxName, ticket.MaxNameBytes, func(v string) error { c := validOpen(); c.CreatedBy = v; return c.Validate() }},
		{"body", ticket.MaxComment, ticket.MaxCommentBytes, func(v string) error { c := validComment(); c.Body = v; return c.Validate() }},
		{"created_by", ticket.MaxName, ticket.MaxNameBytes, func(v string) error { c := validComment(); c.CreatedBy = v; return c.Validate() }},
		{"updated_by", ticket.MaxName, ticket.MaxNameBytes, func(v string) error {
			return ticket.ChangeStatus{Status: "answered", UpdatedBy: v}.Validate()
		}},
		{"deleted_by", ticket.MaxName, ticket.MaxNameBytes, func(v string) error { return ticket.DeleteTicket{DeletedBy: v}.Validate() }},
	}
	for _, f := range fields {
		perChar := f.bytes / f.chars // 2 or 3
		t.Run(f.name, func(t *testing.T) {
			pass := map[string]string{
				"chars_at_limit_of_1_byte":       fill(t, oneByte, f.chars),
				"chars_at_limit_of_2_bytes":      fill(t, twoBytes, f.chars),
				"bytes_at_limit_in_4_byte_runes": fill(t, fourBytes, f.bytes/4),
				"bytes_at_limit_mixed":           fill(t, fourBytes, f.bytes/4-1) + fill(t, twoBytes, 2),
			}
			if perChar >= 3 {
				pass["chars_at_limit_of_3_bytes"] = fill(t, threeByte, f.chars)
			}
			for name, v := range pass {
				if err := f.validate(v); err != nil {
					t.Errorf("%s (%d chars, %d bytes): refused: %v", name, utf8.RuneCountInString(v), len(v), err)
				}
			}
			fail := map[string]string{
				"one_char_over_in_1_byte_runes":   fill(t, oneByte, f.chars+1),
				"one_byte_over_in_4_byte_runes":   fill(t, fourBytes, f.bytes/4) + oneByte,
				"chars_at_limit_of_4_bytes":       fill(t, fourBytes, f.chars),
				"bytes_over_under_the_char_limit": fill(t, threeByte, f.bytes/3+1),
			}
			if perChar < 3 {
				fail["chars_at_limit_of_3_bytes"] = fill(t, threeByte, f.chars)
			}
			for name, v := range fail {
				t.Run(name, func(t *testing.T) {
					err := f.validate(v)
					expectFieldError(t, err, f.name)
					if n := utf8.RuneCountInString(v); n <= f.chars && !strings.Contains(err.Error(), "bytes") {
						t.Errorf("%d chars, %d bytes: the reason %q does not say bytes", n, len(v), err)
					}
				})
			}
		})
	}
}

// Code points that render as nothing, each of which was accepted as a whole title or
// name (issue 12).
var invisibleFillers = map[string]rune{
	"hangul_filler":              '\u3164',
	"halfwidth_hangul_filler":    '\uFFA0',
	"hangul_choseong_filler":     '\u115F',
	"hangul_jungseong_filler":    '\u1160',
	"braille_blank":              '\u2800',
	"combining_grapheme_joiner":  '\u034F',
	"variation_selector_16":      '\uFE0F',
	"variation_selector_256":     '\U000E01EF',
	"khmer_vowel_inherent_aq":    '\u17B4',
	"mongolian_free_variation_1": '\u180B',
	"ideographic_space":          '\u3000',
	"no_break_space":             '\u00A0',
	"em_space":                   '\u2003',
}

func TestInvisibleFillersAreBlank(t *testing.T) {
	for name, r := range invisibleFillers {
		for _, v := range []string{string(r), strings.Repeat(string(r), 5), " " + string(r) + " ", string(r) + "\u3000" + string(r)} {
			if !ticket.Blank(v) {
				t.Errorf("%s: Blank(%q) = false", name, v)
			}
		}
		if ticket.Blank("a" + string(r)) {
			t.Errorf("%s: Blank(\"a\"+filler) = true", name)
		}
	}
	for _, v := range []string{"a", "字", "😀", "❤\uFE0F", "\u0301", "x\u3164y", "."} {
		if ticket.Blank(v) {
			t.Errorf("Blank(%q) = true", v)
		}
	}
}

func TestRequiredFieldsOfFillersOnlyAreRefused(t *testing.T) {
	for name, r := range invisibleFillers {
		v := string(r) + string(r)
		t.Run(name, func(t *testing.T) {
			o := validOpen()
			o.Title = v
			expectFieldError(t, o.Validate(), "title")
			o = validOpen()
			o.CreatedBy = v
			expectFieldError(t, o.Validate(), "created_by")
			c := validComment()
			c.Body = v + "\n" + v
			expectFieldError(t, c.Validate(), "body")
			c = validComment()
			c.CreatedBy = v
			expectFieldError(t, c.Validate(), "created_by")
			expectFieldError(t, ticket.ChangeStatus{Status: "answered", UpdatedBy: v}.Validate(), "updated_by")
			expectFieldError(t, ticket.DeleteTicket{DeletedBy: v}.Validate(), "deleted_by")
			// and so is the command: nothing is recorded
			tk := givenIn(t, ticket.StatusOpen)
			before := len(tk.Pending())
			expectFieldError(t, tk.AddComment(c, now), "created_by")
			if len(tk.Pending()) != before {
				t.Fatalf("a refused comment recorded an event")
			}
		})
	}
	// a filler inside visible text is kept: variation selectors make emoji, the
	// combining grapheme joiner and Hangul fillers have their uses in real text
	o := validOpen()
	o.Title = "I \u2764\uFE0F it \u3164 x\u034Fy"
	if err := o.Validate(); err != nil {
		t.Fatalf("visible title with fillers inside refused: %v", err)
	}
	// an optional name may be empty, not blank
	if err := (ticket.DeleteTicket{}).Validate(); err != nil {
		t.Fatalf("empty deleted_by refused: %v", err)
	}
	expectFieldError(t, ticket.DeleteTicket{DeletedBy: "  "}.Validate(), "deleted_by")
}

// DefaultIgnorable against the ranges of DerivedCoreProperties.txt (Unicode 15.0),
// sampled at each range's ends, and against code points it must leave out.
func TestDefaultIgnorableFollowsTheUnicodeDerivation(t *testing.T) {
	ranges := [][2]rune{
		{0x00AD, 0x00AD}, {0x034F, 0x034F}, {0x061C, 0x061C}, {0x115F, 0x1160},
		{0x17B4, 0x17B5}, {0x180B, 0x180F}, {0x200B, 0x200F}, {0x202A, 0x202E},
		{0x2060, 0x206F}, {0x3164, 0x3164}, {0xFE00, 0xFE0F}, {0xFEFF, 0xFEFF},
		{0xFFA0, 0xFFA0}, {0xFFF0, 0xFFF8}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A},
		{0xE0000, 0xE0FFF},
	}
	for _, rg := range ranges {
		for r := rg[0]; r <= rg[1]; r++ {
			if !ticket.DefaultIgnorable(r) {
				t.Errorf("U+%04X: not default-ignorable", r)
			}
		}
	}
	for _, r := range []rune{
		' ', 'a', 0x00A0, 0x0600, 0x06DD, 0x070F, 0x110BD, // spaces, letters, prepended concatenation marks
		0x2028, 0x3000, 0x2800, 0xFFF9, 0xFFFB, 0x13430, 0x1343F, 0x0301, 0xFFFD, 0x1160 + 1,
	} {
		if ticket.DefaultIgnorable(r) {
			t.Errorf("U+%04X: default-ignorable", r)
		}
	}
}
