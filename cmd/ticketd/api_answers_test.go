package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
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

// TestUnknownQueryParametersAreRefused: on every route of the API a query parameter the
// route does not take is a 422 naming it (and what the route takes), as the body does
// for an unknown field, and a parameter given twice is a 422 naming it: neither is
// ignored, and a refused command changes nothing.
func TestUnknownQueryParametersAreRefused(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	d := createTicket(t, s, sourceTicket)
	tk := "/v1/ticket/" + d.ID
	comment := map[string]any{"body": "hi", "created_by": "u"}
	refused := func(t *testing.T, r response, reason string, fields ...string) {
		t.Helper()
		p := problemCode(t, r, 422, "validation-failed")
		errs, _ := p["errors"].([]any)
		if len(errs) != len(fields) {
			t.Fatalf("errors %v, want %v", errs, fields)
		}
		for i, f := range fields {
			e := errs[i].(map[string]any)
			if e["field"] != f || !strings.Contains(e["reason"].(string), reason) {
				t.Fatalf("error %d is %v, want field %q with a reason saying %q", i, e, f, reason)
			}
		}
	}
	for _, c := range []struct {
		name, method, path string
		body               any
		fields             []string
		takes              string
	}{
		{"list_page_and_size", "GET", "/v1/ticket/?page=2&size=2", nil, []string{"page", "size"}, "takes status, email, created_by, limit, cursor"},
		{"list_without_slash", "GET", "/v1/ticket?offset=20", nil, []string{"offset"}, "takes status"},
		{"list_case_variant", "GET", "/v1/ticket/?Limit=2", nil, []string{"Limit"}, "case-sensitive"},
		{"list_empty_value", "GET", "/v1/ticket/?sort=", nil, []string{"sort"}, "takes status"},
		{"get", "GET", tk + "?fields=title", nil, []string{"fields"}, "takes version"},
		{"head", "HEAD", tk + "?fields=title", nil, nil, ""},
		{"comments", "GET", tk + "/comments?offset=2", nil, []string{"offset"}, "takes limit, cursor"},
		{"history", "GET", tk + "/history?after=1&limit=5", nil, []string{"after"}, "takes limit, cursor"},
		{"create", "POST", "/v1/ticket/?notify=yes", sourceTicket, []string{"notify"}, "takes none"},
		{"change_status", "PUT", tk + "?force=1", map[string]any{"status": "closed", "updated_by": "a"}, []string{"force"}, "takes none"},
		{"delete", "DELETE", tk + "?dry_run=1", nil, []string{"dry_run"}, "takes none"},
		{"comment", "POST", tk + "/comments?version=1", comment, []string{"version"}, "takes none"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := s.do(t, c.method, c.path, c.body)
			if c.method == "HEAD" {
				r.expect(t, 422) // no body to read; the status is the answer
				return
			}
			refused(t, r, c.takes, c.fields...)
		})
	}
	t.Run("repeated_parameter", func(t *testing.T) {
		refused(t, s.do(t, "GET", "/v1/ticket/?limit=5&limit=50", nil), "given once", "limit")
		refused(t, s.do(t, "GET", "/v1/ticket/?status=open&email=u@example.com&status=closed", nil), "given once", "status")
		refused(t, s.do(t, "GET", tk+"?version=1&version=1", nil), "given once", "version")
		refused(t, s.do(t, "GET", tk+"/history?cursor=a&cursor=b", nil), "given once", "cursor")
	})
	t.Run("unknown_and_repeated_together", func(t *testing.T) {
		p := problemCode(t, s.do(t, "GET", "/v1/ticket/?limit=1&page=2&limit=2", nil), 422, "validation-failed")
		if errs, _ := p["errors"].([]any); len(errs) != 2 || errs[0].(map[string]any)["field"] != "limit" || errs[1].(map[string]any)["field"] != "page" {
			t.Fatalf("errors %v, want limit (twice) then page (unknown)", p["errors"])
		}
	})
	t.Run("nothing_changed", func(t *testing.T) {
		if got := getTicket(t, s, d.ID); got.Version != 1 || got.Status != "open" || got.CommentCount != 0 {
			t.Fatalf("a refused command changed the ticket: %+v", got)
		}
		var list []ticketDoc
		eventually(t, 5*time.Second, "the list holds the one ticket", func() bool {
			s.do(t, "GET", "/v1/ticket/?limit=100", nil).expect(t, 200).JSON(t, &list)
			return len(list) == 1
		})
		time.Sleep(200 * time.Millisecond)
		s.do(t, "GET", "/v1/ticket/?limit=100", nil).expect(t, 200).JSON(t, &list)
		if len(list) != 1 {
			t.Fatalf("a refused create was stored: %d tickets", len(list))
		}
	})
	t.Run("known_parameters_still_work", func(t *testing.T) {
		s.do(t, "GET", "/v1/ticket/?limit=1&status=open&email=user@example.com&created_by=x", nil).expect(t, 200)
		s.do(t, "GET", tk+"?version=1", nil).expect(t, 200)
		s.do(t, "GET", tk+"/comments?limit=5", nil).expect(t, 200)
		s.do(t, "GET", tk+"/history?limit=5", nil).expect(t, 200)
		s.do(t, "GET", tk, nil).expect(t, 200)
	})
}

// TestBodyTooLargeStatesTheLimit: a 413 says how many bytes the server accepts, with a
// length given up front and with a chunked body alike.
func TestBodyTooLargeStatesTheLimit(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"BODY_LIMIT": "4096"})
	const json = "Content-Type: application/json"
	big := `{"title":"` + strings.Repeat("x", 5000) + `"}`
	for name, req := range map[string]string{
		"content_length": rawRequest("POST", "/v1/ticket/", big, json),
		"chunked": "POST /v1/ticket/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + json + "\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(big), big),
	} {
		t.Run(name, func(t *testing.T) {
			p := problemCode(t, s.raw(t, req), 413, "body-too-large")
			if d, _ := p["detail"].(string); !strings.Contains(d, "at most 4096 bytes") {
				t.Fatalf("detail %q does not state the limit of 4096 bytes", d)
			}
		})
	}
}

// TestProjectionFailureMetricsExportedAtZero: /metrics has the failure and poison
// counters of each consumer group before anything failed, at zero.
func TestProjectionFailureMetricsExportedAtZero(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	want := []string{
		`ticketd_projection_failures_total{group="pg-readmodel"} 0`,
		`ticketd_projection_failures_total{group="redis-readmodel"} 0`,
		`ticketd_projection_poisoned_total{group="pg-readmodel"} 0`,
		`ticketd_projection_poisoned_total{group="redis-readmodel"} 0`,
	}
	var body string
	eventually(t, 10*time.Second, "projection failure counters at zero in /metrics", func() bool {
		body = string(s.do(t, "GET", "/metrics", nil).expect(t, 200).Body)
		for _, w := range want {
			if !strings.Contains(body, w+"\n") {
				return false
			}
		}
		return true
	})
}
