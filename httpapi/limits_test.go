package httpapi

import (
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/ticketd/ticketd/ticket"
)

// createWith is a create body with one field's raw JSON value replaced.
func createWith(field, rawValue string) string {
	f := map[string]string{"title": `"a"`, "email": `"u@example.com"`, "created_by": `"u"`, "description": `"d"`}
	f[field] = rawValue
	return `{"title":` + f["title"] + `,"description":` + f["description"] + `,"email":` + f["email"] + `,"created_by":` + f["created_by"] + `}`
}

func TestLoneSurrogatesAreRefusedNamingTheField(t *testing.T) {
	refused := []struct{ name, field, value string }{
		{"lone_high", "title", `"\ud800"`},
		{"lone_low", "title", `"\udc00"`},
		{"high_at_end", "title", `"abc\uD83D"`},
		{"high_then_letter", "created_by", `"\ud83dx"`},
		{"high_then_high", "title", `"\ud83d\ud83d\ude00"`},
		{"low_then_high", "description", `"\ude00\ud83d"`},
		{"high_then_escaped_newline", "description", `"\ud83d\n"`},
		{"high_then_bmp_escape", "description", `"\ud83d\u0041"`},
		{"in_email", "email", `"\udfff@example.com"`},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseCreate([]byte(createWith(c.field, c.value)))
			wantProblem(t, err, 422, "validation-failed", c.field)
		})
	}
	t.Run("in_a_comment_body", func(t *testing.T) {
		_, err := parseComment([]byte(`{"body":"ok \udbff","created_by":"u"}`))
		wantProblem(t, err, 422, "validation-failed", "body")
	})
	t.Run("in_a_nested_value", func(t *testing.T) {
		_, err := parseCreate([]byte(`{"title":["\ud800"],"email":"u@example.com","created_by":"u"}`))
		wantProblem(t, err, 422, "validation-failed", "title")
	})
	t.Run("in_a_key", func(t *testing.T) {
		_, err := parseCreate([]byte(`{"title\ud800":"a","email":"u@example.com","created_by":"u"}`))
		wantProblem(t, err, 422, "validation-failed", "title\uFFFD")
	})

	accepted := map[string]string{
		"pair":              `"\ud83d\ude00"`,
		"upper_case_pair":   `"\uD83D\uDE00 ok"`,
		"raw_emoji":         `"😀"`,
		"escaped_backslash": `"a\\ud800"`, // the text \ud800, not an escape
		"bmp_escape":        `"\u00e9\u4e2d"`,
		"quote_and_pair":    `"\"\ud83d\ude00\""`,
	}
	for name, v := range accepted {
		t.Run(name, func(t *testing.T) {
			cmd, err := parseCreate([]byte(createWith("title", v)))
			if err != nil {
				t.Fatalf("%s refused: %v", v, err)
			}
			if strings.ContainsRune(cmd.Title, '\uFFFD') {
				t.Fatalf("%s decoded to %q", v, cmd.Title)
			}
		})
	}
}

func TestLoneSurrogate(t *testing.T) {
	for raw, want := range map[string]bool{
		`"plain"`: false, `: "\u0041"`: false, `, "\ud800\udc00"`: false, `"\\ud800"`: false,
		`"\\\ud800"`: true, `"\ud800"`: true, `"\udc00"`: true, `"\ud800\ud800\udc00"`: true,
		`"\u12"`: false, // malformed: left to the decoder
	} {
		if got := loneSurrogate([]byte(raw)); got != want {
			t.Errorf("loneSurrogate(%s) = %v, want %v", raw, got, want)
		}
	}
}

func TestBodiesOverAByteLimitAreRefusedNamingTheField(t *testing.T) {
	emoji := func(n int) string { return `"` + strings.Repeat("😀", n) + `"` }
	cases := []struct{ field, value string }{
		{"title", emoji(ticket.MaxTitleBytes/4 + 1)},
		{"created_by", emoji(ticket.MaxNameBytes/4 + 1)},
		{"description", emoji(ticket.MaxDescriptionBytes/4 + 1)},
		{"description", `"` + strings.Repeat(`\ud83d\ude00`, ticket.MaxDescriptionBytes/4+1) + `"`}, // escaped, same bytes once decoded
	}
	for _, c := range cases {
		_, err := parseCreate([]byte(createWith(c.field, c.value)))
		p := wantProblem(t, err, 422, "validation-failed", c.field)
		if !strings.Contains(p.Errors[0].Reason, "bytes") {
			t.Errorf("%s: reason %q does not name bytes", c.field, p.Errors[0].Reason)
		}
	}
	_, err := parseComment([]byte(`{"body":` + emoji(ticket.MaxCommentBytes/4+1) + `,"created_by":"u"}`))
	wantProblem(t, err, 422, "validation-failed", "body")
	if _, err := parseComment([]byte(`{"body":` + emoji(ticket.MaxCommentBytes/4) + `,"created_by":"u"}`)); err != nil {
		t.Fatalf("a body at the byte limit refused: %v", err)
	}
}

func TestBlankFillersAreRefusedNamingTheField(t *testing.T) {
	for _, v := range []string{`"\u3164"`, `"\u2800\u2800"`, `"\u034f"`, `"\uffa0"`, `"\u115f\u1160"`, `" \u3164 "`, "\"\u3164\""} {
		_, err := parseCreate([]byte(createWith("title", v)))
		wantProblem(t, err, 422, "validation-failed", "title")
		_, err = parseCreate([]byte(createWith("created_by", v)))
		wantProblem(t, err, 422, "validation-failed", "created_by")
		_, err = parseComment([]byte(`{"body":` + v + `,"created_by":"u"}`))
		wantProblem(t, err, 422, "validation-failed", "body")
		_, err = parseStatus([]byte(`{"status":"closed","updated_by":` + v + `}`))
		wantProblem(t, err, 422, "validation-failed", "updated_by")
	}
}

func TestVersionParam(t *testing.T) {
	for _, raw := range []string{"1", "2", "42", "2147483647"} {
		n, err := versionParam(raw)
		if want, _ := strconv.Atoi(raw); err != nil || n != want {
			t.Errorf("versionParam(%q) = %d, %v", raw, n, err)
		}
	}
	for _, raw := range []string{
		"", "0", "-1", "+1", "01", " 1", "1 ", "1.0", "1e3", "0x10", "abc", "١",
		"2147483648", "4294967296", "9223372036854775807", "9223372036854775808",
		strings.Repeat("9", 100), strconv.Itoa(math.MaxInt32 + 1),
	} {
		_, err := versionParam(raw)
		p := wantProblem(t, err, 422, "validation-failed", "version")
		if !strings.Contains(p.Errors[0].Reason, "2147483647") {
			t.Errorf("versionParam(%q): reason %q does not give the range", raw, p.Errors[0].Reason)
		}
	}
}
