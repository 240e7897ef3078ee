package eventstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Housekeeping: purging expired idempotency keys, pruning the outbox
//
// Two tables grow with every write and are trimmed in the background by a Housekeeper,
// never by a request: idempotency_keys (an answer counts for IDEMPOTENCY_TTL, then it
// is dead weight) and the outbox watermill_ticket_events (a row is needed only until
// every consumer group has applied it). Every HOUSEKEEPING_INTERVAL each instance tries
// a round, the first at start; one instance at a time does the work (it holds the
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
// them by ctid. A failure ends that job for the round and is logged; the next round
// starts over.
//
// The outbox rule. A consumer group's position (last_processed_transaction_id T,
// offset_acked O) in watermill_offsets_ticket_events means it has applied every row up
// to (T, O) in (transaction_id, offset) order. Positions only move forward and only
// ever stand below the snapshot xmin of the moment they were read, so no row can
// appear at or below one later. A row is pruned when
//   - every group with an offsets row has passed it: (transaction_id, offset) <= the
//     lowest position (a NULL offset_acked counts as 0, as the consumers read it);
//   - every group in Groups (the groups this deployment runs) has an offsets row: a
//     group that has not subscribed yet would start from zero, so until it has a row
//     nothing is pruned (nor with no offsets row at all);
//   - no rebuild was running when the positions were read (projections.Rebuild holds
//     an advisory lock throughout): a rebuild of a group that has no row yet creates
//     the row and sets its position in its final transaction, invisible here until it
//     commits, and that position can be below rows the other groups have passed. Rows
//     passed before the rebuild's final transaction began are below its position, so
//     a round that found no rebuild may go on deleting while one starts;
//   - it is older than OutboxRetention, by created_at: passed rows stay inspectable
//     that long. Pruning stops at the first passed row that is younger, so what is
//     pruned is always a prefix of the outbox in (transaction_id, offset) order
//     (projections' rebuild relies on that to find its position below a bound).
//
// What that means for consumer groups: the event store (table events), not the outbox,
// is the source of truth; the outbox only holds what some group has yet to apply, plus
// the retention. A NEW consumer group must therefore start from a rebuild (or another
// snapshot of the event store) that sets its position, never from position zero: a
// group that subscribes at zero gets only the rows not pruned yet. Once its row exists
// it holds pruning back like any other group. A retired group must have its offsets
// row deleted, or it holds pruning back for good (each round logs the group at the
// lowest position as outbox_held_back_by).
//
// created_at of the outbox is a TIMESTAMP without time zone written as
// CURRENT_TIMESTAMP, i.e. local time in the writing session's TimeZone; the retention
// compares it with LOCALTIMESTAMP of the pruning session, so both must use the same
// TimeZone (the server's default; ticketd sets none). Around a daylight saving change
// a row may be pruned up to an hour early or late.

// Housekeeper defaults.
const (
	DefaultHousekeepingInterval = time.Minute
	DefaultOutboxRetention      = time.Hour
	DefaultHousekeepingBatch    = 5000
	DefaultHousekeepingTimeout  = 5 * time.Second
)

// HousekeepingLock is the session advisory lock (pg_advisory_lock's bigint key,
// "housekp" in ASCII) held by the instance doing a round.
const HousekeepingLock int64 = 0x686f7573656b70

// rebuildLock is the advisory lock projections.Rebuild holds while it runs (its
// rebuildLock, "rebuild" in ASCII; the package cannot be imported from here). The
// housekeeping tests run a real rebuild to check the two agree.
const rebuildLock int64 = 0x72656275696c64

// Housekeeper trims idempotency_keys and the outbox in the background (see above).
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
	// OutboxRetention is how long a row every group has passed is kept. Zero prunes it
	// as soon as every group has passed it; negative never prunes.
	OutboxRetention time.Duration
	// Groups are the consumer groups this deployment runs: while any of them has no
	// offsets row, nothing is pruned.
	Groups []string
	// Interval is the time between rounds (default DefaultHousekeepingInterval).
	Interval time.Duration
	// BatchSize is how many rows one statement deletes at most (default
	// DefaultHousekeepingBatch).
	BatchSize int
	// BatchTimeout bounds each statement (default DefaultHousekeepingTimeout).
	BatchTimeout time.Duration
	Log          *slog.Logger

	mu sync.Mutex // one round at a time per Housekeeper
	// floor is where this housekeeper's last prune stopped: every outbox row up to it
	// is gone, so the next round starts there (and skips the dead index entries below).
	floor position
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
	// HeldBackBy is, for the outbox, the consumer group at the lowest position: the
	// one that decides how far pruning goes.
	HeldBackBy string
}

