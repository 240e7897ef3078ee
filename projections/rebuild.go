package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// How a rebuild works, and why its result is exact
//
// Events and their outbox rows are written in one transaction, so they carry the same
// transaction_id (xid8). watermill-sql consumes outbox rows in (transaction_id, offset)
// order, and only rows with transaction_id < pg_snapshot_xmin(pg_current_snapshot()):
// below that bound every transaction has ended, so no row can still appear there. A
// consumer group's position (last_processed_transaction_id T, offset_acked O) means
// "every row up to (T, O) is applied, the next is the first after it".
//
// A rebuild picks such a bound X, replays into fresh read models exactly the events with
// transaction_id < X — a set that can no longer change — and sets the group's position
// to the last outbox row below X. The live projector then resumes with the first row at
// or after X: every event is in the read model exactly once, by the rebuild or by the
// projector.
//
// Postgres (build, then swap):
//  1. A fresh schema readmodel_new is made by readmodel_create(), the same DDL as the
//     live "readmodel".
//  2. Bulk: with X1 = the current xmin, the events below X1 are read in (stream,
//     version) order and folded per ticket with the domain's own Apply; each ticket's
//     final row and its comment rows are COPYed into readmodel_new in batches, each
//     COPY its own short transaction. Within a stream, version order is transaction
//     order (version n+1 is appended only after version n committed), so the fold gives
//     the rows incremental projection gives.
//  3. Catch-up: events committed meanwhile ([X1, X2), then [X2, X3) …) are applied with
//     Postgres.Apply — the incremental projector's own code — in batches of short
//     transactions, until the remaining delta is small and every transaction that was
//     open when the rebuild started has ended (so the result holds at least every
//     event committed before the rebuild began; the wait is bounded by WaitOpen).
//  4. One short final transaction locks the "pg-readmodel" offsets row FOR UPDATE. The
//     live projector locks that row first thing in each of its transactions, so it
//     is paused (and any transaction of it still in flight has committed). The
//     transaction takes the final bound Xf, applies the last delta [Xn, Xf), renames
//     readmodel to readmodel_old and readmodel_new to readmodel, and sets the group's
//     position to the last outbox row below Xf. The old schema is dropped afterwards.
//
// No transaction of the rebuild is long: the bulk reads hold no transaction id (a
// read-only statement does not get one), and every write is a short transaction. That
// matters because watermill-sql consumers cannot see past the oldest open writing
// transaction. Readers keep being served throughout: they read the old tables until
// the swap commits and the new ones after (a schema rename invalidates cached plans,
// so prepared statements resolve "readmodel.tickets" afresh). A projector transaction
// that waited for the locked row fails with a serialization error after the swap
// (watermill-sql subscribes in REPEATABLE READ) and starts over from the new position.
//
// Redis (wipe, refill, reset): the documents are wiped, then refilled from the same
// fold (a tombstone for a deleted ticket), the catch-up deltas are written from the
// replayed tickets, and finally the "redis-readmodel" position is set to the same
// point as Postgres. Every Redis write is set-if-newer by version, so the live Redis
// projector may run all along: whatever it writes is a true state of a ticket and never
// replaces a newer one; what it wrote before the wipe at or after the point is written
// again, because its position is set back to the point after the wipe.

// RebuildSchema is the schema a rebuild builds the fresh Postgres read model in before
// it swaps it with "readmodel".
const RebuildSchema = "readmodel_new"

// rebuildLock is the advisory lock key held by a running rebuild ("rebuild" in ASCII):
// two rebuilds at once would build into the same schema.
const rebuildLock int64 = 0x72656275696c64

