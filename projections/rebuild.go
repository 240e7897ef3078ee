package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
// transaction_id (xid8). The consumers take outbox rows in (transaction_id, offset)
// order, and only rows with transaction_id < pg_snapshot_xmin(pg_current_snapshot()):
// below that bound every transaction has ended, so no row can still appear there. A
// consumer group's position (last_processed_transaction_id T, offset_acked O) means
// "every row up to (T, O) is applied, the next is the first after it".
//
// A rebuild picks such a bound X, replays into fresh read models exactly the events with
// transaction_id < X — a set that can no longer change — and sets each group's position
// to the last outbox row below X. The live projector then resumes with the first row at
// or after X: every event is in the read model exactly once, by the rebuild or by the
// projector. It drives every read model through the same small interface, Target:
//
//  1. Begin: each target makes an empty copy (Postgres: a fresh schema beside the live
//     one; Redis, which has no second copy, replaces its documents in place: a
//     rebuild's write replaces a document of its version or older, never a newer one,
//     so a document written for an event at or above the bound does not give way to
//     the bulk's older fold, and after the swap it removes what the store does not
//     hold).
//  2. Load: with X1 = the current xmin, the events below X1 are read in (stream,
//     version) order and folded per ticket with Fold; batches of the final views and
//     every comment go to each target (Postgres COPYs them, a short transaction per
//     batch; Redis writes them pipelined). Within a stream, version order is
//     transaction order (version n+1 is appended only after version n committed), so
//     the fold gives what incremental projection gives.
//  3. Catch-up: events committed meanwhile ([X1, X2), then [X2, X3) …) go through each
//     target's Apply — the incremental projector's own code — in short transactions,
//     until the remaining delta is small and every transaction that was open when the
//     rebuild started has ended (so the result holds at least every event committed
//     before the rebuild began; the wait is bounded by WaitOpen).
//  4. Swap, per target, in one short transaction: it takes the group's lock (the live
//     consumer takes it first thing in each batch, so it is paused and any batch of it
//     still in flight has committed) and locks its offsets row, takes the final bound
//     Xf, applies the last delta [Xn, Xf), lets the target make its copy live
//     (Postgres renames the schemas) and sets the group's position to the last outbox
//     row below Xf.
//
// No transaction of the rebuild is long: the bulk read holds no transaction id (a
// read-only statement does not get one), and every write is a short transaction. That
// matters because consumers cannot see past the oldest open writing transaction.
// Readers keep being served throughout: the Postgres readers read the old tables until
// the swap commits and the new ones after; Redis readers get each document as it was
// until the rebuild replaces it, and those that miss fall back to Postgres and the
// event store.

// Target is a read model Rebuild can fill afresh. Its methods are called in the order
// Begin, Load (any number of batches, from one goroutine), Loaded, Apply (catch-up
// batches), Swap; Abort instead of what is left after a failure.
type Target interface {
	// Group is the consumer group of the read model's projector.
	Group() string
	// Begin makes an empty copy to fill, dropping any left by a failed rebuild.
	Begin(ctx context.Context) error
	// Load writes tickets folded from every event below the rebuild's first bound, with
	// all their comments (each with its ticket), into the copy. Tickets come in the
	// order of their ids, each ticket's comments in version order (Postgres keeps the
	// comments' key during the load because of it: every insert is its last entry).
	// Load must not keep views or comments once it returns: the rebuild fills the same
	// slices again with a later batch.
	Load(ctx context.Context, views []View, comments []TicketComment) error
	// Loaded ends the bulk load (Postgres builds the tickets' indexes now, once,
	// instead of row by row during the load).
	Loaded(ctx context.Context) error
	// Apply applies events committed after that bound to the copy inside tx, as the
	// projector would (idempotent by version).
	Apply(ctx context.Context, tx pgx.Tx, recs []eventstore.Record) error
	// Swap makes the copy live inside tx, which holds the group's offsets row locked
	// and commits with the group's new position.
	Swap(ctx context.Context, tx pgx.Tx) error
	// Abort removes what Begin made after a failure; the live read model stays as it
	// was where the target has a separate copy.
	Abort(ctx context.Context) error
}

