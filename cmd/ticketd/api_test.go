package main

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// sourceTicket is the create body of the source README's curl example.
var sourceTicket = map[string]any{
	"title":       "Проблема с подключением",
	"description": "Не могу подключиться к серверу",
	"email":       "user@example.com",
	"created_by":  "Иван Иванов",
	"status":      "open",
}

type ticketDoc struct {
	ID           string `json:"id"`
	Title        string `json:"title"`
	Description  string `json:"description"`
	Email        string `json:"email"`
	CreatedBy    string `json:"created_by"`
	UpdatedBy    string `json:"updated_by"`
	Status       string `json:"status"`
	Version      int    `json:"version"`
	CommentCount int    `json:"comment_count"`
	Comments     []struct {
		ID        string `json:"id"`
		Body      string `json:"body"`
		CreatedBy string `json:"created_by"`
		Version   int    `json:"version"`
	} `json:"comments"`
}

func createTicket(t testing.TB, s *testServer, body map[string]any) ticketDoc {
	t.Helper()
	var doc ticketDoc
	s.do(t, "POST", "/v1/ticket/", body).expect(t, 201).JSON(t, &doc)
	return doc
}

func getTicket(t testing.TB, s *testServer, id string) ticketDoc {
	t.Helper()
	var doc ticketDoc
	s.do(t, "GET", "/v1/ticket/"+id, nil).expect(t, 200).JSON(t, &doc)
	return doc
}

func TestSourceReadmeFlow(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)

	var empty []ticketDoc
	s.do(t, "GET", "/v1/ticket/", nil, "Content-Type", "application/json").expect(t, 200).JSON(t, &empty)
	if len(empty) != 0 {
		t.Fatalf("fresh list has %d tickets", len(empty))
	}

	created := s.do(t, "POST", "/v1/ticket/", sourceTicket).expect(t, 201)
	var doc ticketDoc
	created.JSON(t, &doc)
	if doc.Status != "open" || doc.Version != 1 || doc.Title != sourceTicket["title"] || doc.CreatedBy != "Иван Иванов" {
		t.Fatalf("created ticket %+v", doc)
	}
	if loc := created.Header.Get("Location"); loc != "/v1/ticket/"+doc.ID {
		t.Fatalf("Location %q, want /v1/ticket/%s", loc, doc.ID)
	}
	if et := created.Header.Get("ETag"); et != `"1"` {
		t.Fatalf("ETag %q, want \"1\"", et)
	}

	got := getTicket(t, s, doc.ID)
	if got.ID != doc.ID || got.Status != "open" || got.Comments == nil {
		t.Fatalf("GET returned %+v", got)
	}

	eventually(t, 5*time.Second, "ticket in list", func() bool {
		var list []ticketDoc
		s.do(t, "GET", "/v1/ticket/", nil).expect(t, 200).JSON(t, &list)
		return len(list) == 1 && list[0].ID == doc.ID
	})

	var put map[string]any
	s.do(t, "PUT", "/v1/ticket/"+doc.ID, map[string]any{"status": "answered", "updated_by": "Администратор"}).expect(t, 200).JSON(t, &put)
	if put["status"] != "answered" || put["updated_by"] != "Администратор" {
		t.Fatalf("PUT answered %v", put)
	}
	if got := getTicket(t, s, doc.ID); got.Status != "answered" || got.Version != 2 {
		t.Fatalf("after PUT: %+v", got)
	}

	// Trailing slash or not, same routes.
	s.do(t, "GET", "/v1/ticket", nil).expect(t, 200)
	s.do(t, "GET", "/v1/ticket/"+doc.ID+"/", nil).expect(t, 200)

	s.do(t, "DELETE", "/v1/ticket/"+doc.ID, nil, "Content-Type", "application/json").expect(t, 204)
	s.do(t, "GET", "/v1/ticket/"+doc.ID, nil).expect(t, 404).problem(t)
	s.do(t, "DELETE", "/v1/ticket/"+doc.ID, nil).expect(t, 404).problem(t)
	eventually(t, 5*time.Second, "deleted ticket gone from list", func() bool {
		var list []ticketDoc
		s.do(t, "GET", "/v1/ticket/", nil).expect(t, 200).JSON(t, &list)
		return len(list) == 0
	})
}

