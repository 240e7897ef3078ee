// Package projections builds ticketd's read models from the event stream: the one fold
// from events to what readers see (Fold), the batching consumer that feeds each read
// model its own consumer group of the outbox, idempotent by version, and the queries
// that serve the read endpoints from them.
package projections

import (
	"errors"
	"fmt"
	"slices"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

// A ticket document carries its first comments, oldest first: at most EmbeddedComments
// of them, and only while their text (body, email and name, in bytes) adds up to at most
// EmbeddedCommentBytes. Longer threads are paged through /comments. The byte bound keeps
// a document (and every write of it) under about 100 KB whatever its comments hold: 100
// comments of 20,000 bytes would make a 2 MB document, rewritten for every later event.
const (
	EmbeddedComments     = 100
	EmbeddedCommentBytes = 64 << 10
)

// commentBytes is what a comment counts against EmbeddedCommentBytes.
func commentBytes(c Comment) int { return len(c.Body) + len(c.Email) + len(c.CreatedBy) }

// fits reports whether c, after comments, is embedded (Embedded of comments+c is
// len(comments)+1 when Embedded of comments is len(comments)).
func fits(comments []Comment, c Comment) bool {
	if len(comments) >= EmbeddedComments {
		return false
	}
	total := commentBytes(c)
	for _, x := range comments {
		total += commentBytes(x)
	}
	return total <= EmbeddedCommentBytes
}

// Embedded returns how many of a thread's first comments (oldest first) a document
// embeds: the longest prefix within EmbeddedComments and EmbeddedCommentBytes.
func Embedded(comments []Comment) int {
	total := 0
	for i, c := range comments {
		if total += commentBytes(c); i == EmbeddedComments || total > EmbeddedCommentBytes {
			return i
		}
	}
	return len(comments)
}

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

// Comment is a comment as readers see it.
type Comment struct {
	ID        uuid.UUID `json:"id"`
	Body      string    `json:"body"`
	Email     string    `json:"email,omitempty"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	Version   int       `json:"version"` // the version of the event that added it
}

// View is a ticket as GET /v1/ticket/{id} shows it: the summary plus its first
// comments (see Embedded). Deleted marks a tombstone: the read models keep one so a
// late event cannot bring the ticket back, and no endpoint shows it.
type View struct {
	Summary
	Comments []Comment `json:"comments"`
	Deleted  bool      `json:"-"`
	// enc is the encoding of the first comments, kept by Encode (see encodedComments).
	enc *encodedComments
	// encOnly says the embedded comments are held in enc alone and Comments is empty:
	// a compact view (see Compact), for folding and Encode only.
	encOnly bool
}

// Compact returns v holding its embedded comments only as their encoding, when its
// thread has gone past them (CommentCount > len(Comments)): those comments never change
// again, and a fold never reads them (it appends only to a thread that is all
// embedded). A cache of views to fold onto then holds a long ticket's comments once,
// encoded, instead of twice. A compact view is for Fold, FoldAll and Encode only: its
// Comments is empty, so it must not be marshalled as it is or shown. Any other view is
// returned as it is.
func (v View) Compact() View {
	if v.encOnly || v.CommentCount <= len(v.Comments) || v.enc == nil || v.enc.n != len(v.Comments) || !v.enc.covers(v.Comments) {
		return v
	}
	v.Comments, v.encOnly = []Comment{}, true
	return v
}

// ErrOutOfOrder is returned by Fold for an event that does not follow the view: a
// version that is not the next one, or an event after the deletion. Read models treat
// it as "replay this ticket from the event store".
var ErrOutOfOrder = errors.New("event does not follow the view")

// ErrUnknownEvent is returned by Fold for event data it has no case for: a read model
// must never guess what an event means.
var ErrUnknownEvent = errors.New("no fold case for event")

// Fold returns v with event e applied: the only place where events become what readers
// see. The Postgres rows, the Redis document, the rebuild, the write-through and the
// event-store fallbacks are all made from its result (and comment rows from
// CommentOf, which it uses), so they agree for equal streams. The zero View is the
// state before the first event. v is not changed: the result shares nothing with it
// that a later Fold writes to.
//
// Errors: ErrOutOfOrder when e is not v's next version (or follows a deletion),
// ErrUnknownEvent for data without a case here. Workflow rules are the aggregate's
// business; a stored stream has passed them.
func Fold(v View, e ticket.Event) (View, error) {
	return fold(v, e, nil)
}

// owned is what FoldAll knows of the view it folds onto: its comment slice belongs to
// the fold alone, so a comment may be appended in place instead of into a copy (a
// stream costs one copy instead of one per comment), and the text of its comments
// adds up to bytes (so a stream's fits cost one addition each, not a sum over the
// thread).
type owned struct{ bytes int }

// fold is Fold; o is non-nil when v's comments are owned (see owned).
func fold(v View, e ticket.Event, o *owned) (View, error) {
	if _, erasure := e.Data.(ticket.SubjectErased); e.Version != v.Version+1 || (v.Deleted && !erasure) {
		return v, fmt.Errorf("%w: %s v%d of %s onto version %d", ErrOutOfOrder, e.Type(), e.Version, e.TicketID, v.Version)
	}
	if (e.Version == 1) != isOpened(e.Data) || (v.Version > 0 && v.ID != e.TicketID) {
		return v, fmt.Errorf("%w: %s v%d of %s", ErrOutOfOrder, e.Type(), e.Version, e.TicketID)
	}
	at := e.At.UTC()
	switch d := e.Data.(type) {
	case ticket.Opened:
		comments := []Comment{}
		if o != nil {
			comments, o.bytes = v.Comments[:0], 0 // the room FoldAll made for the stream
		}
		v = View{Summary: Summary{
			ID: e.TicketID, Title: d.Title, Description: d.Description, Email: d.Email,
			CreatedBy: d.CreatedBy, UpdatedBy: d.CreatedBy, Status: ticket.StatusOpen, CreatedAt: at,
		}, Comments: comments}
	case ticket.CommentAdded:
		// The document embeds the first comments only; it appends when it holds all
		// so far (a view folded from a row without its comments stays without) and the
		// comment fits (see Embedded: once one does not, none after it is embedded).
		c, _ := CommentOf(e)
		if !v.encOnly && len(v.Comments) == v.CommentCount {
			if o == nil && fits(v.Comments, c) {
				v.Comments = append(v.Comments[:len(v.Comments):len(v.Comments)], c) // append copies
			} else if o != nil && len(v.Comments) < EmbeddedComments && o.bytes+commentBytes(c) <= EmbeddedCommentBytes {
				o.bytes += commentBytes(c)
				v.Comments = append(v.Comments, c)
			}
		}
		v.CommentCount++
	case ticket.StatusChanged:
		v.Status = d.To
		v.UpdatedBy = d.UpdatedBy
	case ticket.Deleted:
		v.Deleted = true
	case ticket.SubjectErased:
		v = erase(v, d, o != nil)
		if o != nil { // the scrubbed comments are shorter: what later ones must fit in
			o.bytes = 0
			for _, c := range v.Comments {
				o.bytes += commentBytes(c)
			}
		}
	default:
		return v, fmt.Errorf("%w: %s (%T)", ErrUnknownEvent, e.Type(), e.Data)
	}
	if v.Comments == nil {
		v.Comments = []Comment{}
	}
	v.Version = e.Version
	v.UpdatedAt = at
	return v, nil
}

// erase returns v with what d names of the erased subject read as ticket.Erased:
// the requester's fields when d.Requester, and the email and author of the listed
// comments among those embedded (the rest are in no view; a read model that keeps
// them scrubs them with EraseComment).
func erase(v View, d ticket.SubjectErased, owned bool) View {
	if d.Requester {
		v.Email, v.CreatedBy, v.UpdatedBy = ticket.Erased, ticket.Erased, ticket.Erased
	}
	if len(d.Comments) == 0 {
		return v
	}
	if v.encOnly {
		// the embedded comments are held encoded only: decode them to scrub them
		var cs []Comment
		if err := gojson.Unmarshal(v.enc.json, &cs); err == nil {
			v.Comments, v.encOnly, v.enc = cs, false, nil
			owned = true
		}
	}
	if len(v.Comments) == 0 {
		return v
	}
	if !owned {
		v.Comments = append([]Comment(nil), v.Comments...)
	}
	v.enc = nil
	for i := range v.Comments {
		v.Comments[i] = EraseComment(v.Comments[i], d)
	}
	return v
}

// EraseComment returns c with its email and author read as ticket.Erased when d lists
// it, else c.
func EraseComment(c Comment, d ticket.SubjectErased) Comment {
	if !slices.Contains(d.Comments, c.ID) {
		return c
	}
	if c.Email != "" {
		c.Email = ticket.Erased
	}
	c.CreatedBy = ticket.Erased
	return c
}

// FoldAll folds events onto v in order (see Fold); like Fold it leaves v unchanged.
func FoldAll(v View, events ...ticket.Event) (View, error) {
	if len(events) == 0 {
		return v, nil
	}
	start := v
	v.Comments = append(make([]Comment, 0, min(len(v.Comments)+len(events), EmbeddedComments)), v.Comments...)
	o := &owned{}
	for _, c := range v.Comments {
		o.bytes += commentBytes(c)
	}
	var err error
	for _, e := range events {
		if v, err = fold(v, e, o); err != nil {
			return start, err
		}
	}
	return v, nil
}

// CommentOf returns the comment an event adds, and false for any other event.
func CommentOf(e ticket.Event) (Comment, bool) {
	d, ok := e.Data.(ticket.CommentAdded)
	if !ok {
		return Comment{}, false
	}
	return Comment{ID: d.CommentID, Body: d.Body, Email: d.Email, CreatedBy: d.CreatedBy, CreatedAt: e.At.UTC(), Version: e.Version}, true
}

func isOpened(d ticket.EventData) bool {
	_, ok := d.(ticket.Opened)
	return ok
}
