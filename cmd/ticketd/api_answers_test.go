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
