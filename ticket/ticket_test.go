package ticket_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

// Fixed ids and times: the domain never reads the clock, so neither do the tests.
var (
	ticketID  = uuid.MustParse("11111111-1111-4111-8111-111111111111")
	otherID   = uuid.MustParse("22222222-2222-4222-8222-222222222222")
	commentID = uuid.MustParse("33333333-3333-4333-8333-333333333333")

	// past is when the given events happened.
	past = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	// now is the time passed to commands. It is deliberately not in UTC: recorded
	// events must carry now.UTC().
	now = time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.FixedZone("UTC+3", 3*60*60))
)

// ---- given ----------------------------------------------------------------

// stream numbers event data as ticketID's stream from version 1.
func stream(data ...ticket.EventData) []ticket.Event {
	evs := make([]ticket.Event, len(data))
	for i, d := range data {
		evs[i] = ticket.Event{
			TicketID: ticketID,
			Version:  i + 1,
			At:       past.Add(time.Duration(i) * time.Minute),
			Actor:    "seed",
			Data:     d,
		}
	}
	return evs
}

func openedData() ticket.Opened {
	return ticket.Opened{
		Title:       "Printer on fire",
		Description: "It is on fire.\nAgain.",
		Email:       "alice@example.com",
		CreatedBy:   "alice",
	}
}

func moved(from, to ticket.Status) ticket.StatusChanged {
	return ticket.StatusChanged{From: from, To: to, UpdatedBy: "seed"}
}

// historyIn returns the event data of a ticket brought to status s by legal moves.
func historyIn(t *testing.T, s ticket.Status) []ticket.EventData {
	t.Helper()
	switch s {
	case ticket.StatusOpen:
		return []ticket.EventData{openedData()}
	case ticket.StatusAnswered:
		return []ticket.EventData{openedData(), moved(ticket.StatusOpen, ticket.StatusAnswered)}
	case ticket.StatusWaitAnswer:
		return []ticket.EventData{openedData(),
			moved(ticket.StatusOpen, ticket.StatusAnswered),
			moved(ticket.StatusAnswered, ticket.StatusWaitAnswer)}
	case ticket.StatusClosed:
		return []ticket.EventData{openedData(), moved(ticket.StatusOpen, ticket.StatusClosed)}
	}
	t.Fatalf("no history for status %q", s)
	return nil
}

// given replays events into a ticket and checks the replay produced no pending events.
func given(t *testing.T, events ...ticket.Event) *ticket.Ticket {
	t.Helper()
	tk, err := ticket.Replay(ticketID, events)
	if err != nil {
		t.Fatalf("given: replay: expected no error, got %v", err)
	}
	if p := tk.Pending(); len(p) != 0 {
		t.Fatalf("given: expected no pending events after replay, got %d: %+v", len(p), p)
	}
	return tk
}

// givenIn replays a ticket in status s and checks it got there.
func givenIn(t *testing.T, s ticket.Status) *ticket.Ticket {
	t.Helper()
	tk := given(t, stream(historyIn(t, s)...)...)
	if tk.Status() != s {
		t.Fatalf("given: expected status %q, got %q", s, tk.Status())
	}
	return tk
}

// givenDeletedIn replays a ticket deleted while in status s.
func givenDeletedIn(t *testing.T, s ticket.Status) *ticket.Ticket {
	t.Helper()
	tk := given(t, stream(append(historyIn(t, s), ticket.Deleted{DeletedBy: "admin"})...)...)
	if !tk.Deleted() || tk.Exists() {
		t.Fatalf("given: expected a deleted ticket, got Deleted()=%v Exists()=%v", tk.Deleted(), tk.Exists())
	}
	return tk
}

// recordedAt is the event a command is expected to record after version prev.
func recordedAt(prev int, actor string, d ticket.EventData) ticket.Event {
	return ticket.Event{TicketID: ticketID, Version: prev + 1, At: now.UTC(), Actor: actor, Data: d}
}

func validOpen() ticket.OpenTicket {
	return ticket.OpenTicket{
		Title:       "Cannot log in",
		Description: "Since this morning.\nTried twice.",
		Email:       "bob@example.com",
		CreatedBy:   "bob",
	}
}

func validComment() ticket.AddComment {
	return ticket.AddComment{
		ID:        commentID,
		Body:      "Have you tried turning it off and on again?\n-- support",
		Email:     "support@example.com",
		CreatedBy: "carol",
	}
}

// ---- then -----------------------------------------------------------------

// thenEvents checks that the ticket recorded exactly want, in order.
func thenEvents(t *testing.T, tk *ticket.Ticket, want ...ticket.Event) {
	t.Helper()
	got := tk.Pending()
	if len(got) != len(want) {
		t.Fatalf("pending events: expected %d, got %d: %+v", len(want), len(got), got)
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("pending event %d:\nexpected %+v\n     got %+v", i, want[i], got[i])
		}
		if loc := got[i].At.Location(); loc != time.UTC {
			t.Errorf("pending event %d: expected At in UTC, got location %v", i, loc)
		}
	}
}

