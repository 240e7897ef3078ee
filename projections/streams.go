package projections

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// Streams reads a ticket's stored events: the event store, for folding a ticket afresh
// when a read model misses it or holds an older state than the event before the one it
// is given.
type Streams interface {
	// Load returns the events of stream id with after < version <= upTo, in order.
	Load(ctx context.Context, id uuid.UUID, after, upTo int) ([]eventstore.Record, error)
}

// MaxVersion is past every stream's last version.
const MaxVersion = int(^uint32(0) >> 1)

// Replay folds ticket id's whole stream from the event store and returns its view and
// its records. A deleted or unknown ticket is ticket.ErrNotFound.
func Replay(ctx context.Context, events Streams, id uuid.UUID) (View, []eventstore.Record, error) {
	v, recs, err := ViewAt(ctx, events, id, 0)
	if err == nil && v.Deleted {
		err = fmt.Errorf("ticket %s: %w", id, ticket.ErrNotFound)
	}
	return v, recs, err
}

// ViewAt folds ticket id's stream from the event store up to version upTo (all of it
// when upTo < 1) and returns the view, a deleted ticket's tombstone included, and the
// records. A stream without events is ticket.ErrNotFound.
func ViewAt(ctx context.Context, events Streams, id uuid.UUID, upTo int) (View, []eventstore.Record, error) {
	if upTo < 1 {
		upTo = MaxVersion
	}
	recs, err := events.Load(ctx, id, 0, upTo)
	if err != nil {
		return View{}, nil, err
	}
	if len(recs) == 0 {
		return View{}, nil, fmt.Errorf("ticket %s: %w", id, ticket.ErrNotFound)
	}
	v, err := FoldAll(View{}, Events(recs)...)
	if err != nil {
		return View{}, nil, fmt.Errorf("replay ticket %s: %w", id, err)
	}
	return v, recs, nil
}

// StreamReader reads a stream's events in pages: the event store's ReadStream.
type StreamReader interface {
	ReadStream(ctx context.Context, id uuid.UUID, q eventstore.StreamQuery) ([]eventstore.Record, int, error)
}

// FoldStream folds ticket id's stream up to version upTo (all of it when upTo < 1) and
// returns the view, a deletion's tombstone included, and the stream's head version as
// last read. A stream without events is ticket.ErrNotFound.
//
// It reads the stream in growing pages with every event's data until the view's
// embedded comments are closed (no later comment can be embedded: see Embedded), and
// the rest without the comments' data, which the fold no longer reads: a replay of a
// ticket with 1,000 comments of 20 KB reads the bodies of its first few, not 20 MB.
func FoldStream(ctx context.Context, r StreamReader, id uuid.UUID, upTo int) (View, int, error) {
	return FoldStreamFrom(ctx, r, id, View{}, upTo, nil)
}

// FoldStreamFrom is FoldStream starting from base, a view of the stream at base.Version
// (the zero View: from the start), and calling checkpoint, if not nil, with the view
// after each page read: a caller may keep some of them to start later folds from. With
// base already at upTo nothing is read, and the head returned is base.Version (the
// stream is at least that long).
func FoldStreamFrom(ctx context.Context, r StreamReader, id uuid.UUID, base View, upTo int, checkpoint func(View)) (View, int, error) {
	if upTo < 1 {
		upTo = MaxVersion
	}
	v := base
	head, page := 0, firstFoldPage
	for v.Version < upTo {
		q := eventstore.StreamQuery{After: v.Version, UpTo: upTo, Limit: page}
		closed := v.Version > 0 && commentsClosed(v)
		if closed {
			q.Limit, q.WithoutDataOf = 0, ticket.CommentAdded{}.EventType()
		}
		recs, h, err := r.ReadStream(ctx, id, q)
		if err != nil {
			return View{}, 0, err
		}
		if len(recs) == 0 {
			// nothing after v up to upTo: the stream ends at v (versions have no gaps)
			head = max(head, v.Version)
			break
		}
		head = h
		if v, err = FoldAll(v, Events(recs)...); err != nil {
			return View{}, 0, fmt.Errorf("replay ticket %s: %w", id, err)
		}
		if checkpoint != nil && !v.Deleted {
			checkpoint(v)
		}
		if closed || len(recs) < page {
			break
		}
		page = min(2*page, maxFoldPage)
	}
	if v.Version == 0 {
		return View{}, 0, fmt.Errorf("ticket %s: %w", id, ticket.ErrNotFound)
	}
	return v, max(head, v.Version), nil
}

// The pages of FoldStream's reads with data: most streams fit the first.
const (
	firstFoldPage = 32
	maxFoldPage   = 1024
)

// commentsClosed reports whether no comment after v's can be embedded in it: one was
// left out already, or the count is full (see Fold).
func commentsClosed(v View) bool {
	return len(v.Comments) < v.CommentCount || len(v.Comments) >= EmbeddedComments
}

// Events returns the domain events of records.
func Events(recs []eventstore.Record) []ticket.Event {
	out := make([]ticket.Event, len(recs))
	for i, r := range recs {
		out[i] = r.Event
	}
	return out
}

// Unavailable marks errors that mean Postgres could not be reached as
// ticket.ErrUnavailable; others pass through.
func Unavailable(err error) error {
	if eventstore.Unreachable(err) {
		return fmt.Errorf("%w: %w", ticket.ErrUnavailable, err)
	}
	return err
}
