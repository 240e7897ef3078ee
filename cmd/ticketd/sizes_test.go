package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/pgmodel"
)

// TestDocumentsAndPagesBoundedInBytes (issue 12: 100 embedded comments made a 4 MB
// Redis document rewritten whole for every comment; a default list page of large
// tickets was 806 KB): a ticket of maximum-size comments embeds only what fits in
// EmbeddedCommentBytes, in the Redis document, the Postgres read model and a replay
// alike; list and comment pages stop at PAGE_BYTES and link on without gaps.
func TestDocumentsAndPagesBoundedInBytes(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	m := openReadModels(t, s.Env)
	ctx := context.Background()

	big := strings.Repeat("ü", 10_000) // 20,000 bytes
	d := createTicket(t, s, map[string]any{"title": "big", "description": big, "email": "u@example.com", "created_by": "u"})
	tk := "/v1/ticket/" + d.ID
	for range 5 {
		s.do(t, "POST", tk+"/comments", map[string]any{"body": big, "created_by": "c"}).expect(t, 201)
	}
	id := uuid.MustParse(d.ID)

	t.Run("document", func(t *testing.T) {
		r := s.do(t, "GET", tk, nil).expect(t, 200)
		var got ticketDoc
		r.JSON(t, &got)
		if got.CommentCount != 5 || len(got.Comments) != 3 {
			t.Fatalf("comment_count %d, %d embedded; want 5 and 3", got.CommentCount, len(got.Comments))
		}
		if len(r.Body) > 100_000 {
			t.Fatalf("document of %d bytes", len(r.Body))
		}
		replayed, _, err := projections.ViewAt(ctx, m.store, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := eventstore.EncodeJSON(replayed)
		eventually(t, 10*time.Second, "the Redis document at version 6", func() bool {
			_, v, found, err := m.docs.Get(ctx, id)
			return err == nil && found && v == 6
		})
		doc, _, _, _ := m.docs.Get(ctx, id)
		if string(doc) != string(want) {
			t.Errorf("Redis document differs from the replay:\n%.300s\n%.300s", doc, want)
		}
		eventually(t, 10*time.Second, "the Postgres read model at version 6", func() bool {
			v, err := pgmodel.NewReadModel(m.pool, m.store).Get(ctx, id)
			if err != nil || v.Version != 6 {
				return false
			}
			b, _ := eventstore.EncodeJSON(v)
			if string(b) != string(want) {
				t.Fatalf("Postgres read model differs from the replay:\n%.300s\n%.300s", b, want)
			}
			return true
		})
	})

	t.Run("comment_pages", func(t *testing.T) {
		ids, pages := followPages(t, s, tk+"/comments?limit=100")
		if len(ids) != 5 || pages != 1 {
			t.Fatalf("%d comments in %d pages; want 5 in 1 (5 x 20 KB fit in 256 KiB)", len(ids), pages)
		}
	})

	t.Run("list_pages", func(t *testing.T) {
		for range 14 {
			createTicket(t, s, map[string]any{"title": "big", "description": big, "email": "list@example.com", "created_by": "u"})
		}
		var ids []string
		var pages int
		eventually(t, 10*time.Second, "the list to show the 14 tickets", func() bool {
			ids, pages = followPages(t, s, "/v1/ticket/?limit=100&email=list%40example.com")
			return len(ids) >= 14
		})
		uniq := map[string]bool{}
		for _, id := range ids {
			uniq[id] = true
		}
		if len(ids) != 14 || len(uniq) != 14 || pages != 2 {
			t.Fatalf("%d tickets (%d distinct) in %d pages; want 14 in 2 (12 of ~20 KB fit in 256 KiB)", len(ids), len(uniq), pages)
		}
	})
}

// followPages follows path's pages to the end, checking that none passes the default
// PAGE_BYTES, and returns the ids of their items and the number of pages.
func followPages(t *testing.T, s *testServer, path string) (ids []string, pages int) {
	t.Helper()
	for path != "" {
		r := s.do(t, "GET", path, nil).expect(t, 200)
		if len(r.Body) > 262_144 {
			t.Fatalf("a page of %d bytes: %s", len(r.Body), path)
		}
		var page []struct{ ID string }
		r.JSON(t, &page)
		for _, it := range page {
			ids = append(ids, it.ID)
		}
		pages++
		path = linkNext(r)
	}
	return ids, pages
}

// linkNext is the target of r's Link rel="next", "" when it has none.
func linkNext(r response) string {
	link := r.Header.Get("Link")
	start, end := strings.Index(link, "<"), strings.Index(link, ">")
	if start < 0 || end < start || !strings.Contains(link, `rel="next"`) {
		return ""
	}
	return link[start+1 : end]
}