func TestComments(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	doc := createTicket(t, s, sourceTicket)

	var c map[string]any
	resp := s.do(t, "POST", "/v1/ticket/"+doc.ID+"/comments", map[string]any{"body": "Перезагрузите роутер", "created_by": "support"}).expect(t, 201)
	resp.JSON(t, &c)
	if c["body"] != "Перезагрузите роутер" || c["id"] == "" || c["created_at"] == "" {
		t.Fatalf("comment %v", c)
	}
	if resp.Header.Get("ETag") != `"2"` {
		t.Fatalf("comment ETag %q", resp.Header.Get("ETag"))
	}
	got := getTicket(t, s, doc.ID)
	if len(got.Comments) != 1 || got.CommentCount != 1 || got.Comments[0].Body != "Перезагрузите роутер" {
		t.Fatalf("ticket after comment: %+v", got)
	}

	t.Run("comments_page_oldest_first", func(t *testing.T) {
		for i := range 4 {
			s.do(t, "POST", "/v1/ticket/"+doc.ID+"/comments", map[string]any{"body": fmt.Sprintf("c%d", i), "created_by": "u"}).expect(t, 201)
		}
		var page []map[string]any
		r := s.do(t, "GET", "/v1/ticket/"+doc.ID+"/comments?limit=3", nil).expect(t, 200)
		r.JSON(t, &page)
		if len(page) != 3 || page[0]["body"] != "Перезагрузите роутер" || page[1]["body"] != "c0" {
			t.Fatalf("first page %v", page)
		}
		next := nextLink(t, r)
		var page2 []map[string]any
		s.do(t, "GET", next, nil).expect(t, 200).JSON(t, &page2)
		if len(page2) != 2 || page2[0]["body"] != "c2" || page2[1]["body"] != "c3" {
			t.Fatalf("second page %v", page2)
		}
	})

	t.Run("unknown_ticket_is_404_not_500", func(t *testing.T) {
		p := s.do(t, "POST", "/v1/ticket/01936f1e-7c4a-7000-8000-000000000000/comments", map[string]any{"body": "x", "created_by": "u"}).expect(t, 404).problem(t)
		if p["code"] != "ticket-not-found" {
			t.Fatalf("problem %v", p)
		}
		s.do(t, "GET", "/v1/ticket/01936f1e-7c4a-7000-8000-000000000000/comments", nil).expect(t, 404)
	})

	t.Run("closed_ticket_refuses_comment", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		s.do(t, "PUT", "/v1/ticket/"+d.ID, map[string]any{"status": "closed", "updated_by": "admin"}).expect(t, 200)
		p := s.do(t, "POST", "/v1/ticket/"+d.ID+"/comments", map[string]any{"body": "late", "created_by": "u"}).expect(t, 409).problem(t)
		if p["current_status"] != "closed" || p["code"] != "ticket-closed" {
			t.Fatalf("problem %v", p)
		}
		if got := getTicket(t, s, d.ID); got.CommentCount != 0 || got.Version != 2 {
			t.Fatalf("closed ticket changed: %+v", got)
		}
	})

	t.Run("comment_validation_names_field", func(t *testing.T) {
		p := s.do(t, "POST", "/v1/ticket/"+doc.ID+"/comments", map[string]any{"body": "  ", "created_by": "u"}).expect(t, 422).problem(t)
		assertField(t, p, "body")
		p = s.do(t, "POST", "/v1/ticket/"+doc.ID+"/comments", map[string]any{"body": "x"}).expect(t, 422).problem(t)
		assertField(t, p, "created_by")
	})
}

func nextLink(t testing.TB, r response) string {
	t.Helper()
	link := r.Header.Get("Link")
	start, end := strings.Index(link, "<"), strings.Index(link, ">")
	if start < 0 || end < start || !strings.Contains(link, `rel="next"`) {
		t.Fatalf("no next link in %q", link)
	}
	return link[start+1 : end]
}

func assertField(t testing.TB, p map[string]any, field string) {
	t.Helper()
	errs, _ := p["errors"].([]any)
	if len(errs) == 0 {
		t.Fatalf("problem names no field, want %q: %v", field, p)
	}
	if f := errs[0].(map[string]any)["field"]; f != field {
		t.Fatalf("problem names field %v, want %q: %v", f, field, p)
	}
}

