// Package projections builds ticketd's read models from the event stream: Watermill
// projectors, one consumer group per read model, idempotent by version; and the
// queries that serve the read endpoints from them.
package projections

import (
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// EmbeddedComments is how many comments (oldest first) a ticket document carries;
// longer threads are paged through /comments.
// It equals eventstore.CachedComments: a command's result carries that many, and the
// write-through document is built from it.
const EmbeddedComments = eventstore.CachedComments

// Summary is a ticket as the list shows it.
type Summary struct {
	ID           uuid.UUID     `json:"id"`
	Title        string        `json:"title"`
	Description  string        `json:"description"`
	Email        string        `json:"email"`
	CreatedBy    string        `json:"created_by"`
	UpdatedBy    string        `json:"updated_by"`
	Status       ticket.Status `json:"status"`
	Version      int           `json:"version"`
	CommentCount int           `json:"comment_count"`
	CreatedAt    time.Time     `json:"created_at"`
	UpdatedAt    time.Time     `json:"updated_at"`
}

// View is a ticket as GET /v1/ticket/{id} shows it: the summary plus its first
// EmbeddedComments comments.
type View struct {
	Summary
	Comments []ticket.Comment `json:"comments"`
}

// ViewOf builds the document of a ticket state. Every read model and the event-store
// fallback produce documents through it, so they are equal for equal states.
func ViewOf(s ticket.State) View {
	v := View{Summary: Summary{
		ID: s.ID, Title: s.Title, Description: s.Description, Email: s.Email,
		CreatedBy: s.CreatedBy, UpdatedBy: s.UpdatedBy, Status: s.Status, Version: s.Version,
		CommentCount: s.CommentCount, CreatedAt: s.CreatedAt.UTC(), UpdatedAt: s.UpdatedAt.UTC(),
	}}
	n := min(len(s.Comments), EmbeddedComments)
	v.Comments = make([]ticket.Comment, n)
	for i := range n {
		c := s.Comments[i]
		c.CreatedAt = c.CreatedAt.UTC()
		v.Comments[i] = c
	}
	return v
}
