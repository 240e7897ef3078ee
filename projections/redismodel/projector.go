package redismodel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/ticket"
)

// Projector keeps the Redis read model: one document per ticket, built
// incrementally from the event stream (consumer group Group) with Fold.
//
// Its batches run inside the consumer's transaction, which holds the group's lock (and
// the batch's events) while it lasts. So it never waits for Redis beyond the Docs
// timeout (at most one pipelined read and one pipelined write per batch, each one
// round trip per cluster node) and never fails a batch because of Redis: the tickets whose
// documents it could not write (Redis failing, or the circuit breaker already knowing
// it is down) are recorded in the redis_backlog table through the consumer's
// transaction, so the record commits with the position, and Repairer rebuilds
// them later outside any transaction. Nothing is lost: every event either reached
// Redis or left its ticket in the backlog.
type Projector struct {
	Docs   *Docs
	Events projections.Streams
	Log    *slog.Logger

	queued atomic.Int64
}

// Handler returns the projector as the projections.Handler of its consumer group. The
// documents are derived (a rebuild makes them from the event store), and so are the
// backlog rows its batches write: a batch commits without waiting for its WAL flush
// (projections.Handler.Derived); a commit lost in a crash loses its backlog rows with
// its position, and the events are taken again.
//
// Woken by this instance's appends, it waits wakeDelay after its last read: their
// documents are written through already, so it takes more of them per transaction
// (and per pipeline) rather than following each append within milliseconds.
func (p *Projector) Handler() projections.Handler {
	return projections.Handler{Group: Group, Apply: p.Apply, Queue: p.Queue, Derived: true, WakeDelay: wakeDelay}
}

// wakeDelay is the Redis projector's projections.Handler.WakeDelay.
const wakeDelay = 10 * time.Millisecond

// Queued returns how many tickets this projector sent to the backlog instead of Redis.
func (p *Projector) Queued() int64 { return p.queued.Load() }

// Apply brings the documents of the batch's tickets up to the batch's versions. It
// returns an error only when the backlog cannot be written (Postgres failing) or an
// event has no fold case.
func (p *Projector) Apply(ctx context.Context, tx pgx.Tx, recs []eventstore.Record) error {
	b := &pgx.Batch{}
	if err := p.Queue(ctx, tx, recs, b); err != nil || b.Len() == 0 {
		return err
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("queue redis repairs: %w", projections.Unavailable(err))
	}
	return nil
}

// Queue is Apply that queues the backlog rows of the tickets Redis did not get into b,
// for the consumer to send with the position's ack in one round trip.
func (p *Projector) Queue(ctx context.Context, _ pgx.Tx, recs []eventstore.Record, b *pgx.Batch) error {
	failed, err := p.Project(ctx, projections.Events(recs))
	if err != nil {
		return err
	}
	if len(failed) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err // the batch is being given up: it is rolled back and taken again
	}
	p.queued.Add(int64(len(failed)))
	if p.Log != nil {
		p.Log.Debug("redis projection queued for repair", "tickets", len(failed))
	}
	b.Queue(enqueueRepair, failed)
	return nil
}

// groupByTicket splits events by ticket, in order of first appearance.
func groupByTicket(evs []ticket.Event) ([]uuid.UUID, map[uuid.UUID][]ticket.Event) {
	by := make(map[uuid.UUID][]ticket.Event, len(evs))
	var ids []uuid.UUID
	for _, e := range evs {
		if _, ok := by[e.TicketID]; !ok {
			ids = append(ids, e.TicketID)
		}
		by[e.TicketID] = append(by[e.TicketID], e)
	}
	return ids, by
}

// Project brings the documents of the events' tickets up to at least the last of their
// events (given in stream order per ticket): nothing for a ticket whose stored version
// is already there; its events folded onto the stored document (the one this process
// wrote last, else read from Redis) when that is exactly the version before them;
// otherwise (missing, a gap) the document folded afresh from the event store. It
// returns the tickets it could not write (Redis or the event store failing); their
// documents are unchanged or correct, never older. The error is for events without a
// fold case only.
func (p *Projector) Project(ctx context.Context, evs []ticket.Event) ([]uuid.UUID, error) {
	ids, byTicket := groupByTicket(evs)
	var failed []uuid.UUID
	views := make([]projections.View, 0, len(ids))
	add := func(id uuid.UUID, base projections.View, stored int) error {
		v, done, err := p.fold(ctx, id, base, stored, byTicket[id])
		switch {
		case errors.Is(err, projections.ErrUnknownEvent):
			return err
		case err != nil:
			failed = append(failed, id)
		case !done:
			views = append(views, v)
		}
		return nil
	}
	// Tickets whose document this process wrote last are folded onto the cached view;
	// only the others are read from Redis.
	var unknown []uuid.UUID
	for _, id := range ids {
		cached, ok := p.Docs.Cached(id)
		if !ok {
			unknown = append(unknown, id)
			continue
		}
		if err := add(id, cached, cached.Version); err != nil {
			return nil, err
		}
	}
	if len(unknown) > 0 {
		docs, err := p.Docs.GetMany(ctx, unknown)
		if err != nil {
			// Those tickets go to the backlog; the cached ones are still written (or
			// queued) below, never dropped.
			failed = append(failed, unknown...)
			unknown = nil
		}
		for i, id := range unknown {
			var base projections.View
			evs := byTicket[id]
			// decoded only to fold onto: not when Redis holds every event already (another
			// instance's write-through, a redelivery)
			if docs[i].Found && !docs[i].Deleted && docs[i].Version < evs[len(evs)-1].Version {
				var err error
				if base, err = projections.DecodeViewToFold(docs[i].Body); err != nil {
					base = projections.View{} // unreadable: folded afresh
				}
			}
			if err := add(id, base, docs[i].Version); err != nil {
				return nil, err
			}
		}
	}
	notWritten, _ := p.Docs.PutMany(ctx, views, false)
	for _, v := range notWritten {
		failed = append(failed, v.ID)
	}
	return failed, nil
}

