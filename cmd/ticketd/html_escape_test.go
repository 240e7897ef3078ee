package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestNoHTMLEscaping: text with <, > and & is kept as written in every copy ticketd
// makes of it (issue 12: HTML escaping turned a 10,476-byte create into 63,875 bytes in
// the response, the Redis document, the idempotency row and the outbox row): the
// responses, the stored answer of a keyed command, the outbox message and the Redis
// document hold the text byte for byte, and no \u003c, \u003e or \u0026 anywhere.
func TestNoHTMLEscaping(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	m := openReadModels(t, s.Env)

	const title = `<b>Tom & Jerry</b>`
	description := strings.Repeat(`<p>a&b</p>`, 1000) // 10,000 bytes; escaped: 40,000
	const body = `<script>alert("x")</script> & more`
	created := s.do(t, "POST", "/v1/ticket/", map[string]any{
		"title": title, "description": description, "email": "u@example.com", "created_by": "<Tom>",
	}, "Idempotency-Key", "html-escape-1").expect(t, 201)
	var d ticketDoc
	created.JSON(t, &d)
	tk := "/v1/ticket/" + d.ID
	s.do(t, "POST", tk+"/comments", map[string]any{"body": body, "created_by": "<Jerry>"}).expect(t, 201)

	unescaped := func(what string, b []byte) {
		t.Helper()
		for _, esc := range []string{`\u003c`, `\u003e`, `\u0026`} {
			if strings.Contains(string(b), esc) {
				t.Errorf("%s holds %s: %.200s", what, esc, b)
			}
		}
		if !strings.Contains(string(b), title) {
			t.Errorf("%s does not hold the title as written: %.200s", what, b)
		}
	}
	unescaped("create response", created.Body)
	if len(created.Body) > len(description)+1000 {
		t.Errorf("create response is %d bytes for a %d-byte description", len(created.Body), len(description))
	}
	eventually(t, 10*time.Second, "the list shows the ticket", func() bool {
		return strings.Contains(string(s.do(t, "GET", "/v1/ticket/?limit=5", nil).Body), d.ID)
	})
	for _, path := range []string{tk, "/v1/ticket/?limit=5", tk + "/history", tk + "?version=1"} {
		unescaped("GET "+path, s.do(t, "GET", path, nil).expect(t, 200).Body)
	}
	comments := s.do(t, "GET", tk+"/comments", nil).expect(t, 200).Body
	if !strings.Contains(string(comments), `<script>alert(\"x\")</script> & more`) {
		t.Errorf("comments page does not hold the body as written: %s", comments)
	}

	var answer []byte
	s.dbQuery(t, "SELECT answer FROM idempotency_keys WHERE key = 'html-escape-1'", nil, &answer)
	unescaped("stored answer", answer)
	var payload string
	s.dbQuery(t, "SELECT payload::text FROM watermill_ticket_events WHERE payload->>'stream_id' = $1 AND (payload->>'version')::int = 1", []any{d.ID}, &payload)
	unescaped("outbox message", []byte(payload))

	id := uuid.MustParse(d.ID)
	eventually(t, 10*time.Second, "the Redis document at version 2", func() bool {
		_, v, found, err := m.docs.Get(context.Background(), id)
		return err == nil && found && v == 2
	})
	doc, _, _, err := m.docs.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	unescaped("Redis document", doc)
}
