package eventstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/projectionstest"
	"github.com/ticketd/ticketd/ticket"
)

// chunk is how many rows a test writes per transaction when it fills a table: every
// consumer on the server (other tests' too: transaction ids are server-wide) waits for
// the oldest open transaction, so no test holds one open for long.
const chunk = 10_000

// insertExpiredKeys stores n idempotency keys created two days ago and more (one
// millisecond apart), each with an answer of answerBytes bytes, as ticketd's create
// route would have.
func insertExpiredKeys(t *testing.T, pool *pgxpool.Pool, n, answerBytes int) {
	t.Helper()
	for from := 1; from <= n; from += chunk {
		_, err := pool.Exec(testContext(t), `INSERT INTO idempotency_keys (scope, key, request_hash, stream_id, answer, created_at)
			SELECT 'POST /v1/ticket/', 'key-' || md5(i::text), sha256(i::text::bytea), gen_random_uuid(),
				convert_to(left(repeat(md5(i::text), $3 / 32 + 1), $3), 'UTF8'),
				now() - interval '2 days' - i * interval '1 millisecond'
			FROM generate_series($1::int, $2::int) i`, from, min(from+chunk-1, n), answerBytes)
		if err != nil {
			t.Fatalf("insert expired keys: %v", err)
		}
	}
	if _, err := pool.Exec(testContext(t), `VACUUM ANALYZE idempotency_keys`); err != nil {
		t.Fatalf("analyze: %v", err)
	}
}

// keyedCreate runs a create under a fresh idempotency key with a request's deadline
// and returns how long it took.
func keyedCreate(t *testing.T, s *eventstore.Store, key string) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(testContext(t), 5*time.Second) // REQUEST_TIMEOUT's default
	defer cancel()
	start := time.Now()
	res, err := s.Handle(ctx, newID(t), eventstore.Options{Create: true, Idempotency: keyed(key, "h", 24*time.Hour)}, opening(validOpen()))
	took := time.Since(start)
	if err != nil || res.Replayed != nil || len(res.Records) != 1 {
		t.Errorf("keyed create %s: %+v, %v", key, res, err) // Errorf: also called off the test's goroutine
	}
	return took
}