// thenNothing checks that a command recorded no event and left the version alone.
func thenNothing(t *testing.T, tk *ticket.Ticket, version int) {
	t.Helper()
	if p := tk.Pending(); len(p) != 0 {
		t.Errorf("pending events: expected none, got %d: %+v", len(p), p)
	}
	if tk.Version() != version {
		t.Errorf("version: expected %d, got %d", version, tk.Version())
	}
}

func thenNoError(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("expected no error, got %v", err)
	}
}

// thenErrorIs checks err wraps target and none of the other error kinds.
func thenErrorIs(t *testing.T, err, target error) {
	t.Helper()
	if err == nil {
		t.Fatalf("expected an error wrapping %q, got nil", target)
	}
	if !errors.Is(err, target) {
		t.Fatalf("expected an error wrapping %q, got %v (%T)", target, err, err)
	}
	for _, other := range []error{ticket.ErrNotFound, ticket.ErrInvalid, ticket.ErrConflict, ticket.ErrPrecondition, ticket.ErrUnavailable} {
		if other != target && errors.Is(err, other) {
			t.Errorf("expected error to wrap only %q, it also wraps %q: %v", target, other, err)
		}
	}
}

// thenTransitionError checks err is a *TransitionError (ErrConflict) with the fields given.
func thenTransitionError(t *testing.T, err error, current, wanted ticket.Status) {
	t.Helper()
	thenErrorIs(t, err, ticket.ErrConflict)
	var te *ticket.TransitionError
	if !errors.As(err, &te) {
		t.Fatalf("expected a *ticket.TransitionError, got %T: %v", err, err)
	}
	if te.Current != current {
		t.Errorf("TransitionError.Current: expected %q, got %q", current, te.Current)
	}
	if te.Wanted != wanted {
		t.Errorf("TransitionError.Wanted: expected %q, got %q", wanted, te.Wanted)
	}
	if want := current.Next(); !slices.Equal(te.Allowed, want) {
		t.Errorf("TransitionError.Allowed: expected %v, got %v", want, te.Allowed)
	}
	if te.Error() == "" {
		t.Errorf("TransitionError.Error(): expected a message, got an empty string")
	}
}

// thenValidationError checks err is a *ValidationError (ErrInvalid) naming field.
func thenValidationError(t *testing.T, err error, field string) {
	t.Helper()
	thenErrorIs(t, err, ticket.ErrInvalid)
	var ve *ticket.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("expected a *ticket.ValidationError, got %T: %v", err, err)
	}
	if ve.Field != field {
		t.Errorf("ValidationError.Field: expected %q, got %q (%v)", field, ve.Field, err)
	}
}

// ---- status workflow ------------------------------------------------------

type outcome int

const (
	noop    outcome = iota // X -> X: nil error, nothing recorded
	allowed                // one StatusChanged recorded
	refused                // *TransitionError
)

func (o outcome) String() string {
	switch o {
	case noop:
		return "is_noop"
	case allowed:
		return "records_status_changed"
	default:
		return "is_refused"
	}
}

// statusTable is DESIGN §1 written out cell by cell, independently of status.go.
var statusTable = []struct {
	from, to ticket.Status
	want     outcome
}{
	{ticket.StatusOpen, ticket.StatusOpen, noop},
	{ticket.StatusOpen, ticket.StatusAnswered, allowed},
	{ticket.StatusOpen, ticket.StatusWaitAnswer, refused},
	{ticket.StatusOpen, ticket.StatusClosed, allowed},

	{ticket.StatusAnswered, ticket.StatusOpen, refused},
	{ticket.StatusAnswered, ticket.StatusAnswered, noop},
	{ticket.StatusAnswered, ticket.StatusWaitAnswer, allowed},
	{ticket.StatusAnswered, ticket.StatusClosed, allowed},

	{ticket.StatusWaitAnswer, ticket.StatusOpen, refused},
	{ticket.StatusWaitAnswer, ticket.StatusAnswered, allowed},
	{ticket.StatusWaitAnswer, ticket.StatusWaitAnswer, noop},
	{ticket.StatusWaitAnswer, ticket.StatusClosed, allowed},

	{ticket.StatusClosed, ticket.StatusOpen, refused},
	{ticket.StatusClosed, ticket.StatusAnswered, refused},
	{ticket.StatusClosed, ticket.StatusWaitAnswer, refused},
	{ticket.StatusClosed, ticket.StatusClosed, noop},
}

func TestStatusTableCoversEveryPair(t *testing.T) {
	seen := map[[2]ticket.Status]bool{}
	for _, row := range statusTable {
		k := [2]ticket.Status{row.from, row.to}
		if seen[k] {
			t.Errorf("pair %s -> %s: expected once in the table, got it twice", row.from, row.to)
		}
		seen[k] = true
	}
	for _, from := range ticket.Statuses {
		for _, to := range ticket.Statuses {
			if !seen[[2]ticket.Status{from, to}] {
				t.Errorf("pair %s -> %s: expected in the table, got it missing", from, to)
			}
		}
	}
	if len(ticket.Statuses) != 4 || len(statusTable) != 16 {
		t.Errorf("expected 4 statuses and 16 pairs, got %d statuses and %d pairs", len(ticket.Statuses), len(statusTable))
	}
}

