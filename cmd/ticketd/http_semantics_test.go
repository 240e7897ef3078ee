package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
)

// dbQuery runs a one-row query against the test server's database.
func (s *testServer) dbQuery(t testing.TB, sql string, args []any, dst ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN)
	if err != nil {
		t.Fatalf("connect to the test database: %v", err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, sql, args...).Scan(dst...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// eventCount is the number of events in the server's store.
func (s *testServer) eventCount(t testing.TB) int {
	t.Helper()
	var n int
	s.dbQuery(t, "SELECT count(*) FROM events", nil, &n)
	return n
}

// noInternals fails if an error answer carries SQL, driver or Go internals.
func noInternals(t testing.TB, r response) {
	t.Helper()
	if r.Status < 400 {
		return
	}
	for _, leak := range []string{"SQLSTATE", "pgx", "json:", "runtime", "goroutine", ".go:", "panic"} {
		if bytes.Contains(r.Body, []byte(leak)) {
			t.Fatalf("%d body leaks %q: %s", r.Status, leak, r.Body)
		}
	}
}

// problemCode checks a problem answer's status, content type and code.
func problemCode(t testing.TB, r response, status int, code string) map[string]any {
	t.Helper()
	r.expect(t, status)
	noInternals(t, r)
	p := r.problem(t)
	if p["code"] != code {
		t.Fatalf("problem code %v, want %q: %v", p["code"], code, p)
	}
	return p
}

func TestConditionalRequests(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	comment := map[string]any{"body": "hi", "created_by": "u"}

	t.Run("etag_is_the_version_on_every_ticket_response", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		if et := s.do(t, "GET", "/v1/ticket/"+d.ID, nil).expect(t, 200).Header.Get("ETag"); et != `"1"` {
			t.Fatalf("GET ETag %q", et)
		}
		if et := s.do(t, "PUT", "/v1/ticket/"+d.ID, map[string]any{"status": "answered", "updated_by": "a"}).expect(t, 200).Header.Get("ETag"); et != `"2"` {
			t.Fatalf("PUT ETag %q", et)
		}
		if et := s.do(t, "POST", "/v1/ticket/"+d.ID+"/comments", comment).expect(t, 201).Header.Get("ETag"); et != `"3"` {
			t.Fatalf("comment ETag %q", et)
		}
		if et := s.do(t, "GET", "/v1/ticket/"+d.ID, nil).expect(t, 200).Header.Get("ETag"); et != `"3"` {
			t.Fatalf("GET after writes ETag %q", et)
		}
	})

	t.Run("if_none_match_answers_304_without_body", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		for _, inm := range []string{`"1"`, `W/"1"`, `"7", "1"`, `*`} {
			r := s.do(t, "GET", "/v1/ticket/"+d.ID, nil, "If-None-Match", inm).expect(t, 304)
			if len(r.Body) != 0 || r.Header.Get("ETag") != `"1"` {
				t.Fatalf("If-None-Match %s: 304 with body %q, ETag %q", inm, r.Body, r.Header.Get("ETag"))
			}
		}
		s.do(t, "GET", "/v1/ticket/"+d.ID, nil, "If-None-Match", `"2"`).expect(t, 200)
		s.do(t, "GET", "/v1/ticket/"+d.ID, nil, "If-None-Match", `garbage`).expect(t, 200)
		s.do(t, "PUT", "/v1/ticket/"+d.ID, map[string]any{"status": "closed", "updated_by": "a"}).expect(t, 200)
		s.do(t, "GET", "/v1/ticket/"+d.ID, nil, "If-None-Match", `"1"`).expect(t, 200)
	})

	t.Run("stale_if_match_is_412_and_changes_nothing", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		s.do(t, "PUT", "/v1/ticket/"+d.ID, map[string]any{"status": "answered", "updated_by": "a"}, "If-Match", `"1"`).expect(t, 200)

		p := problemCode(t, s.do(t, "PUT", "/v1/ticket/"+d.ID, map[string]any{"status": "closed", "updated_by": "a"}, "If-Match", `"1"`), 412, "precondition-failed")
		if p["current_version"] != float64(2) {
			t.Fatalf("412 names current_version %v, want 2", p["current_version"])
		}
		problemCode(t, s.do(t, "POST", "/v1/ticket/"+d.ID+"/comments", comment, "If-Match", `W/"1"`), 412, "precondition-failed")
		problemCode(t, s.do(t, "DELETE", "/v1/ticket/"+d.ID, nil, "If-Match", `"1"`), 412, "precondition-failed")
		if got := getTicket(t, s, d.ID); got.Version != 2 || got.Status != "answered" || len(got.Comments) != 0 {
			t.Fatalf("a stale If-Match changed the ticket: %+v", got)
		}

		s.do(t, "POST", "/v1/ticket/"+d.ID+"/comments", comment, "If-Match", `"2"`).expect(t, 201)
		s.do(t, "PUT", "/v1/ticket/"+d.ID, map[string]any{"status": "closed", "updated_by": "a"}, "If-Match", `*`).expect(t, 200)
		s.do(t, "DELETE", "/v1/ticket/"+d.ID, nil, "If-Match", `"4"`).expect(t, 204)
		// a deleted ticket is 404, whatever the precondition
		problemCode(t, s.do(t, "DELETE", "/v1/ticket/"+d.ID, nil, "If-Match", `"4"`), 404, "ticket-not-found")
	})

	t.Run("malformed_if_match_is_422_naming_the_header", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		for _, im := range []string{`1`, `"x"`, `"0"`, `"1", "2"`, `W/1`, `"99999999999"`, ``} {
			p := problemCode(t, s.do(t, "PUT", "/v1/ticket/"+d.ID, map[string]any{"status": "closed", "updated_by": "a"}, "If-Match", im), 422, "validation-failed")
			assertField(t, p, "If-Match")
		}
		assertField(t, problemCode(t, s.do(t, "DELETE", "/v1/ticket/"+d.ID, nil, "If-Match", "abc"), 422, "validation-failed"), "If-Match")
		assertField(t, problemCode(t, s.do(t, "POST", "/v1/ticket/"+d.ID+"/comments", comment, "If-Match", "abc"), 422, "validation-failed"), "If-Match")
		if got := getTicket(t, s, d.ID); got.Version != 1 {
			t.Fatalf("a malformed If-Match changed the ticket: %+v", got)
		}
	})

	t.Run("racing_writers_with_one_if_match_one_wins", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		statuses := make([]int, 12)
		var wg sync.WaitGroup
		for i := range statuses {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := s.do(t, "POST", "/v1/ticket/"+d.ID+"/comments", map[string]any{"body": fmt.Sprint("c", i), "created_by": "u"}, "If-Match", `"1"`)
				noInternals(t, r)
				statuses[i] = r.Status
			}()
		}
		wg.Wait()
		won := 0
		for _, st := range statuses {
			switch st {
			case 201:
				won++
			case 412:
			default:
				t.Fatalf("racing comment answered %d", st)
			}
		}
		if got := getTicket(t, s, d.ID); won != 1 || got.Version != 2 || len(got.Comments) != 1 {
			t.Fatalf("%d writers won with If-Match \"1\"; ticket at version %d with %d comments", won, got.Version, len(got.Comments))
		}
	})
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	key := func(name string) string { return name + "-" + fmt.Sprint(time.Now().UnixNano()) }

	t.Run("retry_returns_the_first_response_and_stores_nothing", func(t *testing.T) {
		k := key("create")
		before := s.eventCount(t)
		first := s.do(t, "POST", "/v1/ticket/", sourceTicket, "Idempotency-Key", k).expect(t, 201)
		// the same request, spelled differently: other key order and spacing
		again := s.do(t, "POST", "/v1/ticket/", `{ "status":"open", "created_by":"Иван Иванов", "email":"user@example.com",
			"description":"Не могу подключиться к серверу", "title":"Проблема с подключением" }`, "Idempotency-Key", k).expect(t, 201)
		if !bytes.Equal(first.Body, again.Body) {
			t.Fatalf("replayed body differs:\n%s\n%s", first.Body, again.Body)
		}
		for _, h := range []string{"Location", "ETag", "Content-Type"} {
			if first.Header.Get(h) != again.Header.Get(h) {
				t.Fatalf("replayed %s %q, first %q", h, again.Header.Get(h), first.Header.Get(h))
			}
		}
		if again.Header.Get("Idempotent-Replayed") != "true" || first.Header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("Idempotent-Replayed: first %q, retry %q", first.Header.Get("Idempotent-Replayed"), again.Header.Get("Idempotent-Replayed"))
		}
		if n := s.eventCount(t); n != before+1 {
			t.Fatalf("%d events appended for one keyed create and its retry", n-before)
		}
		var recorded string
		s.dbQuery(t, "SELECT metadata->>'idempotency_key' FROM events ORDER BY position DESC LIMIT 1", nil, &recorded)
		if recorded != k {
			t.Fatalf("event metadata records key %q, want %q", recorded, k)
		}
	})

	t.Run("same_key_other_body_is_422", func(t *testing.T) {
		k := key("reuse")
		s.do(t, "POST", "/v1/ticket/", sourceTicket, "Idempotency-Key", k).expect(t, 201)
		other := map[string]any{"title": "other", "email": "u@example.com", "created_by": "u"}
		before := s.eventCount(t)
		p := problemCode(t, s.do(t, "POST", "/v1/ticket/", other, "Idempotency-Key", k), 422, "idempotency-key-reused")
		assertField(t, p, "Idempotency-Key")
		if n := s.eventCount(t); n != before {
			t.Fatalf("a reused key stored %d events", n-before)
		}
	})

	t.Run("a_refused_request_stores_nothing_under_its_key", func(t *testing.T) {
		k := key("refused")
		problemCode(t, s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "x"}, "Idempotency-Key", k), 422, "validation-failed")
		r := s.do(t, "POST", "/v1/ticket/", sourceTicket, "Idempotency-Key", k).expect(t, 201)
		if r.Header.Get("Idempotent-Replayed") != "" {
			t.Fatal("the first successful request under a key was marked replayed")
		}
	})

	t.Run("comment_keys_are_scoped_by_ticket", func(t *testing.T) {
		a, b := createTicket(t, s, sourceTicket), createTicket(t, s, sourceTicket)
		k := key("comment")
		c := map[string]any{"body": "once", "created_by": "u"}
		ra := s.do(t, "POST", "/v1/ticket/"+a.ID+"/comments", c, "Idempotency-Key", k).expect(t, 201)
		ra2 := s.do(t, "POST", "/v1/ticket/"+a.ID+"/comments", c, "Idempotency-Key", k).expect(t, 201)
		rb := s.do(t, "POST", "/v1/ticket/"+b.ID+"/comments", c, "Idempotency-Key", k).expect(t, 201)
		if !bytes.Equal(ra.Body, ra2.Body) || ra2.Header.Get("ETag") != `"2"` {
			t.Fatalf("comment retry: %s / %s, ETag %q", ra.Body, ra2.Body, ra2.Header.Get("ETag"))
		}
		if bytes.Equal(ra.Body, rb.Body) || rb.Header.Get("Idempotent-Replayed") != "" {
			t.Fatal("the same key on another ticket's comments replayed the first ticket's comment")
		}
		if got := getTicket(t, s, a.ID); len(got.Comments) != 1 {
			t.Fatalf("ticket a has %d comments after a keyed retry", len(got.Comments))
		}
		// the key is the same across routes too: a create with it is its own request
		s.do(t, "POST", "/v1/ticket/", sourceTicket, "Idempotency-Key", k).expect(t, 201)
	})

	t.Run("a_replay_wins_over_a_since_stale_if_match", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		k := key("ifmatch")
		c := map[string]any{"body": "once", "created_by": "u"}
		first := s.do(t, "POST", "/v1/ticket/"+d.ID+"/comments", c, "Idempotency-Key", k, "If-Match", `"1"`).expect(t, 201)
		again := s.do(t, "POST", "/v1/ticket/"+d.ID+"/comments", c, "Idempotency-Key", k, "If-Match", `"1"`).expect(t, 201)
		if !bytes.Equal(first.Body, again.Body) {
			t.Fatal("retry of a keyed comment with If-Match did not replay")
		}
	})

	t.Run("bad_keys_are_422_naming_the_header", func(t *testing.T) {
		before := s.eventCount(t)
		for _, k := range []string{"", strings.Repeat("k", 256), "ключ", "tab\there"} {
			p := problemCode(t, s.do(t, "POST", "/v1/ticket/", sourceTicket, "Idempotency-Key", k), 422, "validation-failed")
			assertField(t, p, "Idempotency-Key")
		}
		s.do(t, "POST", "/v1/ticket/", sourceTicket, "Idempotency-Key", strings.Repeat("k", 255)).expect(t, 201)
		if n := s.eventCount(t); n != before+1 {
			t.Fatalf("bad keys stored %d events", n-before-1)
		}
	})
}