// fold folds a ticket's events onto base, the document Redis holds at version stored
// (base is the zero View when Redis has none, a tombstone or an unreadable one): done
// when Redis already has them all; base's events skipped; the ticket folded afresh
// from the event store when the rest does not follow base.
func (p *Projector) fold(ctx context.Context, id uuid.UUID, base projections.View, stored int, evs []ticket.Event) (projections.View, bool, error) {
	for len(evs) > 0 && evs[0].Version <= stored {
		evs = evs[1:] // already in Redis (a redelivery, or the write-through came first)
	}
	if len(evs) == 0 {
		return projections.View{}, true, nil
	}
	if base.Version != evs[0].Version-1 {
		base = projections.View{}
	}
	v, err := projections.FoldAll(base, evs...)
	if errors.Is(err, projections.ErrUnknownEvent) {
		return v, false, err
	}
	if err != nil {
		v, err = p.replay(ctx, id, evs[len(evs)-1].Version)
	}
	return v, false, err
}

// replay folds ticket id from the event store up to version upTo.
func (p *Projector) replay(ctx context.Context, id uuid.UUID, upTo int) (projections.View, error) {
	recs, err := p.Events.Load(ctx, id, 0, upTo)
	if err != nil {
		return projections.View{}, err
	}
	return projections.FoldAll(projections.View{}, projections.Events(recs)...)
}

// rebuildDoc folds ticket id from the event store and writes its document (or its
// tombstone), if newer than the stored one. It returns the version written. force
// writes even while the breaker is open (see Docs.PutMany).
func rebuildDoc(ctx context.Context, events projections.Streams, docs *Docs, id uuid.UUID, force bool) (int, error) {
	recs, err := events.Load(ctx, id, 0, projections.MaxVersion)
	if err != nil {
		return 0, fmt.Errorf("rebuild redis document: %w", err)
	}
	if len(recs) == 0 {
		return 0, fmt.Errorf("ticket %s: %w", id, ticket.ErrNotFound)
	}
	v, err := projections.FoldAll(projections.View{}, projections.Events(recs)...)
	if err != nil {
		return 0, fmt.Errorf("rebuild redis document: %w", err)
	}
	if _, err := docs.PutMany(ctx, []projections.View{v}, force); err != nil {
		return 0, err
	}
	return v.Version, nil
}

// enqueueRepair adds the tickets $1 to the backlog (see EnqueueRepair).
const enqueueRepair = `INSERT INTO redis_backlog (ticket_id) SELECT DISTINCT unnest($1::uuid[])
	ON CONFLICT (ticket_id) DO UPDATE SET gen = redis_backlog.gen + 1, lease_until = '-infinity'`

// execer is a pgx transaction, savepoint or pool.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// EnqueueRepair records that the Redis documents of tickets ids may be behind, for
// Repairer, in one statement. Adding a ticket that is already queued raises its generation and
// makes it due at once, so a repairer that loaded it before this call will not delete
// the row and the newer state is repaired too.
func EnqueueRepair(ctx context.Context, db execer, ids ...uuid.UUID) error {
	_, err := db.Exec(ctx, enqueueRepair, ids)
	if err != nil {
		return fmt.Errorf("queue redis repair of %d tickets: %w", len(ids), projections.Unavailable(err))
	}
	return nil
}

// Repairer rebuilds, from the event store, the Redis documents of the tickets in
// the redis_backlog table, and removes them from it. Every instance runs one; they
// share the work safely: a repairer claims due rows in one short statement (FOR UPDATE
// SKIP LOCKED, then a lease), works on them outside any transaction, and deletes a row
// only at the generation it claimed. While Redis fails it backs off exponentially.
type Repairer struct {
	Pool   *pgxpool.Pool
	Events projections.Streams
	Docs   *Docs
	Log    *slog.Logger
	// Reader, if set, hears of every repaired document (so it may serve it from Redis
	// again) and has its pending marks swept now and then.
	Reader *Reader
	// Idle is the pause between looks at an empty backlog (default 250ms).
	Idle time.Duration
	// Batch is how many rows one pass claims (default 100).
	Batch int
	// Lease is how long a claimed row is left to its repairer before another may take
	// it over (default 30s).
	Lease time.Duration
	// MaxBackoff caps the pause between passes while Redis fails (default 2s).
	MaxBackoff time.Duration

	repaired atomic.Int64
}

