package projections_test

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/ticket"
)

// TestEncodeIsEncodeJSON: Encode writes exactly what eventstore.EncodeJSON writes, for a view
// folded event by event from the one encoded before it (the projector's and the
// write-through's way), through a comment list that fills up, status changes, comments
// past the embedded ones, a copy whose comments were replaced, and characters that
// JSON escapes.
func TestEncodeIsEncodeJSON(t *testing.T) {
	t.Parallel()
	id := uuid.New()
	ev := eventsOf(id)
	check := func(what string, v *projections.View) {
		t.Helper()
		want, err := eventstore.EncodeJSON(*v)
		if err != nil {
			t.Fatal(err)
		}
		got, err := v.Encode()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: Encode differs from EncodeJSON:\n got %s\nwant %s", what, got, want)
		}
	}
	v, err := projections.Fold(projections.View{}, ev(1, ticket.Opened{Title: `<b>"quoted"</b> & more`, Email: "e@example.com", CreatedBy: "c"}))
	if err != nil {
		t.Fatal(err)
	}
	check("a new ticket", &v)
	version := 1
	for i := range projections.EmbeddedComments + 5 {
		version++
		var d ticket.EventData = ticket.CommentAdded{CommentID: uuid.New(), Body: "body \u2028 <" + string(rune('a'+i%26)), CreatedBy: "c"}
		if i%7 == 3 {
			d = ticket.StatusChanged{From: v.Status, To: map[bool]ticket.Status{true: ticket.StatusAnswered, false: ticket.StatusWaitAnswer}[v.Status != ticket.StatusAnswered], UpdatedBy: "u"}
		}
		if v, err = projections.Fold(v, ev(version, d)); err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("after event %d", version), &v)
		if i%10 == 0 {
			// several events folded before the next encoding
			version++
			if v, err = projections.FoldAll(v, ev(version, ticket.CommentAdded{CommentID: uuid.New(), Body: "x", CreatedBy: "c"})); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A view decoded from a document takes the document's comments as their encoding.
	doc, err := v.Encode()
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := projections.DecodeView(doc)
	if err != nil {
		t.Fatal(err)
	}
	check("decoded", &decoded)
	next, err := projections.Fold(decoded, ev(v.Version+1, ticket.CommentAdded{CommentID: uuid.New(), Body: "after decoding", CreatedBy: "c"}))
	if err != nil {
		t.Fatal(err)
	}
	check("folded after decoding", &next)
	short, err := projections.DecodeView([]byte(`{"id":"` + id.String() + `","version":1,"comments":[]}`))
	if err != nil || len(short.Comments) != 0 {
		t.Fatalf("a document without comments: %+v, %v", short, err)
	}
	check("decoded without comments", &short)
	// A copy whose comments are replaced must not reuse the kept encoding.
	other := v
	other.Comments = append([]projections.Comment(nil), v.Comments[:3]...)
	other.Comments[2].Body = "changed"
	check("replaced comments", &other)
	check("the original again", &v)
}

// TestCompactViewsFoldAndEncodeAsTheFullOnes: a view held compact (View.Compact, or
// DecodeViewToFold of its document) folds and encodes to exactly what the full view
// does, at every version of a thread that goes past its embedded comments, and a view
// whose thread is all embedded is never made compact.
func TestCompactViewsFoldAndEncodeAsTheFullOnes(t *testing.T) {
	t.Parallel()
	id := uuid.New()
	ev := eventsOf(id)
	event := func(v int, prev ticket.Status) ticket.Event {
		if v%9 == 0 {
			to := ticket.StatusAnswered
			if prev == ticket.StatusAnswered {
				to = ticket.StatusWaitAnswer
			}
			return ev(v, ticket.StatusChanged{From: prev, To: to, UpdatedBy: "u"})
		}
		return ev(v, ticket.CommentAdded{CommentID: uuid.New(), Body: fmt.Sprintf("comment <%d> & \u2028", v), CreatedBy: "c"})
	}
	full, err := projections.Fold(projections.View{}, ev(1, ticket.Opened{Title: "t", Email: "e@example.com", CreatedBy: "c"}))
	if err != nil {
		t.Fatal(err)
	}
	encode := func(what string, v *projections.View) []byte {
		t.Helper()
		b, err := v.Encode()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return b
	}
	compacted := 0
	for version := 2; version <= 2*projections.EmbeddedComments+20; version++ {
		doc := encode("full", &full)
		compact := full.Compact()
		if full.CommentCount <= len(full.Comments) && len(compact.Comments) != len(full.Comments) {
			t.Fatalf("v%d: a view with every comment embedded was made compact", full.Version)
		}
		if len(compact.Comments) == 0 && len(full.Comments) > 0 {
			compacted++
		}
		if got := encode("compact", &compact); !bytes.Equal(got, doc) {
			t.Fatalf("v%d: the compact view encodes differently:\n got %s\nwant %s", full.Version, got, doc)
		}
		decoded, err := projections.DecodeViewToFold(doc)
		if err != nil {
			t.Fatal(err)
		}
		if full.CommentCount > projections.EmbeddedComments && len(decoded.Comments) != 0 {
			t.Fatalf("v%d: a document past its embedded comments was decoded whole", full.Version)
		}
		if whole, err := projections.DecodeView(doc); err != nil {
			t.Fatal(err)
		} else if full.CommentCount <= projections.EmbeddedComments && !reflect.DeepEqual(decoded, whole) {
			t.Fatalf("v%d: decoded to fold\n%+v\nwhole\n%+v", full.Version, decoded, whole)
		}
		e := event(version, full.Status)
		next, err := projections.Fold(full, e)
		if err != nil {
			t.Fatal(err)
		}
		want := encode("next", &next)
		for name, base := range map[string]projections.View{"compact": compact, "decoded to fold": decoded} {
			got, err := projections.FoldAll(base, e)
			if err != nil {
				t.Fatalf("v%d %s: %v", version, name, err)
			}
			if b := encode(name, &got); !bytes.Equal(b, want) {
				t.Fatalf("v%d: folded onto the %s view:\n got %s\nwant %s", version, name, b, want)
			}
		}
		full = next
	}
	if compacted == 0 {
		t.Fatal("no view was made compact: the thread never went past its embedded comments")
	}
}

// eventsOf returns a maker of ticket id's events, version v a second after v-1.
func eventsOf(id uuid.UUID) func(v int, d ticket.EventData) ticket.Event {
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	return func(v int, d ticket.EventData) ticket.Event {
		return ticket.Event{TicketID: id, Version: v, At: at.Add(time.Duration(v) * time.Second), Actor: "a", Data: d}
	}
}
