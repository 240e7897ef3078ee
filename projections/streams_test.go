package projections_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/projectionstest"
	"github.com/ticketd/ticketd/ticket"
)

// countingReader is the event store, counting the bytes of comment bodies it returns.
type countingReader struct {
	*eventstore.Store
	bodyBytes int
	rows      int
}

func (r *countingReader) ReadStream(ctx context.Context, id uuid.UUID, q eventstore.StreamQuery) ([]eventstore.Record, int, error) {
	recs, head, err := r.Store.ReadStream(ctx, id, q)
	r.rows += len(recs)
	for _, rec := range recs {
		if c, ok := rec.Data.(ticket.CommentAdded); ok {
			r.bodyBytes += len(c.Body)
		}
	}
	return recs, head, err
}

// TestFoldStreamEqualsTheFullFold: FoldStream gives, at every version of streams that
// cross its page sizes, the view folded from every event with its data, while it reads
// the bodies only of the comments a document can embed (issue 12: a replay of a ticket
// of 1,000 large comments read all 36 MB of them).
func TestFoldStreamEqualsTheFullFold(t *testing.T) {
	t.Parallel()
	_, store := projectionstest.NewStore(t)
	ctx := context.Background()
	big := strings.Repeat("ü", ticket.MaxCommentBytes/2)
	bigComment := func(tk *ticket.Ticket, now time.Time) error {
		return tk.AddComment(ticket.AddComment{ID: uuid.Must(uuid.NewV7()), Body: big, CreatedBy: "agent"}, now)
	}

	// small comments and status changes past the first page and the count of 100
	small, _ := projectionstest.Open(t, store, "small")
	statuses := []ticket.Status{ticket.StatusAnswered, ticket.StatusWaitAnswer}
	for i := range 140 {
		if i%9 == 4 {
			projectionstest.Do(t, store, small, projectionstest.Move(statuses[(i/9)%2], "agent"))
			continue
		}
		projectionstest.Do(t, store, small, projectionstest.Comment(i))
	}
	// large comments: the embedding closes after three
	large, _ := projectionstest.Open(t, store, "large")
	for range 100 {
		projectionstest.Do(t, store, large, bigComment)
	}
	projectionstest.Do(t, store, large, projectionstest.Move(ticket.StatusClosed, "agent"))

	for _, id := range []uuid.UUID{small, large} {
		full, head, err := store.StreamAt(ctx, id, projections.MaxVersion)
		if err != nil {
			t.Fatal(err)
		}
		for _, upTo := range []int{1, 2, 31, 32, 33, 64, 97, 120, head - 1, head, head + 5} {
			want, err := projections.FoldAll(projections.View{}, projections.Events(full[:min(upTo, head)])...)
			if err != nil {
				t.Fatal(err)
			}
			r := &countingReader{Store: store}
			got, gotHead, err := projections.FoldStream(ctx, r, id, upTo)
			if err != nil {
				t.Fatalf("v%d: %v", upTo, err)
			}
			a, _ := eventstore.EncodeJSON(got)
			b, _ := eventstore.EncodeJSON(want)
			if string(a) != string(b) || got.Version != want.Version || gotHead != head {
				t.Fatalf("%s at v%d: head %d (want %d)\n got %.300s\nwant %.300s", id, upTo, gotHead, head, a, b)
			}
			if id == large && upTo >= 10 && r.bodyBytes > 32*len(big) {
				t.Fatalf("replay to v%d read %d bytes of comment bodies, more than the first page's", upTo, r.bodyBytes)
			}
		}
	}
	// from a checkpoint kept as JSON (as the replay's version cache keeps it): the same
	// view, reading only the events after it
	full, head, _ := store.StreamAt(ctx, small, projections.MaxVersion)
	for _, from := range []int{1, 40, 100, head - 1, head} {
		base, _ := projections.FoldAll(projections.View{}, projections.Events(full[:from])...)
		doc, _ := eventstore.EncodeJSON(base)
		kept, err := projections.DecodeView(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, upTo := range []int{from, from + 1, head, head + 3} {
			want, _ := projections.FoldAll(projections.View{}, projections.Events(full[:min(upTo, head)])...)
			r := &countingReader{Store: store}
			var checkpoints []int
			got, gotHead, err := projections.FoldStreamFrom(ctx, r, small, kept, upTo, func(v projections.View) { checkpoints = append(checkpoints, v.Version) })
			if err != nil {
				t.Fatalf("from v%d to v%d: %v", from, upTo, err)
			}
			a, _ := eventstore.EncodeJSON(got)
			b, _ := eventstore.EncodeJSON(want)
			if string(a) != string(b) || (gotHead != head && upTo > from) || gotHead < got.Version {
				t.Fatalf("from v%d to v%d: head %d (want %d)\n got %.300s\nwant %.300s", from, upTo, gotHead, head, a, b)
			}
			if r.rows > min(upTo, head)-from {
				t.Fatalf("from v%d to v%d read %d events", from, upTo, r.rows)
			}
			if len(checkpoints) > 0 && checkpoints[len(checkpoints)-1] != got.Version {
				t.Fatalf("from v%d to v%d: checkpoints %v do not end at v%d", from, upTo, checkpoints, got.Version)
			}
		}
	}

	if _, _, err := projections.FoldStream(ctx, store, uuid.New(), 0); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("unknown stream: %v", err)
	}
}