// TestHousekeepingKeyedCommandIsNotDelayedByExpiredKeys is issue 12's measurement:
// with 1,000,000 expired keys a keyed command used to purge them inside the request
// (5.0 s, its deadline, and nothing deleted). Now no request purges: a keyed command
// takes what it takes without them, and the housekeeper deletes them all in batches,
// each well within its deadline, while keyed commands go on.
func TestHousekeepingKeyedCommandIsNotDelayedByExpiredKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("inserts a million rows")
	}
	t.Parallel()
	const expired = 1_000_000
	pool, err := db.Open(testContext(t), dbtest.NewDatabase(t), db.PoolConfig{MaxConns: 6})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := eventstore.New(pool, dbtest.Keyring(t, pool))

	// a baseline without expired keys
	var baseline []time.Duration
	for i := range 5 {
		baseline = append(baseline, keyedCreate(t, s, fmt.Sprintf("baseline-%d", i)))
	}
	insertExpiredKeys(t, pool, expired, 640)

	// with them: every keyed command is as fast as without, and purges nothing
	var with []time.Duration
	for i := range 5 {
		with = append(with, keyedCreate(t, s, fmt.Sprintf("with-%d", i)))
	}
	t.Logf("keyed create: without expired keys %v, with %d expired keys %v", baseline, expired, with)
	for _, d := range with {
		if d > 500*time.Millisecond {
			t.Errorf("a keyed create took %s with %d expired keys (baseline %v)", d, expired, baseline)
		}
	}
	if n := count(t, pool, `SELECT count(*) FROM idempotency_keys WHERE created_at < now() - interval '1 day'`); n != expired {
		t.Fatalf("%d expired keys left after keyed commands: a request purged", n)
	}

	// the housekeeper purges them in batches while keyed commands go on (the round
	// holds one connection; the commands get the others)
	h := &eventstore.Housekeeper{Pool: pool, IdempotencyTTL: 24 * time.Hour, OutboxRetention: -1,
		BatchTimeout: 5 * time.Second, Log: slog.New(slog.DiscardHandler)}
	stop := make(chan struct{})
	var during []time.Duration
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			during = append(during, keyedCreate(t, s, fmt.Sprintf("during-%d", i)))
		}
	})
	r, err := h.RunRound(testContext(t))
	close(stop)
	wg.Wait()
	if err != nil || !r.Ran {
		t.Fatalf("round: %+v, %v", r, err)
	}
	sw := r.Idempotency
	t.Logf("purge: %d keys in %d batches, %s (%.0f keys/s; %s in statements), %s per batch on average, slowest batch %s",
		sw.Deleted, sw.Batches, sw.Took, float64(sw.Deleted)/sw.Took.Seconds(), sw.Busy, sw.Busy/time.Duration(sw.Batches), sw.Slowest)
	slices.Sort(during)
	if len(during) > 0 {
		t.Logf("keyed create during the purge: %d commands, median %s, slowest %s", len(during), during[len(during)/2], during[len(during)-1])
	}
	if sw.Deleted != expired || sw.Batches != expired/eventstore.DefaultHousekeepingBatch+1 {
		t.Errorf("purge deleted %d keys in %d batches, want %d in %d", sw.Deleted, sw.Batches, expired, expired/eventstore.DefaultHousekeepingBatch+1)
	}
	if sw.Slowest >= h.BatchTimeout {
		t.Errorf("slowest batch %s, beyond its deadline %s", sw.Slowest, h.BatchTimeout)
	}
	// the purge pauses between its batches: the commands' median stays near the
	// baseline's; single slow ones are the machine's (checkpoints), hence the ceiling
	if len(during) == 0 || during[len(during)/2] > 50*time.Millisecond || during[len(during)-1] > 2*time.Second {
		t.Errorf("keyed creates during the purge: %v", during)
	}
	if n, want := count(t, pool, `SELECT count(*) FROM idempotency_keys`), len(baseline)+len(with)+len(during); n != want {
		t.Errorf("%d keys left, want the %d live ones", n, want)
	}
}

// TestHousekeepingPurgeKeepsLiveKeysAndTakesTurns: only expired keys go, in batches that
// also get past keys sharing one created_at (one transaction's keys do); while another
// instance holds the housekeeping lock a round does nothing.
func TestHousekeepingPurgeKeepsLiveKeysAndTakesTurns(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	keyedCreate(t, s, "live")
	// 10 expired keys with one created_at
	if _, err := pool.Exec(ctx, `INSERT INTO idempotency_keys (scope, key, request_hash, stream_id, answer, created_at)
		SELECT 'test', 'old-' || i, '\x00', gen_random_uuid(), '\x00', now() - interval '2 hours'
		FROM generate_series(1, 10) i`); err != nil {
		t.Fatal(err)
	}
	h := &eventstore.Housekeeper{Pool: pool, IdempotencyTTL: time.Hour, OutboxRetention: -1, BatchSize: 3}

	// another instance's round holds the lock
	other, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release()
	if _, err := other.Exec(ctx, `SELECT pg_advisory_lock($1)`, eventstore.HousekeepingLock); err != nil {
		t.Fatal(err)
	}
	if r, err := h.RunRound(ctx); err != nil || r.Ran || r.Idempotency.Deleted != 0 {
		t.Fatalf("round while another instance holds the lock: %+v, %v", r, err)
	}
	if _, err := other.Exec(ctx, `SELECT pg_advisory_unlock($1)`, eventstore.HousekeepingLock); err != nil {
		t.Fatal(err)
	}

	r, err := h.RunRound(ctx)
	if err != nil || !r.Ran {
		t.Fatalf("round: %+v, %v", r, err)
	}
	if r.Idempotency.Deleted != 10 || r.Idempotency.Batches != 4 {
		t.Errorf("purged %d keys in %d batches, want 10 in 4 (3+3+3+1)", r.Idempotency.Deleted, r.Idempotency.Batches)
	}
	if n := count(t, pool, `SELECT count(*) FROM idempotency_keys`); n != 1 {
		t.Errorf("%d keys left, want the live one", n)
	}
	// the live key still answers its retry
	res, err := s.Handle(ctx, newID(t), eventstore.Options{Create: true, Idempotency: keyed("live", "h", 24*time.Hour)}, opening(validOpen()))
	if err != nil || res.Replayed == nil {
		t.Errorf("retry of the live key: %+v, %v", res, err)
	}
	// the lock was given back with the round's connection
	if r, err := h.RunRound(ctx); err != nil || !r.Ran || r.Idempotency.Deleted != 0 {
		t.Errorf("next round: %+v, %v", r, err)
	}
}

