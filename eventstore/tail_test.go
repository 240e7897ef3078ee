package eventstore_test

import (
	"errors"
	"testing"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

// A transaction that began first and commits last is still reported by Changes: the
// watermark stops below it while it is open, so the next call reads it.
func TestChangesReportsATransactionThatCommitsAfterALaterOne(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	w0, err := s.CurrentWatermark(ctx)
	if err != nil {
		t.Fatal(err)
	}
	early, late := newID(t), newID(t)
	insert := `INSERT INTO events (stream_id, version, type, data, recorded_at) VALUES ($1, 1, 'TicketOpened', '{}', now())`
	tx1, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx1.Rollback(ctx)
	if _, err := tx1.Exec(ctx, insert, early); err != nil {
		t.Fatal(err)
	}
	tx2, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx2.Exec(ctx, insert, late); err != nil {
		t.Fatal(err)
	}
	if err := tx2.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	heads, w1, err := s.Changes(ctx, w0)
	if err != nil {
		t.Fatal(err)
	}
	if heads[late] != 1 || heads[early] != 0 {
		t.Fatalf("with the early transaction open: heads %v, want %s at 1 and not %s", heads, late, early)
	}
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	heads, w2, err := s.Changes(ctx, w1)
	if err != nil {
		t.Fatal(err)
	}
	if heads[early] != 1 {
		t.Fatalf("after the early transaction committed: heads %v, want %s at 1", heads, early)
	}
	if w2 < w1 || w1 < w0 {
		t.Errorf("watermarks went back: %d, %d, %d", w0, w1, w2)
	}
}

func TestHeadIsTheLastEvent(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := testContext(t)
	if _, _, err := s.Head(ctx, uuid.New()); !errors.Is(err, ticket.ErrNotFound) {
		t.Fatalf("unknown stream: %v, want ticket.ErrNotFound", err)
	}
	id := openTicket(t, s)
	mustHandle(t, s, id, addComment(t, "bob"))
	v, typ, err := s.Head(ctx, id)
	if err != nil || v != 2 || typ != ticket.TypeCommentAdded {
		t.Fatalf("head %d %q %v, want 2 %q", v, typ, err, ticket.TypeCommentAdded)
	}
}
