package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
)

// conformanceCase is one request sent both to the request validator of the served
// OpenAPI document and to the server. Path may hold {id}: a fresh open ticket of the
// case's own (so a valid request never meets another case's state).
type conformanceCase struct {
	name    string
	method  string
	path    string
	body    any // nil, a string sent as is, or a value sent as JSON
	headers []string
	// known, when set, is why the schema cannot say this rule: the document accepts the
	// request and the server refuses it. The test fails if they come to agree, so the
	// list stays true.
	known string
}

// emptyHeader is the validator's limit, not the document's: its pattern and minLength
// refuse an empty value, but libopenapi-validator takes a header sent empty for one not
// sent. The server refuses it (422 naming the header), as the document says.
const emptyHeader = "the validator takes an empty header for an absent one"

// Every operation of the served document (aliases and HEAD included) with valid and
// invalid requests: the document's request validator and the server must agree on
// which are accepted (2xx, 3xx) and which refused (4xx), so the two cannot drift apart.
func TestSpecAndServerAgreeOnWhichRequestsAreAccepted(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	raw := s.do(t, "GET", "/api/openapi.json", nil).expect(t, 200).Body
	doc, err := libopenapi.NewDocument(raw)
	if err != nil {
		t.Fatalf("served document: %v", err)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("validator: %v", errs)
	}

	long := func(n int) string { return strings.Repeat("я", n) }
	ticketBody := func(kv ...any) map[string]any {
		b := map[string]any{"title": "Проблема", "email": "user@example.com", "created_by": "Иван Иванов"}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(b, kv[i].(string))
			} else {
				b[kv[i].(string)] = kv[i+1]
			}
		}
		return b
	}
	status := func(st string) map[string]any {
		return map[string]any{"status": st, "updated_by": "Администратор"}
	}
	comment := func(kv ...any) map[string]any {
		b := map[string]any{"body": "Перезагрузите роутер", "created_by": "Администратор"}
		for i := 0; i+1 < len(kv); i += 2 {
			b[kv[i].(string)] = kv[i+1]
		}
		return b
	}
	const id = "/v1/ticket/{id}"
	cases := []conformanceCase{
		// list
		{name: "list", method: "GET", path: "/v1/ticket/"},
		{name: "list without the slash", method: "GET", path: "/v1/ticket"},
		{name: "list HEAD", method: "HEAD", path: "/v1/ticket/"},
		{name: "list HEAD without the slash", method: "HEAD", path: "/v1/ticket"},
		{name: "list filtered", method: "GET", path: "/v1/ticket/?status=open&email=user%40example.com&created_by=%D0%98&limit=100"},
		{name: "list limit 0", method: "GET", path: "/v1/ticket/?limit=0"},
		{name: "list limit 101", method: "GET", path: "/v1/ticket/?limit=101"},
		{name: "list limit not a number", method: "GET", path: "/v1/ticket/?limit=ten"},
		{name: "list unknown status", method: "GET", path: "/v1/ticket/?status=resolved"},
		{name: "list email too long", method: "GET", path: "/v1/ticket/?email=" + strings.Repeat("e", 255)},
		{name: "list created_by too long", method: "GET", path: "/v1/ticket/?created_by=" + strings.Repeat("n", 201)},
		{name: "list forged cursor", method: "GET", path: "/v1/ticket/?cursor=forged", known: "a cursor is opaque and signed: no schema tells a forged one"},

		// create
		{name: "create", method: "POST", path: "/v1/ticket/", body: sourceTicket},
		{name: "create without the slash", method: "POST", path: "/v1/ticket", body: ticketBody()},
		{name: "create, no description", method: "POST", path: "/v1/ticket/", body: ticketBody("description", nil)},
		{name: "create, multi-line description", method: "POST", path: "/v1/ticket/", body: ticketBody("description", "a\r\n\tb")},
		{name: "create, 200-character title", method: "POST", path: "/v1/ticket/", body: ticketBody("title", long(200))},
		{name: "create, Idempotency-Key", method: "POST", path: "/v1/ticket/", body: ticketBody(), headers: []string{"Idempotency-Key", "conformance-1"}},
		{name: "create, Idempotency-Key with inner spaces", method: "POST", path: "/v1/ticket/", body: ticketBody(), headers: []string{"Idempotency-Key", "conformance 2 x"}},
		{name: "create, Idempotency-Key of 255", method: "POST", path: "/v1/ticket/", body: ticketBody(), headers: []string{"Idempotency-Key", strings.Repeat("k", 255)}},
		{name: "create, Idempotency-Key of 256", method: "POST", path: "/v1/ticket/", body: ticketBody(), headers: []string{"Idempotency-Key", strings.Repeat("k", 256)}},
		{name: "create, empty Idempotency-Key", method: "POST", path: "/v1/ticket/", body: ticketBody(), headers: []string{"Idempotency-Key", ""}, known: emptyHeader},
		{name: "create, non-ASCII Idempotency-Key", method: "POST", path: "/v1/ticket/", body: ticketBody(), headers: []string{"Idempotency-Key", "ключ"}},
		{name: "create, Idempotency-Key with a tab", method: "POST", path: "/v1/ticket/", body: ticketBody(), headers: []string{"Idempotency-Key", "a\tb"}},
		{name: "create, long X-Request-ID is replaced", method: "POST", path: "/v1/ticket/", body: ticketBody(), headers: []string{"X-Request-ID", strings.Repeat("r", 200)}},
		{name: "create, X-Request-ID with spaces is replaced", method: "POST", path: "/v1/ticket/", body: ticketBody(), headers: []string{"X-Request-ID", "a b", "X-Correlation-ID", "c d"}},
		{name: "create, blank title", method: "POST", path: "/v1/ticket/", body: ticketBody("title", "   ")},
		{name: "create, empty title", method: "POST", path: "/v1/ticket/", body: ticketBody("title", "")},
		{name: "create, title of a Hangul filler", method: "POST", path: "/v1/ticket/", body: ticketBody("title", "\u3164")},
		{name: "create, title of a Braille blank", method: "POST", path: "/v1/ticket/", body: ticketBody("title", "\u2800 ")},
		{name: "create, title with a control character", method: "POST", path: "/v1/ticket/", body: ticketBody("title", "a\x01b")},
		{name: "create, title with a newline", method: "POST", path: "/v1/ticket/", body: ticketBody("title", "a\nb")},
		{name: "create, title with a bidi override", method: "POST", path: "/v1/ticket/", body: ticketBody("title", "a\u202eb")},
		{name: "create, title with a tag character", method: "POST", path: "/v1/ticket/", body: ticketBody("title", "a\U000E0041b")},
		{name: "create, 201-character title", method: "POST", path: "/v1/ticket/", body: ticketBody("title", long(201))},
		{name: "create, title of 151 emoji", method: "POST", path: "/v1/ticket/", body: ticketBody("title", strings.Repeat("😀", 151)), known: "byte limits (600 bytes of UTF-8) cannot be written in a schema, which counts characters"},
		{name: "create, description with NUL", method: "POST", path: "/v1/ticket/", body: ticketBody("description", "a\x00b")},
		{name: "create, description with a zero-width space", method: "POST", path: "/v1/ticket/", body: ticketBody("description", "a\u200bb")},
		{name: "create, bad email", method: "POST", path: "/v1/ticket/", body: ticketBody("email", "nope")},
		{name: "create, email without a dot in the domain", method: "POST", path: "/v1/ticket/", body: ticketBody("email", "user@localhost")},
		{name: "create, empty email", method: "POST", path: "/v1/ticket/", body: ticketBody("email", "")},
		{name: "create, no created_by", method: "POST", path: "/v1/ticket/", body: ticketBody("created_by", nil)},
		{name: "create, status closed", method: "POST", path: "/v1/ticket/", body: ticketBody("status", "closed")},
		{name: "create, status open", method: "POST", path: "/v1/ticket/", body: ticketBody("status", "open")},
		{name: "create, unknown field", method: "POST", path: "/v1/ticket/", body: ticketBody("priority", "high")},
		{name: "create, null title", method: "POST", path: "/v1/ticket/", body: `{"title": null, "email": "user@example.com", "created_by": "n"}`},
		{name: "create, number title", method: "POST", path: "/v1/ticket/", body: ticketBody("title", 42)},
		{name: "create, malformed JSON", method: "POST", path: "/v1/ticket/", body: `{"title": "x",`},
		{name: "create, an array", method: "POST", path: "/v1/ticket/", body: `[]`},
		{name: "create, text/plain", method: "POST", path: "/v1/ticket/", body: ticketBody(), headers: []string{"Content-Type", "text/plain"}},
		{name: "create, no body", method: "POST", path: "/v1/ticket/", headers: []string{"Content-Type", "application/json"}},

		// get
		{name: "get", method: "GET", path: id},
		{name: "get with a trailing slash", method: "GET", path: id + "/"},
		{name: "get HEAD", method: "HEAD", path: id},
		{name: "get HEAD with a trailing slash", method: "HEAD", path: id + "/"},
		{name: "get, If-None-Match current", method: "GET", path: id, headers: []string{"If-None-Match", `"1"`}},
		{name: "get, If-None-Match other", method: "GET", path: id, headers: []string{"If-None-Match", `"7", W/"8"`}},
		{name: "get, If-None-Match junk", method: "GET", path: id, headers: []string{"If-None-Match", `junk`}},
		{name: "get version 1", method: "GET", path: id + "?version=1"},
		{name: "get version 0", method: "GET", path: id + "?version=0"},
		{name: "get version not a number", method: "GET", path: id + "?version=one"},
		{name: "get version too large", method: "GET", path: id + "?version=2147483648"},
		{name: "get version beyond the stream", method: "GET", path: id + "?version=5", known: "how long a ticket's stream is, is state, not schema"},
		{name: "get, id not a UUID", method: "GET", path: "/v1/ticket/not-a-uuid"},
		{name: "get, id a UUID without dashes", method: "GET", path: "/v1/ticket/0193" + strings.Repeat("0", 28)},

		// change status
		{name: "put", method: "PUT", path: id, body: status("answered")},
		{name: "put with a trailing slash", method: "PUT", path: id + "/", body: status("closed")},
		{name: "put, the current status (no-op)", method: "PUT", path: id, body: status("open")},
		{name: "put, If-Match current", method: "PUT", path: id, body: status("answered"), headers: []string{"If-Match", `"1"`}},
		{name: "put, If-Match weak", method: "PUT", path: id, body: status("answered"), headers: []string{"If-Match", `W/"1"`}},
		{name: "put, If-Match *", method: "PUT", path: id, body: status("answered"), headers: []string{"If-Match", `*`}},
		{name: "put, If-Match unquoted", method: "PUT", path: id, body: status("answered"), headers: []string{"If-Match", `1`}},
		{name: "put, If-Match two tags", method: "PUT", path: id, body: status("answered"), headers: []string{"If-Match", `"1", "2"`}},
		{name: "put, If-Match empty", method: "PUT", path: id, body: status("answered"), headers: []string{"If-Match", ``}, known: emptyHeader},
		{name: "put, unknown status", method: "PUT", path: id, body: status("resolved")},
		{name: "put, blank updated_by", method: "PUT", path: id, body: map[string]any{"status": "answered", "updated_by": "\u00a0"}},
		{name: "put, no updated_by", method: "PUT", path: id, body: map[string]any{"status": "answered"}},
		{name: "put, unknown field", method: "PUT", path: id, body: map[string]any{"status": "answered", "updated_by": "a", "note": "x"}},
		{name: "put, id not a UUID", method: "PUT", path: "/v1/ticket/42", body: status("answered")},

		// delete
		{name: "delete", method: "DELETE", path: id},
		{name: "delete with a trailing slash", method: "DELETE", path: id + "/"},
		{name: "delete, X-Actor", method: "DELETE", path: id, headers: []string{"X-Actor", "Администратор"}},
		{name: "delete, empty X-Actor", method: "DELETE", path: id, headers: []string{"X-Actor", ""}},
		{name: "delete, blank X-Actor", method: "DELETE", path: id, headers: []string{"X-Actor", "\u3164"}},
		{name: "delete, X-Actor too long", method: "DELETE", path: id, headers: []string{"X-Actor", strings.Repeat("a", 201)}},
		{name: "delete, If-Match current", method: "DELETE", path: id, headers: []string{"If-Match", `"1"`}},
		{name: "delete, If-Match junk", method: "DELETE", path: id, headers: []string{"If-Match", `v1`}},

		// comments
		{name: "comment", method: "POST", path: id + "/comments", body: comment()},
		{name: "comment with a trailing slash", method: "POST", path: id + "/comments/", body: comment()},
		{name: "comment, email", method: "POST", path: id + "/comments", body: comment("email", "admin@example.com")},
		{name: "comment, empty email", method: "POST", path: id + "/comments", body: comment("email", "")},
		{name: "comment, bad email", method: "POST", path: id + "/comments", body: comment("email", "admin")},
		{name: "comment, multi-line body", method: "POST", path: id + "/comments", body: comment("body", "a\n\nb\tc")},
		{name: "comment, blank body", method: "POST", path: id + "/comments", body: comment("body", "\n\t \u2800")},
		{name: "comment, body with a control character", method: "POST", path: id + "/comments", body: comment("body", "a\x1bb")},
		{name: "comment, body of 10001", method: "POST", path: id + "/comments", body: comment("body", strings.Repeat("b", 10001))},
		{name: "comment, If-Match current", method: "POST", path: id + "/comments", body: comment(), headers: []string{"If-Match", `"1"`}},
		{name: "comment, If-Match junk", method: "POST", path: id + "/comments", body: comment(), headers: []string{"If-Match", `"1`}},
		{name: "comment, Idempotency-Key", method: "POST", path: id + "/comments", body: comment(), headers: []string{"Idempotency-Key", "conformance-comment"}},
		{name: "comment, Idempotency-Key too long", method: "POST", path: id + "/comments", body: comment(), headers: []string{"Idempotency-Key", strings.Repeat("k", 300)}},
		{name: "comment, unknown field", method: "POST", path: id + "/comments", body: comment("text", "x")},
		{name: "list comments", method: "GET", path: id + "/comments"},
		{name: "list comments with a trailing slash", method: "GET", path: id + "/comments/?limit=1"},
		{name: "list comments HEAD", method: "HEAD", path: id + "/comments"},
		{name: "list comments HEAD with a trailing slash", method: "HEAD", path: id + "/comments/"},
		{name: "list comments limit 0", method: "GET", path: id + "/comments?limit=0"},

		// history
		{name: "history", method: "GET", path: id + "/history"},
		{name: "history with a trailing slash", method: "GET", path: id + "/history/?limit=1000"},
		{name: "history HEAD", method: "HEAD", path: id + "/history"},
		{name: "history HEAD with a trailing slash", method: "HEAD", path: id + "/history/"},
		{name: "history limit 1001", method: "GET", path: id + "/history?limit=1001"},

		// live events (a stream's body is not read: its status and headers)
		{name: "events", method: "GET", path: id + "/events"},
		{name: "events with a trailing slash", method: "GET", path: id + "/events/?after=1"},
		{name: "events HEAD", method: "HEAD", path: id + "/events"},
		{name: "events HEAD with a trailing slash", method: "HEAD", path: id + "/events/"},
		{name: "events, Last-Event-ID", method: "GET", path: id + "/events", headers: []string{"Last-Event-ID", "1"}},
		{name: "events, after -1", method: "GET", path: id + "/events?after=-1"},
		{name: "events, after not a number", method: "GET", path: id + "/events?after=one"},
		{name: "events, Last-Event-ID not a number", method: "GET", path: id + "/events", headers: []string{"Last-Event-ID", "v1"}},
		{name: "events, after beyond the stream", method: "GET", path: id + "/events?after=5", known: "how long a ticket's stream is, is state, not schema"},

		// tokens (admins; the harness sends the test admin token). {token} is a fresh
		// token's id of the case's own.
		{name: "create token", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "conformance bot", "role": "agent"}},
		{name: "create token with a trailing slash", method: "POST", path: "/v1/tokens/", body: map[string]any{"name": "conformance bot", "role": "auditor", "ttl": "1h30m"}},
		{name: "create requester token", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "Иван", "role": "requester", "email": "user@example.com", "ttl": "720h"}},
		{name: "create token, empty email", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "bot", "role": "admin", "email": ""}},
		{name: "create requester token without email", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "Иван", "role": "requester"}},
		{name: "create requester token, empty email", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "Иван", "role": "requester", "email": ""}},
		{name: "create token, unknown role", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "bot", "role": "root"}},
		{name: "create token, no name", method: "POST", path: "/v1/tokens", body: map[string]any{"role": "agent"}},
		{name: "create token, blank name", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "\u3164", "role": "agent"}},
		{name: "create token, name too long", method: "POST", path: "/v1/tokens", body: map[string]any{"name": long(201), "role": "agent"}},
		{name: "create token, malformed email", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "bot", "role": "agent", "email": "nobody"}},
		{name: "create token, ttl not a duration", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "bot", "role": "agent", "ttl": "30 days"}},
		{name: "create token, ttl a number", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "bot", "role": "agent", "ttl": 3600}},
		{name: "create token, ttl of zero", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "bot", "role": "agent", "ttl": "0h"}, known: "the schema cannot say a duration is positive"},
		{name: "create token, unknown field", method: "POST", path: "/v1/tokens", body: map[string]any{"name": "bot", "role": "agent", "scopes": "all"}},
		{name: "list tokens", method: "GET", path: "/v1/tokens"},
		{name: "list tokens with a trailing slash", method: "GET", path: "/v1/tokens/"},
		{name: "list tokens HEAD", method: "HEAD", path: "/v1/tokens"},
		{name: "list tokens HEAD with a trailing slash", method: "HEAD", path: "/v1/tokens/"},
		{name: "revoke token", method: "DELETE", path: "/v1/tokens/{token}"},
		{name: "revoke token with a trailing slash", method: "DELETE", path: "/v1/tokens/{token}/"},
		{name: "revoke token, not a UUID", method: "DELETE", path: "/v1/tokens/not-a-uuid"},
		{name: "PUT a token", method: "PUT", path: "/v1/tokens/{token}", body: map[string]any{"name": "bot"}},

		// webhooks (admins). {webhook} is a fresh endpoint of the case's own, {delivery}
		// a ping delivery of it.
		{name: "create webhook", method: "POST", path: "/v1/webhooks", body: map[string]any{"url": "https://hooks.example.com/ticketd", "events": []string{"*"}, "description": "conformance"}},
		{name: "create webhook with a trailing slash", method: "POST", path: "/v1/webhooks/", body: map[string]any{"url": "http://hooks.example.com/t", "events": []string{"ticket.opened", "ticket.deleted"}}},
		{name: "create webhook, unknown event", method: "POST", path: "/v1/webhooks", body: map[string]any{"url": "https://hooks.example.com/", "events": []string{"ticket.exploded"}}},
		{name: "create webhook, no events", method: "POST", path: "/v1/webhooks", body: map[string]any{"url": "https://hooks.example.com/", "events": []string{}}},
		{name: "create webhook, ftp", method: "POST", path: "/v1/webhooks", body: map[string]any{"url": "ftp://hooks.example.com/", "events": []string{"*"}}},
		{name: "create webhook, no url", method: "POST", path: "/v1/webhooks", body: map[string]any{"events": []string{"*"}}},
		{name: "create webhook, unknown field", method: "POST", path: "/v1/webhooks", body: map[string]any{"url": "https://hooks.example.com/", "events": []string{"*"}, "secret": "x"}},
		{name: "create webhook, loopback", method: "POST", path: "/v1/webhooks", body: map[string]any{"url": "http://127.0.0.1/", "events": []string{"*"}}, known: "the schema cannot say which addresses are internal"},
		{name: "create webhook, star and a type", method: "POST", path: "/v1/webhooks", body: map[string]any{"url": "https://hooks.example.com/", "events": []string{"*", "ticket.opened"}}, known: "the schema cannot say that * stands alone"},
		{name: "list webhooks", method: "GET", path: "/v1/webhooks"},
		{name: "list webhooks with a trailing slash", method: "GET", path: "/v1/webhooks/"},
		{name: "list webhooks HEAD", method: "HEAD", path: "/v1/webhooks"},
		{name: "list webhooks HEAD with a trailing slash", method: "HEAD", path: "/v1/webhooks/"},
		{name: "get webhook", method: "GET", path: "/v1/webhooks/{webhook}"},
		{name: "get webhook with a trailing slash", method: "GET", path: "/v1/webhooks/{webhook}/"},
		{name: "get webhook HEAD", method: "HEAD", path: "/v1/webhooks/{webhook}"},
		{name: "get webhook HEAD with a trailing slash", method: "HEAD", path: "/v1/webhooks/{webhook}/"},
		{name: "get webhook, not a UUID", method: "GET", path: "/v1/webhooks/not-a-uuid"},
		{name: "patch webhook", method: "PATCH", path: "/v1/webhooks/{webhook}", body: map[string]any{"enabled": false, "description": "off"}},
		{name: "patch webhook with a trailing slash", method: "PATCH", path: "/v1/webhooks/{webhook}/", body: map[string]any{"events": []string{"ticket.status_changed"}}},
		{name: "patch webhook, unknown field", method: "PATCH", path: "/v1/webhooks/{webhook}", body: map[string]any{"active": true}},
		{name: "patch webhook, enabled a string", method: "PATCH", path: "/v1/webhooks/{webhook}", body: map[string]any{"enabled": "yes"}},
		{name: "delete webhook", method: "DELETE", path: "/v1/webhooks/{webhook}"},
		{name: "delete webhook with a trailing slash", method: "DELETE", path: "/v1/webhooks/{webhook}/"},
		{name: "ping webhook", method: "POST", path: "/v1/webhooks/{webhook}/ping"},
		{name: "ping webhook with a trailing slash", method: "POST", path: "/v1/webhooks/{webhook}/ping/"},
		{name: "rotate secret", method: "POST", path: "/v1/webhooks/{webhook}/rotate-secret"},
		{name: "rotate secret with a trailing slash", method: "POST", path: "/v1/webhooks/{webhook}/rotate-secret/", body: map[string]any{"grace": "1h"}},
		{name: "rotate secret, grace not a duration", method: "POST", path: "/v1/webhooks/{webhook}/rotate-secret", body: map[string]any{"grace": "a day"}},
		{name: "deliveries", method: "GET", path: "/v1/webhooks/{webhook}/deliveries"},
		{name: "deliveries with a trailing slash", method: "GET", path: "/v1/webhooks/{webhook}/deliveries/?status=pending&limit=5"},
		{name: "deliveries HEAD", method: "HEAD", path: "/v1/webhooks/{webhook}/deliveries"},
		{name: "deliveries HEAD with a trailing slash", method: "HEAD", path: "/v1/webhooks/{webhook}/deliveries/"},
		{name: "deliveries, unknown status", method: "GET", path: "/v1/webhooks/{webhook}/deliveries?status=lost"},
		{name: "deliveries, limit 0", method: "GET", path: "/v1/webhooks/{webhook}/deliveries?limit=0"},
		{name: "redeliver", method: "POST", path: "/v1/webhooks/{webhook}/deliveries/{delivery}/redeliver"},
		{name: "redeliver with a trailing slash", method: "POST", path: "/v1/webhooks/{webhook}/deliveries/{delivery}/redeliver/"},
		{name: "redeliver, not a UUID", method: "POST", path: "/v1/webhooks/{webhook}/deliveries/nope/redeliver"},

		// erasure (admins). {subject} is the email of a fresh ticket of the case's own.
		{name: "erase subject", method: "DELETE", path: "/v1/subjects/{subject}?reason=conformance"},
		{name: "erase subject with a trailing slash", method: "DELETE", path: "/v1/subjects/{subject}/"},
		{name: "erase subject, not an email", method: "DELETE", path: "/v1/subjects/not-an-email", known: "the schema's email format is looser than the server's check"},

		// operations
		{name: "healthz", method: "GET", path: "/healthz"},
		{name: "healthz with a trailing slash", method: "GET", path: "/healthz/"},
		{name: "healthz HEAD", method: "HEAD", path: "/healthz"},
		{name: "healthz HEAD with a trailing slash", method: "HEAD", path: "/healthz/"},
		{name: "readyz", method: "GET", path: "/readyz"},
		{name: "readyz with a trailing slash", method: "GET", path: "/readyz/"},
		{name: "readyz HEAD", method: "HEAD", path: "/readyz"},
		{name: "readyz HEAD with a trailing slash", method: "HEAD", path: "/readyz/"},
		{name: "metrics", method: "GET", path: "/metrics"},
		{name: "metrics with a trailing slash", method: "GET", path: "/metrics/"},
		{name: "metrics HEAD", method: "HEAD", path: "/metrics"},
		{name: "metrics HEAD with a trailing slash", method: "HEAD", path: "/metrics/"},
		{name: "the document", method: "GET", path: "/api/openapi.json"},
		{name: "the document with a trailing slash", method: "GET", path: "/api/openapi.json/"},
		{name: "the document HEAD", method: "HEAD", path: "/api/openapi.json"},
		{name: "the document HEAD with a trailing slash", method: "HEAD", path: "/api/openapi.json/"},

		// what is not an operation
		{name: "unknown path", method: "GET", path: "/v1/tickets"},
		{name: "unknown sub-path", method: "GET", path: id + "/watchers"},
		{name: "PATCH a ticket", method: "PATCH", path: id, body: status("closed")},
		{name: "DELETE the list", method: "DELETE", path: "/v1/ticket/"},
		{name: "POST healthz", method: "POST", path: "/healthz", body: map[string]any{}},
	}

	covered := map[string]bool{}
	for _, c := range cases {
		path := c.path
		if strings.Contains(path, "{id}") {
			var created ticketDoc
			s.do(t, "POST", "/v1/ticket/", sourceTicket).expect(t, 201).JSON(t, &created)
			path = strings.ReplaceAll(path, "{id}", created.ID)
		}
		if strings.Contains(path, "{subject}") {
			email := "subject-" + strings.ReplaceAll(uuid.NewString(), "-", "") + "@example.com"
			s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "t", "description": "d", "email": email, "created_by": "c"}).expect(t, 201)
			path = strings.ReplaceAll(path, "{subject}", url.PathEscape(email))
		}
		if strings.Contains(path, "{token}") {
			var created struct{ ID string }
			s.do(t, "POST", "/v1/tokens", map[string]any{"name": "conformance", "role": "agent"}).expect(t, 201).JSON(t, &created)
			path = strings.ReplaceAll(path, "{token}", created.ID)
		}
		if strings.Contains(path, "{webhook}") {
			var created struct{ ID string }
			s.do(t, "POST", "/v1/webhooks", map[string]any{"url": "https://hooks.example.com/conformance", "events": []string{"*"}}).expect(t, 201).JSON(t, &created)
			path = strings.ReplaceAll(path, "{webhook}", created.ID)
			if strings.Contains(path, "{delivery}") {
				var ping struct{ ID string }
				s.do(t, "POST", "/v1/webhooks/"+created.ID+"/ping", nil).expect(t, 202).JSON(t, &ping)
				path = strings.ReplaceAll(path, "{delivery}", ping.ID)
			}
		}
		req := conformanceRequest(t, s.URL, c.method, path, c.body, c.headers)
		specOK, verrs := v.ValidateHttpRequest(req)
		r, err := s.tryDo(c.method, path, c.body, c.headers...)
		if err != nil {
			t.Fatalf("%s: %s %s: %v", c.name, c.method, path, err)
		}
		serverOK := r.Status < 400
		var why []string
		for _, e := range verrs {
			why = append(why, e.Message+": "+e.Reason)
			for _, f := range e.SchemaValidationErrors {
				why = append(why, "  at "+f.FieldPath+": "+f.Reason)
			}
		}
		switch {
		case c.known != "" && specOK && !serverOK:
			// as documented: the schema cannot say it
		case c.known != "":
			t.Errorf("%s: listed as a rule the schema cannot say (%s), but the document accepts: %v and the server answers %d; drop it from the known list",
				c.name, c.known, specOK, r.Status)
		case specOK != serverOK:
			t.Errorf("%s: %s %s: the document %s it, the server answers %d\n  validator: %s\n  server: %s",
				c.name, c.method, path, verdict(specOK), r.Status, strings.Join(why, "\n    "), r.Body)
		}
		if specOK && serverOK {
			covered[c.method+" "+templatePath(path)] = true
		}
	}

	// every operation of the document was seen accepted by both
	m, err := doc.BuildV3Model()
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for p, item := range m.Model.Paths.PathItems.FromOldest() {
		for method := range item.GetOperations().KeysFromOldest() {
			if op := strings.ToUpper(method) + " " + p; !covered[op] {
				missing = append(missing, op)
			}
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("operations no valid request of the table reached: %v", missing)
	}
}

func verdict(ok bool) string {
	if ok {
		return "accepts"
	}
	return "refuses"
}

// templatePath turns a request path into its document path: the ticket or token id
// becomes {id}, the query goes.
func templatePath(path string) string {
	path, _, _ = strings.Cut(path, "?")
	segs := strings.Split(path, "/")
	if len(segs) > 3 && segs[1] == "v1" && (segs[2] == "ticket" || segs[2] == "tokens" || segs[2] == "webhooks") && len(segs[3]) == 36 {
		segs[3] = "{id}"
	}
	if len(segs) > 3 && segs[1] == "v1" && segs[2] == "subjects" && segs[3] != "" {
		segs[3] = "{email}"
	}
	if len(segs) > 5 && segs[2] == "webhooks" && segs[4] == "deliveries" && len(segs[5]) == 36 {
		segs[5] = "{delivery}"
	}
	return strings.Join(segs, "/")
}

// conformanceRequest builds the request the validator checks: the one tryDo sends.
func conformanceRequest(t *testing.T, base, method, path string, body any, headers []string) *http.Request {
	t.Helper()
	var raw []byte
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequest(method, base+path, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return authorize(req)
}
