package eventstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// appendResult is what one Append returned.
type appendResult struct {
	recs []eventstore.Record
	err  error
}

// groupScenario makes the next group commit predictable: with one flush at a time, it
// holds the store's only flush in a transaction that waits on a row lock, queues
// appends behind it, and then lets the first go, so that the queued appends go to
// Postgres as one group. It returns the queued appends' results, in order, and the append
// transactions and commands counted from the first append on.
func groupScenario(t *testing.T, s *eventstore.Store, pool *pgxpool.Pool, appends []func(ctx context.Context) ([]eventstore.Record, error)) ([]appendResult, eventstore.AppendStats) {
	t.Helper()
	ctx := testContext(t)
	s.SetMaxFlushes(1)
	// The subject's key is stored (committed) before the scenario. Otherwise the blocker
	// would insert the subject's first key, uncommitted, and the first append, sealed
	// with it from the cache, would find it not yet stored: a stale key, sealed again and
	// retried (Store.commit), one more transaction than the scenario counts, or not,
	// as the timing falls: CI saw both.
	if _, err := s.Append(ctx, 0, []ticket.Event{openedEvent(newID(t))}, eventstore.Metadata{}); err != nil {
		t.Fatal(err)
	}

	// A transaction of the test's own holds version 1 of stream held, uncommitted.
	held := newID(t)
	blocker, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(context.Background()) //nolint:errcheck // after Commit this is a no-op
	if _, err := s.AppendTx(ctx, blocker, 0, []ticket.Event{openedEvent(held)}, eventstore.Metadata{}); err != nil {
		t.Fatal(err)
	}
	// The store's flush appends to the same version and waits for the blocker.
	before := s.AppendStats()
	first := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, 0, []ticket.Event{openedEvent(held)}, eventstore.Metadata{})
		first <- err
	}()
	waitUntil(t, "the first append to start", func() bool { return s.AppendStats().Transactions > before.Transactions })

	out := make([]appendResult, len(appends))
	var wg sync.WaitGroup
	for i, a := range appends {
		wg.Go(func() {
			recs, err := a(ctx)
			out[i] = appendResult{recs, err}
		})
	}
	waitUntil(t, "the appends to queue", func() bool { return s.AppendStats().Queued == len(appends) })
	if err := blocker.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-first; !errors.Is(err, eventstore.ErrConcurrency) {
		t.Fatalf("the append that waited on the held version: expected a concurrency error, got %v", err)
	}
	wg.Wait()
	after := s.AppendStats()
	return out, eventstore.AppendStats{Transactions: after.Transactions - before.Transactions, Commands: after.Commands - before.Commands}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// openAppend appends the opening event of a new stream.
func openAppend(s *eventstore.Store, id uuid.UUID) func(ctx context.Context) ([]eventstore.Record, error) {
	return func(ctx context.Context) ([]eventstore.Record, error) {
		return s.Append(ctx, 0, []ticket.Event{openedEvent(id)}, eventstore.Metadata{})
	}
}

// opens returns n new stream ids and the appends that open them.
func opens(t *testing.T, s *eventstore.Store, n int) ([]uuid.UUID, []func(context.Context) ([]eventstore.Record, error)) {
	ids := make([]uuid.UUID, n)
	appends := make([]func(context.Context) ([]eventstore.Record, error), n)
	for i := range ids {
		ids[i] = newID(t)
		appends[i] = openAppend(s, ids[i])
	}
	return ids, appends
}

// expectOpened checks that the first len(ids) results succeeded, each stored with its
// outbox row; beside names what they ran beside.
func expectOpened(t *testing.T, pool *pgxpool.Pool, beside string, results []appendResult, ids []uuid.UUID) {
	t.Helper()
	for i, r := range results[:len(ids)] {
		if r.err != nil {
			t.Fatalf("append %d beside %s: %v", i, beside, r.err)
		}
		if ev, msg := streamCounts(t, pool, ids[i]); ev != 1 || msg != 1 {
			t.Errorf("append %d: %d events and %d outbox messages, want 1 and 1", i, ev, msg)
		}
	}
}