// RebuildOptions tune Rebuild.
type RebuildOptions struct {
	// Redis is the Redis read model to wipe and refill; nil rebuilds Postgres only.
	Redis *RedisDocs
	// BatchSize is how many rows one COPY, or how many events one catch-up
	// transaction, carries at most. Default 5000.
	BatchSize int
	// RedisWorkers is how many documents are written to Redis concurrently. Default 32.
	RedisWorkers int
	// Progress, when set, is called from time to time with the events replayed so far
	// and the total known so far; the total grows when catch-up finds new events.
	Progress func(done, total int64)
	// WaitOpen bounds how long the rebuild waits for transactions that were open when
	// it started to end (they may still commit events it should include). Past it, it
	// swaps without them; the projectors apply them later. Default 1 minute.
	WaitOpen time.Duration
	// Log receives the rebuild's steps at debug level; nil discards them.
	Log *slog.Logger
}

func (o RebuildOptions) withDefaults() RebuildOptions {
	if o.BatchSize <= 0 {
		o.BatchSize = 5000
	}
	if o.RedisWorkers <= 0 {
		o.RedisWorkers = 32
	}
	if o.Progress == nil {
		o.Progress = func(int64, int64) {}
	}
	if o.WaitOpen <= 0 {
		o.WaitOpen = time.Minute
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// OutboxPosition is a consumer group's position in the outbox: the last row it has
// applied. The zero position (TransactionID "0") is before every row.
type OutboxPosition struct {
	TransactionID string // an xid8, in decimal
	Offset        int64
}

// RebuildResult says what a rebuild did.
type RebuildResult struct {
	// Events is the number of events replayed, Tickets the number of tickets folded
	// in the bulk pass.
	Events, Tickets int64
	// CatchUps is the number of catch-up rounds before the final swap.
	CatchUps int
	// Position is where the consumer groups resume after: the last outbox row the
	// rebuilt read models reflect.
	Position OutboxPosition
	Duration time.Duration
}

// Rebuild replays the event store into fresh read models — the Postgres read model in
// a new schema swapped in at the end, and opt.Redis when set — and moves the consumer
// groups PostgresGroup and RedisGroup to the point it replayed, so that incremental
// projection resumes exactly after it. It is safe while other instances serve traffic
// and project (see the comment above for how). Errors: ticket.ErrConflict when another
// rebuild is running; otherwise the database or Redis error that stopped it. A failed
// rebuild leaves the live Postgres read model as it was; Redis may then miss
// documents (readers refill them from the event store) until a rebuild succeeds.
func Rebuild(ctx context.Context, pool *pgxpool.Pool, opt RebuildOptions) (RebuildResult, error) {
	opt = opt.withDefaults()
	start := time.Now()
	lockConn, err := pool.Acquire(ctx)
	if err != nil {
		return RebuildResult{}, fmt.Errorf("rebuild: %w", err)
	}
	defer lockConn.Release()
	var locked bool
	if err := lockConn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, rebuildLock).Scan(&locked); err != nil {
		return RebuildResult{}, fmt.Errorf("rebuild: take lock: %w", err)
	}
	if !locked {
		return RebuildResult{}, fmt.Errorf("another rebuild is running: %w", ticket.ErrConflict)
	}
	defer lockConn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, rebuildLock) //nolint:errcheck // ending the session releases it too

	rb := &rebuild{pool: pool, opt: opt, store: eventstore.New(pool)}
	res, err := rb.run(ctx)
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, derr := pool.Exec(cctx, `DROP SCHEMA IF EXISTS `+RebuildSchema+` CASCADE`); derr != nil {
			opt.Log.Warn("rebuild: drop unfinished schema", "schema", RebuildSchema, "err", derr)
		}
		return res, err
	}
	res.Duration = time.Since(start)
	return res, nil
}

type rebuild struct {
	pool        *pgxpool.Pool
	opt         RebuildOptions
	store       *eventstore.Store
	done, total atomic.Int64
}

func (rb *rebuild) progress() {
	done := rb.done.Load()
	rb.opt.Progress(done, max(done, rb.total.Load()))
}

