package redismodel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/ticket"
)

// Reader serves the read endpoints: a ticket from Redis first, then from the Postgres
// read model (which itself falls back to the event store when it is behind); the list
// and comment pages from the Postgres read model.
//
// It also writes every acknowledged command through to Redis (Committed), and it keeps
// the promise that GET never answers an older state than one acknowledged by this
// instance: when a write-through fails, the ticket is marked pending with the version
// Redis must reach, and Redis is not used for it until a read, a later write, the
// repairer or a sweep sees Redis at that version. Across instances the promise rests on
// the write-through succeeding; see the README for the remaining window.
type Reader struct {
	docs *Docs
	rm   *pgmodel.ReadModel
	pool *pgxpool.Pool
	log  *slog.Logger

	mu      sync.Mutex
	pending map[uuid.UUID]int // ticket -> version Redis must reach before it answers for it
	npend   atomic.Int64      // len(pending), read without the lock on the hot path
	refills chan struct{}     // bounds the refills in flight
	through *writeThrough     // coalesces the write-throughs of concurrent requests
}

// NewReader returns a Reader on the Redis documents docs and the Postgres read model rm;
// pool records failed write-throughs in the repair backlog.
func NewReader(docs *Docs, rm *pgmodel.ReadModel, pool *pgxpool.Pool, log *slog.Logger) *Reader {
	if log == nil {
		log = slog.Default()
	}
	return &Reader{docs: docs, rm: rm, pool: pool, log: log,
		pending: map[uuid.UUID]int{}, refills: make(chan struct{}, 32), through: &writeThrough{docs: docs}}
}

