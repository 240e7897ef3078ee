package eventstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
)

// chunk is how many rows a test writes per transaction when it fills a table: every
// outbox consumer on the server (other tests' too: transaction ids are server-wide)
// waits for the oldest open transaction, so no test holds one open for long.
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
	s := eventstore.New(pool)

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
	h := &eventstore.Housekeeper{Pool: pool, IdempotencyTTL: 24 * time.Hour,
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
	h := &eventstore.Housekeeper{Pool: pool, IdempotencyTTL: time.Hour, BatchSize: 3}

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
