package projections_test

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/ticket"
)

var (
	foldID = uuid.MustParse("01936f1e-7c4a-7000-8000-000000000001")
	foldT0 = time.Date(2026, 11, 27, 9, 0, 0, 0, time.FixedZone("CET", 3600))
)

// foldStream numbers data as the events of one stream, a minute apart.
func foldStream(data ...ticket.EventData) []ticket.Event {
	out := make([]ticket.Event, len(data))
	for i, d := range data {
		out[i] = ticket.Event{TicketID: foldID, Version: i + 1, At: foldT0.Add(time.Duration(i) * time.Minute), Actor: "x", Data: d}
	}
	return out
}

func foldComment(n int) ticket.CommentAdded {
	return ticket.CommentAdded{CommentID: uuid.NewSHA1(foldID, []byte{byte(n), byte(n >> 8)}), Body: "comment", CreatedBy: "bob", Email: "bob@example.com"}
}

func TestFoldBuildsWhatReadersSee(t *testing.T) {
	opened := ticket.Opened{Title: "Printer", Description: "on fire", Email: "ann@example.com", CreatedBy: "ann"}
	evs := foldStream(opened, foldComment(1), ticket.StatusChanged{From: ticket.StatusOpen, To: ticket.StatusAnswered, UpdatedBy: "carol"})
	v, err := projections.FoldAll(projections.View{}, evs...)
	if err != nil {
		t.Fatal(err)
	}
	utc := foldT0.UTC()
	want := projections.View{Summary: projections.Summary{
		ID: foldID, Title: "Printer", Description: "on fire", Email: "ann@example.com", CreatedBy: "ann",
		UpdatedBy: "carol", Status: ticket.StatusAnswered, Version: 3, CommentCount: 1,
		CreatedAt: utc, UpdatedAt: utc.Add(2 * time.Minute),
	}, Comments: []projections.Comment{{
		ID: foldComment(1).CommentID, Body: "comment", Email: "bob@example.com", CreatedBy: "bob",
		CreatedAt: utc.Add(time.Minute), Version: 2,
	}}}
	if !reflect.DeepEqual(v, want) {
		t.Fatalf("folded\n%+v\nwant\n%+v", v, want)
	}
	b, _ := json.Marshal(v)
	var back projections.View
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, want) {
		t.Fatalf("a view must survive its JSON (the Redis document): %v\n%+v", err, back)
	}

	deleted, err := projections.Fold(v, ticket.Event{TicketID: foldID, Version: 4, At: foldT0, Data: ticket.Deleted{}})
	if err != nil || !deleted.Deleted || deleted.Version != 4 {
		t.Fatalf("deletion: %+v, %v; want a tombstone at version 4", deleted, err)
	}
	if v.Deleted {
		t.Fatal("Fold changed the view it was given")
	}
}

func TestFoldEmbedsTheFirstCommentsAndCountsAll(t *testing.T) {
	data := []ticket.EventData{ticket.Opened{Title: "t", Email: "a@example.com", CreatedBy: "a"}}
	for i := range projections.EmbeddedComments + 5 {
		data = append(data, foldComment(i))
	}
	v, err := projections.FoldAll(projections.View{}, foldStream(data...)...)
	if err != nil {
		t.Fatal(err)
	}
	if v.CommentCount != projections.EmbeddedComments+5 || len(v.Comments) != projections.EmbeddedComments {
		t.Fatalf("count %d, embedded %d; want %d and %d", v.CommentCount, len(v.Comments), projections.EmbeddedComments+5, projections.EmbeddedComments)
	}
	if last := v.Comments[len(v.Comments)-1]; last.Version != projections.EmbeddedComments+1 {
		t.Fatalf("last embedded comment is v%d, want the %dth comment", last.Version, projections.EmbeddedComments)
	}
}

// A document embeds its first comments only while their text stays within
// EmbeddedCommentBytes: maximum-size comments stop it at three, a small comment after
// them is not embedded either (the embedded comments stay a prefix of the thread), and
// the read model's Embedded cuts a thread where the fold stopped.
func TestFoldBoundsEmbeddedCommentsInBytes(t *testing.T) {
	data := []ticket.EventData{ticket.Opened{Title: "t", Email: "a@example.com", CreatedBy: "a"}}
	big := strings.Repeat("😀", ticket.MaxCommentBytes/4)
	for range 10 {
		data = append(data, ticket.CommentAdded{CommentID: uuid.New(), Body: big, CreatedBy: "c"})
	}
	data = append(data, ticket.CommentAdded{CommentID: uuid.New(), Body: "small", CreatedBy: "c"})
	v, err := projections.FoldAll(projections.View{}, foldStream(data...)...)
	if err != nil {
		t.Fatal(err)
	}
	want := projections.EmbeddedCommentBytes / (len(big) + 1)
	if v.CommentCount != 11 || len(v.Comments) != want {
		t.Fatalf("count %d, embedded %d; want 11 and %d", v.CommentCount, len(v.Comments), want)
	}
	var all []projections.Comment
	for _, e := range foldStream(data...) {
		if c, ok := projections.CommentOf(e); ok {
			all = append(all, c)
		}
	}
	if n := projections.Embedded(all); n != want {
		t.Fatalf("Embedded of the thread is %d, the fold embedded %d", n, want)
	}
	doc, err := v.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if len(doc) > 100_000 {
		t.Fatalf("document of %d bytes", len(doc))
	}
	// one event at a time (the projector's way) embeds the same
	one := projections.View{}
	for _, e := range foldStream(data...) {
		if one, err = projections.Fold(one, e); err != nil {
			t.Fatal(err)
		}
	}
	if len(one.Comments) != want {
		t.Fatalf("folded one by one: %d embedded, want %d", len(one.Comments), want)
	}
}