// outboxPos is an outbox row's place in the consumers' order.
type outboxPos struct {
	Tx     string
	Offset int64
}

// outboxRows returns the outbox rows' positions in (transaction_id, offset) order.
func outboxRows(t *testing.T, pool *pgxpool.Pool) []outboxPos {
	t.Helper()
	rows, err := pool.Query(testContext(t), `SELECT transaction_id::text, "offset" FROM watermill_ticket_events
		ORDER BY transaction_id, "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[outboxPos])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// setPosition writes a consumer group's offsets row as its consumer would.
func setPosition(t *testing.T, pool *pgxpool.Pool, group string, p outboxPos) {
	t.Helper()
	_, err := pool.Exec(testContext(t), `INSERT INTO watermill_offsets_ticket_events (consumer_group, offset_acked, last_processed_transaction_id)
		VALUES ($1, $2, $3::xid8) ON CONFLICT (consumer_group) DO UPDATE
		SET offset_acked = excluded.offset_acked, last_processed_transaction_id = excluded.last_processed_transaction_id`,
		group, p.Offset, p.Tx)
	if err != nil {
		t.Fatal(err)
	}
}

// appendTransactions appends n transactions of events: every third one opens a ticket
// and comments on it twice in one append (three outbox rows of one transaction), the
// others open a ticket.
func appendTransactions(t *testing.T, s *eventstore.Store, n int) {
	t.Helper()
	for i := range n {
		id := newID(t)
		events := []ticket.Event{openedEvent(id)}
		if i%3 == 0 {
			events = append(events, commentEvent(id, 2), commentEvent(id, 3))
		}
		if _, err := s.Append(testContext(t), 0, events, eventstore.Metadata{}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHousekeepingPrunesOnlyRowsEveryGroupPassed(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	appendTransactions(t, s, 15)
	all := outboxRows(t, pool)
	if len(all) != 25 {
		t.Fatalf("scenario: %d outbox rows, want 25", len(all))
	}
	// a and b are this deployment's groups; c, another instance's, is ahead of both
	setPosition(t, pool, "a", all[20])
	setPosition(t, pool, "b", all[11])
	setPosition(t, pool, "c", all[24])
	h := &eventstore.Housekeeper{Pool: pool, IdempotencyTTL: -1, Groups: []string{"a", "b"}, BatchSize: 4}

	sw, err := h.PruneOutbox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sw.Deleted != 12 || sw.HeldBackBy != "b" || sw.Batches != 4 {
		t.Errorf("pruned %+v, want 12 rows in 4 batches (4+4+4, then none), held back by b", sw)
	}
	if got := outboxRows(t, pool); !slices.Equal(got, all[12:]) {
		t.Errorf("left %v, want every row after b's position %v", got, all[12:])
	}

	// b moves on: now a holds pruning back, and c's position counts too
	setPosition(t, pool, "b", all[24])
	if sw, err := h.PruneOutbox(ctx); err != nil || sw.Deleted != 9 || sw.HeldBackBy != "a" {
		t.Errorf("second prune: %+v, %v; want 9 rows, held back by a", sw, err)
	}
	if got := outboxRows(t, pool); !slices.Equal(got, all[21:]) {
		t.Errorf("left %v, want every row after a's position", got)
	}
	setPosition(t, pool, "c", all[22])
	setPosition(t, pool, "a", all[24])
	if sw, err := h.PruneOutbox(ctx); err != nil || sw.Deleted != 2 || sw.HeldBackBy != "c" {
		t.Errorf("third prune: %+v, %v; want 2 rows, held back by c", sw, err)
	}
	if got := outboxRows(t, pool); !slices.Equal(got, all[23:]) {
		t.Errorf("left %v, want every row after c's position", got)
	}
	// a group that has acknowledged nothing (NULL offset_acked, as watermill-sql may
	// leave it) holds everything back
	if _, err := pool.Exec(ctx, `INSERT INTO watermill_offsets_ticket_events VALUES ('d', NULL, '0')`); err != nil {
		t.Fatal(err)
	}
	if sw, err := h.PruneOutbox(ctx); err != nil || sw.Deleted != 0 || sw.HeldBackBy != "d" {
		t.Errorf("prune with a group at zero: %+v, %v", sw, err)
	}
}

func TestHousekeepingPrunesNothingWhileAGroupIsMissing(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	appendTransactions(t, s, 4)
	all := outboxRows(t, pool)

	// no group has an offsets row at all
	h := &eventstore.Housekeeper{Pool: pool, IdempotencyTTL: -1}
	if sw, err := h.PruneOutbox(ctx); err != nil || sw.Deleted != 0 || sw.Skipped == "" {
		t.Errorf("prune without any group: %+v, %v", sw, err)
	}
	// a has passed everything, but b, a group this deployment runs, has not subscribed
	setPosition(t, pool, "a", all[len(all)-1])
	h.Groups = []string{"a", "b"}
	sw, err := h.PruneOutbox(ctx)
	if err != nil || sw.Deleted != 0 || !strings.Contains(sw.Skipped, "b has no offsets row") {
		t.Errorf("prune with b missing: %+v, %v", sw, err)
	}
	if got := outboxRows(t, pool); len(got) != len(all) {
		t.Errorf("%d rows left of %d", len(got), len(all))
	}
	// once b subscribes (at zero, as watermill-sql does) it holds pruning back
	setPosition(t, pool, "b", outboxPos{Tx: "0"})
	if sw, err := h.PruneOutbox(ctx); err != nil || sw.Deleted != 0 || sw.Skipped != "" || sw.HeldBackBy != "b" {
		t.Errorf("prune with b at zero: %+v, %v", sw, err)
	}
	setPosition(t, pool, "b", all[len(all)-1])
	if sw, err := h.PruneOutbox(ctx); err != nil || sw.Deleted != int64(len(all)) {
		t.Errorf("prune with both groups at the head: %+v, %v", sw, err)
	}
}

func TestHousekeepingKeepsPassedRowsWithinTheRetention(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	appendTransactions(t, s, 9)
	all := outboxRows(t, pool) // 15 rows
	setPosition(t, pool, "a", all[12])
	h := &eventstore.Housekeeper{Pool: pool, IdempotencyTTL: -1, Groups: []string{"a"}, OutboxRetention: time.Hour, BatchSize: 4}
	if sw, err := h.PruneOutbox(ctx); err != nil || sw.Deleted != 0 {
		t.Errorf("prune of rows younger than the retention: %+v, %v", sw, err)
	}
	// rows 0-5 and 7-14 are older than the retention, row 6 is not: pruning stops at
	// it, so what is gone is always a prefix of the outbox
	age := func(from, to int) {
		t.Helper()
		if _, err := pool.Exec(ctx, `UPDATE watermill_ticket_events SET created_at = created_at - interval '2 hours'
			WHERE (transaction_id, "offset") >= ($1::xid8, $2) AND (transaction_id, "offset") <= ($3::xid8, $4)`,
			all[from].Tx, all[from].Offset, all[to].Tx, all[to].Offset); err != nil {
			t.Fatal(err)
		}
	}
	age(0, 5)
	age(7, 14)
	if sw, err := h.PruneOutbox(ctx); err != nil || sw.Deleted != 6 {
		t.Errorf("prune up to the first young row: %+v, %v; want 6 rows", sw, err)
	}
	if got := outboxRows(t, pool); !slices.Equal(got, all[6:]) {
		t.Errorf("left %v, want %v", got, all[6:])
	}
	age(6, 6)
	// up to a's position, no further
	if sw, err := h.PruneOutbox(ctx); err != nil || sw.Deleted != 7 {
		t.Errorf("prune once the row is old: %+v, %v; want 7 rows", sw, err)
	}
	if got := outboxRows(t, pool); !slices.Equal(got, all[13:]) {
		t.Errorf("left %v, want %v", got, all[13:])
	}
}

// heldTarget is a read model for projections.Rebuild that holds the rebuild in Begin
// until released, and otherwise keeps nothing.
type heldTarget struct {
	group    string
	begun    chan struct{}
	released chan struct{}
}

func (h *heldTarget) Group() string { return h.group }
func (h *heldTarget) Begin(ctx context.Context) error {
	close(h.begun)
	select {
	case <-h.released:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
func (h *heldTarget) Load(context.Context, []projections.View, []projections.TicketComment) error {
	return nil
}
func (h *heldTarget) Loaded(context.Context) error                             { return nil }
func (h *heldTarget) Apply(context.Context, pgx.Tx, []eventstore.Record) error { return nil }
func (h *heldTarget) Swap(context.Context, pgx.Tx) error                       { return nil }
func (h *heldTarget) Abort(context.Context) error                              { return nil }

// TestHousekeepingDoesNotPruneDuringARebuild: a rebuild of a new group makes the group's
// offsets row visible only when its last transaction commits, so no row is pruned
// while a rebuild (the real one, with its real lock) runs.
func TestHousekeepingDoesNotPruneDuringARebuild(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	appendTransactions(t, s, 6)
	all := outboxRows(t, pool)
	setPosition(t, pool, "a", all[len(all)-1])
	h := &eventstore.Housekeeper{Pool: pool, IdempotencyTTL: -1}

	target := &heldTarget{group: "new-group", begun: make(chan struct{}), released: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := projections.Rebuild(ctx, pool, projections.RebuildOptions{Targets: []projections.Target{target}})
		done <- err
	}()
	<-target.begun
	sw, err := h.PruneOutbox(ctx)
	close(target.released)
	if err != nil || sw.Deleted != 0 || sw.Skipped != "a rebuild is running" {
		t.Errorf("prune during a rebuild: %+v, %v", sw, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	// the rebuild set new-group's position at the head: everything goes now
	if sw, err := h.PruneOutbox(ctx); err != nil || sw.Deleted != int64(len(all)) {
		t.Errorf("prune after the rebuild: %+v, %v", sw, err)
	}
}

// timedRecorder is a projector that remembers when it was handed each event.
type timedRecorder struct {
	mu   sync.Mutex
	seen map[string]int
	lag  []time.Duration // from the event's recording to its application
}

func (r *timedRecorder) apply(_ context.Context, _ pgx.Tx, recs []eventstore.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for _, rec := range recs {
		r.seen[key(rec)]++
		r.lag = append(r.lag, now.Sub(rec.RecordedAt))
	}
	return nil
}

func (r *timedRecorder) applied() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lag)
}

// TestHousekeepingOutboxStaysBoundedWhileAConsumerKeepsUp runs the real consumer and
// the housekeeper (every 100 ms) together under a steady stream of appends, with a
// backlog of 100,000 passed rows to prune at the start: the consumer keeps applying
// events while the batches delete, every event is applied exactly once (nothing it had
// not passed was pruned), the rows it passes are pruned as it goes instead of piling
// up, and once it has caught up the outbox is emptied.
func TestHousekeepingOutboxStaysBoundedWhileAConsumerKeepsUp(t *testing.T) {
	t.Parallel()
	const group = "test-timed-recorder"
	const backlog = 100_000
	pool, err := db.Open(testContext(t), dbtest.NewDatabase(t), db.PoolConfig{MaxConns: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := eventstore.New(pool, dbtest.Keyring(t, pool))
	ctx := testContext(t)

	// given: 100,000 rows the group has passed (written directly, in a few transactions)
	for range backlog / chunk {
		if _, err := pool.Exec(ctx, `INSERT INTO watermill_ticket_events (uuid, payload, metadata, transaction_id)
			SELECT gen_random_uuid()::text, json_build_object('pad', repeat(md5(i::text), 12)), '{}', pg_current_xact_id()
			FROM generate_series(1, $1) i`, chunk); err != nil {
			t.Fatal(err)
		}
	}
	head := outboxRows(t, pool)[backlog-1]
	setPosition(t, pool, group, head)
	rec := &timedRecorder{seen: map[string]int{}}
	projectionstest.RunRouter(t, pool, projections.Config{}, projections.Handler{Group: group, Apply: rec.apply})

	// when: four writers append and the sampler watches the outbox; half a second in,
	// the housekeeper starts; the writers go on until the 100,000 rows are gone and 3.5
	// seconds more
	var appended atomic.Int64
	var keys sync.Map
	writeCtx, stopWriting := context.WithCancel(ctx)
	defer stopWriting()
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for writeCtx.Err() == nil {
				id := newID(t)
				recs, err := s.Append(ctx, 0, []ticket.Event{openedEvent(id), commentEvent(id, 2)}, eventstore.Metadata{})
				if err != nil {
					t.Errorf("append: %v", err)
					return
				}
				for _, r := range recs {
					keys.Store(key(r), true)
				}
				appended.Add(int64(len(recs)))
			}
		})
	}
	// rows: the outbox; preload: what is left of the 100,000; behind: the rows after
	// the group's position (its backlog): rows-behind have been passed and are kept
	type sample struct {
		at                    time.Duration
		rows, preload, behind int
		applied               int
	}
	var samples []sample
	var preloadGone atomic.Bool
	wg.Go(func() {
		for writeCtx.Err() == nil {
			smp := sample{at: time.Since(start), applied: rec.applied()}
			if err := pool.QueryRow(ctx, `SELECT count(*),
					count(*) FILTER (WHERE (transaction_id, "offset") <= ($1::xid8, $2)),
					count(*) FILTER (WHERE (transaction_id, "offset") > (
						SELECT last_processed_transaction_id, coalesce(offset_acked, 0)
						FROM watermill_offsets_ticket_events WHERE consumer_group = $3))
				FROM watermill_ticket_events`, head.Tx, head.Offset, group).Scan(&smp.rows, &smp.preload, &smp.behind); err != nil {
				t.Errorf("sample: %v", err)
				return
			}
			samples = append(samples, smp) // read after wg.Wait
			preloadGone.Store(smp.preload == 0)
			time.Sleep(50 * time.Millisecond)
		}
	})
	time.Sleep(500 * time.Millisecond)
	var logs strings.Builder
	var logMu sync.Mutex
	h := &eventstore.Housekeeper{Pool: pool, IdempotencyTTL: -1, Groups: []string{group}, Interval: 100 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	hctx, stopHousekeeping := context.WithCancel(ctx)
	housekeeping := make(chan struct{})
	hkStart, appliedAtStart := time.Since(start), rec.applied()
	var first eventstore.Round
	var firstErr error
	var firstDone atomic.Int64 // since start, when the first round returned
	go func() {
		defer close(housekeeping)
		first, firstErr = h.RunRound(hctx)
		firstDone.Store(int64(time.Since(start)))
		h.Run(hctx)
	}()
	for deadline := time.Now().Add(time.Minute); !preloadGone.Load() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(3500 * time.Millisecond)
	stopWriting()
	wg.Wait()
	projectionstest.WaitCaughtUp(t, pool, group, 30*time.Second)
	// the running housekeeper prunes what is left once the consumer has passed it
	if !waitFor(30*time.Second, func() bool { return count(t, pool, `SELECT count(*) FROM watermill_ticket_events`) == 0 }) {
		t.Errorf("%d outbox rows left after the consumer caught up", count(t, pool, `SELECT count(*) FROM watermill_ticket_events`))
	}
	stopHousekeeping()
	<-housekeeping

	// then: every event applied once, none missed
	total := int(appended.Load())
	rec.mu.Lock()
	missing, twice := 0, 0
	keys.Range(func(k, _ any) bool {
		switch rec.seen[k.(string)] {
		case 0:
			missing++
		case 1:
		default:
			twice++
		}
		return true
	})
	lags := slices.Clone(rec.lag)
	rec.mu.Unlock()
	if missing > 0 || twice > 0 || len(lags) != total {
		t.Errorf("of %d events appended, %d never applied, %d applied more than once, %d applications", total, missing, twice, len(lags))
	}
	slices.Sort(lags)
	t.Logf("%d events appended in %s; consumer lag median %s, p99 %s, max %s", total,
		time.Since(start).Round(time.Millisecond), lags[len(lags)/2], lags[len(lags)*99/100], lags[len(lags)-1])

	// the 100,000 rows were pruned while the consumer went on applying, and after them
	// the rows the consumer passed were pruned as it went
	// (a round prunes up to the positions it read first: what the consumer passed
	// during the long first round goes in the rounds after it, so the steady state is
	// measured from half a second after the 100,000 rows are gone and the first round
	// has returned, whichever is later: the round's other jobs follow its outbox sweep,
	// and on a loaded machine they end well after its last delete)
	pruned := -1
	maxKept, maxRows := 0, 0
	steadyFrom := time.Duration(firstDone.Load()) + 500*time.Millisecond
	for i, smp := range samples {
		if pruned < 0 && smp.preload == 0 {
			pruned = i
		}
		if pruned >= 0 && smp.at > max(samples[pruned].at+500*time.Millisecond, steadyFrom) {
			maxKept, maxRows = max(maxKept, smp.rows-smp.behind), max(maxRows, smp.rows)
		}
	}
	if pruned < 0 {
		t.Fatalf("the %d passed rows were not pruned within a minute (samples %+v)", backlog, samples)
	}
	from, to := sample{at: hkStart, applied: appliedAtStart}, samples[pruned]
	t.Logf("%d passed rows pruned between %s and %s (%.0f rows/s at least); the consumer applied %d events meanwhile",
		backlog, from.at, to.at, float64(backlog)/(to.at-from.at).Seconds(), to.applied-from.applied)
	t.Logf("from half a second after that (and after the first round returned, at %s), the outbox held at most %d rows, of which at most %d passed (%d appended in all)",
		time.Duration(firstDone.Load()), maxRows, maxKept, total)
	if sw := first.Outbox; firstErr != nil || sw.Deleted < backlog {
		t.Errorf("first round: %+v, %v", first, firstErr)
	} else {
		t.Logf("first round: pruned %d rows in %d batches, %s (%.0f rows/s; %s in statements, %.0f rows/s), slowest batch %s",
			sw.Deleted, sw.Batches, sw.Took, float64(sw.Deleted)/sw.Took.Seconds(), sw.Busy, float64(sw.Deleted)/sw.Busy.Seconds(), sw.Slowest)
	}
	if to.applied == from.applied {
		t.Errorf("the consumer applied nothing while pruning ran (%s to %s)", from.at, to.at)
	}
	if maxKept > total/3 {
		t.Errorf("the outbox kept up to %d rows the consumer had passed, of %d appended: not pruned as it went", maxKept, total)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logs.String(), "outbox_pruned=") {
		t.Errorf("no round was logged:\n%s", logs.String())
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "level=WARN") {
			t.Errorf("housekeeping warned: %s", line)
		}
	}
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