func TestChangeStatus(t *testing.T) {
	for _, row := range statusTable {
		t.Run(fmt.Sprintf("%s_to_%s_%s", row.from, row.to, row.want), func(t *testing.T) {
			// given
			tk := givenIn(t, row.from)
			prev := tk.Version()
			before := tk.State()

			// when
			err := tk.ChangeStatus(ticket.ChangeStatus{Status: string(row.to), UpdatedBy: "dave"}, now)

			// then
			switch row.want {
			case noop:
				thenNoError(t, err)
				thenNothing(t, tk, prev)
				if got := tk.State(); !reflect.DeepEqual(got, before) {
					t.Errorf("state after no-op:\nexpected %+v\n     got %+v", before, got)
				}
			case allowed:
				thenNoError(t, err)
				thenEvents(t, tk, recordedAt(prev, "dave",
					ticket.StatusChanged{From: row.from, To: row.to, UpdatedBy: "dave"}))
				want := before
				want.Status, want.Version = row.to, prev+1
				if got := tk.State(); got != want {
					t.Errorf("state:\nexpected %+v\n     got %+v", want, got)
				}
			case refused:
				thenTransitionError(t, err, row.from, row.to)
				thenNothing(t, tk, prev)
				if tk.Status() != row.from {
					t.Errorf("status after refusal: expected %q, got %q", row.from, tk.Status())
				}
			}
		})
	}
}

func TestStatusRules(t *testing.T) {
	t.Run("can_move_to_agrees_with_table", func(t *testing.T) {
		for _, row := range statusTable {
			if got := row.from.CanMoveTo(row.to); got != (row.want == allowed) {
				t.Errorf("%s.CanMoveTo(%s): expected %v, got %v", row.from, row.to, row.want == allowed, got)
			}
		}
	})
	t.Run("next_lists_allowed_moves_in_workflow_order", func(t *testing.T) {
		for _, from := range ticket.Statuses {
			var want []ticket.Status
			for _, row := range statusTable {
				if row.from == from && row.want == allowed {
					want = append(want, row.to)
				}
			}
			if got := from.Next(); !slices.Equal(got, want) {
				t.Errorf("%s.Next(): expected %v, got %v", from, want, got)
			}
		}
	})
	t.Run("next_returns_a_fresh_slice", func(t *testing.T) {
		n := ticket.StatusOpen.Next()
		n[0] = ticket.StatusClosed
		if got := ticket.StatusOpen.Next(); got[0] != ticket.StatusAnswered {
			t.Errorf("Next after mutating a previous result: expected %v first, got %v", ticket.StatusAnswered, got)
		}
	})
	t.Run("unknown_status_is_invalid", func(t *testing.T) {
		for _, v := range []string{"", "bogus", "Open", "OPEN", " open", "wait-answer"} {
			s, err := ticket.ParseStatus("status", v)
			thenValidationError(t, err, "status")
			if s != "" {
				t.Errorf("ParseStatus(%q): expected empty status on error, got %q", v, s)
			}
		}
	})
	t.Run("known_status_parses", func(t *testing.T) {
		for _, want := range ticket.Statuses {
			got, err := ticket.ParseStatus("status", string(want))
			thenNoError(t, err)
			if got != want || !got.Valid() {
				t.Errorf("ParseStatus(%q): expected valid %q, got %q", want, want, got)
			}
		}
	})
}

func TestChangeStatusNeedsALiveTicket(t *testing.T) {
	t.Run("never_opened_ticket_refuses_status_change", func(t *testing.T) {
		tk := ticket.New(ticketID)
		err := tk.ChangeStatus(ticket.ChangeStatus{Status: "answered", UpdatedBy: "dave"}, now)
		thenErrorIs(t, err, ticket.ErrNotFound)
		thenNothing(t, tk, 0)
	})
	t.Run("invalid_command_is_rejected_before_the_state_is_looked_at", func(t *testing.T) {
		tk := givenIn(t, ticket.StatusOpen)
		err := tk.ChangeStatus(ticket.ChangeStatus{Status: "bogus", UpdatedBy: "dave"}, now)
		thenValidationError(t, err, "status")
		thenNothing(t, tk, 1)
	})
	t.Run("successive_moves_number_events_in_order", func(t *testing.T) {
		tk := givenIn(t, ticket.StatusOpen)
		later := now.Add(time.Hour)
		thenNoError(t, tk.ChangeStatus(ticket.ChangeStatus{Status: "answered", UpdatedBy: "dave"}, now))
		thenNoError(t, tk.ChangeStatus(ticket.ChangeStatus{Status: "wait_answer", UpdatedBy: "erin"}, later))
		thenEvents(t, tk,
			recordedAt(1, "dave", ticket.StatusChanged{From: "open", To: "answered", UpdatedBy: "dave"}),
			ticket.Event{TicketID: ticketID, Version: 3, At: later.UTC(), Actor: "erin",
				Data: ticket.StatusChanged{From: "answered", To: "wait_answer", UpdatedBy: "erin"}},
		)
	})
}

// ---- creation -------------------------------------------------------------