// A Target may also have a method Finish(ctx) error, called after its swap committed,
// for work that must not happen inside the swap (dropping the old copy).

// TicketComment is a comment with the ticket it belongs to, as Target.Load gets it.
type TicketComment struct {
	TicketID uuid.UUID
	Comment
}

// rebuildLock is the advisory lock key held by a running rebuild ("rebuild" in ASCII):
// two rebuilds at once would build into the same copies.
const rebuildLock int64 = 0x72656275696c64

// RebuildOptions tune Rebuild.
type RebuildOptions struct {
	// Targets are the read models to rebuild, swapped in this order.
	Targets []Target
	// BatchSize is how many tickets one Load, or how many events one catch-up
	// transaction, carries at most. Default 5000.
	BatchSize int
	// Progress, when set, is called from time to time with the events replayed so far
	// and the total known so far; the total grows when catch-up finds new events.
	// Only then does the rebuild count the events before it reads them.
	Progress func(done, total int64)
	// WaitOpen bounds how long the rebuild waits for transactions that were open when
	// it started to end (they may still commit events it should include). Past it, it
	// swaps without them; the projectors apply them later. Default 1 minute.
	WaitOpen time.Duration
	// Log receives the rebuild's steps at debug level; nil discards them.
	Log *slog.Logger
	// Store reads the events, and opens their personal fields with its keyring. Nil:
	// a store on the pool without a keyring (personal fields as stored).
	Store *eventstore.Store
}

