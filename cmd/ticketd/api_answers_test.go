package main

import (
	"strings"
	"testing"
)

// The answers a new user meets first (issue 13, items 9 to 15): each refusal says what
// was wrong, all of it, and what would be accepted.

// TestClosedTicketRefusalSaysClosedIsFinal: a refused status change or comment on a
// closed ticket always carries allowed_statuses, an empty array, and a detail that says
// closed is final (not "(allowed: )").
func TestClosedTicketRefusalSaysClosedIsFinal(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	d := createTicket(t, s, sourceTicket)
	s.do(t, "PUT", "/v1/ticket/"+d.ID, map[string]any{"status": "closed", "updated_by": "agent"}).expect(t, 200)

	for _, c := range []struct {
		name, method, path, code string
		body                     map[string]any
	}{
		{"status_change", "PUT", "/v1/ticket/" + d.ID, "transition-refused", map[string]any{"status": "answered", "updated_by": "agent"}},
		{"reopen", "PUT", "/v1/ticket/" + d.ID, "transition-refused", map[string]any{"status": "open", "updated_by": "agent"}},
		{"comment", "POST", "/v1/ticket/" + d.ID + "/comments", "ticket-closed", map[string]any{"body": "hello?", "created_by": "u"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := problemCode(t, s.do(t, c.method, c.path, c.body), 409, c.code)
			allowed, present := p["allowed_statuses"]
			if list, ok := allowed.([]any); !present || !ok || len(list) != 0 {
				t.Fatalf("allowed_statuses %#v (present %v), want an empty array: %v", allowed, present, p)
			}
			if p["current_status"] != "closed" {
				t.Fatalf("current_status %v, want closed: %v", p["current_status"], p)
			}
			detail, _ := p["detail"].(string)
			if !strings.Contains(detail, "closed is final") || strings.Contains(detail, "(allowed: )") {
				t.Fatalf("detail %q, want it to say that closed is final", detail)
			}
		})
	}
}

// TestValidationNamesEveryBadField: one 422 names every bad field of a body, with the
// reason of each, and an unknown field's reason lists the fields the body accepts.
func TestValidationNamesEveryBadField(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	fields := func(p map[string]any) (names []string, reasons map[string]string) {
		reasons = map[string]string{}
		errs, _ := p["errors"].([]any)
		for _, e := range errs {
			m := e.(map[string]any)
			f, _ := m["field"].(string)
			names = append(names, f)
			reasons[f], _ = m["reason"].(string)
		}
		return names, reasons
	}
	t.Run("create_names_title_email_and_created_by", func(t *testing.T) {
		p := problemCode(t, s.do(t, "POST", "/v1/ticket/", `{"title":"","email":"nope"}`), 422, "validation-failed")
		names, _ := fields(p)
		if strings.Join(names, ",") != "title,email,created_by" {
			t.Fatalf("errors name %v, want title, email, created_by: %v", names, p)
		}
		if d, _ := p["detail"].(string); !strings.HasPrefix(d, "title: ") || !strings.Contains(d, "; email: ") {
			t.Fatalf("detail %q, want every field, the first first", d)
		}
	})
	t.Run("unknown_field_lists_the_accepted_ones", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		p := problemCode(t, s.do(t, "POST", "/v1/ticket/"+d.ID+"/comments", `{"text":"hi","created_by":"u"}`), 422, "validation-failed")
		names, reasons := fields(p)
		if strings.Join(names, ",") != "text,body" {
			t.Fatalf("errors name %v, want text (unknown), body (missing): %v", names, p)
		}
		if !strings.Contains(reasons["text"], "accepts body, email, created_by") {
			t.Fatalf("reason %q does not list the accepted fields", reasons["text"])
		}
		if got := getTicket(t, s, d.ID); got.Version != 1 {
			t.Fatalf("a refused comment changed the ticket: %+v", got)
		}
	})
}