func TestOpen(t *testing.T) {
	for _, status := range []string{"", "open"} {
		t.Run(fmt.Sprintf("status_%q_opens_the_ticket", status), func(t *testing.T) {
			// given
			tk := ticket.New(ticketID)
			c := validOpen()
			c.Status = status

			// when
			err := tk.Open(c, now)

			// then
			thenNoError(t, err)
			thenEvents(t, tk, recordedAt(0, c.CreatedBy, ticket.Opened{
				Title: c.Title, Description: c.Description, Email: c.Email, CreatedBy: c.CreatedBy,
			}))
			want := ticket.State{ID: ticketID, Status: ticket.StatusOpen, Version: 1}
			if got := tk.State(); got != want {
				t.Errorf("state:\nexpected %+v\n     got %+v", want, got)
			}
			if !tk.Exists() || tk.Deleted() || tk.Version() != 1 || tk.Status() != ticket.StatusOpen {
				t.Errorf("expected an existing open ticket at version 1, got Exists()=%v Deleted()=%v Version()=%d Status()=%q",
					tk.Exists(), tk.Deleted(), tk.Version(), tk.Status())
			}
		})
	}

	for _, status := range []string{"answered", "closed", "wait_answer", "bogus", "OPEN"} {
		t.Run(fmt.Sprintf("status_%s_is_invalid_at_creation", status), func(t *testing.T) {
			tk := ticket.New(ticketID)
			c := validOpen()
			c.Status = status

			err := tk.Open(c, now)

			thenValidationError(t, err, "status")
			thenNothing(t, tk, 0)
			if tk.Exists() {
				t.Errorf("Exists(): expected false after a refused Open, got true")
			}
		})
	}

	for _, s := range ticket.Statuses {
		t.Run("existing_"+string(s)+"_ticket_refuses_open", func(t *testing.T) {
			tk := givenIn(t, s)
			prev := tk.Version()
			err := tk.Open(validOpen(), now)
			thenErrorIs(t, err, ticket.ErrConflict)
			thenNothing(t, tk, prev)
		})
	}

	t.Run("opened_twice_refuses_second_open", func(t *testing.T) {
		tk := ticket.New(ticketID)
		thenNoError(t, tk.Open(validOpen(), now))
		err := tk.Open(validOpen(), now)
		thenErrorIs(t, err, ticket.ErrConflict)
		if len(tk.Pending()) != 1 || tk.Version() != 1 {
			t.Errorf("expected 1 pending event at version 1, got %d at version %d", len(tk.Pending()), tk.Version())
		}
	})

	t.Run("deleted_ticket_refuses_open", func(t *testing.T) {
		tk := givenDeletedIn(t, ticket.StatusOpen)
		prev := tk.Version()
		err := tk.Open(validOpen(), now)
		thenErrorIs(t, err, ticket.ErrConflict)
		thenNothing(t, tk, prev)
	})

	t.Run("invalid_open_records_nothing", func(t *testing.T) {
		tk := ticket.New(ticketID)
		c := validOpen()
		c.Title = ""
		thenValidationError(t, tk.Open(c, now), "title")
		thenNothing(t, tk, 0)
	})
}

// ---- comments -------------------------------------------------------------

func TestAddComment(t *testing.T) {
	for _, s := range []ticket.Status{ticket.StatusOpen, ticket.StatusAnswered, ticket.StatusWaitAnswer} {
		t.Run(string(s)+"_ticket_accepts_comment", func(t *testing.T) {
			// given
			tk := givenIn(t, s)
			prev := tk.Version()
			c := validComment()

			// when
			err := tk.AddComment(c, now)

			// then
			thenNoError(t, err)
			thenEvents(t, tk, recordedAt(prev, c.CreatedBy, ticket.CommentAdded{
				CommentID: c.ID, Body: c.Body, Email: c.Email, CreatedBy: c.CreatedBy,
			}))
			want := ticket.State{ID: ticketID, Status: s, Version: prev + 1, CommentCount: 1}
			if got := tk.State(); got != want {
				t.Errorf("state:\nexpected %+v\n     got %+v", want, got)
			}
		})
	}

	t.Run("comment_without_email_is_accepted", func(t *testing.T) {
		tk := givenIn(t, ticket.StatusOpen)
		c := validComment()
		c.Email = ""
		thenNoError(t, tk.AddComment(c, now))
		thenEvents(t, tk, recordedAt(1, c.CreatedBy, ticket.CommentAdded{CommentID: c.ID, Body: c.Body, CreatedBy: c.CreatedBy}))
	})

	t.Run("comments_keep_their_order_and_versions", func(t *testing.T) {
		tk := givenIn(t, ticket.StatusAnswered) // version 2
		first, second := validComment(), validComment()
		second.ID = otherID
		second.Body = "second"
		later := now.Add(time.Second)
		thenNoError(t, tk.AddComment(first, now))
		thenNoError(t, tk.AddComment(second, later))
		thenEvents(t, tk,
			recordedAt(2, first.CreatedBy, ticket.CommentAdded{
				CommentID: first.ID, Body: first.Body, Email: first.Email, CreatedBy: first.CreatedBy,
			}),
			ticket.Event{TicketID: ticketID, Version: 4, At: later.UTC(), Actor: second.CreatedBy,
				Data: ticket.CommentAdded{CommentID: second.ID, Body: "second", Email: second.Email, CreatedBy: second.CreatedBy}},
		)
		if tk.CommentCount() != 2 || tk.Version() != 4 {
			t.Errorf("expected 2 comments at version 4, got %d at version %d", tk.CommentCount(), tk.Version())
		}
	})

	t.Run("closed_ticket_refuses_comment", func(t *testing.T) {
		tk := givenIn(t, ticket.StatusClosed)
		prev := tk.Version()

		err := tk.AddComment(validComment(), now)

		thenTransitionError(t, err, ticket.StatusClosed, "")
		thenNothing(t, tk, prev)
		if n := tk.CommentCount(); n != 0 {
			t.Errorf("CommentCount(): expected 0, got %d", n)
		}
	})

	for _, s := range ticket.Statuses {
		t.Run("deleted_"+string(s)+"_ticket_refuses_comment", func(t *testing.T) {
			tk := givenDeletedIn(t, s)
			prev := tk.Version()
			err := tk.AddComment(validComment(), now)
			thenErrorIs(t, err, ticket.ErrNotFound)
			thenNothing(t, tk, prev)
		})
	}

	t.Run("never_opened_ticket_refuses_comment", func(t *testing.T) {
		tk := ticket.New(ticketID)
		err := tk.AddComment(validComment(), now)
		thenErrorIs(t, err, ticket.ErrNotFound)
		thenNothing(t, tk, 0)
	})

	t.Run("invalid_comment_is_rejected_before_the_state_is_looked_at", func(t *testing.T) {
		tk := ticket.New(ticketID)
		c := validComment()
		c.Body = " "
		thenValidationError(t, tk.AddComment(c, now), "body")
		thenNothing(t, tk, 0)
	})
}

