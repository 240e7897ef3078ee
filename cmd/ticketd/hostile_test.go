package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// raw sends one request exactly as written (bytes the Go client would refuse to
// send), on its own connection, and reads the answer.
func (s *testServer) raw(t testing.TB, req string) response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(s.URL, "http://"), 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	// the server may answer and close before reading everything (413, 431): a failed
	// write is fine as long as an answer comes
	_, _ = io.WriteString(conn, req)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read the answer to %.60q: %v", req, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

// rawRequest writes an HTTP/1.1 request with the given head lines and body.
func rawRequest(method, target, body string, headers ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: ticketd.test\r\nConnection: close\r\n", method, target)
	// the test admin token, unless the request names its own credentials
	if !slices.ContainsFunc(headers, func(h string) bool { return strings.HasPrefix(strings.ToLower(h), "authorization:") }) {
		b.WriteString("Authorization: Bearer " + testAdminToken + "\r\n")
	}
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	if body != "" {
		b.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\n")
	}
	b.WriteString("\r\n" + body)
	return b.String()
}

// TestHostileInput throws malformed, oversized and nonsensical requests at the server:
// each is a 4xx problem+json naming the problem, without internals; nothing is
// stored; and the server serves normal requests afterwards.
func TestHostileInput(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"BODY_LIMIT": "4096"})
	d := createTicket(t, s, sourceTicket)
	tk := "/v1/ticket/" + d.ID
	before := s.eventCount(t)

	const json = "Content-Type: application/json"
	valid := `{"title":"a","email":"u@example.com","created_by":"u"}`
	nested := strings.Repeat(`{"a":`, 100) + "1" + strings.Repeat("}", 100)
	cases := []struct {
		name   string
		req    string
		status int
		code   string
		field  string
	}{
		// bodies
		{"malformed_json", rawRequest("POST", "/v1/ticket/", `{"title": "a" "email"}`, json), 400, "malformed-json", ""},
		{"truncated_json", rawRequest("POST", "/v1/ticket/", `{"title": "a", "email": "u@exa`, json), 400, "malformed-json", ""},
		{"empty_body", rawRequest("POST", "/v1/ticket/", "", json), 400, "malformed-json", ""},
		{"array_body", rawRequest("POST", "/v1/ticket/", `[1,2,3]`, json), 400, "malformed-json", ""},
		{"wrong_type", rawRequest("POST", "/v1/ticket/", `{"title":["a"],"email":"u@example.com","created_by":"u"}`, json), 422, "validation-failed", "title"},
		{"null_string", rawRequest("POST", "/v1/ticket/", `{"title":"a","email":"u@example.com","created_by":null}`, json), 422, "validation-failed", "created_by"},
		{"duplicate_keys", rawRequest("POST", "/v1/ticket/", `{"title":"a","title":"b","email":"u@example.com","created_by":"u"}`, json), 400, "duplicate-key", ""},
		{"case_twin_keys", rawRequest("POST", "/v1/ticket/", `{"title":"a","Title":"b","email":"u@example.com","created_by":"u"}`, json), 422, "validation-failed", "Title"},
		{"invalid_utf8", rawRequest("POST", "/v1/ticket/", "{\"title\":\"\xc3\x28\",\"email\":\"u@example.com\",\"created_by\":\"u\"}", json), 400, "invalid-utf8", ""},
		{"nul_escape", rawRequest("POST", "/v1/ticket/", `{"title":"a\u0000b","email":"u@example.com","created_by":"u"}`, json), 422, "validation-failed", "title"},
		{"nul_in_comment", rawRequest("POST", tk+"/comments", `{"body":"x\u0000","created_by":"u"}`, json), 422, "validation-failed", "body"},
		{"raw_nul_byte", rawRequest("POST", "/v1/ticket/", "{\"title\":\"a\x00\",\"email\":\"u@example.com\",\"created_by\":\"u\"}", json), 400, "malformed-json", ""},
		{"deep_nesting", rawRequest("POST", "/v1/ticket/", nested, json), 400, "malformed-json", ""},
		{"over_long_field", rawRequest("POST", "/v1/ticket/", `{"title":"`+strings.Repeat("x", 201)+`","email":"u@example.com","created_by":"u"}`, json), 422, "validation-failed", "title"},
		{"over_long_name", rawRequest("PUT", tk, `{"status":"answered","updated_by":"`+strings.Repeat("x", 201)+`"}`, json), 422, "validation-failed", "updated_by"},
		{"body_over_limit", rawRequest("POST", "/v1/ticket/", `{"title":"`+strings.Repeat("x", 5000)+`"}`, json), 413, "body-too-large", ""},
		{"chunked_body_over_limit", "POST /v1/ticket/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + json + "\r\nTransfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", 5000, strings.Repeat("x", 5000)), 413, "body-too-large", ""},
		{"no_content_type", rawRequest("POST", "/v1/ticket/", valid), 415, "unsupported-media-type", ""},
		{"form_content_type", rawRequest("POST", "/v1/ticket/", valid, "Content-Type: application/x-www-form-urlencoded"), 415, "unsupported-media-type", ""},
		{"text_content_type_on_put", rawRequest("PUT", tk, `{"status":"answered","updated_by":"u"}`, "Content-Type: text/plain"), 415, "unsupported-media-type", ""},
		{"latin1_charset", rawRequest("POST", tk+"/comments", `{"body":"x","created_by":"u"}`, "Content-Type: application/json; charset=iso-8859-1"), 415, "unsupported-media-type", ""},
		// headers
		{"headers_too_large", rawRequest("GET", tk, "", "X-Junk: "+strings.Repeat("a", 20<<10)), 431, "headers-too-large", ""},
		{"request_line_too_large", rawRequest("GET", "/v1/ticket/?email="+strings.Repeat("a", 20<<10), ""), 431, "headers-too-large", ""},
		{"many_headers", rawRequest("GET", tk, "", strings.Repeat("X-A: b\r\n", 3000)+"X-Z: z"), 431, "headers-too-large", ""},
		{"over_long_actor", rawRequest("DELETE", tk, "", "X-Actor: "+strings.Repeat("a", 300)), 422, "validation-failed", "deleted_by"},
		{"control_in_actor", rawRequest("DELETE", tk, "", "X-Actor: a\x01b"), 422, "validation-failed", "deleted_by"},
		{"bad_if_match", rawRequest("DELETE", tk, "", "If-Match: 1"), 422, "validation-failed", "If-Match"},
		{"bad_idempotency_key", rawRequest("POST", "/v1/ticket/", valid, json, "Idempotency-Key: "+strings.Repeat("k", 300)), 422, "validation-failed", "Idempotency-Key"},
		// paths and queries
		{"bad_uuid", rawRequest("GET", "/v1/ticket/not-a-uuid", ""), 422, "validation-failed", "id"},
		{"short_uuid", rawRequest("PUT", "/v1/ticket/01936f1e-7c4a-7000-8000", `{"status":"closed","updated_by":"u"}`, json), 422, "validation-failed", "id"},
		{"urn_uuid", rawRequest("GET", "/v1/ticket/urn:uuid:01936f1e-7c4a-7000-8000-000000000000", ""), 422, "validation-failed", "id"},
		{"braced_uuid", rawRequest("DELETE", "/v1/ticket/%7B01936f1e-7c4a-7000-8000-000000000000%7D", ""), 422, "validation-failed", "id"},
		{"percent_garbage", rawRequest("GET", "/v1/ticket/%ZZ%", ""), 422, "validation-failed", "id"},
		{"percent_nul", rawRequest("GET", "/v1/ticket/%00", ""), 422, "validation-failed", "id"},
		{"percent_invalid_utf8", rawRequest("GET", "/v1/ticket/%ff%fe/comments", ""), 422, "validation-failed", "id"},
		{"percent_traversal", rawRequest("GET", "/v1/ticket/..%2f..%2fetc%2fpasswd", ""), 422, "validation-failed", "id"},
		{"unknown_route", rawRequest("GET", "/v1/tickets/x/y/z", ""), 404, "route-not-found", ""},
		// paths are case-sensitive, as in the spec and the FastAPI service replaced
		{"uppercase_path", rawRequest("GET", "/V1/TICKET/", ""), 404, "route-not-found", ""},
		{"uppercase_ticket_path", rawRequest("GET", strings.Replace(tk, "/v1/ticket", "/v1/Ticket", 1), ""), 404, "route-not-found", ""},
		{"bad_limit", rawRequest("GET", "/v1/ticket/?limit=1%00", ""), 422, "validation-failed", "limit"},
		{"bad_status_filter", rawRequest("GET", "/v1/ticket/?status=%27%20OR%201=1--", ""), 422, "validation-failed", "status"},
		{"bad_email_filter", rawRequest("GET", "/v1/ticket/?email=%c3%28", ""), 422, "validation-failed", "email"},
		{"bad_comment_limit", rawRequest("GET", tk+"/comments?limit=1000", ""), 422, "validation-failed", "limit"},
		// methods
		{"patch_ticket", rawRequest("PATCH", tk, `{"status":"closed"}`, json), 405, "method-not-allowed", ""},
		{"post_to_ticket", rawRequest("POST", tk, valid, json), 405, "method-not-allowed", ""},
		{"delete_collection", rawRequest("DELETE", "/v1/ticket/", ""), 405, "method-not-allowed", ""},
		{"unknown_method", rawRequest("FROB", tk, ""), 405, "method-not-allowed", ""},
		{"lowercase_method", rawRequest("get", tk, ""), 405, "method-not-allowed", ""},
		{"unknown_method_unknown_path", rawRequest("FROB", "/nowhere", ""), 404, "route-not-found", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := s.raw(t, c.req)
			p := problemCode(t, r, c.status, c.code)
			if c.field != "" {
				assertField(t, p, c.field)
			}
			if c.status == 405 && r.Header.Get("Allow") == "" {
				t.Fatalf("405 without an Allow header: %v", r.Header)
			}
		})
	}

	t.Run("405_lists_the_allowed_methods", func(t *testing.T) {
		for _, m := range []string{"PATCH", "FROB"} {
			allow := s.raw(t, rawRequest(m, tk, "")).Header.Get("Allow")
			for _, want := range []string{"GET", "PUT", "DELETE"} {
				if !strings.Contains(allow, want) {
					t.Fatalf("%s: Allow %q lacks %s", m, allow, want)
				}
			}
		}
	})

	t.Run("nothing_was_stored_and_the_server_still_serves", func(t *testing.T) {
		if n := s.eventCount(t); n != before {
			t.Fatalf("the hostile requests stored %d events", n-before)
		}
		var keys int
		s.dbQuery(t, "SELECT count(*) FROM idempotency_keys", nil, &keys)
		if keys != 0 {
			t.Fatalf("the hostile requests stored %d idempotency keys", keys)
		}
		got := getTicket(t, s, d.ID)
		if got.Version != 1 || got.Status != "open" {
			t.Fatalf("the ticket changed: %+v", got)
		}
		e := createTicket(t, s, sourceTicket)
		s.do(t, "POST", "/v1/ticket/"+e.ID+"/comments", map[string]any{"body": "still fine", "created_by": "u"}).expect(t, 201)
		s.do(t, "GET", "/v1/ticket/?limit=5", nil).expect(t, 200)
		if logs := s.logs.String(); strings.Contains(logs, "unexpected error") || strings.Contains(logs, "panic") {
			t.Fatalf("the server logged unexpected errors:\n%s", logs)
		}
	})
}