func (o RebuildOptions) withDefaults() RebuildOptions {
	if o.BatchSize <= 0 {
		o.BatchSize = 5000
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
	// CatchUps is the number of catch-up rounds before the final swaps.
	CatchUps int
	// Position is where the first target's group resumes: the last outbox row the
	// rebuilt read model reflects (later targets swap a moment later, at or after it).
	Position OutboxPosition
	Duration time.Duration
}

// Rebuild replays the event store into fresh copies of opt.Targets and moves each
// target's consumer group to the point it replayed, so that incremental projection
// resumes exactly after it. It is safe while other instances serve traffic and project
// (see the comment above for how). Errors: ticket.ErrConflict when another rebuild is
// running; otherwise the database or Redis error that stopped it, after every target's
// Abort.
func Rebuild(ctx context.Context, pool *pgxpool.Pool, opt RebuildOptions) (RebuildResult, error) {
	counting := opt.Progress != nil
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

	store := opt.Store
	if store == nil {
		store = eventstore.New(pool, nil)
	}
	rb := &rebuild{pool: pool, opt: opt, store: store, count: counting}
	res, err := rb.run(ctx)
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, t := range opt.Targets {
			if aerr := t.Abort(cctx); aerr != nil {
				opt.Log.Warn("rebuild: abort", "group", t.Group(), "err", aerr)
			}
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
	// count says the events are counted before the bulk read, for Progress's total.
	count bool
}

func (rb *rebuild) progress() {
	done := rb.done.Load()
	rb.opt.Progress(done, max(done, rb.total.Load()))
}

func (rb *rebuild) run(ctx context.Context) (RebuildResult, error) {
	var res RebuildResult
	log := rb.opt.Log
	// Transactions that were open when the rebuild started may still commit events
	// below the point it reaches; it waits (a while) for them to end, so that the
	// rebuilt read models hold at least every event committed before it started.
	var bound, xmax string
	err := rb.pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text FROM pg_current_snapshot() s`).Scan(&bound, &xmax)
	if err != nil {
		return res, fmt.Errorf("rebuild: snapshot: %w", err)
	}
	head, _ := strconv.ParseUint(xmax, 10, 64)
	if rb.count {
		// Only for the progress display: the bulk read counts what it replays anyway.
		if res.Events, err = eventstore.CountRange(ctx, rb.pool, "0", bound); err != nil {
			return res, fmt.Errorf("rebuild: count events: %w", err)
		}
		rb.total.Store(res.Events)
		rb.progress()
	}
	log.Debug("rebuild: bulk", "below_xid", bound, "events", res.Events)
	// Each target begins (Postgres makes its schema, Redis is wiped) in the goroutine
	// that then loads it, while the first events are read and folded: both mostly wait
	// (a commit's flush, SCAN round trips). The bound needs no target: every event at
	// or above it reaches each target after its Begin, in catch-up.
	if res.Tickets, err = rb.bulk(ctx, bound); err != nil {
		return res, err
	}
	res.Events = rb.done.Load()
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
		if err := rb.catchUp(ctx, bound, next); err != nil {
			return res, err
		}
		log.Debug("rebuild: caught up", "round", round, "events", n)
		res.CatchUps++
		res.Events += n
		bound = next
	}

	for i, t := range rb.opt.Targets {
		var pos OutboxPosition
		var n int64
		for attempt := 0; ; attempt++ {
			pos, n, err = rb.swap(ctx, t, bound)
			if err == nil || !lockTimeout(err) || attempt == 10 {
				break
			}
			log.Debug("rebuild: swap waited too long for a lock; again", "group", t.Group(), "err", err)
			if err := sleepCtx(ctx, time.Duration(100+rand.IntN(400))*time.Millisecond); err != nil {
				return res, err
			}
		}
		if err != nil {
			return res, fmt.Errorf("rebuild: swap %s: %w", t.Group(), err)
		}
		if f, ok := t.(interface{ Finish(context.Context) error }); ok {
			if err := f.Finish(ctx); err != nil {
				log.Warn("rebuild: finish (the next rebuild tidies up)", "group", t.Group(), "err", err)
			}
		}
		if i == 0 {
			res.Position = pos
			res.Events += n
			rb.total.Add(n)
		}
		log.Debug("rebuild: swapped", "group", t.Group(), "position", pos)
	}
	rb.progress()
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

// bulk folds every event below bound per ticket and loads the views and comments into
// every target, each target fed by its own goroutine. It returns the number of tickets.
func (rb *rebuild) bulk(ctx context.Context, bound string) (int64, error) {
	// A batch goes to every target at once; the last target done with it hands it
	// back for a later batch to fill (its slices' room is reused, not allocated again
	// and collected: a batch of 5,000 views is about 1.5 MB). batches bounds what is
	// in flight: the one being filled, and the ones the targets have yet to finish.
	type batch struct {
		views    []View
		comments []TicketComment
		left     atomic.Int32 // targets that have not loaded it yet
	}
	const batches = 4
	free := make(chan *batch, batches)
	for range batches {
		free <- &batch{}
	}
	g, ctx := errgroup.WithContext(ctx)
	feeds := make([]chan *batch, len(rb.opt.Targets))
	for i, t := range rb.opt.Targets {
		feeds[i] = make(chan *batch, batches)
		g.Go(func() error {
			t0 := time.Now()
			if err := t.Begin(ctx); err != nil {
				return fmt.Errorf("rebuild: begin %s: %w", t.Group(), err)
			}
			rb.opt.Log.Debug("rebuild: began", "group", t.Group(), "took", time.Since(t0))
			var busy time.Duration
			for b := range feeds[i] {
				t0 := time.Now()
				if err := t.Load(ctx, b.views, b.comments); err != nil {
					return fmt.Errorf("rebuild: load %s: %w", t.Group(), err)
				}
				busy += time.Since(t0)
				if b.left.Add(-1) == 0 {
					clear(b.views) // what the views hold (their comments) may go
					clear(b.comments)
					b.views, b.comments = b.views[:0], b.comments[:0]
					free <- b
				}
			}
			t0 = time.Now()
			if err := t.Loaded(ctx); err != nil {
				return fmt.Errorf("rebuild: end load of %s: %w", t.Group(), err)
			}
			rb.opt.Log.Debug("rebuild: loaded", "group", t.Group(), "busy", busy, "loaded", time.Since(t0))
			return nil
		})
	}
	var tickets int64
	g.Go(func() error {
		defer func() {
			for _, f := range feeds {
				close(f)
			}
		}()
		take := func() (*batch, error) {
			select {
			case b := <-free:
				return b, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		cur, err := take()
		if err != nil {
			return err
		}
		flush := func() error {
			if len(cur.views) == 0 && len(cur.comments) == 0 {
				return nil
			}
			cur.left.Store(int32(len(feeds)))
			for _, f := range feeds {
				select {
				case f <- cur:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			rb.progress()
			var err error
			cur, err = take()
			return err
		}
		// Streams are decoded and folded in a goroutine of their own while the next rows
		// are read (more workers measured slower on two cores shared with Postgres, and
		// one keeps the streams in the order read, by ticket id, as Target.Load says);
		// each stream is folded at once (FoldAll copies its comments once, not once per
		// comment) and added to the current batch under mu.
		var mu sync.Mutex
		err = rb.store.ScanCommitted(ctx, bound, 1, func(stream []ticket.Event) error {
			v, err := FoldAll(View{}, stream...)
			if err != nil {
				return fmt.Errorf("rebuild: %w", err)
			}
			rb.done.Add(int64(len(stream)))
			mu.Lock()
			defer mu.Unlock()
			tickets++
			cur.views = append(cur.views, v)
			for _, e := range stream {
				if c, ok := CommentOf(e); ok {
					cur.comments = append(cur.comments, TicketComment{TicketID: e.TicketID, Comment: c})
				}
			}
			if len(cur.views) >= rb.opt.BatchSize || len(cur.comments) >= rb.opt.BatchSize {
				return flush()
			}
			return nil
		})
		if err != nil {
			return err
		}
		return flush()
	})
	err := g.Wait()
	rb.progress()
	return tickets, err
}

// catchUp applies the events with from <= transaction_id < to to every target, in
// short transactions of up to BatchSize events each. The read needs no transaction.
func (rb *rebuild) catchUp(ctx context.Context, from, to string) error {
	recs, err := rb.store.Range(ctx, rb.pool, from, to)
	if err != nil {
		return fmt.Errorf("rebuild: catch up: %w", err)
	}
	for i := 0; i < len(recs); i += rb.opt.BatchSize {
		part := recs[i:min(i+rb.opt.BatchSize, len(recs))]
		for _, t := range rb.opt.Targets {
			if err := pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error { return t.Apply(ctx, tx, part) }); err != nil {
				return fmt.Errorf("rebuild: catch up %s: %w", t.Group(), err)
			}
		}
		rb.done.Add(int64(len(part)))
		rb.progress()
	}
	return nil
}

// swap is a target's final short transaction: it pauses the group's projector by
// locking its offsets row, applies the events from the last bound to the final one,
// lets the target swap and sets the group's position. It returns the position and the
// number of events of the last delta.
func (rb *rebuild) swap(ctx context.Context, t Target, from string) (pos OutboxPosition, n int64, err error) {
	err = pgx.BeginFunc(ctx, rb.pool, func(tx pgx.Tx) error {
		// Bounded waits: a reader or projector holding a lock must not make the swap
		// (and with it every consumer, which cannot see past this transaction) wait
		// long; the caller tries again.
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '2s'`); err != nil {
			return err
		}
		if err := lockOffsets(ctx, tx, t.Group()); err != nil {
			return err
		}
		var to string
		if err := tx.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&to); err != nil {
			return err
		}
		recs, err := rb.store.Range(ctx, tx, from, to)
		if err != nil {
			return err
		}
		if err := t.Apply(ctx, tx, recs); err != nil {
			return err
		}
		n = int64(len(recs))
		if pos, err = positionBelow(ctx, tx, to); err != nil {
			return err
		}
		if err := t.Swap(ctx, tx); err != nil {
			return err
		}
		return setOffsets(ctx, tx, t.Group(), pos)
	})
	return pos, n, err
}

const (
	offsetsTable  = `"watermill_offsets_` + eventstore.Topic + `"`
	messagesTable = `"watermill_` + eventstore.Topic + `"`
)

// lockOffsets takes a group's consumer lock (see lockGroup) and locks its offsets row, creating it as watermill-sql would (zero
// position) if the group never subscribed.
func lockOffsets(ctx context.Context, tx pgx.Tx, group string) error {
	_, err := tx.Exec(ctx, `INSERT INTO `+offsetsTable+` (consumer_group, offset_acked, last_processed_transaction_id)
		VALUES ($1, 0, '0') ON CONFLICT DO NOTHING`, group)
	if err != nil {
		return fmt.Errorf("offsets of %s: %w", group, err)
	}
	if _, err := tx.Exec(ctx, lockGroup, group); err != nil {
		return fmt.Errorf("lock group %s: %w", group, err)
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