// TestIdempotencyKeyRaces sends identical keyed requests at once: exactly one runs,
// all answer the same.
func TestIdempotencyKeyRaces(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	race := func(t *testing.T, path string, body any, k string) []response {
		t.Helper()
		out := make([]response, 16)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range out {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				out[i] = s.do(t, "POST", path, body, "Idempotency-Key", k)
			}()
		}
		close(start)
		wg.Wait()
		for i, r := range out {
			r.expect(t, 201)
			if !bytes.Equal(r.Body, out[0].Body) || r.Header.Get("Location") != out[0].Header.Get("Location") || r.Header.Get("ETag") != out[0].Header.Get("ETag") {
				t.Fatalf("response %d differs:\n%s %v\n%s %v", i, r.Body, r.Header, out[0].Body, out[0].Header)
			}
		}
		return out
	}

	t.Run("16_identical_creates_make_one_ticket", func(t *testing.T) {
		out := race(t, "/v1/ticket/", sourceTicket, "race-create")
		var streams, events, keys int
		s.dbQuery(t, "SELECT count(DISTINCT stream_id), count(*) FROM events WHERE metadata->>'idempotency_key' = 'race-create'", nil, &streams, &events)
		s.dbQuery(t, "SELECT count(*) FROM idempotency_keys WHERE key = 'race-create'", nil, &keys)
		if streams != 1 || events != 1 || keys != 1 {
			t.Fatalf("16 racing creates stored %d tickets, %d events, %d keys", streams, events, keys)
		}
		var id string
		s.dbQuery(t, "SELECT stream_id::text FROM events WHERE metadata->>'idempotency_key' = 'race-create'", nil, &id)
		if out[0].Header.Get("Location") != "/v1/ticket/"+id {
			t.Fatalf("answered %s, stored %s", out[0].Header.Get("Location"), id)
		}
		// positions of rolled-back appends are never reused: the gap counts the attempts
		// that lost the race for the key after appending (only this subtest wrote yet)
		var lost int
		s.dbQuery(t, "SELECT pg_sequence_last_value(pg_get_serial_sequence('events', 'position')) - count(*) FROM events", nil, &lost)
		t.Logf("%d of 16 racing creates appended, lost the key and rolled back", lost)
		// the outbox carries exactly the one event too
		var outbox int
		s.dbQuery(t, "SELECT count(*) FROM watermill_ticket_events WHERE payload->>'stream_id' = $1", []any{id}, &outbox)
		if outbox != 1 {
			t.Fatalf("outbox holds %d messages for the ticket", outbox)
		}
	})

	t.Run("16_identical_comments_make_one_comment", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		race(t, "/v1/ticket/"+d.ID+"/comments", map[string]any{"body": "once", "created_by": "u"}, "race-comment")
		if got := getTicket(t, s, d.ID); got.Version != 2 || len(got.Comments) != 1 {
			t.Fatalf("16 racing comments left version %d with %d comments", got.Version, len(got.Comments))
		}
	})
}

