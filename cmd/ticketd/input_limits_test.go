package main

import (
	"strings"
	"testing"
)

// TestInputLimits sends the inputs of issue 12 that were accepted or failed with a 500:
// text over a field's byte limit though under its character limit, titles and names
// made only of invisible fillers, lone UTF-16 surrogate escapes, and numeric query
// values beyond what Postgres takes. Each is a 422 problem naming the field or
// parameter, and none stores anything.
func TestInputLimits(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	d := createTicket(t, s, sourceTicket)
	tk := "/v1/ticket/" + d.ID
	before := s.eventCount(t)

	const json = "Content-Type: application/json"
	emoji := func(n int) string { return strings.Repeat("😀", n) }
	create := func(title, createdBy string) string {
		return `{"title":"` + title + `","email":"u@example.com","created_by":"` + createdBy + `"}`
	}
	cases := []struct {
		name  string
		req   string
		field string
	}{
		// bytes: 151 emoji are 151 characters (limit 200) but 604 bytes (limit 600)
		{"title_over_600_bytes", rawRequest("POST", "/v1/ticket/", create(emoji(151), "u"), json), "title"},
		{"created_by_over_600_bytes", rawRequest("POST", "/v1/ticket/", create("a", emoji(151)), json), "created_by"},
		{"description_over_20000_bytes", rawRequest("POST", "/v1/ticket/", `{"title":"a","description":"`+emoji(5001)+`","email":"u@example.com","created_by":"u"}`, json), "description"},
		{"comment_over_20000_bytes", rawRequest("POST", tk+"/comments", `{"body":"`+emoji(5001)+`","created_by":"u"}`, json), "body"},
		{"comment_of_10000_emoji", rawRequest("POST", tk+"/comments", `{"body":"`+emoji(10_000)+`","created_by":"u"}`, json), "body"},
		{"updated_by_over_600_bytes", rawRequest("PUT", tk, `{"status":"answered","updated_by":"`+emoji(151)+`"}`, json), "updated_by"},
		{"actor_over_600_bytes", rawRequest("DELETE", tk, "", "X-Actor: "+emoji(151)), "deleted_by"},
		// invisible fillers as the whole value
		{"hangul_filler_title", rawRequest("POST", "/v1/ticket/", create(`\u3164`, "u"), json), "title"},
		{"braille_blank_title", rawRequest("POST", "/v1/ticket/", create("\u2800\u2800", "u"), json), "title"},
		{"grapheme_joiner_title", rawRequest("POST", "/v1/ticket/", create(`\u034f`, "u"), json), "title"},
		{"halfwidth_hangul_filler_name", rawRequest("POST", "/v1/ticket/", create("a", `\uffa0`), json), "created_by"},
		{"choseong_filler_name", rawRequest("POST", "/v1/ticket/", create("a", " \u115f "), json), "created_by"},
		{"filler_comment", rawRequest("POST", tk+"/comments", `{"body":"\u3164\n\u2800","created_by":"u"}`, json), "body"},
		{"filler_updated_by", rawRequest("PUT", tk, `{"status":"answered","updated_by":"\u1160"}`, json), "updated_by"},
		{"filler_actor", rawRequest("DELETE", tk, "", "X-Actor: \u3164"), "deleted_by"},
		// lone surrogates
		{"lone_high_surrogate_title", rawRequest("POST", "/v1/ticket/", create(`\ud800`, "u"), json), "title"},
		{"lone_low_surrogate_name", rawRequest("POST", "/v1/ticket/", create("a", `x\udc00`), json), "created_by"},
		{"reversed_pair_comment", rawRequest("POST", tk+"/comments", `{"body":"\ude00\ud83d","created_by":"u"}`, json), "body"},
		{"lone_surrogate_with_idempotency_key", rawRequest("POST", "/v1/ticket/", create("a", `\ud800`), json, "Idempotency-Key: input-limits-1"), "created_by"},
		{"lone_surrogate_updated_by", rawRequest("PUT", tk, `{"status":"answered","updated_by":"\ud83d"}`, json), "updated_by"},
		// numeric query values
		{"version_beyond_int4", rawRequest("GET", tk+"?version=2147483648", ""), "version"},
		{"version_beyond_int64", rawRequest("GET", tk+"?version=99999999999999999999", ""), "version"},
		{"version_negative", rawRequest("GET", tk+"?version=-1", ""), "version"},
		{"version_signed", rawRequest("GET", tk+"?version=+1", ""), "version"},
		{"version_beyond_head", rawRequest("GET", tk+"?version=2147483647", ""), "version"},
		{"history_limit_beyond_int4", rawRequest("GET", tk+"/history?limit=2147483648", ""), "limit"},
		{"history_limit_over_max", rawRequest("GET", tk+"/history?limit=1001", ""), "limit"},
		{"comments_limit_beyond_int64", rawRequest("GET", tk+"/comments?limit=99999999999999999999", ""), "limit"},
		{"list_limit_beyond_int4", rawRequest("GET", "/v1/ticket/?limit=2147483648", ""), "limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := problemCode(t, s.raw(t, c.req), 422, "validation-failed")
			assertField(t, p, c.field)
		})
	}

	t.Run("nothing_was_stored", func(t *testing.T) {
		if n := s.eventCount(t); n != before {
			t.Fatalf("the refused requests stored %d events", n-before)
		}
		var keys int
		s.dbQuery(t, "SELECT count(*) FROM idempotency_keys", nil, &keys)
		if keys != 0 {
			t.Fatalf("the refused requests stored %d idempotency keys", keys)
		}
		if got := getTicket(t, s, d.ID); got.Version != 1 || got.Status != "open" {
			t.Fatalf("the ticket changed: %+v", got)
		}
	})

	t.Run("text_at_the_limits_is_accepted_as_sent", func(t *testing.T) {
		title := emoji(150) // 600 bytes
		body := `{"title":"` + title + `","description":"` + strings.Repeat("я", 10_000) + `","email":"u@example.com","created_by":"\ud83d\ude00 \u3164x"}`
		r := s.raw(t, rawRequest("POST", "/v1/ticket/", body, json))
		var got ticketDoc
		r.expect(t, 201).JSON(t, &got)
		if got.Title != title || got.CreatedBy != "😀 \u3164x" {
			t.Fatalf("stored title %q, created_by %q", got.Title, got.CreatedBy)
		}
		r = s.raw(t, rawRequest("POST", tk+"/comments", `{"body":"`+emoji(5000)+`","created_by":"u"}`, json))
		r.expect(t, 201)
		s.raw(t, rawRequest("GET", tk+"?version=1", "")).expect(t, 200)
	})
}
