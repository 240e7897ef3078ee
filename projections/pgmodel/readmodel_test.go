package pgmodel_test

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/projections/projectionstest"
	"github.com/ticketd/ticketd/ticket"
)

func TestGetFallsBackToTheEventStore(t *testing.T) {
	t.Parallel()
	pool, s := projectionstest.NewStore(t)
	rm := pgmodel.NewReadModel(pool, s)
	ctx := dbtest.Context(t)

	// getsReplayed checks that Get answers the ticket as the event store has it.
	getsReplayed := func(t *testing.T, id uuid.UUID) projections.View {
		t.Helper()
		got, err := rm.Get(ctx, id)
		if err != nil {
			t.Fatalf("Get: expected no error, got %v", err)
		}
		if want := pgReplayed(t, s, id); !reflect.DeepEqual(got, want) {
			t.Errorf("Get:\nexpected %+v\n     got %+v", want, got)
		}
		return got
	}

	t.Run("ticket_never_projected_is_replayed", func(t *testing.T) {
		id, _ := projectionstest.Open(t, s, "alice")
		projectionstest.Do(t, s, id, projectionstest.Comment(1))
		if v := getsReplayed(t, id); v.Version != 2 || len(v.Comments) != 1 {
			t.Errorf("expected version 2 with 1 comment, got %d with %d", v.Version, len(v.Comments))
		}
	})

	t.Run("read_model_behind_the_stream_is_bypassed", func(t *testing.T) {
		id, recs := projectionstest.Open(t, s, "alice")
		recs = append(recs, projectionstest.Do(t, s, id, projectionstest.Comment(1))...)
		pgApply(t, pool, recs...)
		// the read model stops at 2 while the stream moves on
		projectionstest.Do(t, s, id, projectionstest.Move(ticket.StatusAnswered, "carol"))
		projectionstest.Do(t, s, id, projectionstest.Comment(2))
		v := getsReplayed(t, id)
		if v.Version != 4 || v.Status != ticket.StatusAnswered || len(v.Comments) != 2 {
			t.Errorf("expected version 4, answered, 2 comments; got %d, %s, %d", v.Version, v.Status, len(v.Comments))
		}
		if rv := pgRowVersion(t, pool, id); rv != 2 {
			t.Errorf("expected the read model still at version 2, got %d", rv)
		}
	})

	t.Run("current_read_model_agrees_with_the_store", func(t *testing.T) {
		id, recs := pgLife(t, s)
		pgApply(t, pool, recs...)
		getsReplayed(t, id)
	})

	t.Run("deletion_not_yet_projected_is_not_found", func(t *testing.T) {
		id, recs := projectionstest.Open(t, s, "alice")
		pgApply(t, pool, recs...)
		projectionstest.Do(t, s, id, projectionstest.Delete)
		if _, err := rm.Get(ctx, id); !errors.Is(err, ticket.ErrNotFound) {
			t.Errorf("Get: expected ErrNotFound, got %v", err)
		}
		if _, _, err := rm.Comments(ctx, id, 0, 10); !errors.Is(err, ticket.ErrNotFound) {
			t.Errorf("Comments: expected ErrNotFound, got %v", err)
		}
	})

	t.Run("deletion_never_projected_is_not_found", func(t *testing.T) {
		id, _ := projectionstest.Open(t, s, "alice")
		projectionstest.Do(t, s, id, projectionstest.Delete)
		if _, err := rm.Get(ctx, id); !errors.Is(err, ticket.ErrNotFound) {
			t.Errorf("Get: expected ErrNotFound, got %v", err)
		}
	})

	t.Run("projected_deletion_is_not_found", func(t *testing.T) {
		id, recs := projectionstest.Open(t, s, "alice")
		recs = append(recs, projectionstest.Do(t, s, id, projectionstest.Delete)...)
		pgApply(t, pool, recs...)
		if _, err := rm.Get(ctx, id); !errors.Is(err, ticket.ErrNotFound) {
			t.Errorf("Get: expected ErrNotFound, got %v", err)
		}
		if _, _, err := rm.Comments(ctx, id, 0, 10); !errors.Is(err, ticket.ErrNotFound) {
			t.Errorf("Comments: expected ErrNotFound, got %v", err)
		}
	})

	t.Run("unknown_ticket_is_not_found", func(t *testing.T) {
		id := uuid.Must(uuid.NewV7())
		if _, err := rm.Get(ctx, id); !errors.Is(err, ticket.ErrNotFound) {
			t.Errorf("Get: expected ErrNotFound, got %v", err)
		}
		if _, _, err := rm.Comments(ctx, id, 0, 10); !errors.Is(err, ticket.ErrNotFound) {
			t.Errorf("Comments: expected ErrNotFound, got %v", err)
		}
	})

	t.Run("comments_page_the_same_from_store_and_read_model", func(t *testing.T) {
		id, recs := projectionstest.Open(t, s, "alice")
		for i := range 5 {
			recs = append(recs, projectionstest.Do(t, s, id, projectionstest.Comment(i))...)
		}
		pages := func(t *testing.T) [][]projections.Comment {
			t.Helper()
			var out [][]projections.Comment
			after := 0
			for range 10 {
				page, more, err := rm.Comments(ctx, id, after, 2)
				if err != nil {
					t.Fatalf("Comments(after %d): %v", after, err)
				}
				out = append(out, page)
				if !more {
					return out
				}
				after = page[len(page)-1].Version
			}
			t.Fatalf("comment pages did not end")
			return nil
		}
		fromStore := pages(t) // nothing projected yet
		pgApply(t, pool, recs...)
		fromReadModel := pages(t)
		if len(fromStore) != 3 || len(fromStore[2]) != 1 {
			t.Errorf("expected pages of 2, 2 and 1 comments, got %d pages", len(fromStore))
		}
		if !reflect.DeepEqual(fromStore, fromReadModel) {
			t.Errorf("comment pages differ:\nevent store %+v\n read model %+v", fromStore, fromReadModel)
		}
	})
}