// TestHostileAuth throws malformed and hostile credentials at a write: each is a 4xx
// problem (401 with its challenge for a credential that is not a good bearer token,
// one answer for all; 400 for one in the query string; 431 for one over the header
// limit), nothing is stored, no credential reaches the logs, and the server serves
// afterwards.
func TestHostileAuth(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	before := s.eventCount(t)
	const json = "Content-Type: application/json"
	valid := `{"title":"a","email":"u@example.com","created_by":"u"}`
	huge := "tkd_" + strings.Repeat("A", 8<<10)
	giant := "tkd_" + strings.Repeat("B", 20<<10)
	post := func(headers ...string) string {
		return rawRequest("POST", "/v1/ticket/", valid, append([]string{json}, headers...)...)
	}
	cases := []struct {
		name   string
		req    string
		status int
		code   string
	}{
		{"no_header", post("Authorization:"), 401, "unauthenticated"},
		{"no_scheme", post("Authorization: " + testAdminToken), 401, "unauthenticated"},
		{"basic_scheme", post("Authorization: Basic YWRtaW46YWRtaW4="), 401, "unauthenticated"},
		{"digest_scheme", post(`Authorization: Digest username="admin", response="x"`), 401, "unauthenticated"},
		{"token_scheme", post("Authorization: Token " + testAdminToken), 401, "unauthenticated"},
		{"scheme_glued_to_token", post("Authorization: Bearer" + testAdminToken), 401, "unauthenticated"},
		{"bearer_alone", post("Authorization: Bearer"), 401, "unauthenticated"},
		{"bearer_blank", post("Authorization: Bearer    "), 401, "unauthenticated"},
		{"two_credentials", post("Authorization: Bearer " + testAdminToken + " tkd_other"), 401, "unauthenticated"},
		{"tab_inside", post("Authorization: Bearer tkd_a\tb"), 401, "unauthenticated"},
		{"valid_prefix_unknown", post("Authorization: Bearer tkd_" + strings.Repeat("0", 43)), 401, "unauthenticated"},
		{"token_with_suffix", post("Authorization: Bearer " + testAdminToken + "x"), 401, "unauthenticated"},
		{"truncated_token", post("Authorization: Bearer " + testAdminToken[:len(testAdminToken)-1]), 401, "unauthenticated"},
		{"non_ascii_token", post("Authorization: Bearer tkd_\xc3\xa9\xc3\xa9"), 401, "unauthenticated"},
		{"control_byte_token", post("Authorization: Bearer tkd_\x01\x02"), 401, "unauthenticated"},
		{"sql_in_token", post("Authorization: Bearer ' OR '1'='1"), 401, "unauthenticated"},
		{"alg_none_jwt", post("Authorization: Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhZG1pbiIsInJvbGUiOiJhZG1pbiJ9."), 401, "unauthenticated"},
		{"huge_token", post("Authorization: Bearer " + huge), 401, "unauthenticated"},
		{"token_over_header_limit", post("Authorization: Bearer " + giant), 431, "headers-too-large"},
		// two headers, a good one among them: neither counts
		{"good_then_bad_header", post("Authorization: Bearer "+testAdminToken, "Authorization: Bearer junk"), 401, "unauthenticated"},
		{"bad_then_good_header", post("Authorization: Bearer junk", "Authorization: Bearer "+testAdminToken), 401, "unauthenticated"},
		// a header "injected" into the credential through a line break is only another
		// header: the credential before it is what is checked
		{"crlf_injection", post("Authorization: Bearer junk\r\nX-Actor: admin"), 401, "unauthenticated"},
		// a folded line is joined with a space (RFC 9112 5.2): a folded bad credential is
		// still a bad credential
		{"obs_fold", post("Authorization: Bearer\r\n tkd_junk"), 401, "unauthenticated"},
		{"token_in_query", rawRequest("POST", "/v1/ticket/?access_token="+testAdminToken, valid, json, "Authorization:"), 400, "credentials-in-query"},
		{"token_in_query_with_header", rawRequest("POST", "/v1/ticket/?api_key=x", valid, json), 400, "credentials-in-query"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := s.raw(t, c.req)
			if r.Status != c.status {
				t.Fatalf("%d %s, want %d", r.Status, r.Body, c.status)
			}
			if c.status == 431 {
				return // answered before any route: the header's size is the problem
			}
			problemCode(t, r, c.status, c.code)
			if c.status == 401 && !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("401 without a Bearer challenge: %v", r.Header)
			}
		})
	}
	t.Run("nothing_stored_no_credential_logged", func(t *testing.T) {
		if n := s.eventCount(t); n != before {
			t.Fatalf("the refused requests stored %d events", n-before)
		}
		s.raw(t, rawRequest("POST", "/v1/ticket/", valid, json, "Authorization: bearer "+testAdminToken)) // scheme case-insensitive
		if n := s.eventCount(t); n != before+1 {
			t.Fatalf("a good token (lowercase scheme) stored %d events, want 1", n-before)
		}
		logs := s.logs.String()
		for _, secret := range []string{testAdminToken, huge[:64], "YWRtaW46YWRtaW4="} {
			if strings.Contains(logs, secret) {
				t.Fatalf("the logs hold a credential %.20q…", secret)
			}
		}
		if strings.Contains(logs, "unexpected error") || strings.Contains(logs, "panic") {
			t.Fatalf("the server logged unexpected errors:\n%s", logs)
		}
	})
}
