// Package ticket is the domain of ticketd: the ticket aggregate, its commands and the
// events they record. It does no I/O and never reads the clock: the caller passes time
// and ids in, and stores the events the commands record.
package ticket

import (
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
)

// State is what the aggregate's rules look at, folded from its events. Titles, texts,
// authors and times are not here: the events carry them, and the read side folds them
// on its own.
type State struct {
	ID           uuid.UUID
	Status       Status // empty before the ticket is opened
	Version      int    // the number of events, pending ones included
	Deleted      bool
	CommentCount int
}

// Ticket is the aggregate. Its state changes only in Apply; commands check their rule
// against the state and record new events, which are applied at once and kept as
// pending until the caller has stored them.
type Ticket struct {
	s       State
	pending []Event
}

// New returns an empty ticket with the given id, ready for Open or for replaying events.
func New(id uuid.UUID) *Ticket {
	return &Ticket{s: State{ID: id}}
}

// Replay folds stored events into a ticket. Events must be the stream in order from
// version 1; a gap, a repeat, another ticket's event or a stream the commands could
// not have recorded is an error.
func Replay(id uuid.UUID, events []Event) (*Ticket, error) {
	t := New(id)
	for _, e := range events {
		if err := t.Apply(e); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// ID returns the ticket's id.
func (t *Ticket) ID() uuid.UUID { return t.s.ID }

// Version is the number of events in the stream, pending ones included.
func (t *Ticket) Version() int { return t.s.Version }

// Status returns the current status (empty before the ticket is opened).
func (t *Ticket) Status() Status { return t.s.Status }

// Exists reports whether the ticket was opened and not deleted.
func (t *Ticket) Exists() bool { return t.s.Version > 0 && !t.s.Deleted }

// CommentCount is the number of comments on the ticket.
func (t *Ticket) CommentCount() int { return t.s.CommentCount }

// Deleted reports whether the ticket was deleted.
func (t *Ticket) Deleted() bool { return t.s.Deleted }

// State returns the ticket's state (a copy).
func (t *Ticket) State() State { return t.s }

// Restore returns the ticket as it stood at s, a State taken from a replayed ticket
// (State), without pending events: a cache of aggregates keeps their states only.
func Restore(s State) *Ticket { return &Ticket{s: s} }

// Clone returns an independent copy without pending events, for caches that hand the
// same replayed ticket to several commands.
func (t *Ticket) Clone() *Ticket {
	return &Ticket{s: t.s}
}

// Pending returns the events recorded by commands and not yet stored.
func (t *Ticket) Pending() []Event { return slices.Clone(t.pending) }

// Apply folds one stored event into the state. It is the only place state changes,
// and it changes nothing when it refuses the event.
func (t *Ticket) Apply(e Event) error {
	if e.TicketID != t.s.ID {
		return fmt.Errorf("event of ticket %s applied to ticket %s", e.TicketID, t.s.ID)
	}
	if e.Version != t.s.Version+1 {
		return fmt.Errorf("ticket %s: event version %d follows version %d", t.s.ID, e.Version, t.s.Version)
	}
	// A stream that could not have been recorded by the commands is refused, so a store
	// bug or a hand-edited row is caught at replay, not served.
	if _, opened := e.Data.(Opened); opened != (t.s.Version == 0) {
		return fmt.Errorf("ticket %s: %s at version %d is out of place", t.s.ID, typeName(e.Data), e.Version)
	}
	if _, erasure := e.Data.(SubjectErased); t.s.Deleted && !erasure {
		return fmt.Errorf("ticket %s: event at version %d follows the deletion", t.s.ID, e.Version)
	}
	switch d := e.Data.(type) {
	case Opened:
		t.s.Status = StatusOpen
	case CommentAdded:
		if t.s.Status == StatusClosed {
			return fmt.Errorf("ticket %s: comment at version %d on a closed ticket", t.s.ID, e.Version)
		}
		t.s.CommentCount++
	case StatusChanged:
		if d.From != t.s.Status || !t.s.Status.CanMoveTo(d.To) {
			return fmt.Errorf("ticket %s: status change %s -> %s at version %d from %s", t.s.ID, d.From, d.To, e.Version, t.s.Status)
		}
		t.s.Status = d.To
	case Deleted:
		t.s.Deleted = true
	case SubjectErased:
		// personal data only: nothing the rules read
	default:
		return fmt.Errorf("unknown event data %T", e.Data)
	}
	t.s.Version = e.Version
	return nil
}

func typeName(d EventData) string {
	if d == nil {
		return "event without data"
	}
	return d.EventType()
}

// record applies a new event and keeps it as pending.
func (t *Ticket) record(now time.Time, actor string, d EventData) {
	e := Event{TicketID: t.s.ID, Version: t.s.Version + 1, At: now.UTC(), Actor: actor, Data: d}
	if err := t.Apply(e); err != nil {
		panic(err) // a recorded event always follows the state: a bug if not
	}
	t.pending = append(t.pending, e)
}

// OpenTicket is the command that creates a ticket. Status may be empty or "open":
// a ticket is always created open, and naming another status is invalid.
type OpenTicket struct {
	Title       string
	Description string
	Email       string
	CreatedBy   string
	Status      string
}

// Validate checks the command's fields on their own, returning a *ValidationError.
func (c OpenTicket) Validate() error {
	if c.Status != "" && c.Status != string(StatusOpen) {
		return &ValidationError{Field: "status", Reason: "a ticket is created open; omit status or send \"open\""}
	}
	if err := checkText("title", c.Title, 1, MaxTitle, MaxTitleBytes, false); err != nil {
		return err
	}
	if err := checkText("description", c.Description, 0, MaxDescription, MaxDescriptionBytes, true); err != nil {
		return err
	}
	if err := checkEmail("email", c.Email, true); err != nil {
		return err
	}
	return checkText("created_by", c.CreatedBy, 1, MaxName, MaxNameBytes, false)
}

// Open records TicketOpened on a new ticket. It fails with ErrInvalid for bad input and
// ErrConflict if the ticket already has events.
func (t *Ticket) Open(c OpenTicket, now time.Time) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if t.s.Version != 0 {
		return fmt.Errorf("ticket %s already exists: %w", t.s.ID, ErrConflict)
	}
	t.record(now, c.CreatedBy, Opened{Title: c.Title, Description: c.Description, Email: c.Email, CreatedBy: c.CreatedBy})
	return nil
}

// AddComment is the command that comments on a ticket. ID is the new comment's id,
// chosen by the caller (ids are not generated inside the domain).
type AddComment struct {
	ID        uuid.UUID
	Body      string
	Email     string
	CreatedBy string
}

// Validate checks the command's fields on their own, returning a *ValidationError.
func (c AddComment) Validate() error {
	if err := checkText("body", c.Body, 1, MaxComment, MaxCommentBytes, true); err != nil {
		return err
	}
	if err := checkText("created_by", c.CreatedBy, 1, MaxName, MaxNameBytes, false); err != nil {
		return err
	}
	return checkEmail("email", c.Email, false)
}

// AddComment records CommentAdded. It fails with ErrInvalid for bad input, ErrNotFound
// for a missing or deleted ticket and a *TransitionError (ErrConflict) when the ticket
// is closed.
func (t *Ticket) AddComment(c AddComment, now time.Time) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if !t.Exists() {
		return ErrNotFound
	}
	if t.s.Status == StatusClosed {
		return &TransitionError{Current: t.s.Status, Allowed: t.s.Status.Next()}
	}
	t.record(now, c.CreatedBy, CommentAdded{CommentID: c.ID, Body: c.Body, Email: c.Email, CreatedBy: c.CreatedBy})
	return nil
}