// ---- deletion -------------------------------------------------------------

func TestDelete(t *testing.T) {
	for _, s := range ticket.Statuses {
		t.Run(string(s)+"_ticket_can_be_deleted", func(t *testing.T) {
			// given
			tk := givenIn(t, s)
			prev := tk.Version()

			// when
			err := tk.Delete(ticket.DeleteTicket{DeletedBy: "admin"}, now)

			// then
			thenNoError(t, err)
			thenEvents(t, tk, recordedAt(prev, "admin", ticket.Deleted{DeletedBy: "admin"}))
			if tk.Exists() || !tk.Deleted() {
				t.Errorf("expected Exists()=false Deleted()=true, got %v %v", tk.Exists(), tk.Deleted())
			}
			want := ticket.State{ID: ticketID, Status: s, Version: prev + 1, Deleted: true}
			if got := tk.State(); got != want {
				t.Errorf("state: expected deleted with status %q kept:\nexpected %+v\n     got %+v", s, want, got)
			}
		})
	}

	t.Run("anonymous_delete_records_anonymous_actor", func(t *testing.T) {
		tk := givenIn(t, ticket.StatusOpen)
		thenNoError(t, tk.Delete(ticket.DeleteTicket{}, now))
		thenEvents(t, tk, recordedAt(1, "anonymous", ticket.Deleted{}))
	})

	t.Run("deleted_ticket_refuses_second_delete", func(t *testing.T) {
		tk := givenIn(t, ticket.StatusOpen)
		thenNoError(t, tk.Delete(ticket.DeleteTicket{DeletedBy: "admin"}, now))
		err := tk.Delete(ticket.DeleteTicket{DeletedBy: "admin"}, now)
		thenErrorIs(t, err, ticket.ErrNotFound)
		if len(tk.Pending()) != 1 || tk.Version() != 2 {
			t.Errorf("expected 1 pending event at version 2, got %d at version %d", len(tk.Pending()), tk.Version())
		}
	})

	t.Run("replayed_deleted_ticket_refuses_delete", func(t *testing.T) {
		tk := givenDeletedIn(t, ticket.StatusClosed)
		prev := tk.Version()
		thenErrorIs(t, tk.Delete(ticket.DeleteTicket{}, now), ticket.ErrNotFound)
		thenNothing(t, tk, prev)
	})

	t.Run("never_opened_ticket_refuses_delete", func(t *testing.T) {
		tk := ticket.New(ticketID)
		thenErrorIs(t, tk.Delete(ticket.DeleteTicket{}, now), ticket.ErrNotFound)
		thenNothing(t, tk, 0)
	})

	for _, s := range ticket.Statuses {
		for _, to := range ticket.Statuses {
			t.Run(fmt.Sprintf("deleted_%s_ticket_refuses_change_to_%s", s, to), func(t *testing.T) {
				tk := givenDeletedIn(t, s)
				prev := tk.Version()
				err := tk.ChangeStatus(ticket.ChangeStatus{Status: string(to), UpdatedBy: "dave"}, now)
				thenErrorIs(t, err, ticket.ErrNotFound)
				thenNothing(t, tk, prev)
			})
		}
	}

	t.Run("deleted_ticket_refuses_comment_after_delete_command", func(t *testing.T) {
		tk := givenIn(t, ticket.StatusOpen)
		thenNoError(t, tk.Delete(ticket.DeleteTicket{DeletedBy: "admin"}, now))
		thenErrorIs(t, tk.AddComment(validComment(), now), ticket.ErrNotFound)
		thenErrorIs(t, tk.ChangeStatus(ticket.ChangeStatus{Status: "closed", UpdatedBy: "dave"}, now), ticket.ErrNotFound)
		if len(tk.Pending()) != 1 {
			t.Errorf("expected only the Deleted event pending, got %+v", tk.Pending())
		}
	})
}