func TestTransitions(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	put := func(id, status string) response {
		return s.do(t, "PUT", "/v1/ticket/"+id, map[string]any{"status": status, "updated_by": "agent"})
	}

	t.Run("refused_transition_is_409_and_changes_nothing", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		p := put(d.ID, "wait_answer").expect(t, 409).problem(t)
		allowed, _ := p["allowed_statuses"].([]any)
		if p["current_status"] != "open" || len(allowed) != 2 || allowed[0] != "answered" || allowed[1] != "closed" {
			t.Fatalf("problem %v", p)
		}
		if got := getTicket(t, s, d.ID); got.Status != "open" || got.Version != 1 {
			t.Fatalf("state changed: %+v", got)
		}
	})

	t.Run("full_workflow_and_noop", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		for _, st := range []string{"answered", "wait_answer", "answered", "closed"} {
			put(d.ID, st).expect(t, 200)
		}
		var r map[string]any
		put(d.ID, "closed").expect(t, 200).JSON(t, &r) // no-op on the final status
		if r["version"] != float64(5) {
			t.Fatalf("no-op PUT moved version: %v", r)
		}
		put(d.ID, "open").expect(t, 409)
		put(d.ID, "answered").expect(t, 409)
	})

	t.Run("unknown_status_is_422", func(t *testing.T) {
		d := createTicket(t, s, sourceTicket)
		assertField(t, put(d.ID, "resolved").expect(t, 422).problem(t), "status")
	})

	t.Run("unknown_ticket_is_404", func(t *testing.T) {
		put("01936f1e-7c4a-7000-8000-000000000000", "answered").expect(t, 404)
		s.do(t, "GET", "/v1/ticket/01936f1e-7c4a-7000-8000-000000000000", nil).expect(t, 404)
		s.do(t, "DELETE", "/v1/ticket/01936f1e-7c4a-7000-8000-000000000000", nil).expect(t, 404)
	})

	t.Run("bad_uuid_is_422", func(t *testing.T) {
		assertField(t, s.do(t, "GET", "/v1/ticket/not-a-uuid", nil).expect(t, 422).problem(t), "id")
	})
}