func (rb *rebuild) run(ctx context.Context) (RebuildResult, error) {
	var res RebuildResult
	log := rb.opt.Log
	err := pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DROP SCHEMA IF EXISTS readmodel_old CASCADE;
			DROP SCHEMA IF EXISTS `+RebuildSchema+` CASCADE;
			SELECT readmodel_create('`+RebuildSchema+`')`)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("rebuild: create schema %s: %w", RebuildSchema, err)
	}
	bound, err := rb.xmin(ctx)
	if err != nil {
		return res, err
	}
	// Transactions that were open when the rebuild started may still commit events
	// below the point it reaches; it waits (a while) for them to end, so that the
	// rebuilt read models hold at least every event committed before it started.
	var xmax string
	if err := rb.pool.QueryRow(ctx, `SELECT pg_snapshot_xmax(pg_current_snapshot())::text`).Scan(&xmax); err != nil {
		return res, fmt.Errorf("rebuild: snapshot: %w", err)
	}
	head, _ := strconv.ParseUint(xmax, 10, 64)
	if res.Events, err = eventstore.CountRange(ctx, rb.pool, "0", bound); err != nil {
		return res, fmt.Errorf("rebuild: count events: %w", err)
	}
	rb.total.Store(res.Events)
	rb.progress()
	log.Debug("rebuild: bulk", "below_xid", bound, "events", res.Events)
	if rb.opt.Redis != nil {
		if err := rb.opt.Redis.Wipe(ctx); err != nil {
			return res, fmt.Errorf("rebuild: wipe redis: %w", err)
		}
	}
	if res.Tickets, err = rb.bulk(ctx, bound); err != nil {
		return res, err
	}
	log.Debug("rebuild: bulk done", "tickets", res.Tickets, "events", rb.done.Load())

	// Catch up with what was committed meanwhile until the rest fits the final step.
	small := int64(rb.opt.BatchSize / 5)
	waitFrom := time.Now()
	waitUntil := waitFrom.Add(rb.opt.WaitOpen)
	for round := 0; round < 20; {
		next, err := rb.xmin(ctx)
		if err != nil {
			return res, err
		}
		n, err := eventstore.CountRange(ctx, rb.pool, bound, next)
		if err != nil {
			return res, fmt.Errorf("rebuild: count new events: %w", err)
		}
		if n <= small {
			if x, _ := strconv.ParseUint(next, 10, 64); x >= head {
				log.Debug("rebuild: ready to swap", "catch_up", time.Since(waitFrom), "rounds", round)
				break
			}
			if time.Now().After(waitUntil) {
				log.Warn("rebuild: a transaction older than the rebuild is still open; not waiting for it",
					"below_xid", next, "open_before", head)
				break
			}
			if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
				return res, err
			}
			continue
		}
		round++
		rb.total.Add(n)
		touched, err := rb.catchUp(ctx, bound, next)
		if err != nil {
			return res, err
		}
		if err := rb.redisDocs(ctx, touched); err != nil {
			return res, err
		}
		log.Debug("rebuild: caught up", "round", round, "events", n)
		res.CatchUps++
		res.Events += n
		bound = next
	}

	var touched map[uuid.UUID]int
	var n int64
	for attempt := 0; ; attempt++ {
		res.Position, touched, n, err = rb.swap(ctx, bound)
		if err == nil || !lockTimeout(err) || attempt == 10 {
			break
		}
		log.Debug("rebuild: swap waited too long for a lock; again", "err", err)
		if err := sleepCtx(ctx, time.Duration(100+rand.IntN(400))*time.Millisecond); err != nil {
			return res, err
		}
	}
	if err != nil {
		return res, fmt.Errorf("rebuild: swap in %s: %w", RebuildSchema, err)
	}
	res.Events += n
	rb.total.Add(n)
	rb.progress()
	log.Debug("rebuild: swapped", "position", res.Position)

	// The old tables are no longer reachable by name; drop them outside the swap, so
	// the swap never waits for a reader of them.
	if _, err := rb.pool.Exec(ctx, `DROP SCHEMA IF EXISTS readmodel_old CASCADE`); err != nil {
		log.Warn("rebuild: drop the old read model (the next rebuild drops it)", "err", err)
	}

	if rb.opt.Redis != nil {
		if err := rb.redisDocs(ctx, touched); err != nil {
			return res, err
		}
		if err := rb.setPosition(ctx, RedisGroup, res.Position); err != nil {
			return res, fmt.Errorf("rebuild: reset %s: %w", RedisGroup, err)
		}
	}
	return res, nil
}

// xmin returns the current snapshot's xmin: every transaction below it has ended.
func (rb *rebuild) xmin(ctx context.Context) (string, error) {
	var x string
	if err := rb.pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&x); err != nil {
		return "", fmt.Errorf("rebuild: snapshot: %w", err)
	}
	return x, nil
}

// bulk folds every event below bound per ticket and writes the rows (COPY into the
// fresh schema) and the Redis documents. It returns the number of tickets.
func (rb *rebuild) bulk(ctx context.Context, bound string) (int64, error) {
	g, ctx := errgroup.WithContext(ctx)
	type batch struct {
		tickets, comments [][]any
		views             []View // for Redis
	}
	batches := make(chan batch, 2)
	var docs chan []View
	if rb.opt.Redis != nil {
		docs = make(chan []View, 4)
		for range max(1, rb.opt.RedisWorkers/8) {
			g.Go(func() error {
				for vs := range docs {
					if err := rb.putDocs(ctx, vs); err != nil {
						return err
					}
				}
				return nil
			})
		}
	}
	g.Go(func() error {
		if docs != nil {
			defer close(docs)
		}
		for b := range batches {
			if err := rb.copyRows(ctx, b.tickets, b.comments); err != nil {
				return err
			}
			if docs != nil && len(b.views) > 0 {
				select {
				case docs <- b.views:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		return nil
	})

	var tickets int64
	g.Go(func() error {
		defer close(batches)
		var cur batch
		flush := func() error {
			if len(cur.tickets) == 0 && len(cur.comments) == 0 {
				return nil
			}
			select {
			case batches <- cur:
			case <-ctx.Done():
				return ctx.Err()
			}
			cur = batch{}
			rb.progress()
			return nil
		}
		emit := func(v View) error {
			tickets++
			cur.tickets = append(cur.tickets, ticketRow(v))
			if rb.opt.Redis != nil {
				cur.views = append(cur.views, v)
			}
			if len(cur.tickets) >= rb.opt.BatchSize || len(cur.comments) >= rb.opt.BatchSize {
				return flush()
			}
			return nil
		}
		var v View
		err := rb.store.ScanCommitted(ctx, bound, func(e ticket.Event) error {
			if v.Version > 0 && v.ID != e.TicketID {
				if err := emit(v); err != nil {
					return err
				}
				v = View{}
			}
			var err error
			if v, err = Fold(v, e); err != nil {
				return fmt.Errorf("rebuild: %w", err)
			}
			if c, ok := CommentOf(e); ok {
				cur.comments = append(cur.comments, commentRow(e.TicketID, c))
			}
			rb.done.Add(1)
			return nil
		})
		if err != nil {
			return err
		}
		if v.Version > 0 {
			if err := emit(v); err != nil {
				return err
			}
		}
		return flush()
	})
	err := g.Wait()
	rb.progress()
	return tickets, err
}

// copyRows COPYs one batch into the fresh schema; each COPY commits on its own.
func (rb *rebuild) copyRows(ctx context.Context, tickets, comments [][]any) error {
	if len(tickets) > 0 {
		if _, err := rb.pool.CopyFrom(ctx, pgx.Identifier{RebuildSchema, "tickets"}, ticketColumns, pgx.CopyFromRows(tickets)); err != nil {
			return fmt.Errorf("rebuild: copy tickets: %w", err)
		}
	}
	if len(comments) > 0 {
		if _, err := rb.pool.CopyFrom(ctx, pgx.Identifier{RebuildSchema, "comments"}, commentColumns, pgx.CopyFromRows(comments)); err != nil {
			return fmt.Errorf("rebuild: copy comments: %w", err)
		}
	}
	return nil
}

// putDocs writes tickets' documents to Redis (a tombstone for a deleted one, so that a
// lagging projector cannot bring an older version back) in one pipelined round trip per
// node. A failing write is retried a few times with a growing pause, so a blip does
// not fail the whole rebuild.
func (rb *rebuild) putDocs(ctx context.Context, views []View) error {
	var err error
	for attempt := range 6 {
		if attempt > 0 {
			if err := sleepCtx(ctx, time.Duration(50<<attempt)*time.Millisecond); err != nil {
				return err
			}
		}
		if views, err = rb.opt.Redis.PutMany(ctx, views, true); err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("rebuild: redis documents: %w", err)
	}
	return nil
}

// redisDocs writes the documents of the given tickets as they stood at the given
// versions, folded from the event store.
func (rb *rebuild) redisDocs(ctx context.Context, touched map[uuid.UUID]int) error {
	if rb.opt.Redis == nil || len(touched) == 0 {
		return nil
	}
	var mu sync.Mutex
	views := make([]View, 0, len(touched))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(rb.opt.RedisWorkers)
	for id, v := range touched {
		g.Go(func() error {
			recs, err := rb.store.Load(gctx, id, 0, v)
			if err != nil {
				return fmt.Errorf("rebuild: replay %s: %w", id, err)
			}
			view, err := FoldAll(View{}, eventsOf(recs)...)
			if err != nil {
				return fmt.Errorf("rebuild: replay %s: %w", id, err)
			}
			mu.Lock()
			views = append(views, view)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i := 0; i < len(views); i += 500 {
		if err := rb.putDocs(ctx, views[i:min(i+500, len(views))]); err != nil {
			return err
		}
	}
	return nil
}

// applyRange applies the events with from <= transaction_id < to, in commit order, to
// the fresh schema with the incremental projector's own Apply. The events are read
// through q; each is called once per batch of up to batch events with the function
// that writes them in a transaction. It returns the tickets touched, each with its
// highest version, and the number of events.
func (rb *rebuild) applyRange(ctx context.Context, q eventstore.Querier, from, to string, batch int, each func(func(pgx.Tx) error) error) (map[uuid.UUID]int, int64, error) {
	recs, err := eventstore.Range(ctx, q, from, to)
	if err != nil {
		return nil, 0, fmt.Errorf("read events: %w", err)
	}
	touched := map[uuid.UUID]int{}
	p := Postgres{Schema: RebuildSchema, Events: rb.store}
	for i := 0; i < len(recs); i += batch {
		part := recs[i:min(i+batch, len(recs))]
		err := each(func(tx pgx.Tx) error { return p.Apply(ctx, tx, part) })
		if err != nil {
			return nil, 0, err
		}
		for _, r := range part {
			touched[r.TicketID] = max(touched[r.TicketID], r.Version)
		}
		rb.done.Add(int64(len(part)))
		rb.progress()
	}
	return touched, int64(len(recs)), nil
}

// catchUp applies the events with from <= transaction_id < to to the fresh schema in
// short transactions of up to BatchSize events each. The read needs no transaction.
func (rb *rebuild) catchUp(ctx context.Context, from, to string) (map[uuid.UUID]int, error) {
	touched, _, err := rb.applyRange(ctx, rb.pool, from, to, rb.opt.BatchSize, func(f func(pgx.Tx) error) error {
		return pgx.BeginFunc(ctx, rb.pool, f)
	})
	if err != nil {
		return nil, fmt.Errorf("rebuild: catch up: %w", err)
	}
	return touched, nil
}

// swap is the final short transaction: it pauses the Postgres projector by locking
// its offsets row, applies the events below the final bound, swaps the schemas and
// sets the group's position. It returns the position, the tickets touched by the last
// delta and the number of its events.
func (rb *rebuild) swap(ctx context.Context, from string) (pos OutboxPosition, touched map[uuid.UUID]int, n int64, err error) {
	err = pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error {
		// Bounded waits: a reader or projector holding a lock must not make the swap
		// (and with it every consumer, which cannot see past this transaction) wait
		// long; the caller tries again.
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '2s'`); err != nil {
			return err
		}
		if err := lockOffsets(ctx, tx, PostgresGroup); err != nil {
			return err
		}
		var to string
		if err := tx.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&to); err != nil {
			return err
		}
		var err error
		one := func(f func(pgx.Tx) error) error { return f(tx) }
		if touched, n, err = rb.applyRange(ctx, tx, from, to, math.MaxInt, one); err != nil {
			return err
		}
		if pos, err = positionBelow(ctx, tx, to); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `ALTER SCHEMA readmodel RENAME TO readmodel_old;
			ALTER SCHEMA `+RebuildSchema+` RENAME TO readmodel`); err != nil {
			return err
		}
		return setOffsets(ctx, tx, PostgresGroup, pos)
	})
	return pos, touched, n, err
}