func TestFoldRefusesEventsThatDoNotFollow(t *testing.T) {
	opened := foldStream(ticket.Opened{Title: "t", Email: "a@example.com", CreatedBy: "a"})[0]
	v, _ := projections.Fold(projections.View{}, opened)
	gap := ticket.Event{TicketID: foldID, Version: 3, At: foldT0, Data: foldComment(1)}
	again := ticket.Event{TicketID: foldID, Version: 1, At: foldT0, Data: foldComment(1)}
	other := ticket.Event{TicketID: uuid.New(), Version: 2, At: foldT0, Data: foldComment(1)}
	notOpened := ticket.Event{TicketID: foldID, Version: 1, At: foldT0, Data: foldComment(1)}
	tomb, _ := projections.Fold(v, ticket.Event{TicketID: foldID, Version: 2, At: foldT0, Data: ticket.Deleted{}})
	afterDeletion := ticket.Event{TicketID: foldID, Version: 3, At: foldT0, Data: foldComment(1)}
	for name, tc := range map[string]struct {
		v projections.View
		e ticket.Event
	}{
		"gap": {v, gap}, "repeat": {v, again}, "other_ticket": {v, other},
		"first_event_not_opened": {projections.View{}, notOpened}, "after_deletion": {tomb, afterDeletion},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := projections.Fold(tc.v, tc.e)
			if !errors.Is(err, projections.ErrOutOfOrder) {
				t.Fatalf("Fold: %v, want ErrOutOfOrder", err)
			}
			if !reflect.DeepEqual(got, tc.v) {
				t.Fatalf("a refused event changed the view: %+v", got)
			}
		})
	}
}

// assigned is a test-only event kind, as a new one looks before its fold case is
// written: it satisfies ticket.EventData (by embedding a real kind) with its own type.
type assigned struct {
	ticket.StatusChanged
	Agent string
}

func (assigned) EventType() string { return "TicketAssigned" }

// TestEveryEventKindHasAFoldCase is the guard of the recipe for a new event type: a
// kind in ticket.EventKinds without a case in Fold fails here (and the read models,
// which all fold with Fold, never see it as anything but ErrUnknownEvent, which the
// consumer sends to the poison topic instead of guessing).
func TestEveryEventKindHasAFoldCase(t *testing.T) {
	base, err := projections.Fold(projections.View{}, foldStream(ticket.Opened{Title: "t", Email: "a@example.com", CreatedBy: "a"})[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range ticket.EventKinds() {
		t.Run(kind.EventType(), func(t *testing.T) {
			v, e := base, ticket.Event{TicketID: foldID, Version: 2, At: foldT0, Data: kind}
			if _, ok := kind.(ticket.Opened); ok {
				v, e.Version = projections.View{}, 1
			}
			if _, err := projections.Fold(v, e); err != nil {
				t.Fatalf("Fold of %s: %v", kind.EventType(), err)
			}
		})
	}
	t.Run("a_kind_without_a_case_is_refused", func(t *testing.T) {
		_, err := projections.Fold(base, ticket.Event{TicketID: foldID, Version: 2, At: foldT0, Data: assigned{Agent: "x"}})
		if !errors.Is(err, projections.ErrUnknownEvent) {
			t.Fatalf("Fold of an event kind it has no case for: %v, want ErrUnknownEvent", err)
		}
	})
}

// TestFoldAgreesWithTheAggregate runs random command sequences on the aggregate and
// checks that the view folded from the recorded events says what the aggregate decided
// on: status, version, comment count, deletion.
func TestFoldAgreesWithTheAggregate(t *testing.T) {
	statuses := []string{"open", "answered", "wait_answer", "closed"}
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 7))
		tk := ticket.New(foldID)
		now := foldT0
		if err := tk.Open(ticket.OpenTicket{Title: "t", Email: "a@example.com", CreatedBy: "a"}, now); err != nil {
			t.Fatal(err)
		}
		for range r.IntN(30) {
			now = now.Add(time.Second)
			switch r.IntN(10) {
			case 0:
				_ = tk.Delete(ticket.DeleteTicket{}, now)
			case 1, 2, 3, 4:
				_ = tk.AddComment(ticket.AddComment{ID: uuid.New(), Body: "b", CreatedBy: "c"}, now)
			default:
				_ = tk.ChangeStatus(ticket.ChangeStatus{Status: statuses[r.IntN(4)], UpdatedBy: "u"}, now)
			}
		}
		v, err := projections.FoldAll(projections.View{}, tk.Pending()...)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if v.Version != tk.Version() || v.Deleted != tk.Deleted() || v.CommentCount != tk.CommentCount() ||
			(!v.Deleted && v.Status != tk.Status()) {
			t.Fatalf("seed %d: view v%d %s comments %d deleted %t; aggregate v%d %s comments %d deleted %t", seed,
				v.Version, v.Status, v.CommentCount, v.Deleted, tk.Version(), tk.Status(), tk.CommentCount(), tk.Deleted())
		}
	}
}
