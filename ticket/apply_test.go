package ticket_test

import (
	"reflect"
	"testing"

	"github.com/ticketd/ticketd/ticket"
)

// TestApplyRefusesImpossibleStreams covers the streams no sequence of commands could
// have recorded: Replay must refuse them, so a store bug or a hand-edited row is
// caught when the ticket is loaded instead of being served.
func TestApplyRefusesImpossibleStreams(t *testing.T) {
	comment := ticket.CommentAdded{CommentID: commentID, Body: "hello", CreatedBy: "bob"}
	deleted := ticket.Deleted{DeletedBy: "admin"}
	open, answered, waiting, closed := ticket.StatusOpen, ticket.StatusAnswered, ticket.StatusWaitAnswer, ticket.StatusClosed

	cases := []struct {
		name string
		data []ticket.EventData
	}{
		{"opened_twice", []ticket.EventData{openedData(), openedData()}},
		{"opened_again_after_changes", []ticket.EventData{openedData(), comment, moved(open, answered), openedData()}},
		{"first_event_is_a_comment", []ticket.EventData{comment}},
		{"first_event_is_a_status_change", []ticket.EventData{moved(open, answered)}},
		{"first_event_is_a_deletion", []ticket.EventData{deleted}},
		{"comment_after_deletion", []ticket.EventData{openedData(), deleted, comment}},
		{"status_change_after_deletion", []ticket.EventData{openedData(), deleted, moved(open, answered)}},
		{"deleted_twice", []ticket.EventData{openedData(), deleted, deleted}},
		{"opened_after_deletion", []ticket.EventData{openedData(), deleted, openedData()}},
		{"status_change_from_the_wrong_status", []ticket.EventData{openedData(), moved(answered, closed)}},
		{"status_change_from_a_status_left_earlier", []ticket.EventData{openedData(), moved(open, answered), moved(open, closed)}},
		{"status_change_from_an_empty_status", []ticket.EventData{openedData(), moved("", answered)}},
		{"move_the_table_refuses_open_to_wait_answer", []ticket.EventData{openedData(), moved(open, waiting)}},
		{"move_the_table_refuses_answered_to_open", []ticket.EventData{openedData(), moved(open, answered), moved(answered, open)}},
		{"move_the_table_refuses_wait_answer_to_open", []ticket.EventData{openedData(), moved(open, answered), moved(answered, waiting), moved(waiting, open)}},
		{"no_op_move_recorded_as_an_event", []ticket.EventData{openedData(), moved(open, open)}},
		{"move_to_an_unknown_status", []ticket.EventData{openedData(), moved(open, "archived")}},
		{"move_out_of_closed", []ticket.EventData{openedData(), moved(open, closed), moved(closed, answered)}},
		{"comment_on_a_closed_ticket", []ticket.EventData{openedData(), moved(open, closed), comment}},
		{"comment_on_a_ticket_closed_after_waiting", []ticket.EventData{openedData(), moved(open, answered), moved(answered, waiting), moved(waiting, closed), comment}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			events := stream(tc.data...)
			tk, err := ticket.Replay(ticketID, events)
			if err == nil {
				t.Fatalf("Replay: expected an error, got a ticket at version %d, status %q", tk.Version(), tk.Status())
			}
			if tk != nil {
				t.Errorf("Replay: expected a nil ticket with the error, got %+v", tk.State())
			}

			// Apply of the bad event leaves the ticket as it stood before it.
			good := ticket.New(ticketID)
			last := len(events) - 1
			for _, e := range events[:last] {
				if err := good.Apply(e); err != nil {
					t.Fatalf("Apply of the valid prefix, version %d: expected no error, got %v", e.Version, err)
				}
			}
			before := good.State()
			if err := good.Apply(events[last]); err == nil {
				t.Fatalf("Apply of version %d (%s): expected an error, got nil", events[last].Version, events[last].Type())
			}
			if after := good.State(); after != before {
				t.Errorf("Apply of a refused event changed the state:\nbefore %+v\n after %+v", before, after)
			}
		})
	}
}

// TestApplyAcceptsEveryPossibleStream is the other side: every stream the commands can
// record replays, whatever the order of comments, moves and the final deletion.
func TestApplyAcceptsEveryPossibleStream(t *testing.T) {
	comment := ticket.CommentAdded{CommentID: commentID, Body: "hello", CreatedBy: "bob"}
	deleted := ticket.Deleted{}
	open, answered, waiting, closed := ticket.StatusOpen, ticket.StatusAnswered, ticket.StatusWaitAnswer, ticket.StatusClosed

	cases := []struct {
		name   string
		data   []ticket.EventData
		status ticket.Status
	}{
		{"opened", []ticket.EventData{openedData()}, open},
		{"comments_on_every_open_status", []ticket.EventData{openedData(), comment, moved(open, answered), comment,
			moved(answered, waiting), comment, moved(waiting, answered), comment}, answered},
		{"closed_from_wait_answer", []ticket.EventData{openedData(), moved(open, answered), moved(answered, waiting), moved(waiting, closed)}, closed},
		{"deleted_while_open", []ticket.EventData{openedData(), deleted}, open},
		{"deleted_after_close", []ticket.EventData{openedData(), comment, moved(open, closed), deleted}, closed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tk, err := ticket.Replay(ticketID, stream(tc.data...))
			if err != nil {
				t.Fatalf("Replay: expected no error, got %v", err)
			}
			_, isDeleted := tc.data[len(tc.data)-1].(ticket.Deleted)
			if tk.Version() != len(tc.data) || tk.Status() != tc.status || tk.Deleted() != isDeleted {
				t.Errorf("expected version %d, status %s, deleted %v; got %d, %s, %v",
					len(tc.data), tc.status, isDeleted, tk.Version(), tk.Status(), tk.Deleted())
			}
			comments := 0
			for _, d := range tc.data {
				if _, ok := d.(ticket.CommentAdded); ok {
					comments++
				}
			}
			if tk.CommentCount() != comments {
				t.Errorf("expected %d comments, got %d", comments, tk.CommentCount())
			}
		})
	}
}

// TestEveryEventKindDecodes proves that DecodeData has a case for every kind in
// EventKinds: a kind added without one fails here.
func TestEveryEventKindDecodes(t *testing.T) {
	for _, kind := range ticket.EventKinds() {
		got, err := ticket.DecodeData(kind.EventType(), []byte(`{}`))
		if err != nil || reflect.TypeOf(got) != reflect.TypeOf(kind) {
			t.Errorf("DecodeData(%s): %T, %v; want a %T", kind.EventType(), got, err, kind)
		}
	}
}