// setPosition sets a group's position in its own short transaction, waiting (bounded)
// for the group's projector to finish its current transaction.
func (rb *rebuild) setPosition(ctx context.Context, group string, pos OutboxPosition) error {
	var err error
	for attempt := 0; attempt <= 10; attempt++ {
		err = pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '2s'`); err != nil {
				return err
			}
			if err := lockOffsets(ctx, tx, group); err != nil {
				return err
			}
			return setOffsets(ctx, tx, group, pos)
		})
		if err == nil || !lockTimeout(err) {
			return err
		}
	}
	return err
}

const (
	offsetsTable  = `"watermill_offsets_` + eventstore.Topic + `"`
	messagesTable = `"watermill_` + eventstore.Topic + `"`
)

// lockOffsets locks a group's offsets row, creating it as watermill-sql would (zero
// position) if the group never subscribed.
func lockOffsets(ctx context.Context, tx pgx.Tx, group string) error {
	_, err := tx.Exec(ctx, `INSERT INTO `+offsetsTable+` (consumer_group, offset_acked, last_processed_transaction_id)
		VALUES ($1, 0, '0') ON CONFLICT DO NOTHING`, group)
	if err != nil {
		return fmt.Errorf("offsets of %s: %w", group, err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM `+offsetsTable+` WHERE consumer_group = $1 FOR UPDATE`, group); err != nil {
		return fmt.Errorf("lock offsets of %s: %w", group, err)
	}
	return nil
}