func TestCreateValidation(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	with := func(k string, v any) map[string]any {
		m := map[string]any{}
		for kk, vv := range sourceTicket {
			m[kk] = vv
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	cases := []struct {
		name  string
		body  any
		field string
	}{
		{"created_answered_is_refused", with("status", "answered"), "status"},
		{"created_closed_is_refused", with("status", "closed"), "status"},
		{"missing_title", with("title", nil), "title"},
		{"blank_title", with("title", "   "), "title"},
		{"long_title", with("title", strings.Repeat("я", 201)), "title"},
		{"bad_email", with("email", "not-an-email"), "email"},
		{"missing_email", with("email", nil), "email"},
		{"missing_created_by", with("created_by", nil), "created_by"},
		{"title_wrong_type", with("title", 42), "title"},
		{"unknown_field", with("priority", "high"), "priority"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			assertField(t, s.do(t, "POST", "/v1/ticket/", c.body).expect(t, 422).problem(t), c.field)
		})
	}
	t.Run("status_may_be_omitted", func(t *testing.T) {
		if d := createTicket(t, s, with("status", nil)); d.Status != "open" {
			t.Fatalf("status %q", d.Status)
		}
	})
	t.Run("malformed_json_is_400", func(t *testing.T) {
		p := s.do(t, "POST", "/v1/ticket/", `{"title": "x",`).expect(t, 400).problem(t)
		if strings.Contains(fmt.Sprint(p), "json:") || strings.Contains(fmt.Sprint(p), "Go") {
			t.Fatalf("problem leaks internals: %v", p)
		}
		s.do(t, "POST", "/v1/ticket/", `[1,2]`).expect(t, 400)
		s.do(t, "POST", "/v1/ticket/", ``).expect(t, 400)
	})
	t.Run("nothing_stored_by_refused_creates", func(t *testing.T) {
		var list []ticketDoc
		time.Sleep(200 * time.Millisecond)
		s.do(t, "GET", "/v1/ticket/?limit=100", nil).expect(t, 200).JSON(t, &list)
		for _, d := range list {
			if d.Status != "open" || d.Title != sourceTicket["title"] {
				t.Fatalf("a refused create was stored: %+v", d)
			}
		}
	})
}

func TestListPagesAndFilters(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	var ids []string
	for i := range 7 {
		body := map[string]any{"title": fmt.Sprintf("t%d", i), "email": fmt.Sprintf("u%d@example.com", i%2), "created_by": fmt.Sprintf("user%d", i%3)}
		ids = append(ids, createTicket(t, s, body).ID)
	}
	s.do(t, "PUT", "/v1/ticket/"+ids[0], map[string]any{"status": "answered", "updated_by": "a"}).expect(t, 200)
	eventually(t, 5*time.Second, "list has all", func() bool {
		var list []ticketDoc
		s.do(t, "GET", "/v1/ticket/?limit=100", nil).expect(t, 200).JSON(t, &list)
		return len(list) == 7 && list[6].Status == "answered"
	})

	// Page 1 is the newest tickets: the source's off-by-one skipped it.
	var seen []string
	path := "/v1/ticket/?limit=3"
	for path != "" {
		r := s.do(t, "GET", path, nil).expect(t, 200)
		var page []ticketDoc
		r.JSON(t, &page)
		for _, d := range page {
			seen = append(seen, d.ID)
		}
		path = ""
		if r.Header.Get("Link") != "" {
			path = nextLink(t, r)
		}
	}
	if len(seen) != 7 {
		t.Fatalf("pages held %d tickets, want 7", len(seen))
	}
	for i := range seen {
		if seen[i] != ids[6-i] {
			t.Fatalf("order %v, want newest first %v", seen, ids)
		}
	}

	var filtered []ticketDoc
	s.do(t, "GET", "/v1/ticket/?status=answered", nil).expect(t, 200).JSON(t, &filtered)
	if len(filtered) != 1 || filtered[0].ID != ids[0] {
		t.Fatalf("status filter: %+v", filtered)
	}
	s.do(t, "GET", "/v1/ticket/?email=u1@example.com", nil).expect(t, 200).JSON(t, &filtered)
	if len(filtered) != 3 {
		t.Fatalf("email filter: %d", len(filtered))
	}
	s.do(t, "GET", "/v1/ticket/?created_by=user0", nil).expect(t, 200).JSON(t, &filtered)
	if len(filtered) != 3 {
		t.Fatalf("created_by filter: %d", len(filtered))
	}
	assertField(t, s.do(t, "GET", "/v1/ticket/?status=bogus", nil).expect(t, 422).problem(t), "status")
	assertField(t, s.do(t, "GET", "/v1/ticket/?limit=0", nil).expect(t, 422).problem(t), "limit")
	assertField(t, s.do(t, "GET", "/v1/ticket/?limit=101", nil).expect(t, 422).problem(t), "limit")
	assertField(t, s.do(t, "GET", "/v1/ticket/?limit=abc", nil).expect(t, 422).problem(t), "limit")
	assertField(t, s.do(t, "GET", "/v1/ticket/?cursor=garbage", nil).expect(t, 422).problem(t), "cursor")
}

func TestConcurrentComments(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	d := createTicket(t, s, sourceTicket)
	var wg sync.WaitGroup
	statuses := make([]int, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = s.do(t, "POST", "/v1/ticket/"+d.ID+"/comments", map[string]any{"body": fmt.Sprintf("comment %d", i), "created_by": "u"}).Status
		}()
	}
	wg.Wait()
	for i, st := range statuses {
		if st != 201 {
			t.Fatalf("comment %d answered %d", i, st)
		}
	}
	got := getTicket(t, s, d.ID)
	if got.CommentCount != 64 || got.Version != 65 || len(got.Comments) != 64 {
		t.Fatalf("after 64 comments: count %d version %d embedded %d", got.CommentCount, got.Version, len(got.Comments))
	}
	bodies := map[string]bool{}
	for _, c := range got.Comments {
		bodies[c.Body] = true
	}
	if len(bodies) != 64 {
		t.Fatalf("%d distinct comments, want 64", len(bodies))
	}
}

func TestConcurrentStatusChanges(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	d := createTicket(t, s, sourceTicket)
	targets := []string{"answered", "closed", "wait_answer", "answered"}
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted := map[string]int{}
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			to := targets[i%len(targets)]
			r := s.do(t, "PUT", "/v1/ticket/"+d.ID, map[string]any{"status": to, "updated_by": "agent"})
			switch r.Status {
			case http.StatusOK:
				mu.Lock()
				accepted[to]++
				mu.Unlock()
			case http.StatusConflict:
			default:
				t.Errorf("PUT %s answered %d: %s", to, r.Status, r.Body)
			}
		}()
	}
	wg.Wait()
	got := getTicket(t, s, d.ID)
	if len(accepted) == 0 {
		t.Fatal("no status change was accepted")
	}
	if got.Status != "open" && accepted[got.Status] == 0 {
		t.Fatalf("final status %q was never accepted (accepted %v)", got.Status, accepted)
	}
	if got.Status != "closed" && accepted["closed"] > 0 {
		// closed is final: once accepted, nothing may move the ticket out of it
		t.Fatalf("closed was accepted but the ticket is %q", got.Status)
	}
}