func TestIdempotencyKeyExpires(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"IDEMPOTENCY_TTL": "1s"})
	var first, second ticketDoc
	s.do(t, "POST", "/v1/ticket/", sourceTicket, "Idempotency-Key", "short-lived").expect(t, 201).JSON(t, &first)
	time.Sleep(1100 * time.Millisecond)
	r := s.do(t, "POST", "/v1/ticket/", sourceTicket, "Idempotency-Key", "short-lived").expect(t, 201)
	r.JSON(t, &second)
	if second.ID == first.ID || r.Header.Get("Idempotent-Replayed") != "" {
		t.Fatal("an expired key still replayed its response")
	}
	var keys int
	s.dbQuery(t, "SELECT count(*) FROM idempotency_keys WHERE key = 'short-lived'", nil, &keys)
	if keys != 1 {
		t.Fatalf("%d rows for one key after it was taken over", keys)
	}

	// expired rows are purged
	ctx := context.Background()
	pool, err := db.Open(ctx, s.DSN, db.PoolConfig{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	time.Sleep(1100 * time.Millisecond)
	n, err := eventstore.New(pool, dbtest.Keyring(t, pool)).PurgeIdempotencyKeys(ctx, time.Second)
	if err != nil || n < 1 {
		t.Fatalf("purge deleted %d rows, err %v", n, err)
	}
	s.dbQuery(t, "SELECT count(*) FROM idempotency_keys", nil, &keys)
	if keys != 0 {
		t.Fatalf("%d expired keys left after the purge", keys)
	}
}

func TestListCursors(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	var original []string
	for i := range 25 {
		original = append(original, createTicket(t, s, map[string]any{"title": fmt.Sprint("t", i), "email": "u@example.com", "created_by": "u"}).ID)
	}
	eventually(t, 10*time.Second, "list has all 25", func() bool {
		var list []ticketDoc
		s.do(t, "GET", "/v1/ticket/?limit=100", nil).expect(t, 200).JSON(t, &list)
		return len(list) == 25
	})

	t.Run("default_limit_is_20_and_max_100", func(t *testing.T) {
		var page []ticketDoc
		r := s.do(t, "GET", "/v1/ticket/", nil).expect(t, 200)
		r.JSON(t, &page)
		if len(page) != 20 || r.Header.Get("Link") == "" {
			t.Fatalf("default page has %d tickets, Link %q", len(page), r.Header.Get("Link"))
		}
		s.do(t, "GET", "/v1/ticket/?limit=100", nil).expect(t, 200)
		for _, l := range []string{"101", "0", "-1", "1.5", "1e2", "abc", "99999999999999999999", "%00"} {
			assertField(t, problemCode(t, s.do(t, "GET", "/v1/ticket/?limit="+l, nil), 422, "validation-failed"), "limit")
		}
	})

	t.Run("pages_stay_stable_while_tickets_arrive", func(t *testing.T) {
		seen := map[string]int{}
		path := "/v1/ticket/?limit=7"
		for page := 0; path != ""; page++ {
			r := s.do(t, "GET", path, nil).expect(t, 200)
			var items []ticketDoc
			r.JSON(t, &items)
			for _, d := range items {
				seen[d.ID]++
			}
			path = ""
			if r.Header.Get("Link") != "" {
				path = nextLink(t, r)
			}
			// newer tickets arrive between the pages
			for range 3 {
				createTicket(t, s, map[string]any{"title": fmt.Sprint("late ", page), "email": "u@example.com", "created_by": "u"})
			}
			time.Sleep(50 * time.Millisecond)
		}
		for id, n := range seen {
			if n > 1 {
				t.Fatalf("ticket %s on %d pages", id, n)
			}
		}
		for _, id := range original {
			if seen[id] != 1 {
				t.Fatalf("ticket %s, there before the first page, was skipped", id)
			}
		}
		if len(seen) != len(original) {
			t.Fatalf("pages held %d tickets, want the %d there at the first page", len(seen), len(original))
		}
	})

	t.Run("bad_cursors_are_422_never_500", func(t *testing.T) {
		r := s.do(t, "GET", "/v1/ticket/?limit=5", nil).expect(t, 200)
		next, err := url.Parse(nextLink(t, r))
		if err != nil {
			t.Fatal(err)
		}
		good := next.Query().Get("cursor")
		payload, mac, _ := strings.Cut(good, ".")
		raw, _ := base64.RawURLEncoding.DecodeString(payload)
		edited := base64.RawURLEncoding.EncodeToString(bytes.Replace(raw, []byte(`"s":"list:`), []byte(`"s":"list:open`), 1)) + "." + mac
		forged := base64.RawURLEncoding.EncodeToString([]byte(`{"s":"list:\u0000\u0000","t":"2000-01-01T00:00:00Z","i":"01936f1e-7c4a-7000-8000-000000000000"}`)) + ".AAAAAAAAAAAAAAAAAAAAAA"
		cases := map[string]string{
			"garbage":        "/v1/ticket/?cursor=garbage",
			"truncated":      "/v1/ticket/?limit=5&cursor=" + url.QueryEscape(good[:len(good)-4]),
			"payload_cut":    "/v1/ticket/?limit=5&cursor=" + url.QueryEscape(good[10:]),
			"edited_payload": "/v1/ticket/?limit=5&status=open&cursor=" + url.QueryEscape(edited),
			"forged_mac":     "/v1/ticket/?cursor=" + url.QueryEscape(forged),
			"other_filter":   "/v1/ticket/?limit=5&status=open&cursor=" + url.QueryEscape(good),
			"other_email":    "/v1/ticket/?limit=5&email=u@example.com&cursor=" + url.QueryEscape(good),
			"comments_scope": "/v1/ticket/" + original[0] + "/comments?cursor=" + url.QueryEscape(good),
			"empty_parts":    "/v1/ticket/?cursor=.",
			"nul":            "/v1/ticket/?cursor=%00",
			"invalid_utf8":   "/v1/ticket/?cursor=%ff%fe.%ff",
			"huge":           "/v1/ticket/?cursor=" + strings.Repeat("A", 4000) + ".AAAA",
		}
		for name, path := range cases {
			t.Run(name, func(t *testing.T) {
				assertField(t, problemCode(t, s.do(t, "GET", path, nil), 422, "validation-failed"), "cursor")
			})
		}
		// a cursor signed by another instance's key is as good as forged
		other := startServer(t, map[string]string{"CURSOR_SECRET": "another-secret-of-enough-length-000"})
		assertField(t, problemCode(t, other.do(t, "GET", "/v1/ticket/?limit=5&cursor="+url.QueryEscape(good), nil), 422, "validation-failed"), "cursor")
	})

	t.Run("filters_are_validated", func(t *testing.T) {
		cases := map[string]string{
			"status_bogus":        "status=bogus",
			"status_case":         "status=OPEN",
			"email_too_long":      "email=" + strings.Repeat("a", 250) + "%40example.com",
			"email_nul":           "email=a%00b%40example.com",
			"email_invalid_utf8":  "email=%ff%40example.com",
			"created_by_too_long": "created_by=" + strings.Repeat("я", 201),
			"created_by_control":  "created_by=a%0Ab",
		}
		for name, q := range cases {
			t.Run(name, func(t *testing.T) {
				field, _, _ := strings.Cut(q, "=")
				assertField(t, problemCode(t, s.do(t, "GET", "/v1/ticket/?"+q, nil), 422, "validation-failed"), field)
			})
		}
		s.do(t, "GET", "/v1/ticket/?email=u%40example.com&created_by=u&status=open", nil).expect(t, 200)
	})
}
