package redismodel

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
)

// Target is the Redis read model as a projections.Target. Redis has no second copy to
// swap in: Load replaces the documents in place, pipelined, while readers keep being
// served the documents as they were (never a miss because of the rebuild) and the live
// projector and the write-through of every instance may run all along. A rebuild's
// write replaces a document of its own version or older (ReplaceEncoded: the fold of
// the same events with the rebuild's code) and never a newer one, and every other
// write is set-if-newer by version, so no document moves backwards: one written for an
// event the rebuild's fold does not hold yet stays until the catch-up, the live
// projector or a reader writes a newer one. Finish removes what the store does not
// hold (see Finish). Use it by pointer: it keeps the tickets its Load wrote.
type Target struct {
	Docs   *Docs
	Events Store
	// MaxTracked bounds how many written tickets Load remembers for Finish (16 bytes
	// each); past it Finish checks every document with the store instead. Default
	// 4,194,304 (64 MiB).
	MaxTracked int

	written  []uuid.UUID // the tickets Load and the catch-up wrote, sorted after Loaded
	overflow bool        // more than MaxTracked: written is dropped
	fill     bool        // Load tries SET NX first (see Docs.ReplaceEncoded)
}

// Store is what Target reads of the event store: streams for the catch-up's folds
// (through its transaction), and which versions it holds for Finish.
type Store interface {
	LoadStreams(ctx context.Context, q eventstore.Querier, ids []uuid.UUID, upTo []int) ([]eventstore.Record, error)
	Holds(ctx context.Context, ids []uuid.UUID, versions []int) ([]bool, error)
}

// Group returns Group.
func (t *Target) Group() string { return Group }

// Begin forgets the cache of written views (the documents are about to be replaced by
// the rebuild's fold) and what an earlier rebuild with this Target wrote.
func (t *Target) Begin(context.Context) error {
	t.Docs.views.Drop()
	t.written, t.overflow, t.fill = t.written[:0], false, true
	return nil
}

// Load writes the views (tombstones for deleted tickets) past the breaker with
// ReplaceEncoded, 500 to a pipeline, retrying a few times with a growing pause so a
// blip does not fail the whole rebuild. Comments are in the views already (the first
// EmbeddedComments of each). The documents are encoded by hand (View.AppendJSON) into
// one buffer that the next Load reuses. SET NX goes first while it mostly succeeds
// (Redis empty, or flushed), and is dropped once half of a pipeline's failed (Redis
// holds the documents: the script decides anyway).
func (t *Target) Load(ctx context.Context, views []projections.View, _ []projections.TicketComment) error {
	if len(views) == 0 {
		return nil
	}
	fb := fillBuffers.Get().(*fillBuffer)
	defer fillBuffers.Put(fb)
	buf, docs, err := encodeDocs(fb.buf[:0], fb.docs[:0], views)
	if err != nil {
		return err
	}
	fb.buf, fb.docs = buf, docs
	for attempt := range 6 {
		if attempt > 0 {
			if err := sleep(ctx, time.Duration(50<<attempt)*time.Millisecond); err != nil {
				return err
			}
		}
		err = nil
		var failed []EncodedDoc
		for i := 0; i < len(docs); i += 500 {
			chunk := docs[i:min(i+500, len(docs))]
			var r Replaced
			r, err = t.Docs.ReplaceEncoded(ctx, chunk, t.fill)
			if t.fill && r.Filled < len(chunk)/2 && err == nil {
				t.fill = false
			}
			t.track(chunk, r)
			if err != nil {
				failed = append(pick(chunk, r.Failed), docs[i+len(chunk):]...)
				break
			}
		}
		if docs = failed; err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("redis documents: %w", err)
	}
	return nil
}

// track remembers the tickets of chunk that ReplaceEncoded wrote (r: neither refused
// nor failed), for Finish.
func (t *Target) track(chunk []EncodedDoc, r Replaced) {
	if t.overflow {
		return
	}
	limit := t.MaxTracked
	if limit <= 0 {
		limit = 4 << 20
	}
	skip := make(map[int]bool, len(r.Refused)+len(r.Failed))
	for _, i := range r.Refused {
		skip[i] = true
	}
	for _, i := range r.Failed {
		skip[i] = true
	}
	for i, doc := range chunk {
		if skip[i] {
			continue
		}
		if len(t.written) >= limit {
			t.written, t.overflow = nil, true
			return
		}
		t.written = append(t.written, doc.ID)
	}
}