func (r *Repairer) defaults() {
	if r.Idle <= 0 {
		r.Idle = 250 * time.Millisecond
	}
	if r.Batch <= 0 {
		r.Batch = 100
	}
	if r.Lease <= 0 {
		r.Lease = 30 * time.Second
	}
	if r.MaxBackoff <= 0 {
		r.MaxBackoff = 2 * time.Second
	}
	if r.Log == nil {
		r.Log = slog.Default()
	}
}

// Repaired returns how many documents this repairer has written back.
func (r *Repairer) Repaired() int64 { return r.repaired.Load() }

// Run repairs until ctx ends. It returns nil then.
func (r *Repairer) Run(ctx context.Context) error {
	r.defaults()
	var backoff time.Duration
	failing := false
	lastSweep := time.Now()
	for {
		n, err := r.RepairOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var pause time.Duration
		switch {
		case err != nil:
			backoff = min(max(backoff*2, 100*time.Millisecond), r.MaxBackoff)
			pause = backoff
			if !failing {
				failing = true
				r.Log.Warn("redis repair failing; retrying with backoff", "err", err)
			}
		case n > 0:
			backoff = 0
			if failing {
				failing = false
				r.Log.Info("redis repair resumed")
			}
		default:
			backoff = 0
			failing = false
			pause = r.Idle
		}
		if r.Reader != nil && time.Since(lastSweep) > 2*time.Second {
			lastSweep = time.Now()
			r.Reader.sweep(ctx)
		}
		if pause > 0 {
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
}

type backlogRow struct {
	id  uuid.UUID
	gen int64
}

// RepairOnce claims up to Batch due rows and repairs them. It returns how many it
// repaired, and an error if Redis or Postgres failed (the unrepaired rows are left due
// again after a short while).
func (r *Repairer) RepairOnce(ctx context.Context) (int, error) {
	r.defaults()
	rows, err := r.Pool.Query(ctx, `UPDATE redis_backlog b
		SET lease_until = now() + make_interval(secs => $2), attempts = b.attempts + 1
		FROM (SELECT ticket_id FROM redis_backlog WHERE lease_until <= now()
			ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED) due
		WHERE b.ticket_id = due.ticket_id
		RETURNING b.ticket_id, b.gen`, r.Batch, r.Lease.Seconds())
	if err != nil {
		return 0, fmt.Errorf("claim redis backlog: %w", projections.Unavailable(err))
	}
	claimed, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (backlogRow, error) {
		var b backlogRow
		return b, row.Scan(&b.id, &b.gen)
	})
	if err != nil {
		return 0, fmt.Errorf("claim redis backlog: %w", projections.Unavailable(err))
	}
	if len(claimed) == 0 {
		return 0, nil
	}
	var doneIDs []uuid.UUID
	var doneGens []int64
	var failed error
	for i, b := range claimed {
		version, err := rebuildDoc(ctx, r.Events, r.Docs, b.id, true)
		if errors.Is(err, ticket.ErrNotFound) {
			err = nil // no such stream: nothing to repair
		}
		if err != nil {
			failed = err
			rest := make([]uuid.UUID, 0, len(claimed)-i)
			for _, c := range claimed[i:] {
				rest = append(rest, c.id)
			}
			// Due again after a short while rather than after the whole lease.
			_, _ = r.Pool.Exec(context.WithoutCancel(ctx), `UPDATE redis_backlog
				SET lease_until = now() + interval '200 milliseconds' WHERE ticket_id = ANY($1)`, rest)
			break
		}
		doneIDs = append(doneIDs, b.id)
		doneGens = append(doneGens, b.gen)
		if r.Reader != nil && version > 0 {
			r.Reader.clean(b.id, version)
		}
	}
	if len(doneIDs) > 0 {
		_, err := r.Pool.Exec(context.WithoutCancel(ctx), `DELETE FROM redis_backlog b
			USING unnest($1::uuid[], $2::bigint[]) AS d(ticket_id, gen)
			WHERE b.ticket_id = d.ticket_id AND b.gen = d.gen`, doneIDs, doneGens)
		if err != nil && failed == nil {
			failed = fmt.Errorf("clear redis backlog: %w", projections.Unavailable(err))
		}
		r.repaired.Add(int64(len(doneIDs)))
	}
	return len(doneIDs), failed
}

// Backlog returns how many tickets wait for their Redis document to be repaired.
func Backlog(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM redis_backlog`).Scan(&n); err != nil {
		return 0, projections.Unavailable(err)
	}
	return n, nil
}
