package redismodel

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
)

// Target is the Redis read model as a projections.Target. Redis has no second copy to
// swap in: Begin turns every document into a floor (Docs.Floor: its version without
// its body, never served) and Load refills them, pipelined, while the live projector
// and the write-through of every instance may run all along. Every write is
// set-if-newer by version and a floor gives way only to its own version or newer, so
// no document moves backwards: one written before the rebuild read the events, for an
// event the rebuild's fold does not hold yet, stays a floor (a miss, served from
// Postgres, which is exact) until the catch-up, the live projector or a reader writes
// that version again. Finish removes the floors nothing replaced (documents of
// tickets the event store does not have, or newer than it has).
type Target struct {
	Docs   *Docs
	Events projections.Streams
}

// Group returns Group.
func (t Target) Group() string { return Group }

// Begin turns every document into a floor.
func (t Target) Begin(ctx context.Context) error { return t.Docs.Floor(ctx) }

// Load writes the views (tombstones for deleted tickets) past the breaker with
// FillEncoded (SET NX where nothing is stored, the set-if-newer script where a floor
// or a document a live writer stored since is), 500 to a pipeline, retrying a few
// times with a growing pause so a blip does not fail the whole rebuild. Comments are
// in the views already (the first EmbeddedComments of each). The documents are
// encoded by hand (View.AppendJSON) into one buffer that the next Load reuses.
func (t Target) Load(ctx context.Context, views []projections.View, _ []projections.TicketComment) error {
	if len(views) == 0 {
		return nil
	}
	fb := fillBuffers.Get().(*fillBuffer)
	defer fillBuffers.Put(fb)
	buf, docs := fb.buf[:0], fb.docs[:0]
	for i := range views {
		start := len(buf)
		var err error
		if buf, err = AppendDoc(buf, &views[i]); err != nil {
			return err
		}
		// the offsets only: buf may move as it grows
		docs = append(docs, EncodedDoc{ID: views[i].ID, Version: views[i].Version, Deleted: views[i].Deleted, Value: buf[start:len(buf):len(buf)]})
	}
	// the values of the documents are in buf as it ended: point them there
	off := 0
	for i := range docs {
		n := len(docs[i].Value)
		docs[i].Value = buf[off : off+n : off+n]
		off += n
	}
	fb.buf, fb.docs = buf, docs
	var err error
	for attempt := range 6 {
		if attempt > 0 {
			if err := sleep(ctx, time.Duration(50<<attempt)*time.Millisecond); err != nil {
				return err
			}
		}
		for i := 0; i < len(docs); i += 500 {
			var failed []EncodedDoc
			failed, err = t.Docs.FillEncoded(ctx, docs[i:min(i+500, len(docs))])
			if err != nil {
				docs = append(failed, docs[min(i+500, len(docs)):]...)
				break
			}
		}
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("redis documents: %w", err)
	}
	return nil
}

// fillBuffer is the room one Load encodes its documents in, kept for the next.
type fillBuffer struct {
	buf  []byte
	docs []EncodedDoc
}

var fillBuffers = sync.Pool{New: func() any { return new(fillBuffer) }}

// Loaded has nothing to do: documents are live as soon as they are written.
func (t Target) Loaded(context.Context) error { return nil }

// Apply is the projector's own Apply: documents the events' tickets could not get are
// queued for the repairer in tx.
func (t Target) Apply(ctx context.Context, tx pgx.Tx, recs []eventstore.Record) error {
	return (&Projector{Docs: t.Docs, Events: t.Events}).Apply(ctx, tx, recs)
}

// Swap has nothing to swap: the documents are live already.
func (t Target) Swap(context.Context, pgx.Tx) error { return nil }

// Abort leaves the documents and floors as they are: readers and writers replace the
// floors with documents, which FloorTTL bounds otherwise.
func (t Target) Abort(context.Context) error { return nil }

// Finish removes the floors that no document replaced, once the swap has committed:
// every event below the swap's bound is in Redis by then, so what is left is of
// tickets the event store does not have, or newer than it has. A floor whose version
// the store does hold (an event past the swap's bound: committed after a transaction
// still open at the swap began, which happens under any write load) stays: removing
// it would let a live projector that is behind write an older state there before it
// reaches that event.
func (t Target) Finish(ctx context.Context) error {
	_, err := t.Docs.SweepFloors(ctx, func(ctx context.Context, id uuid.UUID, version int) (bool, error) {
		recs, err := t.Events.Load(ctx, id, version-1, version)
		return len(recs) > 0, err
	})
	return err
}

func sleep(ctx context.Context, d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}
