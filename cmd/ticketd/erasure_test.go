package main

import (
	"context"
	"maps"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/ticket"
)

// TestEraseSubjectEndToEnd: a requester's data in their own ticket, in a comment on
// another's ticket, and in a stored idempotency answer; DELETE /v1/subjects/{email}
// (twice, and for an unknown subject); afterwards GET, the list, the comment pages,
// the history, ?version=N, the Redis documents and a search by email show nothing of
// theirs; the read models equal the replay (and a rebuild's); no table holds the
// email or name in clear; `ticketd -verify` passes; the CLI's -erase-subject works too.
func TestEraseSubjectEndToEnd(t *testing.T) {
	t.Parallel()
	bin := buildTicketd(t)
	s := startServer(t, nil)
	m := openReadModels(t, s.Env)
	const email, name = "erin.erasable@example.com", "Erin Erasable"

	var a, b struct {
		ID string `json:"id"`
	}
	s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "printer", "description": "on fire", "email": email, "created_by": name},
		"Idempotency-Key", "erase-key-1").expect(t, 201).JSON(t, &a)
	s.do(t, "POST", "/v1/ticket/"+a.ID+"/comments", map[string]any{"body": "still burning", "created_by": name}).expect(t, 201)
	s.do(t, "PUT", "/v1/ticket/"+a.ID, map[string]any{"status": "answered", "updated_by": "Agent Ada"}).expect(t, 200)
	s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "scanner", "description": "jammed", "email": "frank@example.com", "created_by": "Frank"}).expect(t, 201).JSON(t, &b)
	s.do(t, "POST", "/v1/ticket/"+b.ID+"/comments", map[string]any{"body": "me too", "email": email, "created_by": name}).expect(t, 201)
	eventually(t, 10*time.Second, "the list to show the ticket by email", func() bool {
		var list []map[string]any
		s.do(t, "GET", "/v1/ticket/?email="+url.QueryEscape(email), nil).expect(t, 200).JSON(t, &list)
		return len(list) == 1
	})

	path := "/v1/subjects/" + url.PathEscape(email)
	var er map[string]any
	s.do(t, "DELETE", path+"?reason="+url.QueryEscape("GDPR art. 17 request #7"), nil).expect(t, 200).JSON(t, &er)
	if er["tickets"] != float64(2) || er["appended"] != float64(2) || er["already_erased"] != false || len(er["subject"].(string)) != 64 {
		t.Fatalf("erasure answer %v", er)
	}
	s.do(t, "DELETE", path, nil).expect(t, 200).JSON(t, &er)
	if er["already_erased"] != true || er["appended"] != float64(0) {
		t.Fatalf("second erasure %v", er)
	}
	if p := s.do(t, "DELETE", "/v1/subjects/nobody%40example.com", nil).expect(t, 404).problem(t); p["code"] != "subject-not-found" {
		t.Fatalf("unknown subject: %v", p)
	}
	for _, c := range []struct{ path, field string }{
		{"/v1/subjects/not-an-email", "email"},
		{path + "?reason=" + url.QueryEscape(strings.Repeat("x", 1001)), "reason"},
	} {
		p := s.do(t, "DELETE", c.path, nil).expect(t, 422).problem(t)
		if errs, _ := p["errors"].([]any); len(errs) != 1 || errs[0].(map[string]any)["field"] != c.field {
			t.Fatalf("DELETE %s: %v, want one error naming %s", c.path, p, c.field)
		}
	}

	eventually(t, 10*time.Second, "GET to show the erasure", func() bool {
		var v map[string]any
		s.do(t, "GET", "/v1/ticket/"+a.ID, nil).expect(t, 200).JSON(t, &v)
		return v["email"] == ticket.Erased && v["created_by"] == ticket.Erased && v["updated_by"] == ticket.Erased
	})
	var view struct {
		Comments []map[string]any `json:"comments"`
	}
	s.do(t, "GET", "/v1/ticket/"+b.ID, nil).expect(t, 200).JSON(t, &view)
	if len(view.Comments) != 1 || view.Comments[0]["email"] != ticket.Erased || view.Comments[0]["created_by"] != ticket.Erased {
		t.Fatalf("the comment on another's ticket: %v", view.Comments)
	}
	var page []map[string]any
	s.do(t, "GET", "/v1/ticket/"+a.ID+"/comments", nil).expect(t, 200).JSON(t, &page)
	if len(page) != 1 || page[0]["created_by"] != ticket.Erased {
		t.Fatalf("comment page: %v", page)
	}
	var hist []struct {
		Type  string         `json:"type"`
		Actor string         `json:"actor"`
		Data  map[string]any `json:"data"`
	}
	s.do(t, "GET", "/v1/ticket/"+a.ID+"/history", nil).expect(t, 200).JSON(t, &hist)
	if hist[0].Data["email"] != ticket.Erased || hist[0].Data["created_by"] != ticket.Erased || hist[0].Actor != ticket.Erased ||
		hist[0].Data["title"] != "printer" || hist[len(hist)-1].Type != ticket.TypeSubjectErased ||
		hist[len(hist)-1].Data["reason"] != "GDPR art. 17 request #7" {
		t.Fatalf("history after erasure: %+v", hist)
	}
	var v1 map[string]any
	s.do(t, "GET", "/v1/ticket/"+a.ID+"?version=1", nil).expect(t, 200).JSON(t, &v1)
	if v1["email"] != ticket.Erased || v1["created_by"] != ticket.Erased {
		t.Fatalf("version 1 after erasure: %v", v1)
	}
	var list []map[string]any
	s.do(t, "GET", "/v1/ticket/?email="+url.QueryEscape(email), nil).expect(t, 200).JSON(t, &list)
	if len(list) != 0 {
		t.Fatalf("search by the erased email finds %v", list)
	}
	// the idempotent retry of the create answers the stored (scrubbed) answer
	r := s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "printer", "description": "on fire", "email": email, "created_by": name},
		"Idempotency-Key", "erase-key-1").expect(t, 201)
	if strings.Contains(string(r.Body), email) || strings.Contains(string(r.Body), name) {
		t.Fatalf("the stored answer still holds the subject: %s", r.Body)
	}
	// the Redis documents, the rows and the list equal the replay from the event store
	m.converge(t, s, 10*time.Second)
	for _, id := range []string{a.ID, b.ID} {
		doc, _, found, err := m.docs.Get(context.Background(), uuid.MustParse(id))
		if err != nil || !found || strings.Contains(string(doc), email) || strings.Contains(string(doc), name) {
			t.Fatalf("redis document of %s: %s (found %v, %v)", id, doc, found, err)
		}
	}
	assertNoPlaintext(t, m, email, name)

	env := []string{"DATABASE_DSN=" + s.DSN, "DATA_KEY=" + dbtest.DataKey, "REDIS_ADDRS=" + s.Env["REDIS_ADDRS"], "REDIS_PREFIX=" + s.Env["REDIS_PREFIX"]}
	if r := runBinary(t, bin, env, "-verify"); r.code != 0 {
		t.Fatalf("-verify after erasure: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// a rebuild after the erasure equals what the projectors built
	if r := runBinary(t, bin, append(env, "HTTP_ADDR=127.0.0.1:1"), "-rebuild-projections"); r.code != 0 {
		t.Fatalf("-rebuild-projections: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	m.converge(t, s, 10*time.Second)
	assertNoPlaintext(t, m, email, name)

	// the CLI: another subject, erased at the terminal
	if r := runBinary(t, bin, env, "-erase-subject", "frank@example.com", "-reason", "left the company"); r.code != 0 ||
		!strings.Contains(r.stdout, " erased: 1 tickets, 1 erasure events appended") {
		t.Fatalf("-erase-subject: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runBinary(t, bin, env, "-erase-subject", "nobody@example.com"); r.code != 1 || !strings.Contains(r.stderr, "no personal data of nobody@example.com") {
		t.Fatalf("-erase-subject of an unknown subject: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	eventually(t, 10*time.Second, "frank's erasure in GET", func() bool {
		var v map[string]any
		s.do(t, "GET", "/v1/ticket/"+b.ID, nil).expect(t, 200).JSON(t, &v)
		return v["email"] == ticket.Erased
	})
}

// assertNoPlaintext fails t if any table holds one of needles in clear.
func assertNoPlaintext(t *testing.T, m *readModels, needles ...string) {
	t.Helper()
	for _, q := range []string{
		`SELECT data::text || metadata::text FROM events`,
		`SELECT payload::text FROM watermill_ticket_events`,
		`SELECT convert_from(answer, 'UTF8') FROM idempotency_keys`,
		`SELECT email || created_by || updated_by FROM readmodel.tickets`,
		`SELECT email || created_by FROM readmodel.comments`,
	} {
		rows, err := m.pool.Query(context.Background(), q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			for _, n := range needles {
				if strings.Contains(strings.ToLower(s), strings.ToLower(n)) {
					t.Errorf("%q in clear: %s", n, q)
				}
			}
		}
		rows.Close()
	}
}

// TestDataKeyMissingOrWrongStopsTheStart: without DATA_KEY, with a malformed one, or
// with another key than the database was first used with, ticketd does not start:
// exit 1, one line naming the variable, nothing served. -rotate-data-key then moves
// the data keys to NEW_DATA_KEY: the new key reads, the old one is refused.
func TestDataKeyMissingOrWrongStopsTheStart(t *testing.T) {
	t.Parallel()
	bin := buildTicketd(t)
	dsn := dbtest.NewDatabase(t)
	base := processEnv(t, dsn)
	s := startServer(t, map[string]string{"DATABASE_DSN": dsn}) // the database's first key: dbtest.DataKey
	var created struct {
		ID string `json:"id"`
	}
	s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "t", "description": "d", "email": "rota@example.com", "created_by": "Rota"}).expect(t, 201).JSON(t, &created)
	for _, c := range []struct {
		name, key, want string
	}{
		{"missing", "", "DATA_KEY: required"},
		{"malformed", "c2hvcnQ=", "DATA_KEY: must be the base64 of 32 random bytes"},
		{"wrong", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo3ODkwMTI=", "DATA_KEY is not the master key this database was first used with"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := maps.Clone(base)
			env["HTTP_ADDR"] = freeAddr(t)
			delete(env, "DATA_KEY")
			if c.key != "" {
				env["DATA_KEY"] = c.key
			}
			var list []string
			for k, v := range env {
				list = append(list, k+"="+v)
			}
			r := runBinary(t, bin, list)
			if r.code != 1 || !strings.Contains(r.stdout+r.stderr, c.want) {
				t.Fatalf("exit %d, want 1 and %q in:\n%s%s", r.code, c.want, r.stdout, r.stderr)
			}
			if strings.Count(strings.TrimSpace(r.stdout+r.stderr), "\n") > 0 && !strings.Contains(r.stdout, `"invalid configuration"`) {
				t.Fatalf("more than the one line:\n%s%s", r.stdout, r.stderr)
			}
			if c.key != "" && strings.Contains(r.stdout+r.stderr, c.key) {
				t.Fatalf("the key is echoed:\n%s%s", r.stdout, r.stderr)
			}
		})
	}

	// -rotate-data-key moves the data keys to NEW_DATA_KEY: the new key reads the
	// history, the old one is refused from then on
	const newKey = "bmV3LWRhdGEta2V5LWZvci1yb3RhdGlvbi10ZXN0ISE="
	env := []string{"DATABASE_DSN=" + dsn, "DATA_KEY=" + dbtest.DataKey, "NEW_DATA_KEY=" + newKey}
	if r := runBinary(t, bin, env, "-rotate-data-key"); r.code != 0 || !strings.Contains(r.stdout, "rotated 1 data keys to NEW_DATA_KEY") {
		t.Fatalf("-rotate-data-key: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runBinary(t, bin, []string{"DATABASE_DSN=" + dsn, "DATA_KEY=" + newKey}, "-history", created.ID); r.code != 0 || !strings.Contains(r.stdout, "rota@example.com") {
		t.Fatalf("-history with the new key: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runBinary(t, bin, []string{"DATABASE_DSN=" + dsn, "DATA_KEY=" + dbtest.DataKey}, "-history", created.ID); r.code != 1 || !strings.Contains(r.stderr, "DATA_KEY is not the master key") {
		t.Fatalf("-history with the old key after rotation: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runBinary(t, bin, []string{"DATABASE_DSN=" + dsn, "DATA_KEY=" + newKey}, "-rotate-data-key"); r.code != 1 || !strings.Contains(r.stderr, "NEW_DATA_KEY: required") {
		t.Fatalf("-rotate-data-key without NEW_DATA_KEY: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