// transactionsOf returns how many distinct transactions wrote the events of ids.
func transactionsOf(t *testing.T, pool *pgxpool.Pool, ids []uuid.UUID) int {
	t.Helper()
	return count(t, pool, `SELECT count(DISTINCT transaction_id) FROM events WHERE stream_id = ANY($1)`, ids)
}

// TestGroupCommitSharesOneTransaction: appends queued behind a busy flush go to
// Postgres together, in one transaction, each stored with its outbox row and its own
// position.
func TestGroupCommitSharesOneTransaction(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	const n = 20
	ids, appends := opens(t, s, n)
	results, stats := groupScenario(t, s, pool, appends)

	positions := map[int64]bool{}
	for i, r := range results {
		if r.err != nil || len(r.recs) != 1 || r.recs[0].Position == 0 {
			t.Fatalf("append %d: expected one stored record, got %+v, %v", i, r.recs, r.err)
		}
		positions[r.recs[0].Position] = true
		if ev, msg := streamCounts(t, pool, ids[i]); ev != 1 || msg != 1 {
			t.Errorf("append %d: %d events and %d outbox messages, want 1 and 1", i, ev, msg)
		}
	}
	if len(positions) != n {
		t.Errorf("%d distinct positions for %d appends", len(positions), n)
	}
	if got := transactionsOf(t, pool, ids); got != 1 {
		t.Errorf("the %d queued appends were written by %d transactions, want 1", n, got)
	}
	if tx, cmds := stats.Transactions, stats.Commands; tx != 2 || cmds != n+1 {
		t.Errorf("stats: %d transactions carrying %d commands, want 2 carrying %d", tx, cmds, n+1)
	}
	// Every record reads back as returned, position included.
	stored := storedEvents(t, s, pool)
	for _, r := range results {
		if got := stored[key(r.recs[0])]; !sameRecord(got, r.recs[0]) {
			t.Errorf("stored %+v, returned %+v", got, r.recs[0])
		}
	}
}

// TestGroupCommitAClashFailsOnlyItsCommand: in a group, a command whose expected
// version is taken gets its own ConcurrencyError; the others commit in the same
// transaction.
func TestGroupCommitAClashFailsOnlyItsCommand(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	stale := openTicket(t, s) // stands at 1
	ids, appends := opens(t, s, 5)
	appends = append(appends, func(ctx context.Context) ([]eventstore.Record, error) {
		return s.Append(ctx, 0, []ticket.Event{commentEvent(stale, 1)}, eventstore.Metadata{})
	})
	results, _ := groupScenario(t, s, pool, appends)

	var ce *eventstore.ConcurrencyError
	if last := results[len(results)-1]; !errors.As(last.err, &ce) || ce.StreamID != stale || ce.Expected != 0 {
		t.Fatalf("the stale append: expected a ConcurrencyError for %s at 0, got %v", stale, last.err)
	}
	expectOpened(t, pool, "the clash", results, ids)
	if got := transactionsOf(t, pool, ids); got != 1 {
		t.Errorf("the appends beside the clash were written by %d transactions, want 1", got)
	}
	if ev, msg := streamCounts(t, pool, stale); ev != 1 || msg != 1 {
		t.Errorf("the stale stream has %d events and %d outbox messages, want 1 and 1", ev, msg)
	}
}