// ChangeStatus is the command that moves a ticket in the workflow.
type ChangeStatus struct {
	Status    string
	UpdatedBy string
}

// Validate checks the command's fields on their own, returning a *ValidationError.
func (c ChangeStatus) Validate() error {
	if _, err := ParseStatus("status", c.Status); err != nil {
		return err
	}
	return checkText("updated_by", c.UpdatedBy, 1, MaxName, MaxNameBytes, false)
}

// ChangeStatus records StatusChanged when the table allows it. Asking for the current
// status is a no-op: no event, no error (PUT is safe to retry). It fails with ErrInvalid
// for bad input, ErrNotFound for a missing or deleted ticket and a *TransitionError
// (ErrConflict) for a move the table refuses.
func (t *Ticket) ChangeStatus(c ChangeStatus, now time.Time) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if !t.Exists() {
		return ErrNotFound
	}
	to := Status(c.Status)
	if to == t.s.Status {
		return nil
	}
	if !t.s.Status.CanMoveTo(to) {
		return &TransitionError{Current: t.s.Status, Wanted: to, Allowed: t.s.Status.Next()}
	}
	t.record(now, c.UpdatedBy, StatusChanged{From: t.s.Status, To: to, UpdatedBy: c.UpdatedBy})
	return nil
}

// DeleteTicket is the command that deletes a ticket. DeletedBy is optional.
type DeleteTicket struct {
	DeletedBy string
}

// Validate checks the command's fields on their own, returning a *ValidationError.
// DeletedBy may be empty, but a name that shows nothing (only whitespace or invisible
// fillers) is refused rather than recorded as an invisible actor.
func (c DeleteTicket) Validate() error {
	if c.DeletedBy != "" && Blank(c.DeletedBy) {
		return &ValidationError{Field: "deleted_by", Reason: "must not be blank (whitespace and invisible fillers do not count); omit it to delete as anonymous"}
	}
	return checkText("deleted_by", c.DeletedBy, 0, MaxName, MaxNameBytes, false)
}

// Delete records TicketDeleted. Deleting a missing or already deleted ticket fails with
// ErrNotFound. Any status may be deleted, closed included: deletion is an
// administrative act outside the workflow, and the history keeps everything.
func (t *Ticket) Delete(c DeleteTicket, now time.Time) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if !t.Exists() {
		return ErrNotFound
	}
	actor := c.DeletedBy
	if actor == "" {
		actor = "anonymous"
	}
	t.record(now, actor, Deleted{DeletedBy: c.DeletedBy})
	return nil
}

// EraseSubject is the command that records a data subject's erasure on a ticket that
// holds their personal data (see SubjectErased). Who erased is ErasedBy.
type EraseSubject struct {
	Subject   string
	Requester bool
	Comments  []uuid.UUID
	ErasedBy  string
	Reason    string
}

// EraseSubject records SubjectErased, also on a closed or deleted ticket (the erasure
// reaches every ticket the subject is in). It fails with ErrNotFound for a ticket
// without events and ErrInvalid for an erasure without a subject or an actor.
func (t *Ticket) EraseSubject(c EraseSubject, now time.Time) error {
	if t.s.Version == 0 {
		return fmt.Errorf("ticket %s: %w", t.s.ID, ErrNotFound)
	}
	if c.Subject == "" {
		return &ValidationError{Field: "subject", Reason: "is required"}
	}
	if err := checkText("erased_by", c.ErasedBy, 1, MaxName, MaxNameBytes, false); err != nil {
		return err
	}
	if err := checkText("reason", c.Reason, 0, MaxComment, MaxCommentBytes, true); err != nil {
		return err
	}
	t.record(now, c.ErasedBy, SubjectErased{Subject: c.Subject, Requester: c.Requester, Comments: c.Comments, ErasedBy: c.ErasedBy, Reason: c.Reason})
	return nil
}