// GetRaw returns the document of ticket id as JSON ready to send (what eventstore.EncodeJSON of
// its projections.View gives) and its version. A Redis hit costs one round trip and no decoding.
// Errors: ticket.ErrNotFound for an unknown or deleted ticket, ticket.ErrUnavailable
// when Postgres is needed and unreachable. A failing Redis is skipped, never an error.
func (r *Reader) GetRaw(ctx context.Context, id uuid.UUID) ([]byte, int, error) {
	need := r.need(id)
	body, version, found, err := r.docs.Get(ctx, id)
	switch {
	case err == nil && found && version >= need:
		if need > 0 {
			r.clean(id, version)
		}
		return body, version, nil
	case errors.Is(err, ErrDeleted) && version >= need:
		return nil, 0, fmt.Errorf("ticket %s: %w", id, ErrDeleted)
	}
	redisAnswered := err == nil
	v, err := r.rm.Get(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	out, err := eventstore.EncodeJSON(v)
	if err != nil {
		return nil, 0, fmt.Errorf("encode ticket %s: %w", id, err)
	}
	if redisAnswered && v.Version > version {
		r.refill(v)
	}
	return out, v.Version, nil
}

// Get is GetRaw decoded, for callers that want the projections.View.
func (r *Reader) Get(ctx context.Context, id uuid.UUID) (projections.View, error) {
	body, _, err := r.GetRaw(ctx, id)
	if err != nil {
		return projections.View{}, err
	}
	v, err := projections.DecodeView(body)
	if err != nil {
		return projections.View{}, fmt.Errorf("decode ticket %s: %w", id, err)
	}
	return v, nil
}

// List serves the list from the Postgres read model.
func (r *Reader) List(ctx context.Context, q pgmodel.ListQuery) ([]projections.Summary, *pgmodel.ListKey, error) {
	return r.rm.List(ctx, q)
}

// Comments serves a page of comments from the Postgres read model.
func (r *Reader) Comments(ctx context.Context, id uuid.UUID, after, limit int) ([]projections.Comment, bool, error) {
	return r.rm.Comments(ctx, id, after, limit)
}

// Committed writes the events a command just appended through to Redis (the httpapi
// OnCommitted hook): folded onto nothing for a new ticket, else onto the stored
// document when it stands at the version before them (one write when this process
// wrote that version last and still has it cached, else a read and a write). It is
// bounded by twice the Redis timeout (the pipeline in flight, then its own) and never
// fails: when Redis holds an older version the ticket is marked pending here (this
// instance reads it from Postgres until Redis has caught up; the projector is on its
// way), and when a Redis call fails it is also queued for the repairer. The projector would bring Redis up to date anyway; the
// write-through makes that immediate. Concurrent write-throughs share pipelines
// (writeThrough).
func (r *Reader) Committed(ctx context.Context, events []ticket.Event) {
	if len(events) == 0 {
		return
	}
	ctx = context.WithoutCancel(ctx)
	id, first, last := events[0].TicketID, events[0].Version, events[len(events)-1].Version
	base, cached := r.docs.Cached(id)
	if first == 1 {
		base = projections.View{}
	} else if !cached || base.Version != first-1 {
		base = projections.View{}
		body, version, found, err := r.docs.Get(ctx, id)
		switch {
		case (err == nil || errors.Is(err, ErrDeleted)) && version >= last:
			r.clean(id, version)
			return
		case err == nil && found && version == first-1:
			if base, err = projections.DecodeViewToFold(body); err != nil {
				r.behind(id, last)
				return
			}
		case err == nil:
			// Redis answered with an older document (or none): the projector is on its
			// way with the events in between and will write this version too.
			r.behind(id, last)
			return
		default:
			r.failed(ctx, id, last)
			return
		}
	}
	v, err := projections.FoldAll(base, events...)
	if err == nil {
		// A new ticket's first document is most likely absent (its projector has not
		// run yet): SET NX stores it where nothing is, as set-if-newer would, for a
		// fraction of the script's cost to Redis; only when the projector stored it
		// first does the script decide (see FillMany). Past the breaker: no.
		err = r.through.put(ctx, v, first == 1)
	}
	if err != nil {
		r.failed(ctx, id, last)
		return
	}
	r.clean(id, last)
}

// behind marks ticket id as read past Redis on this instance until Redis holds
// version: Redis works but has not caught up, and its projector will write it.
func (r *Reader) behind(id uuid.UUID, version int) { r.mark(id, version) }

// failed marks ticket id as behind and queues it for the repairer: a Redis call
// failed, so nothing says the projector's write will succeed either.
func (r *Reader) failed(ctx context.Context, id uuid.UUID, version int) {
	r.mark(id, version)
	if r.pool == nil {
		return
	}
	bctx, cancel := context.WithTimeout(ctx, backlogTimeout)
	defer cancel()
	if err := EnqueueRepair(bctx, r.pool, id); err != nil {
		r.log.Debug("write-through backlog", "ticket", id, "err", err)
	}
}

// backlogTimeout bounds the write-through's backlog insert: the projector queues the
// ticket as well, so this one is an early start, not the only record.
const backlogTimeout = 250 * time.Millisecond

// Pending returns how many tickets this instance currently reads past Redis because a
// write-through failed.
func (r *Reader) Pending() int { return int(r.npend.Load()) }

// need returns the version Redis must have for id before it may answer, 0 if any.
func (r *Reader) need(id uuid.UUID) int {
	if r.npend.Load() == 0 {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pending[id]
}

func (r *Reader) mark(id uuid.UUID, version int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if version > r.pending[id] {
		r.pending[id] = version
		r.npend.Store(int64(len(r.pending)))
	}
}

// clean drops the pending mark of id if Redis is known to hold version or newer.
func (r *Reader) clean(id uuid.UUID, version int) {
	if r.npend.Load() == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if need, ok := r.pending[id]; ok && need <= version {
		delete(r.pending, id)
		r.npend.Store(int64(len(r.pending)))
	}
}

// sweep drops the pending marks of tickets Redis has caught up with, a few hundred at
// a time, so marks of tickets nobody reads do not pile up.
func (r *Reader) sweep(ctx context.Context) {
	if r.npend.Load() == 0 || !r.docs.Up() {
		return
	}
	r.mu.Lock()
	ids := make([]uuid.UUID, 0, min(len(r.pending), 500))
	for id := range r.pending {
		if len(ids) == cap(ids) {
			break
		}
		ids = append(ids, id)
	}
	r.mu.Unlock()
	versions, err := r.docs.Versions(ctx, ids)
	if err != nil {
		return
	}
	for i, id := range ids {
		r.clean(id, versions[i])
	}
}

// refill writes v to Redis in the background after a miss (only if newer than what is
// stored by then); skipped when enough refills are already in flight.
func (r *Reader) refill(v projections.View) {
	select {
	case r.refills <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-r.refills }()
		if err := r.docs.Put(context.Background(), v); err == nil {
			r.clean(v.ID, v.Version)
		}
	}()
}

// distrustQuery finds the tickets whose Redis document may be older than a state some
// instance acknowledged: those with outbox messages past the Redis projector's
// position (the projector has not written them, and their write-through may have
// failed in an instance that is gone), and those queued for repair. Each comes with
// its stream's head version.
var distrustQuery = `WITH pos AS (
	SELECT last_processed_transaction_id AS tx, offset_acked AS off
	FROM ` + wsql.DefaultPostgreSQLOffsetsAdapter{}.MessagesOffsetsTable(eventstore.Topic) + `
	WHERE consumer_group = $1
), ids AS (
	SELECT DISTINCT (o.payload->>'stream_id')::uuid AS id
	FROM ` + wsql.DefaultPostgreSQLSchema{}.MessagesTable(eventstore.Topic) + ` o
	LEFT JOIN pos ON true
	WHERE pos.tx IS NULL OR (o.transaction_id, o."offset") > (pos.tx, pos.off)
	UNION
	SELECT ticket_id FROM redis_backlog
)
SELECT ids.id, ` + eventstore.HeadOf("ids.id") + ` FROM ids`

// DistrustUnprojected marks pending, at start, every ticket whose Redis document may be
// behind a state that was acknowledged before this process started (see distrustQuery),
// so that GET never answers it from Redis older than that: the marks of a previous
// process, and of other instances whose write-through failed, are not in memory here.
// It returns how many tickets it marked; reads, the repairer and the sweep drop the marks
// as Redis catches up.
func (r *Reader) DistrustUnprojected(ctx context.Context) (int, error) {
	if r.pool == nil {
		return 0, nil
	}
	rows, err := r.pool.Query(ctx, distrustQuery, Group)
	if err != nil {
		return 0, projections.Unavailable(fmt.Errorf("find tickets redis may lag: %w", err))
	}
	var (
		id      uuid.UUID
		version int
		n       int
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &version}, func() error {
		if version > 0 {
			r.mark(id, version)
			n++
		}
		return nil
	})
	if err != nil {
		return 0, projections.Unavailable(fmt.Errorf("find tickets redis may lag: %w", err))
	}
	return n, nil
}