func setOffsets(ctx context.Context, tx pgx.Tx, group string, pos OutboxPosition) error {
	_, err := tx.Exec(ctx, `UPDATE `+offsetsTable+` SET last_processed_transaction_id = $2::xid8, offset_acked = $3
		WHERE consumer_group = $1`, group, pos.TransactionID, pos.Offset)
	if err != nil {
		return fmt.Errorf("set offsets of %s: %w", group, err)
	}
	return nil
}

// positionBelow returns the last outbox row with transaction_id < bound: the position
// after which a consumer reads exactly the rows at or after bound.
func positionBelow(ctx context.Context, q pgx.Tx, bound string) (OutboxPosition, error) {
	pos := OutboxPosition{TransactionID: "0"}
	err := q.QueryRow(ctx, `SELECT transaction_id::text, "offset" FROM `+messagesTable+`
		WHERE transaction_id < $1::xid8 ORDER BY transaction_id DESC, "offset" DESC LIMIT 1`, bound).
		Scan(&pos.TransactionID, &pos.Offset)
	if errors.Is(err, pgx.ErrNoRows) {
		return pos, nil
	}
	if err != nil {
		return pos, fmt.Errorf("outbox position: %w", err)
	}
	return pos, nil
}

// lockTimeout reports whether err is Postgres giving up on a lock (lock_timeout).
func lockTimeout(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55P03"
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