// TestGroupCommitAPartialCommandIsUndone: a command of two events whose first version
// is taken would store only its second; the group rolls back, the command gets a
// ConcurrencyError and nothing of it is stored, and the others commit.
func TestGroupCommitAPartialCommandIsUndone(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	id := openTicket(t, s)
	mustHandle(t, s, id, addComment(t, "bob")) // stands at 2
	ids, appends := opens(t, s, 5)
	appends = append(appends, func(ctx context.Context) ([]eventstore.Record, error) {
		return s.Append(ctx, 1, []ticket.Event{commentEvent(id, 2), commentEvent(id, 3)}, eventstore.Metadata{})
	})
	results, stats := groupScenario(t, s, pool, appends)
	// the held one, the group that rolled back, the group again without the partial one
	if tx := stats.Transactions; tx != 3 {
		t.Errorf("%d transactions, want 3", tx)
	}
	if got := transactionsOf(t, pool, ids); got != 1 {
		t.Errorf("the appends beside the partial one were written by %d transactions, want 1", got)
	}

	if last := results[len(results)-1]; !errors.Is(last.err, eventstore.ErrConcurrency) || last.recs != nil {
		t.Fatalf("the partial append: expected a concurrency error and no records, got %v, %d records", last.err, len(last.recs))
	}
	if ev, msg := streamCounts(t, pool, id); ev != 2 || msg != 2 {
		t.Errorf("the partial append's stream has %d events and %d outbox messages, want 2 and 2", ev, msg)
	}
	expectOpened(t, pool, "the partial one", results, ids)
}

// TestGroupCommitAFailingCommandDoesNotFailItsNeighbours: a command Postgres refuses
// (a NUL character, which jsonb cannot hold) fails the group's statement; the group is
// retried one command per transaction, so only that command fails.
func TestGroupCommitAFailingCommandDoesNotFailItsNeighbours(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	bad := newID(t)
	ids, appends := opens(t, s, 4)
	appends = append(appends, func(ctx context.Context) ([]eventstore.Record, error) {
		e := openedEvent(bad)
		e.Data = ticket.Opened{Title: "nul \x00 inside", Email: "alice@example.com", CreatedBy: "alice"}
		return s.Append(ctx, 0, []ticket.Event{e}, eventstore.Metadata{})
	})
	results, stats := groupScenario(t, s, pool, appends)
	// the held one, the failed group, then each command alone
	if tx := stats.Transactions; tx != 2+int64(len(appends)) {
		t.Errorf("%d transactions, want %d", tx, 2+len(appends))
	}

	if last := results[len(results)-1]; last.err == nil || errors.Is(last.err, eventstore.ErrConcurrency) {
		t.Fatalf("the refused append: expected Postgres's error, got %v", last.err)
	}
	if ev, msg := streamCounts(t, pool, bad); ev != 0 || msg != 0 {
		t.Errorf("the refused append stored %d events and %d outbox messages", ev, msg)
	}
	expectOpened(t, pool, "the refused one", results, ids)
}

// TestGroupCommitLoneAppendDoesNotWait: with nothing else in flight an append is
// committed by its own goroutine at once, in a transaction of its own.
func TestGroupCommitLoneAppendDoesNotWait(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	var ids []uuid.UUID
	for range 5 {
		id := newID(t)
		ids = append(ids, id)
		before := s.AppendStats()
		if _, err := openAppend(s, id)(testContext(t)); err != nil {
			t.Fatal(err)
		}
		if after := s.AppendStats(); after.Transactions-before.Transactions != 1 || after.Queued != 0 {
			t.Fatalf("a lone append: %+v -> %+v, want one transaction and nothing queued", before, after)
		}
	}
	if got := transactionsOf(t, pool, ids); got != len(ids) {
		t.Errorf("%d sequential appends in %d transactions", len(ids), got)
	}
}

// TestGroupCommitCallerDeadlineIsUnavailable: an append whose caller's deadline passes
// while it waits on Postgres reports the deadline (ticket.ErrUnavailable, a 503 at the
// HTTP edge), not the cancellation of the group's own context.
func TestGroupCommitCallerDeadlineIsUnavailable(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	held := newID(t)
	blocker, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(context.Background()) //nolint:errcheck // rolled back on purpose
	if _, err := s.AppendTx(ctx, blocker, 0, []ticket.Event{openedEvent(held)}, eventstore.Metadata{}); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err = s.Append(short, 0, []ticket.Event{openedEvent(held)}, eventstore.Metadata{})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ticket.ErrUnavailable) {
		t.Fatalf("an append past its deadline: %v, want the deadline as ticket.ErrUnavailable", err)
	}
}
