package eventstore

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Housekeeping: purging expired idempotency keys
//
// idempotency_keys grows with every keyed write, and an answer counts only for
// IDEMPOTENCY_TTL: older rows are dead weight, trimmed in the background by a
// Housekeeper, never by a request. Every HOUSEKEEPING_INTERVAL each instance tries a
// round, the first at start; one instance at a time does the work (it holds the
// session advisory lock HousekeepingLock, taken with pg_try_advisory_lock; the others
// skip the round). Two rounds at once would only waste work, never delete too much.
//
// A round works in batches of BatchSize rows, each one short autocommit statement
// under a deadline of its own (BatchTimeout, enforced by Postgres as
// statement_timeout), until a batch comes back short, so a backlog of any size is
// worked off. Between batches it pauses as long as the last one took, so requests'
// commits interleave with its writes (on a loaded 2-core machine the median keyed
// create during a purge of a million keys stayed at its baseline of a few ms with the
// pause, and doubled without). Batches are short because of what they hold while they
// run: their rows' locks (a request taking over an expired key that a batch is
// deleting waits for that batch), and a transaction id, and no consumer on the server
// (of any database: transaction ids are server-wide) reads an outbox row past the
// oldest running transaction id, so one long DELETE would stall every projector.
// A batch reads its rows in an index's order from where the previous one stopped (it
// never walks over the rows earlier batches deleted, dead until vacuumed) and deletes
// them by ctid. A failure ends the job for the round and is logged; the next round
// starts over.

// Housekeeper defaults.
const (
	DefaultHousekeepingInterval = time.Minute
	DefaultHousekeepingBatch    = 5000
	DefaultHousekeepingTimeout  = 5 * time.Second
)

// HousekeepingLock is the session advisory lock (pg_advisory_lock's bigint key,
// "housekp" in ASCII) held by the instance doing a round.
const HousekeepingLock int64 = 0x686f7573656b70

// Housekeeper trims idempotency_keys in the background (see above).
// Set its fields before Run; the zero values of Interval, BatchSize, BatchTimeout and
// Log take the defaults.
type Housekeeper struct {
	// Pool gives a round its connection, which is taken out of the pool and closed
	// after the round (so the lock and the session settings go with it): the pool may
	// open another meanwhile, one connection over its size.
	Pool *pgxpool.Pool
	// IdempotencyTTL is how long a stored answer counts (IDEMPOTENCY_TTL); older keys
	// are purged. Zero or negative: keys are never purged.
	IdempotencyTTL time.Duration
	// Interval is the time between rounds (default DefaultHousekeepingInterval).
	Interval time.Duration
	// BatchSize is how many rows one statement deletes at most (default
	// DefaultHousekeepingBatch).
	BatchSize int
	// BatchTimeout bounds each statement (default DefaultHousekeepingTimeout).
	BatchTimeout time.Duration
	Log          *slog.Logger

	mu sync.Mutex // one round at a time per Housekeeper
}

// Sweep is what one job of a round did.
type Sweep struct {
	// Deleted is how many rows the job deleted, in Batches statements.
	Deleted int64
	Batches int
	// Slowest is the longest batch, Busy all batches together (without the pauses
	// between them), Took the whole job.
	Slowest, Busy, Took time.Duration
	// Skipped says why the job did nothing ("" when it ran).
	Skipped string
}

// Round is what one round did.
type Round struct {
	// Ran is false when another instance held HousekeepingLock: nothing was done.
	Ran         bool
	Idempotency Sweep
}

