package httpapi

import (
	"errors"
	"strings"
	"testing"
)

// wantProblem fails unless err is a *Problem with the status and code, naming field
// (when field is not empty) as its first offending field.
func wantProblem(t *testing.T, err error, status int, code, field string) *Problem {
	t.Helper()
	var p *Problem
	if !errors.As(err, &p) {
		t.Fatalf("error %v (%T), want a *Problem %d %s", err, err, status, code)
	}
	if p.Status != status || p.Code != code {
		t.Fatalf("problem %d %s (%s), want %d %s", p.Status, p.Code, p.Detail, status, code)
	}
	if field != "" && (len(p.Errors) == 0 || p.Errors[0].Field != field) {
		t.Fatalf("problem names %+v, want field %q", p.Errors, field)
	}
	return p
}

func TestParseCreateRefusesHostileBodies(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 40) + `1` + strings.Repeat(`}`, 40)
	cases := []struct {
		name   string
		body   string
		status int
		code   string
		field  string
	}{
		{"empty_body", ``, 400, "malformed-json", ""},
		{"blank_body", " \n\t", 400, "malformed-json", ""},
		{"truncated_json", `{"title": "a", "email": "u@example.com"`, 400, "malformed-json", ""},
		{"truncated_string", `{"title": "abc`, 400, "malformed-json", ""},
		{"not_json", `title=a&email=b`, 400, "malformed-json", ""},
		{"array_at_top", `[{"title":"a"}]`, 400, "malformed-json", ""},
		{"string_at_top", `"title"`, 400, "malformed-json", ""},
		{"null_at_top", `null`, 400, "malformed-json", ""},
		{"two_objects", `{"title":"a"}{"title":"b"}`, 400, "malformed-json", ""},
		{"trailing_garbage", `{"title":"a"} x`, 400, "malformed-json", ""},
		{"duplicate_key", `{"title":"a","title":"b"}`, 400, "duplicate-key", ""},
		{"duplicate_nested_key", `{"title":{"x":1,"x":2}}`, 400, "duplicate-key", ""},
		{"case_variant_key", `{"TITLE":"a","email":"u@example.com","created_by":"u"}`, 422, "validation-failed", "TITLE"},
		{"case_variant_after_exact", `{"title":"a","Title":"b"}`, 422, "validation-failed", "Title"},
		{"unknown_field", `{"title":"a","priority":"high"}`, 422, "validation-failed", "priority"},
		{"invalid_utf8", "{\"title\":\"\xff\xfe\"}", 400, "invalid-utf8", ""},
		{"raw_nul_byte", "{\"title\":\"a\x00b\"}", 400, "malformed-json", ""},
		{"escaped_nul", `{"title":"a\u0000b","email":"u@example.com","created_by":"u"}`, 422, "validation-failed", "title"},
		{"nul_in_created_by", `{"title":"a","email":"u@example.com","created_by":"\u0000"}`, 422, "validation-failed", "created_by"},
		{"null_title", `{"title":null,"email":"u@example.com","created_by":"u"}`, 422, "validation-failed", "title"},
		{"number_title", `{"title":42}`, 422, "validation-failed", "title"},
		{"huge_number_title", `{"title":1e999}`, 422, "validation-failed", "title"},
		{"bool_title", `{"title":true}`, 422, "validation-failed", "title"},
		{"object_title", `{"title":{"a":"b"}}`, 422, "validation-failed", "title"},
		{"array_title", `{"title":["a"]}`, 422, "validation-failed", "title"},
		{"deep_nesting", deep, 400, "malformed-json", ""},
		{"long_title", `{"title":"` + strings.Repeat("я", 201) + `","email":"u@example.com","created_by":"u"}`, 422, "validation-failed", "title"},
		{"long_description", `{"title":"a","description":"` + strings.Repeat("x", 10_001) + `","email":"u@example.com","created_by":"u"}`, 422, "validation-failed", "description"},
		{"missing_email", `{"title":"a","created_by":"u"}`, 422, "validation-failed", "email"},
		{"created_closed", `{"title":"a","email":"u@example.com","created_by":"u","status":"closed"}`, 422, "validation-failed", "status"},
		{"bidi_override", `{"title":"a\u202eb","email":"u@example.com","created_by":"u"}`, 422, "validation-failed", "title"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseCreate([]byte(c.body))
			p := wantProblem(t, err, c.status, c.code, c.field)
			for _, leak := range []string{"json:", "Go ", "reflect", "runtime", ".go:", "string, not number 1e999", "main."} {
				if strings.Contains(p.Detail, leak) {
					t.Fatalf("problem detail %q leaks %q", p.Detail, leak)
				}
			}
		})
	}
}

func TestParseCreateAcceptsAValidBody(t *testing.T) {
	body := `{ "created_by": "Иван", "email": "user@example.com", "title": "Проблема", "description": "line 1\nline 2\ttab", "status": "open" }`
	cmd, err := parseCreate([]byte(body))
	if err != nil {
		t.Fatalf("valid body refused: %v", err)
	}
	if cmd.Title != "Проблема" || cmd.CreatedBy != "Иван" || cmd.Description != "line 1\nline 2\ttab" {
		t.Fatalf("decoded %+v", cmd)
	}
}

func TestParseCommentAndStatusNameTheirFields(t *testing.T) {
	_, err := parseComment([]byte(`{"body":"  ","created_by":"u"}`))
	wantProblem(t, err, 422, "validation-failed", "body")
	_, err = parseComment([]byte(`{"body":"hi","created_by":"u","email":"nope"}`))
	wantProblem(t, err, 422, "validation-failed", "email")
	_, err = parseComment([]byte(`{"body":"hi","created_by":null}`))
	wantProblem(t, err, 422, "validation-failed", "created_by")
	_, err = parseStatus([]byte(`{"status":"resolved","updated_by":"u"}`))
	wantProblem(t, err, 422, "validation-failed", "status")
	_, err = parseStatus([]byte(`{"status":"closed","updated_by":"u","extra":1}`))
	wantProblem(t, err, 422, "validation-failed", "extra")
	if _, err := parseStatus([]byte(`{"status":"closed","updated_by":"u"}`)); err != nil {
		t.Fatalf("valid status body refused: %v", err)
	}
}

func TestCheckContentType(t *testing.T) {
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8", "application/problem+json"} {
		if err := checkContentType(ct); err != nil {
			t.Errorf("%q refused: %v", ct, err)
		}
	}
	for _, ct := range []string{"", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json; charset=latin1", "application/json; charset=utf-16", ";;;", "application/jsonx"} {
		wantProblem(t, checkContentType(ct), 415, "unsupported-media-type", "")
	}
}

func TestQueryTextRefusesWhatPostgresWould(t *testing.T) {
	if err := queryText("email", "user@example.com", 254); err != nil {
		t.Fatalf("plain value refused: %v", err)
	}
	for _, v := range []string{"a\x00b", "\xff", "a\nb", strings.Repeat("я", 255)} {
		wantProblem(t, queryText("email", v, 254), 422, "validation-failed", "email")
	}
}

func TestClipKeepsRunesWhole(t *testing.T) {
	s := clip(strings.Repeat("я", 100))
	if !strings.HasSuffix(s, "…") || len(s) > 64+len("…") || strings.ContainsRune(s, '\uFFFD') {
		t.Fatalf("clip gave %q", s)
	}
}