// Round is what one round did.
type Round struct {
	// Ran is false when another instance held HousekeepingLock: nothing was done.
	Ran         bool
	Idempotency Sweep
	Outbox      Sweep
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

// report logs a round: failures at warn, work done (or outbox pruning held back) at
// info, an idle round at debug.
func (h *Housekeeper) report(r Round, err error) {
	log := h.log()
	if err != nil {
		log.Warn("housekeeping failed; the next round tries again", "err", err,
			"idempotency_purged", r.Idempotency.Deleted, "outbox_pruned", r.Outbox.Deleted)
	}
	if !r.Ran {
		if err == nil {
			log.Debug("housekeeping: another instance holds the lock")
		}
		return
	}
	level := slog.LevelDebug
	if r.Idempotency.Deleted > 0 || r.Outbox.Deleted > 0 || (r.Outbox.Skipped != "" && r.Outbox.Skipped != skippedDisabled) {
		level = slog.LevelInfo
	}
	log.Log(context.Background(), level, "housekeeping",
		"idempotency_purged", r.Idempotency.Deleted, "idempotency_batches", r.Idempotency.Batches,
		"idempotency_slowest_batch_ms", ms(r.Idempotency.Slowest), "idempotency_took_ms", ms(r.Idempotency.Took),
		"outbox_pruned", r.Outbox.Deleted, "outbox_batches", r.Outbox.Batches,
		"outbox_slowest_batch_ms", ms(r.Outbox.Slowest), "outbox_took_ms", ms(r.Outbox.Took),
		"outbox_held_back_by", r.Outbox.HeldBackBy, "outbox_skipped", r.Outbox.Skipped)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// RunRound does one round if no other instance is doing one: it purges the expired
// idempotency keys, then prunes the outbox. A job that fails does not stop the other;
// the error joins both failures.
func (h *Housekeeper) RunRound(ctx context.Context) (Round, error) {
	var r Round
	err := h.session(ctx, true, func(conn *pgx.Conn) error {
		r.Ran = true
		var errs []error
		var err error
		if r.Idempotency, err = h.purge(ctx, conn); err != nil {
			errs = append(errs, fmt.Errorf("purge idempotency keys: %w", err))
		}
		if r.Outbox, err = h.prune(ctx, conn); err != nil {
			errs = append(errs, fmt.Errorf("prune outbox: %w", err))
		}
		return errors.Join(errs...)
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

// PruneOutbox deletes the outbox rows every consumer group has passed (see above), in
// batches, without HousekeepingLock (for tests and operators; Run takes it).
func (h *Housekeeper) PruneOutbox(ctx context.Context) (Sweep, error) {
	var s Sweep
	err := h.session(ctx, false, func(conn *pgx.Conn) (err error) {
		s, err = h.prune(ctx, conn)
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

var (
	outboxTable  = wsql.DefaultPostgreSQLSchema{}.MessagesTable(Topic)
	offsetsTable = wsql.DefaultPostgreSQLOffsetsAdapter{}.MessagesOffsetsTable(Topic)
)

// pruneLimit reads every group's position, lowest first, and whether a rebuild is
// running. pg_locks is read after the statement's snapshot: a rebuild whose final
// transaction (which makes a new group's row visible) is open at the snapshot still
// holds its lock when pg_locks is read, unless it committed and ended in between.
var pruneLimit = `SELECT consumer_group, last_processed_transaction_id::text, coalesce(offset_acked, 0),
	EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid),
	CASE WHEN $2::bigint = 0 THEN 'infinity'::timestamp
		ELSE LOCALTIMESTAMP - $2::bigint * interval '1 microsecond' END
FROM ` + offsetsTable + `
ORDER BY last_processed_transaction_id, coalesce(offset_acked, 0)`

// pruneBatch deletes the next rows after the position ($1, $2) up to the limit
// ($3, $4), at most $5, in the outbox's order, stopping before the first one created
// after $6: next is an index range scan on the primary key from where the last batch
// stopped, old its prefix of rows old enough, and the DELETE a TID scan (its range
// test guards against ctids reused between the two, should a VACUUM FULL run). It
// returns how many rows it read and deleted and the last one deleted.
var pruneBatch = `WITH next AS (
	SELECT ctid, transaction_id, "offset", created_at FROM ` + outboxTable + `
	WHERE (transaction_id, "offset") > ($1::xid8, $2::bigint) AND (transaction_id, "offset") <= ($3::xid8, $4::bigint)
	ORDER BY transaction_id, "offset"
	LIMIT $5
), old AS (
	SELECT ctid FROM (
		SELECT ctid, bool_and(created_at <= $6::timestamp) OVER (ORDER BY transaction_id, "offset") AS old FROM next) n
	WHERE old
), gone AS (
	DELETE FROM ` + outboxTable + ` WHERE ctid = ANY(ARRAY(SELECT ctid FROM old))
		AND (transaction_id, "offset") <= ($3::xid8, $4::bigint)
	RETURNING transaction_id, "offset"
)
SELECT (SELECT count(*) FROM next), (SELECT count(*) FROM gone), l.tx, l.off
FROM (SELECT 1) one LEFT JOIN LATERAL (
	SELECT transaction_id::text AS tx, "offset" AS off FROM gone ORDER BY transaction_id DESC, "offset" DESC LIMIT 1) l ON true`

// position is a place in the outbox's (transaction_id, offset) order; the zero value
// (transaction "0") is before every row.
type position struct {
	tx     uint64
	offset int64
}

func (p position) before(q position) bool {
	return p.tx < q.tx || p.tx == q.tx && p.offset < q.offset
}

// prune deletes the outbox rows every group has passed and the retention lets go.
func (h *Housekeeper) prune(ctx context.Context, conn *pgx.Conn) (s Sweep, err error) {
	if h.OutboxRetention < 0 {
		s.Skipped = skippedDisabled
		return s, nil
	}
	start := time.Now()
	defer func() { s.Took = time.Since(start) }()
	type groupPos struct {
		group string
		pos   position
	}
	var groups []groupPos
	var rebuilding bool
	var cutoff pgtype.Timestamp
	_, err = h.timed(ctx, func(ctx context.Context) error {
		rows, err := conn.Query(ctx, pruneLimit, rebuildLock, h.OutboxRetention.Microseconds())
		if err != nil {
			return err
		}
		var g groupPos
		var tx string
		groups = groups[:0]
		_, err = pgx.ForEachRow(rows, []any{&g.group, &tx, &g.pos.offset, &rebuilding, &cutoff}, func() error {
			var err error
			if g.pos.tx, err = strconv.ParseUint(tx, 10, 64); err != nil {
				return fmt.Errorf("position of %s: %w", g.group, err)
			}
			groups = append(groups, g)
			return nil
		})
		return err
	})
	if err != nil {
		return s, err
	}
	for _, want := range h.Groups {
		if !slices.ContainsFunc(groups, func(g groupPos) bool { return g.group == want }) {
			s.Skipped = fmt.Sprintf("consumer group %s has no offsets row yet", want)
			return s, nil
		}
	}
	switch {
	case len(groups) == 0:
		s.Skipped = "no consumer group has an offsets row"
		return s, nil
	case rebuilding:
		s.Skipped = "a rebuild is running"
		return s, nil
	}
	limit := groups[0].pos
	s.HeldBackBy = groups[0].group
	from := h.floor
	if limit.before(from) {
		from = position{} // positions never move back, but if someone moved one: start over
	}
	var pause time.Duration
	for {
		var read, n int64
		var tx *string
		var off *int64
		err := h.batch(ctx, &s, &pause, func(ctx context.Context) error {
			return conn.QueryRow(ctx, pruneBatch, strconv.FormatUint(from.tx, 10), from.offset,
				strconv.FormatUint(limit.tx, 10), limit.offset, h.batchSize(), cutoff).Scan(&read, &n, &tx, &off)
		})
		if err != nil {
			return s, err
		}
		s.Deleted += n
		if tx != nil && off != nil {
			last, err := strconv.ParseUint(*tx, 10, 64)
			if err != nil {
				return s, fmt.Errorf("pruned position: %w", err)
			}
			from = position{tx: last, offset: *off}
			h.floor = from
		}
		// A short batch reached the limit; a batch not deleted whole met a row within
		// the retention (or rows someone else deleted meanwhile): the next round goes on.
		if read < int64(h.batchSize()) || n < read {
			return s, nil
		}
	}
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