// Run does a round at once and then every Interval until ctx ends, logging what each
// one did and any failure. It returns when ctx ends.
func (h *Housekeeper) Run(ctx context.Context) {
	t := time.NewTicker(h.interval())
	defer t.Stop()
	for {
		r, err := h.RunRound(ctx)
		if ctx.Err() != nil {
			return
		}
		h.report(r, err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// report logs a round: failures at warn, work done at info, an idle round at debug.
func (h *Housekeeper) report(r Round, err error) {
	log := h.log()
	if err != nil {
		log.Warn("housekeeping failed; the next round tries again", "err", err,
			"idempotency_purged", r.Idempotency.Deleted)
	}
	if !r.Ran {
		if err == nil {
			log.Debug("housekeeping: another instance holds the lock")
		}
		return
	}
	level := slog.LevelDebug
	if r.Idempotency.Deleted > 0 {
		level = slog.LevelInfo
	}
	log.Log(context.Background(), level, "housekeeping",
		"idempotency_purged", r.Idempotency.Deleted, "idempotency_batches", r.Idempotency.Batches,
		"idempotency_slowest_batch_ms", ms(r.Idempotency.Slowest), "idempotency_took_ms", ms(r.Idempotency.Took))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// RunRound does one round if no other instance is doing one: it purges the expired
// idempotency keys.
func (h *Housekeeper) RunRound(ctx context.Context) (Round, error) {
	var r Round
	err := h.session(ctx, true, func(conn *pgx.Conn) error {
		r.Ran = true
		var err error
		if r.Idempotency, err = h.purge(ctx, conn); err != nil {
			return fmt.Errorf("purge idempotency keys: %w", err)
		}
		return nil
	})
	return r, err
}

// PurgeIdempotencyKeys deletes every key stored longer than IdempotencyTTL ago, in
// batches, without HousekeepingLock (for tests and operators; Run takes it).
func (h *Housekeeper) PurgeIdempotencyKeys(ctx context.Context) (Sweep, error) {
	var s Sweep
	err := h.session(ctx, false, func(conn *pgx.Conn) (err error) {
		s, err = h.purge(ctx, conn)
		return err
	})
	return s, err
}

// session runs fn on a connection of its own, taken from the pool and closed after
// (so the lock and the session's statement_timeout go with it, whatever happened),
// with statement_timeout set to BatchTimeout. With lock, fn runs only if this session
// got HousekeepingLock; otherwise session returns nil without running it.
func (h *Housekeeper) session(ctx context.Context, lock bool, fn func(*pgx.Conn) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	actx, cancel := context.WithTimeout(ctx, h.batchDeadline())
	defer cancel()
	pc, err := h.Pool.Acquire(actx)
	if err != nil {
		return fmt.Errorf("housekeeping connection: %w", err)
	}
	conn := pc.Hijack()
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx) // closing is all that is left to do
	}()
	var got bool
	err = conn.QueryRow(actx, `SELECT set_config('statement_timeout', $1, false) IS NOT NULL,
		CASE WHEN $2::bool THEN pg_try_advisory_lock($3) ELSE true END`,
		strconv.FormatInt(h.batchTimeout().Milliseconds(), 10), lock, HousekeepingLock).Scan(new(bool), &got)
	if err != nil {
		return fmt.Errorf("housekeeping session: %w", err)
	}
	if !got {
		return nil
	}
	return fn(conn)
}

// skippedDisabled is Sweep.Skipped of a job its setting turns off.
const skippedDisabled = "disabled"

// purgeBatch deletes up to $3 keys with $1 <= created_at <= $2, oldest first, by ctid
// (a TID scan; the subquery is an index range scan on idempotency_keys_created). The
// outer created_at test matters when a key is taken over by a new request meanwhile:
// the DELETE then rechecks the row's new version, now live, and leaves it.
const purgeBatch = `WITH gone AS (
	DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
		SELECT ctid FROM idempotency_keys WHERE created_at >= $1 AND created_at <= $2
		ORDER BY created_at LIMIT $3))
	AND created_at <= $2
	RETURNING created_at)
SELECT count(*), max(created_at) FROM gone`

// purge deletes the expired idempotency keys in batches. Each batch starts at the
// newest created_at the previous one deleted (inclusive: keys written by one
// transaction share it), so it reads no row deleted before.
func (h *Housekeeper) purge(ctx context.Context, conn *pgx.Conn) (s Sweep, err error) {
	if h.IdempotencyTTL <= 0 {
		s.Skipped = skippedDisabled
		return s, nil
	}
	start := time.Now()
	defer func() { s.Took = time.Since(start) }()
	var cutoff pgtype.Timestamptz
	if _, err := h.timed(ctx, func(ctx context.Context) error {
		return conn.QueryRow(ctx, `SELECT now() - $1::bigint * interval '1 microsecond'`,
			h.IdempotencyTTL.Microseconds()).Scan(&cutoff)
	}); err != nil {
		return s, err
	}
	from := pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
	var pause time.Duration
	for {
		var n int64
		var last pgtype.Timestamptz
		err := h.batch(ctx, &s, &pause, func(ctx context.Context) error {
			return conn.QueryRow(ctx, purgeBatch, from, cutoff, h.batchSize()).Scan(&n, &last)
		})
		if err != nil {
			return s, err
		}
		s.Deleted += n
		if n < int64(h.batchSize()) {
			return s, nil
		}
		from = last
	}
}

// timed runs one statement under a deadline of its own and says how long it took.
// The deadline is a little longer than statement_timeout, so Postgres normally ends a
// slow statement itself and the context only guards against a dead network.
func (h *Housekeeper) timed(ctx context.Context, fn func(context.Context) error) (time.Duration, error) {
	sctx, cancel := context.WithTimeout(ctx, h.batchDeadline())
	defer cancel()
	t := time.Now()
	err := fn(sctx)
	return time.Since(t), err
}

// batch runs one batch's statement (see timed) and counts it in s. Every batch but
// the first is preceded by a pause as long as the one before it took (*pause).
func (h *Housekeeper) batch(ctx context.Context, s *Sweep, pause *time.Duration, fn func(context.Context) error) error {
	if err := sleep(ctx, *pause); err != nil {
		return err
	}
	took, err := h.timed(ctx, fn)
	*pause = took
	s.Batches++
	s.Slowest = max(s.Slowest, took)
	s.Busy += took
	if err != nil {
		return fmt.Errorf("batch %d: %w", s.Batches, err)
	}
	return nil
}

func (h *Housekeeper) interval() time.Duration {
	if h.Interval > 0 {
		return h.Interval
	}
	return DefaultHousekeepingInterval
}

func (h *Housekeeper) batchSize() int {
	if h.BatchSize > 0 {
		return h.BatchSize
	}
	return DefaultHousekeepingBatch
}

func (h *Housekeeper) batchTimeout() time.Duration {
	if h.BatchTimeout > 0 {
		return h.BatchTimeout
	}
	return DefaultHousekeepingTimeout
}

// batchDeadline is a statement's context deadline: statement_timeout and a margin.
func (h *Housekeeper) batchDeadline() time.Duration { return h.batchTimeout() + time.Second }

func (h *Housekeeper) log() *slog.Logger {
	if h.Log != nil {
		return h.Log
	}
	return slog.Default()
}
