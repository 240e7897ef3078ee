package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// RedisProjector keeps the Redis read model: one document per ticket, built
// incrementally from the event stream (consumer group RedisGroup).
//
// watermill-sql runs the handler inside the subscriber's open transaction, which holds
// back every consumer's view of new events while it lasts, and it would resend a nacked
// message in that same transaction. So the projector never waits for Redis beyond the
// RedisDocs timeout and never fails an event because of Redis: when Redis fails (or
// the circuit breaker already knows it is down) it records the ticket in the
// redis_backlog table, through the subscriber's transaction so the record commits with
// the offset, and acknowledges. RedisRepairer rebuilds those documents later, outside
// that transaction. Nothing is lost: every event either reached Redis or left its
// ticket in the backlog.
type RedisProjector struct {
	Docs   *RedisDocs
	Events *eventstore.Store
	Log    *slog.Logger

	queued atomic.Int64
}

// Queued returns how many events this projector sent to the backlog instead of Redis.
func (p *RedisProjector) Queued() int64 { return p.queued.Load() }

// Handle is the Watermill handler. It needs the watermill-sql transaction in the
// message context for the backlog. It returns an error only for an undecodable event
// (permanent: poison topic) or when the backlog cannot be written (Postgres failing).
func (p *RedisProjector) Handle(msg *message.Message) error {
	rec, err := eventstore.DecodeMessage(msg.Payload)
	if err != nil {
		return permanent(err)
	}
	tx, err := pgxTx(msg)
	if err != nil {
		return permanent(err)
	}
	ctx := msg.Context()
	perr := p.Project(ctx, rec.Event)
	if perr == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		// The subscriber gave up on this message (shutdown, ack deadline): it rolls its
		// transaction back and redelivers the event later. Touching the transaction now
		// would race with that rollback on the same connection.
		return err
	}
	p.queued.Add(1)
	if p.Log != nil && !errors.Is(perr, ErrRedisDown) {
		p.Log.Debug("redis projection queued for repair", "ticket", rec.TicketID, "version", rec.Version, "err", perr)
	}
	return pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error { return EnqueueRedisRepair(ctx, sp, rec.TicketID) })
}

// Project brings the Redis document of e's ticket up to at least e's version: nothing
// when the stored version is already there (a redelivery, or a write-through that came
// first); e applied to the stored document when that is exactly one version behind;
// otherwise (missing, a gap) the document rebuilt from the event store. A deletion
// leaves a tombstone. It returns an error when Redis or the event store failed; the
// document is then unchanged or correct, never older.
func (p *RedisProjector) Project(ctx context.Context, e ticket.Event) error {
	if !p.Docs.Up() {
		return ErrRedisDown
	}
	body, stored, found, err := p.Docs.Get(ctx, e.TicketID)
	if err != nil && !errors.Is(err, ErrDeleted) {
		return err
	}
	if found && stored >= e.Version {
		return nil
	}
	if _, ok := e.Data.(ticket.Deleted); ok {
		return p.Docs.Tombstone(ctx, e.TicketID, e.Version)
	}
	if stored == e.Version-1 && (found || e.Version == 1) && err == nil {
		var v View
		if found && json.Unmarshal(body, &v) != nil {
			return p.rebuild(ctx, e.TicketID)
		}
		if next, ok := applyToView(v, e); ok {
			return p.Docs.Put(ctx, next)
		}
	}
	return p.rebuild(ctx, e.TicketID)
}

// rebuild writes the ticket's document as the event store has it now.
func (p *RedisProjector) rebuild(ctx context.Context, id uuid.UUID) error {
	_, err := rebuildDoc(ctx, p.Events, p.Docs, id, false)
	return err
}

// rebuildDoc replays ticket id from the event store and writes its document (or its
// tombstone), if newer than the stored one. It returns the version written. force
// writes even while the breaker is open (see RedisDocs.putForced).
func rebuildDoc(ctx context.Context, events *eventstore.Store, docs *RedisDocs, id uuid.UUID, force bool) (int, error) {
	t, err := events.LoadTicket(ctx, id, 0)
	if err != nil {
		return 0, fmt.Errorf("rebuild redis document: %w", err)
	}
	switch {
	case t.Deleted() && force:
		return t.Version(), docs.tombstoneForced(ctx, id, t.Version())
	case t.Deleted():
		return t.Version(), docs.Tombstone(ctx, id, t.Version())
	case force:
		return t.Version(), docs.putForced(ctx, ViewOf(t.State()))
	}
	return t.Version(), docs.Put(ctx, ViewOf(t.State()))
}