// ---- replay and decoding ----------------------------------------------------

func TestReplay(t *testing.T) {
	opened := stream(openedData())[0]
	at := func(v int, d ticket.EventData) ticket.Event {
		return ticket.Event{TicketID: ticketID, Version: v, At: past, Actor: "seed", Data: d}
	}
	bad := []struct {
		name   string
		events []ticket.Event
	}{
		{"stream_not_starting_at_version_1_is_refused", []ticket.Event{at(2, openedData())}},
		{"stream_starting_at_version_0_is_refused", []ticket.Event{at(0, openedData())}},
		{"gap_in_versions_is_refused", []ticket.Event{opened, at(3, moved("open", "answered"))}},
		{"repeated_version_is_refused", []ticket.Event{opened, at(1, moved("open", "answered"))}},
		{"versions_out_of_order_are_refused", []ticket.Event{opened, at(3, moved("answered", "closed")), at(2, moved("open", "answered"))}},
		{"other_tickets_event_is_refused", []ticket.Event{opened, {TicketID: otherID, Version: 2, At: past, Actor: "seed", Data: moved("open", "answered")}}},
		{"other_tickets_first_event_is_refused", []ticket.Event{{TicketID: otherID, Version: 1, At: past, Actor: "seed", Data: openedData()}}},
		{"event_without_data_is_refused", []ticket.Event{opened, at(2, nil)}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			tk, err := ticket.Replay(ticketID, tc.events)
			if err == nil {
				t.Fatalf("expected an error, got nil and a ticket at version %d", tk.Version())
			}
			if tk != nil {
				t.Errorf("expected a nil ticket with the error, got %+v", tk.State())
			}
		})
	}

	t.Run("empty_stream_is_a_ticket_that_does_not_exist", func(t *testing.T) {
		tk := given(t)
		if tk.Exists() || tk.Deleted() || tk.Version() != 0 || tk.Status() != "" || tk.ID() != ticketID {
			t.Errorf("expected a fresh ticket %s, got Exists()=%v Deleted()=%v Version()=%d Status()=%q ID()=%s",
				ticketID, tk.Exists(), tk.Deleted(), tk.Version(), tk.Status(), tk.ID())
		}
	})

	t.Run("replay_folds_status_version_and_comment_count", func(t *testing.T) {
		comment := ticket.CommentAdded{CommentID: commentID, Body: "hello", CreatedBy: "bob"}
		evs := stream(openedData(), comment, moved("open", "answered"), comment, moved("answered", "wait_answer"))
		want := ticket.State{ID: ticketID, Status: ticket.StatusWaitAnswer, Version: 5, CommentCount: 2}
		if got := given(t, evs...).State(); got != want {
			t.Errorf("state:\nexpected %+v\n     got %+v", want, got)
		}
	})

	t.Run("replay_of_recorded_events_yields_equal_state", func(t *testing.T) {
		// when: a whole life of commands
		tk := ticket.New(ticketID)
		c2 := validComment()
		c2.ID, c2.Email, c2.Body = otherID, "", "thanks"
		steps := []func(time.Time) error{
			func(at time.Time) error { return tk.Open(validOpen(), at) },
			func(at time.Time) error { return tk.AddComment(validComment(), at) },
			func(at time.Time) error {
				return tk.ChangeStatus(ticket.ChangeStatus{Status: "answered", UpdatedBy: "carol"}, at)
			},
			func(at time.Time) error {
				return tk.ChangeStatus(ticket.ChangeStatus{Status: "wait_answer", UpdatedBy: "carol"}, at)
			},
			func(at time.Time) error { return tk.AddComment(c2, at) },
			func(at time.Time) error {
				return tk.ChangeStatus(ticket.ChangeStatus{Status: "closed", UpdatedBy: "bob"}, at)
			},
			func(at time.Time) error { return tk.Delete(ticket.DeleteTicket{DeletedBy: "admin"}, at) },
		}
		for i, step := range steps {
			thenNoError(t, step(now.Add(time.Duration(i)*time.Minute)))
		}
		pending := tk.Pending()
		if len(pending) != len(steps) {
			t.Fatalf("expected %d pending events, got %d", len(steps), len(pending))
		}

		// then: replaying them rebuilds the same state
		replayed := given(t, pending...)
		if got, want := replayed.State(), tk.State(); !reflect.DeepEqual(got, want) {
			t.Errorf("replayed state:\nexpected %+v\n     got %+v", want, got)
		}
		if replayed.Version() != tk.Version() || replayed.Deleted() != tk.Deleted() || replayed.Exists() != tk.Exists() {
			t.Errorf("replayed: expected version %d deleted %v exists %v, got %d %v %v",
				tk.Version(), tk.Deleted(), tk.Exists(), replayed.Version(), replayed.Deleted(), replayed.Exists())
		}
	})

	t.Run("replay_after_a_json_round_trip_yields_equal_state", func(t *testing.T) {
		tk := ticket.New(ticketID)
		thenNoError(t, tk.Open(validOpen(), now))
		thenNoError(t, tk.AddComment(validComment(), now.Add(time.Minute)))
		thenNoError(t, tk.ChangeStatus(ticket.ChangeStatus{Status: "closed", UpdatedBy: "bob"}, now.Add(2*time.Minute)))
		var stored []ticket.Event
		for _, e := range tk.Pending() {
			e.Data = roundTrip(t, e.Type(), e.Data)
			stored = append(stored, e)
		}
		if !reflect.DeepEqual(stored, tk.Pending()) {
			t.Errorf("events after a JSON round trip:\nexpected %+v\n     got %+v", tk.Pending(), stored)
		}
		if got, want := given(t, stored...).State(), tk.State(); got != want {
			t.Errorf("replayed state:\nexpected %+v\n     got %+v", want, got)
		}
	})

	t.Run("apply_refuses_event_for_a_replayed_version", func(t *testing.T) {
		tk := givenIn(t, ticket.StatusAnswered)
		if err := tk.Apply(at(2, moved("answered", "closed"))); err == nil {
			t.Errorf("expected an error applying version 2 on version 2, got nil")
		}
		if tk.Version() != 2 || tk.Status() != ticket.StatusAnswered {
			t.Errorf("expected state untouched at version 2 answered, got %d %q", tk.Version(), tk.Status())
		}
	})
}

