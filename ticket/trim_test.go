package ticket_test

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

func TestTrimmedTicketKeepsFirstCommentsAndExactCount(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	full := ticket.New(uuid.New())
	if err := full.Open(ticket.OpenTicket{Title: "t", Email: "a@example.com", CreatedBy: "a"}, now); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := full.AddComment(ticket.AddComment{ID: uuid.New(), Body: "b", CreatedBy: "c"}, now); err != nil {
			t.Fatal(err)
		}
	}
	trimmed := full.Trimmed(3)
	if got := len(trimmed.State().Comments); got != 3 {
		t.Fatalf("trimmed keeps %d comments, want 3", got)
	}
	if trimmed.CommentCount() != 5 || trimmed.State().CommentCount != 5 || trimmed.Version() != 6 {
		t.Fatalf("trimmed count %d version %d, want 5 and 6", trimmed.CommentCount(), trimmed.Version())
	}
	if len(trimmed.Pending()) != 0 {
		t.Fatal("trimmed copy carries pending events")
	}
	// more comments on the trimmed copy are counted but not kept; decisions are the same
	if err := trimmed.AddComment(ticket.AddComment{ID: uuid.New(), Body: "b", CreatedBy: "c"}, now); err != nil {
		t.Fatalf("trimmed ticket refused a comment: %v", err)
	}
	if got := len(trimmed.State().Comments); got != 3 || trimmed.CommentCount() != 6 || trimmed.Version() != 7 {
		t.Fatalf("after a comment: kept %d, count %d, version %d", got, trimmed.CommentCount(), trimmed.Version())
	}
	if got := len(trimmed.Clone().State().Comments); got != 3 {
		t.Fatalf("a clone of a trimmed ticket keeps %d comments, want 3", got)
	}
	if got := len(full.State().Comments); got != 5 {
		t.Fatalf("trimming changed the original: %d comments", got)
	}
}