// applyToView folds event e into v, the document at the version before e, giving what
// ViewOf shows for the state after e. It mirrors ticket.Ticket.Apply; ok is false for
// an event that does not fit v (the caller then rebuilds from the event store).
// Deletions are not documents and are handled by the caller.
func applyToView(v View, e ticket.Event) (View, bool) {
	at := e.At.UTC()
	switch d := e.Data.(type) {
	case ticket.Opened:
		if e.Version != 1 {
			return v, false
		}
		return View{Summary: Summary{
			ID: e.TicketID, Title: d.Title, Description: d.Description, Email: d.Email,
			CreatedBy: d.CreatedBy, UpdatedBy: d.CreatedBy, Status: ticket.StatusOpen, Version: 1,
			CreatedAt: at, UpdatedAt: at,
		}, Comments: []ticket.Comment{}}, true
	case ticket.CommentAdded:
		if v.Version != e.Version-1 || v.ID != e.TicketID || v.Status == ticket.StatusClosed {
			return v, false
		}
		if len(v.Comments) < EmbeddedComments && v.CommentCount == len(v.Comments) {
			v.Comments = append(v.Comments, ticket.Comment{
				ID: d.CommentID, Body: d.Body, Email: d.Email, CreatedBy: d.CreatedBy, CreatedAt: at, Version: e.Version,
			})
		}
		v.CommentCount++
	case ticket.StatusChanged:
		if v.Version != e.Version-1 || v.ID != e.TicketID || d.From != v.Status || !v.Status.CanMoveTo(d.To) {
			return v, false
		}
		v.Status = d.To
		v.UpdatedBy = d.UpdatedBy
	default:
		return v, false
	}
	if v.Comments == nil {
		v.Comments = []ticket.Comment{}
	}
	v.Version = e.Version
	v.UpdatedAt = at
	return v, true
}

// execer is a pgx transaction, savepoint or pool.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// EnqueueRedisRepair records that ticket id's Redis document may be behind, for
// RedisRepairer. Adding a ticket that is already queued raises its generation and
// makes it due at once, so a repairer that loaded it before this call will not delete
// the row and the newer state is repaired too.
func EnqueueRedisRepair(ctx context.Context, db execer, id uuid.UUID) error {
	_, err := db.Exec(ctx, `INSERT INTO redis_backlog (ticket_id) VALUES ($1)
		ON CONFLICT (ticket_id) DO UPDATE SET gen = redis_backlog.gen + 1, lease_until = '-infinity'`, id)
	if err != nil {
		return fmt.Errorf("queue redis repair of %s: %w", id, unavailable(err))
	}
	return nil
}

// RedisRepairer rebuilds, from the event store, the Redis documents of the tickets in
// the redis_backlog table, and removes them from it. Every instance runs one; they
// share the work safely: a repairer claims due rows in one short statement (FOR UPDATE
// SKIP LOCKED, then a lease), works on them outside any transaction, and deletes a row
// only at the generation it claimed. While Redis fails it backs off exponentially.
type RedisRepairer struct {
	Pool   *pgxpool.Pool
	Events *eventstore.Store
	Docs   *RedisDocs
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

func (r *RedisRepairer) defaults() {
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
func (r *RedisRepairer) Repaired() int64 { return r.repaired.Load() }

// Run repairs until ctx ends. It returns nil then.
func (r *RedisRepairer) Run(ctx context.Context) error {
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
func (r *RedisRepairer) RepairOnce(ctx context.Context) (int, error) {
	r.defaults()
	rows, err := r.Pool.Query(ctx, `UPDATE redis_backlog b
		SET lease_until = now() + make_interval(secs => $2), attempts = b.attempts + 1
		FROM (SELECT ticket_id FROM redis_backlog WHERE lease_until <= now()
			ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED) due
		WHERE b.ticket_id = due.ticket_id
		RETURNING b.ticket_id, b.gen`, r.Batch, r.Lease.Seconds())
	if err != nil {
		return 0, fmt.Errorf("claim redis backlog: %w", unavailable(err))
	}
	claimed, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (backlogRow, error) {
		var b backlogRow
		return b, row.Scan(&b.id, &b.gen)
	})
	if err != nil {
		return 0, fmt.Errorf("claim redis backlog: %w", unavailable(err))
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
			failed = fmt.Errorf("clear redis backlog: %w", unavailable(err))
		}
		r.repaired.Add(int64(len(doneIDs)))
	}
	return len(doneIDs), failed
}

// RedisBacklog returns how many tickets wait for their Redis document to be repaired.
func RedisBacklog(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM redis_backlog`).Scan(&n); err != nil {
		return 0, unavailable(err)
	}
	return n, nil
}