// encodeDocs appends the stored values of views (AppendDoc) to buf, one after the
// other, and their documents, pointing into buf, to docs.
func encodeDocs(buf []byte, docs []EncodedDoc, views []projections.View) ([]byte, []EncodedDoc, error) {
	first, off := len(docs), len(buf)
	for i := range views {
		start := len(buf)
		var err error
		if buf, err = AppendDoc(buf, &views[i]); err != nil {
			return buf, docs, err
		}
		// the length only for now: buf may move as it grows
		docs = append(docs, EncodedDoc{ID: views[i].ID, Version: views[i].Version, Deleted: views[i].Deleted, Value: buf[start:len(buf):len(buf)]})
	}
	// the values are in buf as it ended: point them there
	for i := first; i < len(docs); i++ {
		n := len(docs[i].Value)
		docs[i].Value = buf[off : off+n : off+n]
		off += n
	}
	return buf, docs, nil
}

// fillBuffer is the room one Load encodes its documents in, kept for the next.
type fillBuffer struct {
	buf  []byte
	docs []EncodedDoc
}

var fillBuffers = sync.Pool{New: func() any { return new(fillBuffer) }}

// Loaded sorts the written tickets for Finish's lookups.
func (t *Target) Loaded(context.Context) error {
	slices.SortFunc(t.written, compareIDs)
	return nil
}

// Apply folds each ticket of the catch-up's events afresh from the store, up to its
// last event among them, and writes it as Load does (ReplaceEncoded): a document that
// a live writer stored for those events is replaced by the rebuild's fold too, so after
// the rebuild every document of an event it read is its own fold (or newer). Tickets
// Redis did not take are queued for the repairer in tx.
func (t *Target) Apply(ctx context.Context, tx pgx.Tx, recs []eventstore.Record) error {
	ids, byTicket := groupByTicket(projections.Events(recs))
	upTo := make([]int, len(ids))
	for i, id := range ids {
		evs := byTicket[id]
		upTo[i] = evs[len(evs)-1].Version
	}
	// through tx: the rebuild holds connections already (its lock, this transaction),
	// and the pool may have no other to give
	streams, err := t.Events.LoadStreams(ctx, tx, ids, upTo)
	if err != nil {
		return fmt.Errorf("redis catch-up: %w", err)
	}
	views := make([]projections.View, 0, len(ids))
	for len(streams) > 0 {
		n := 1
		for n < len(streams) && streams[n].TicketID == streams[0].TicketID {
			n++
		}
		v, err := projections.FoldAll(projections.View{}, projections.Events(streams[:n])...)
		if err != nil {
			return fmt.Errorf("redis catch-up: %w", err)
		}
		views = append(views, v)
		streams = streams[n:]
	}
	_, docs, err := encodeDocs(nil, nil, views)
	if err != nil {
		return err
	}
	r, err := t.Docs.ReplaceEncoded(ctx, docs, false)
	if err != nil {
		failed := make([]uuid.UUID, len(r.Failed))
		for i, j := range r.Failed {
			failed[i] = docs[j].ID
		}
		if err := EnqueueRepair(ctx, tx, failed...); err != nil {
			return err
		}
	}
	for i, doc := range docs {
		if !slices.Contains(r.Refused, i) && !slices.Contains(r.Failed, i) {
			t.remember(doc.ID)
		}
	}
	return nil
}

// remember adds id to the sorted written tickets (a catch-up's, after Loaded).
func (t *Target) remember(id uuid.UUID) {
	if t.overflow {
		return
	}
	if i, found := slices.BinarySearchFunc(t.written, id, compareIDs); !found {
		t.written = slices.Insert(t.written, i, id)
	}
}

func compareIDs(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) }

// Swap has nothing to swap: the documents are live already.
func (t *Target) Swap(context.Context, pgx.Tx) error { return nil }

// Abort leaves the documents as they are: each is the rebuild's or a live writer's,
// never older than it was.
func (t *Target) Abort(context.Context) error { return nil }

// Finish removes, once the swap has committed, the documents that neither the rebuild
// wrote nor the store holds (Docs.Sweep): every event below the swap's bound is in
// Redis by then, so a document the rebuild did not write is of a ticket created or
// changed since (past the bound: the store holds its version, and it stays), of a
// version newer than the store has (Redis kept while Postgres was restored from an
// older backup), or of a ticket the store does not have. The written tickets are
// passed over without a read; past MaxTracked, every document is checked.
func (t *Target) Finish(ctx context.Context) error {
	var written func(uuid.UUID) bool
	if !t.overflow {
		written = func(id uuid.UUID) bool {
			_, ok := slices.BinarySearchFunc(t.written, id, compareIDs)
			return ok
		}
	}
	_, err := t.Docs.Sweep(ctx, written, t.Events.Holds)
	t.written = nil
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