// roundTrip marshals event data as the store does and decodes it back.
func roundTrip(t *testing.T, typ string, d ticket.EventData) ticket.EventData {
	t.Helper()
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatalf("marshal %s: expected no error, got %v", typ, err)
	}
	got, err := ticket.DecodeData(typ, b)
	if err != nil {
		t.Fatalf("DecodeData(%s, %s): expected no error, got %v", typ, b, err)
	}
	return got
}

func TestDecodeData(t *testing.T) {
	cases := []struct {
		typ  string
		data ticket.EventData
	}{
		{ticket.TypeOpened, openedData()},
		{ticket.TypeOpened, ticket.Opened{Title: "Привет \"мир\"", Description: "", Email: "a@b.co", CreatedBy: "x"}},
		{ticket.TypeCommentAdded, ticket.CommentAdded{CommentID: commentID, Body: "line\nline", Email: "c@example.com", CreatedBy: "carol"}},
		{ticket.TypeCommentAdded, ticket.CommentAdded{CommentID: commentID, Body: "no email", CreatedBy: "carol"}},
		{ticket.TypeStatusChanged, ticket.StatusChanged{From: ticket.StatusWaitAnswer, To: ticket.StatusClosed, UpdatedBy: "dave"}},
		{ticket.TypeDeleted, ticket.Deleted{DeletedBy: "admin"}},
		{ticket.TypeDeleted, ticket.Deleted{}},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprintf("%s_%d_round_trips_through_json", tc.typ, i), func(t *testing.T) {
			if got := tc.data.EventType(); got != tc.typ {
				t.Fatalf("EventType(): expected %q, got %q", tc.typ, got)
			}
			if got := roundTrip(t, tc.typ, tc.data); !reflect.DeepEqual(got, tc.data) {
				t.Errorf("round trip:\nexpected %#v\n     got %#v", tc.data, got)
			}
		})
	}

	t.Run("every_event_type_is_covered", func(t *testing.T) {
		seen := map[string]bool{}
		for _, tc := range cases {
			seen[tc.typ] = true
		}
		for _, typ := range []string{ticket.TypeOpened, ticket.TypeCommentAdded, ticket.TypeStatusChanged, ticket.TypeDeleted} {
			if !seen[typ] {
				t.Errorf("expected a round-trip case for %s, got none", typ)
			}
		}
	})

	t.Run("event_type_names_are_stable", func(t *testing.T) {
		want := map[ticket.EventData]string{
			ticket.Opened{}:        "TicketOpened",
			ticket.CommentAdded{}:  "CommentAdded",
			ticket.StatusChanged{}: "StatusChanged",
			ticket.Deleted{}:       "TicketDeleted",
		}
		for d, name := range want {
			if got := (ticket.Event{Data: d}).Type(); got != name {
				t.Errorf("Type() of %T: expected %q, got %q", d, name, got)
			}
		}
	})

	for _, typ := range []string{"", "TicketReopened", "ticketopened", "Opened", " TicketOpened"} {
		t.Run(fmt.Sprintf("unknown_type_%q_is_refused", typ), func(t *testing.T) {
			d, err := ticket.DecodeData(typ, []byte(`{}`))
			if err == nil {
				t.Fatalf("expected an error, got nil and %#v", d)
			}
			if d != nil {
				t.Errorf("expected nil data with the error, got %#v", d)
			}
		})
	}

	t.Run("malformed_payload_is_refused", func(t *testing.T) {
		for _, typ := range []string{ticket.TypeOpened, ticket.TypeCommentAdded, ticket.TypeStatusChanged, ticket.TypeDeleted} {
			if d, err := ticket.DecodeData(typ, []byte(`{"title":`)); err == nil || d != nil {
				t.Errorf("DecodeData(%s, truncated): expected nil data and an error, got %#v, %v", typ, d, err)
			}
		}
		if _, err := ticket.DecodeData(ticket.TypeCommentAdded, []byte(`{"comment_id":"not-a-uuid"}`)); err == nil {
			t.Errorf("DecodeData(CommentAdded, bad uuid): expected an error, got nil")
		}
	})
}