// listRow is a read model row inserted directly, for paging tests.
type listRow struct {
	ID        uuid.UUID
	CreatedAt time.Time
	Status    ticket.Status
	Deleted   bool
}

func insertRows(t *testing.T, pool *pgxpool.Pool, rows ...listRow) {
	t.Helper()
	for _, r := range rows {
		_, err := pool.Exec(dbtest.Context(t), `INSERT INTO readmodel.tickets
			(id, title, description, email, created_by, updated_by, status, version, created_at, updated_at, deleted)
			VALUES ($1, 'title', '', 'a@example.com', 'alice', 'alice', $2, 1, $3, $3, $4)`,
			r.ID, string(r.Status), r.CreatedAt, r.Deleted)
		if err != nil {
			t.Fatalf("insert read model row: %v", err)
		}
	}
}

// newestFirst is the list order: created_at descending, ties by id descending (as
// Postgres compares uuids: bytewise).
func newestFirst(a, b listRow) int {
	if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
		return c
	}
	return bytes.Compare(b.ID[:], a.ID[:])
}

// listAll pages through the list with limit and returns the ids in order.
func listAll(t *testing.T, rm *pgmodel.ReadModel, q pgmodel.ListQuery) []uuid.UUID {
	t.Helper()
	var ids []uuid.UUID
	for range 200 {
		page, next, err := rm.List(dbtest.Context(t), q)
		if err != nil {
			t.Fatalf("List(limit %d): %v", q.Limit, err)
		}
		if len(page) > q.Limit || (next != nil && len(page) != q.Limit) {
			t.Fatalf("List(limit %d): a page of %d with next=%v", q.Limit, len(page), next != nil)
		}
		for _, s := range page {
			ids = append(ids, s.ID)
		}
		if next == nil {
			return ids
		}
		if last := page[len(page)-1]; next.ID != last.ID || !next.CreatedAt.Equal(last.CreatedAt) {
			t.Fatalf("List: next key %+v is not the last row of the page (%s, %v)", *next, last.ID, last.CreatedAt)
		}
		q.After = next
	}
	t.Fatalf("List(limit %d) did not end", q.Limit)
	return nil
}

