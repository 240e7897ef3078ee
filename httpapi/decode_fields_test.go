package httpapi

import (
	"strings"
	"testing"
)

// fieldsOf returns the fields a problem names, in order.
func fieldsOf(p *Problem) []string {
	var out []string
	for _, e := range p.Errors {
		out = append(out, e.Field)
	}
	return out
}

// TestEveryBadFieldIsNamed: a body with several bad fields gets one 422 naming each of
// them once, the decoder's refusals (unknown key, null, wrong type, lone surrogate) in
// the body's order, then the refused values in the command's field order. The detail
// joins them, the first field first, as a client reading only the detail expects.
func TestEveryBadFieldIsNamed(t *testing.T) {
	cases := []struct {
		name  string
		parse func([]byte) error
		body  string
		want  []string
	}{
		{"issue_example", create, `{"title":"","email":"nope"}`, []string{"title", "email", "created_by"}},
		{"one_bad_field", create, `{"title":"a","email":"nope","created_by":"u"}`, []string{"email"}},
		{"decoder_and_values", create,
			`{"priority":"high","email":null,"TITLE":"a","created_by":5,"description":"\ud800","status":"closed"}`,
			[]string{"priority", "email", "TITLE", "created_by", "description", "status", "title"}},
		{"null_is_named_once", create, `{"title":null,"email":"u@example.com","created_by":"u"}`, []string{"title"}},
		{"comment", comment, `{"body":"  ","email":"x"}`, []string{"body", "created_by", "email"}},
		{"comment_unknown_and_blank", comment, `{"text":"hi","created_by":""}`, []string{"text", "body", "created_by"}},
		{"status", status, `{"status":"resolved","updated_by":""}`, []string{"status", "updated_by"}},
		{"status_wrong_types", status, `{"status":1,"updated_by":[]}`, []string{"status", "updated_by"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := wantProblem(t, c.parse([]byte(c.body)), 422, "validation-failed", c.want[0])
			if got := fieldsOf(p); strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Fatalf("errors name %v, want %v: %+v", got, c.want, p.Errors)
			}
			for i, e := range p.Errors {
				if e.Reason == "" {
					t.Fatalf("error %d has no reason: %+v", i, e)
				}
				if !strings.Contains(p.Detail, e.Field+": "+e.Reason) {
					t.Fatalf("detail %q does not say %q", p.Detail, e.Field+": "+e.Reason)
				}
			}
			if !strings.HasPrefix(p.Detail, c.want[0]+": ") {
				t.Fatalf("detail %q does not start with the first field", p.Detail)
			}
		})
	}
}

// TestUnknownFieldNamesTheAcceptedFields: an unknown (or misspelt) field's reason lists
// the fields the body accepts, in the order of the API.
func TestUnknownFieldNamesTheAcceptedFields(t *testing.T) {
	for _, c := range []struct {
		name, body, field, accepts string
		parse                      func([]byte) error
	}{
		{"create", `{"text":"a","title":"a","email":"u@example.com","created_by":"u"}`, "text", "title, description, email, created_by, status", create},
		{"create_case_variant", `{"Title":"a","email":"u@example.com","created_by":"u"}`, "Title", "title, description, email, created_by, status", create},
		{"comment", `{"text":"a","created_by":"u"}`, "text", "body, email, created_by", comment},
		{"status", `{"state":"closed","updated_by":"u"}`, "state", "status, updated_by", status},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := wantProblem(t, c.parse([]byte(c.body)), 422, "validation-failed", c.field)
			if r := p.Errors[0].Reason; !strings.Contains(r, "accepts "+c.accepts+" ") {
				t.Fatalf("reason %q does not name the accepted fields %q", r, c.accepts)
			}
		})
	}
}

func create(b []byte) error  { _, err := parseCreate(b); return err }
func comment(b []byte) error { _, err := parseComment(b); return err }
func status(b []byte) error  { _, err := parseStatus(b); return err }