// ---- clone and state copies -------------------------------------------------

func givenWithComments(t *testing.T, n int) *ticket.Ticket {
	t.Helper()
	data := historyIn(t, ticket.StatusOpen)
	for i := range n {
		data = append(data, ticket.CommentAdded{
			CommentID: uuid.NewSHA1(ticketID, []byte{byte(i)}), Body: fmt.Sprintf("comment %d", i), CreatedBy: "seed",
		})
	}
	return given(t, stream(data...)...)
}

func TestClone(t *testing.T) {
	t.Run("comment_on_clone_leaves_original_alone", func(t *testing.T) {
		orig := givenWithComments(t, 3)
		before := orig.State()

		clone := orig.Clone()
		thenNoError(t, clone.AddComment(validComment(), now))

		if got := orig.State(); got != before {
			t.Errorf("original state after commenting on clone:\nexpected %+v\n     got %+v", before, got)
		}
		thenNothing(t, orig, 4)
		if n := clone.CommentCount(); n != 4 || clone.Version() != 5 {
			t.Errorf("clone: expected 4 comments at version 5, got %d at version %d", n, clone.Version())
		}
	})

	t.Run("original_and_clone_comment_independently", func(t *testing.T) {
		orig := givenWithComments(t, 3)
		clone := orig.Clone()
		mine, theirs := validComment(), validComment()
		theirs.ID, theirs.Body = otherID, "from the original"

		thenNoError(t, clone.AddComment(mine, now))
		thenNoError(t, orig.AddComment(theirs, now))

		thenEvents(t, clone, recordedAt(4, mine.CreatedBy, ticket.CommentAdded{
			CommentID: mine.ID, Body: mine.Body, Email: mine.Email, CreatedBy: mine.CreatedBy,
		}))
		thenEvents(t, orig, recordedAt(4, theirs.CreatedBy, ticket.CommentAdded{
			CommentID: theirs.ID, Body: theirs.Body, Email: theirs.Email, CreatedBy: theirs.CreatedBy,
		}))
		if clone.CommentCount() != 4 || orig.CommentCount() != 4 {
			t.Errorf("expected 4 comments on each, got clone %d and original %d", clone.CommentCount(), orig.CommentCount())
		}
	})

	t.Run("clone_has_no_pending_events", func(t *testing.T) {
		tk := ticket.New(ticketID)
		thenNoError(t, tk.Open(validOpen(), now))
		clone := tk.Clone()
		thenNothing(t, clone, 1)
		if clone.State() != tk.State() {
			t.Errorf("clone state:\nexpected %+v\n     got %+v", tk.State(), clone.State())
		}
		if len(tk.Pending()) != 1 {
			t.Errorf("original pending: expected 1 event, got %d", len(tk.Pending()))
		}
	})

	t.Run("status_change_on_clone_leaves_original_alone", func(t *testing.T) {
		orig := givenIn(t, ticket.StatusOpen)
		clone := orig.Clone()
		thenNoError(t, clone.ChangeStatus(ticket.ChangeStatus{Status: "closed", UpdatedBy: "dave"}, now))
		if orig.Status() != ticket.StatusOpen {
			t.Errorf("original status: expected open, got %q", orig.Status())
		}
	})

	t.Run("concurrent_clones_leave_shared_ticket_alone", func(t *testing.T) {
		// Run with -race: a shared cached ticket handed to many commands at once.
		shared := givenWithComments(t, 3)
		before := shared.State()
		const workers = 8
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for i := range workers {
			wg.Go(func() {
				c := shared.Clone()
				cmd := validComment()
				cmd.ID = uuid.NewSHA1(otherID, []byte{byte(i)})
				if err := c.AddComment(cmd, now); err != nil {
					errs <- err
					return
				}
				p := c.Pending()
				if d, ok := p[0].Data.(ticket.CommentAdded); len(p) != 1 || !ok || d.CommentID != cmd.ID || c.CommentCount() != 4 {
					errs <- fmt.Errorf("worker %d: expected one comment %s pending and 4 in all, got %d in all and %+v", i, cmd.ID, c.CommentCount(), p)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		thenNothing(t, shared, 4)
		if got := shared.State(); got != before {
			t.Errorf("shared state after concurrent clones:\nexpected %+v\n     got %+v", before, got)
		}
	})

	t.Run("state_is_a_copy", func(t *testing.T) {
		tk := givenWithComments(t, 2)
		s := tk.State()
		s.Status, s.CommentCount, s.Deleted = ticket.StatusClosed, 99, true
		want := ticket.State{ID: ticketID, Status: ticket.StatusOpen, Version: 3, CommentCount: 2}
		if got := tk.State(); got != want {
			t.Errorf("state after mutating a copy: expected %+v, got %+v", want, got)
		}
	})

	t.Run("pending_is_a_copy", func(t *testing.T) {
		tk := ticket.New(ticketID)
		thenNoError(t, tk.Open(validOpen(), now))
		p := tk.Pending()
		p[0].Version = 99
		if got := tk.Pending()[0].Version; got != 1 {
			t.Errorf("pending after mutating a copy: expected version 1, got %d", got)
		}
	})
}