func TestListPagesWithoutDuplicatesOrSkips(t *testing.T) {
	t.Parallel()
	pool, s := projectionstest.NewStore(t)
	rm := pgmodel.NewReadModel(pool, s)

	// given: tickets in groups that share created_at to the microsecond, so only the id
	// orders them, plus deleted ones that must never show
	base := time.Date(2025, 6, 1, 12, 0, 0, 123456000, time.UTC)
	statuses := []ticket.Status{ticket.StatusOpen, ticket.StatusAnswered, ticket.StatusWaitAnswer}
	var live []listRow
	n := 0
	for g, size := range []int{7, 1, 6, 5} {
		at := base.Add(time.Duration(g) * time.Second)
		for range size {
			live = append(live, listRow{ID: uuid.New(), CreatedAt: at, Status: statuses[n%len(statuses)]})
			n++
		}
		insertRows(t, pool, listRow{ID: uuid.New(), CreatedAt: at, Status: ticket.StatusOpen, Deleted: true})
	}
	insertRows(t, pool, live...)
	slices.SortFunc(live, newestFirst)
	ids := func(rows []listRow) []uuid.UUID {
		out := make([]uuid.UUID, len(rows))
		for i, r := range rows {
			out[i] = r.ID
		}
		return out
	}

	for _, limit := range []int{1, 2, 3, 5, 7, 19, 20, 100} {
		t.Run(fmt.Sprintf("limit_%d", limit), func(t *testing.T) {
			got := listAll(t, rm, pgmodel.ListQuery{Limit: limit})
			if want := ids(live); !slices.Equal(got, want) {
				t.Errorf("pages of %d:\nexpected %v\n     got %v", limit, want, got)
			}
		})
	}

	t.Run("filter_pages_the_same_way", func(t *testing.T) {
		var answered []listRow
		for _, r := range live {
			if r.Status == ticket.StatusAnswered {
				answered = append(answered, r)
			}
		}
		got := listAll(t, rm, pgmodel.ListQuery{Limit: 2, Status: ticket.StatusAnswered})
		if want := ids(answered); !slices.Equal(got, want) {
			t.Errorf("answered, pages of 2:\nexpected %v\n     got %v", want, got)
		}
	})

	t.Run("ticket_created_between_pages_does_not_shift_later_pages", func(t *testing.T) {
		first, next, err := rm.List(dbtest.Context(t), pgmodel.ListQuery{Limit: 4})
		if err != nil || next == nil {
			t.Fatalf("first page: %v (next %v)", err, next)
		}
		// a newer ticket, and one tied with the last row of the first page
		tied := listRow{ID: uuid.New(), CreatedAt: next.CreatedAt, Status: ticket.StatusOpen}
		insertRows(t, pool, listRow{ID: uuid.New(), CreatedAt: base.Add(time.Hour), Status: ticket.StatusOpen}, tied)
		rest := listAll(t, rm, pgmodel.ListQuery{Limit: 4, After: next})

		// expected: the first page as it was, then every older row after the key in
		// order, the tied row included if it sorts after the key; the newer one never
		var got, want []uuid.UUID
		for _, s := range first {
			got = append(got, s.ID)
		}
		got = append(got, rest...)
		want = ids(live)[:4]
		key := listRow{ID: next.ID, CreatedAt: next.CreatedAt}
		all := slices.SortedFunc(slices.Values(append(slices.Clone(live), tied)), newestFirst)
		for _, r := range all {
			if newestFirst(key, r) < 0 {
				want = append(want, r.ID)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("pages around an insert:\nexpected %v\n     got %v", want, got)
		}
	})
}

func TestReadModelOnUnreachableDatabaseIsUnavailable(t *testing.T) {
	t.Parallel()
	ctx := dbtest.Context(t)
	// Nothing listens on port 1: every connection attempt is refused.
	pool, err := db.Open(ctx, "postgres://postgres@127.0.0.1:1/ticketd?sslmode=disable&connect_timeout=2", db.PoolConfig{MaxConns: 1})
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	rm := pgmodel.NewReadModel(pool, eventstore.New(pool, nil))
	id := uuid.Must(uuid.NewV7())

	_, err = rm.Get(ctx, id)
	if !errors.Is(err, ticket.ErrUnavailable) {
		t.Errorf("Get: expected ErrUnavailable, got %v", err)
	}
	_, _, err = rm.List(ctx, pgmodel.ListQuery{Limit: 20})
	if !errors.Is(err, ticket.ErrUnavailable) {
		t.Errorf("List: expected ErrUnavailable, got %v", err)
	}
	_, _, err = rm.Comments(ctx, id, 0, 20)
	if !errors.Is(err, ticket.ErrUnavailable) {
		t.Errorf("Comments: expected ErrUnavailable, got %v", err)
	}
}
