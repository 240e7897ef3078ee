package eventstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/projectionstest"
	"github.com/ticketd/ticketd/ticket"
)

func TestEveryStoredEventIsPublishedAndViceVersa(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)

	// when: sequential commands on several tickets, then concurrent ones that clash
	// and retry, and a few appends that fail outright
	var ids []uuid.UUID
	for i := range 4 {
		id := openTicket(t, s)
		ids = append(ids, id)
		mustHandle(t, s, id, addComment(t, "bob"))
		if i%2 == 0 {
			mustHandle(t, s, id, changeStatus(ticket.StatusAnswered, "carol"))
		}
	}
	var wg sync.WaitGroup
	for w := range 12 {
		id := ids[w%len(ids)]
		decides := []func(*ticket.Ticket, time.Time) error{addComment(t, fmt.Sprintf("w%d", w)), addComment(t, fmt.Sprintf("w%d-again", w))}
		wg.Go(func() {
			for _, decide := range decides {
				if _, err := s.Handle(ctx, id, eventstore.Options{}, decide); err != nil {
					t.Errorf("concurrent comment: expected no error, got %v", err)
				}
			}
		})
	}
	wg.Wait()
	for _, id := range ids[:2] {
		if _, err := s.Append(ctx, 1, []ticket.Event{commentEvent(id, 2)}, eventstore.Metadata{}); !errors.Is(err, eventstore.ErrConcurrency) {
			t.Fatalf("stale append: expected a concurrency error, got %v", err)
		}
	}
	mustHandle(t, s, ids[3], func(tk *ticket.Ticket, now time.Time) error { return tk.Delete(ticket.DeleteTicket{}, now) })

	// then: events and outbox messages match one to one, in content and transaction
	events := storedEvents(t, s, pool)
	messages := outbox(t, pool)
	if want := 4 + 4 + 2 + 24 + 1; len(events) != want {
		t.Errorf("expected %d events, got %d", want, len(events))
	}
	if len(messages) != len(events) {
		t.Errorf("expected as many outbox messages as events (%d), got %d", len(events), len(messages))
	}
	seen := map[string]bool{}
	for _, m := range messages {
		k := key(m.Record)
		if seen[k] {
			t.Errorf("event %s published twice", k)
		}
		seen[k] = true
		e, ok := events[k]
		if !ok {
			t.Errorf("message %s publishes event %s, which is not stored", m.UUID, k)
			continue
		}
		if !sameRecord(m.Record, e) {
			t.Errorf("event %s:\n stored    %+v\n published %+v", k, normalized(e), normalized(m.Record))
		}
		if want := uuid.NewSHA1(e.TicketID, []byte(strconv.Itoa(e.Version))).String(); m.UUID != want {
			t.Errorf("event %s: expected message id %s, got %s", k, want, m.UUID)
		}
	}
	for k := range events {
		if !seen[k] {
			t.Errorf("event %s stored but never published", k)
		}
	}
	// Same transaction: each message carries the transaction id of its event's row.
	if n := count(t, pool, `SELECT count(*) FROM events e JOIN watermill_ticket_events w
		ON (w.payload->>'position')::bigint = e.position AND w.transaction_id = e.transaction_id`); n != len(events) {
		t.Errorf("expected all %d events to share their transaction with their message, %d do", len(events), n)
	}
}

func TestAppendThatCannotPublishStoresNothing(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	id := openTicket(t, s)

	// given: the outbox table is gone (this test's own database), so publishing fails
	if _, err := pool.Exec(ctx, `ALTER TABLE watermill_ticket_events RENAME TO outbox_away`); err != nil {
		t.Fatalf("rename outbox: %v", err)
	}
	_, err := s.Handle(ctx, id, eventstore.Options{}, addComment(t, "bob"))
	if _, rerr := pool.Exec(ctx, `ALTER TABLE outbox_away RENAME TO watermill_ticket_events`); rerr != nil {
		t.Fatalf("restore outbox: %v", rerr)
	}

	// then: the command failed and its event was not stored either
	if err == nil {
		t.Fatalf("expected the append to fail when the outbox cannot be written")
	}
	if ev, msg := streamCounts(t, pool, id); ev != 1 || msg != 1 {
		t.Errorf("expected the opening event only (1 event, 1 message), got %d and %d", ev, msg)
	}
	// and the stream is usable at the version it stood at
	recs := mustHandle(t, s, id, addComment(t, "bob"))
	if len(recs) != 1 || recs[0].Version != 2 {
		t.Errorf("expected the next comment at version 2, got %+v", recs)
	}
}

// recorder is a projector that remembers the events it was handed, in order.
type recorder struct {
	mu   sync.Mutex
	seen []eventstore.Record
}

func (r *recorder) apply(_ context.Context, _ pgx.Tx, recs []eventstore.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, recs...)
	return nil
}

func (r *recorder) events() []eventstore.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]eventstore.Record(nil), r.seen...)
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runRecorder runs a real outbox consumer (through projections.NewRouter) in
// its own consumer group, recording what it is handed, until the test ends.
func runRecorder(t *testing.T, pool *pgxpool.Pool) *recorder {
	t.Helper()
	rec := &recorder{}
	projectionstest.RunRouter(t, pool, projections.Config{},
		projections.Handler{Group: "test-recorder", Apply: rec.apply})
	return rec
}

func openedEvent(id uuid.UUID) ticket.Event {
	return ticket.Event{
		TicketID: id, Version: 1, Actor: "alice", At: time.Now().UTC().Truncate(time.Microsecond),
		Data: ticket.Opened{Title: "t", Email: "alice@example.com", CreatedBy: "alice"},
	}
}

// TestSubscriberDoesNotSkipAnEarlierTransactionThatCommitsLater is the ordering test of
// DESIGN §2: Postgres hands out positions (and transaction ids) before commit, so T1
// can take the lower ones and commit after T2. A reader that moved past T2's event
// while T1 was open would never see T1's.
func TestSubscriberDoesNotSkipAnEarlierTransactionThatCommitsLater(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	rec := runRecorder(t, pool)
	first, second := newID(t), newID(t)
	// the subject's key exists before (a first key is made by the first append that
	// needs it, and a second append of the same new subject waits for that one)
	ring := dbtest.Keyring(t, pool)
	if _, err := ring.Sealer(ctx, pool, ring.SubjectID("alice@example.com"), true, false); err != nil {
		t.Fatal(err)
	}

	// given: T1 appends and stays open
	tx1, err := pool.Begin(ctx)
	if err != nil {
		t.Fatalf("begin T1: %v", err)
	}
	defer tx1.Rollback(context.Background()) //nolint:errcheck // after Commit this is a no-op
	t1Recs, err := s.AppendTx(ctx, tx1, 0, []ticket.Event{openedEvent(first)}, eventstore.Metadata{RequestID: "T1"})
	if err != nil {
		t.Fatalf("T1 append: %v", err)
	}
	var xid1 uint64
	if err := tx1.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(&xid1); err != nil {
		t.Fatalf("T1 transaction id: %v", err)
	}

	// when: T2 appends to another stream and commits first
	t2Recs, err := s.Append(ctx, 0, []ticket.Event{openedEvent(second)}, eventstore.Metadata{RequestID: "T2"})
	if err != nil {
		t.Fatalf("T2 append: %v", err)
	}
	var xid2 uint64
	if err := pool.QueryRow(ctx, `SELECT transaction_id::text::bigint FROM watermill_ticket_events
		WHERE payload->>'stream_id' = $1`, second.String()).Scan(&xid2); err != nil {
		t.Fatalf("T2 transaction id: %v", err)
	}
	if !(xid1 < xid2 && t1Recs[0].Position < t2Recs[0].Position) {
		t.Fatalf("scenario broken: expected T1 to hold the lower transaction id and position, got xid %d/%d, position %d/%d",
			xid1, xid2, t1Recs[0].Position, t2Recs[0].Position)
	}

	// then: while T1 is open the subscriber holds back T2's event (it polls every
	// 20ms, so 500ms is ~25 chances to get it wrong)
	time.Sleep(500 * time.Millisecond)
	if got := rec.events(); len(got) != 0 {
		t.Fatalf("while T1 is open: expected the subscriber to wait, it was handed %d events (first %s)", len(got), key(got[0]))
	}

	// when: T1 commits
	if err := tx1.Commit(ctx); err != nil {
		t.Fatalf("T1 commit: %v", err)
	}

	// then: both events arrive, T1's first
	if !waitFor(20*time.Second, func() bool { return len(rec.events()) >= 2 }) {
		t.Fatalf("expected both events within 20s, got %d", len(rec.events()))
	}
	got := rec.events()
	if len(got) != 2 || got[0].TicketID != first || got[1].TicketID != second {
		var keys []string
		for _, r := range got {
			keys = append(keys, key(r))
		}
		t.Fatalf("expected T1's event %s then T2's %s, got %v", first, second, keys)
	}
	if !sameRecord(got[0], t1Recs[0]) || !sameRecord(got[1], t2Recs[0]) {
		t.Errorf("delivered records differ from the appended ones:\n%+v\n%+v", got, []eventstore.Record{t1Recs[0], t2Recs[0]})
	}
}

// TestSubscriberSeesEveryEventOfOverlappingTransactions widens the ordering test:
// many writers hold their transactions open for random times, so commits overlap and
// land out of position order; the subscriber must be handed every event, once.
func TestSubscriberSeesEveryEventOfOverlappingTransactions(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	rec := runRecorder(t, pool)

	const writers, rounds = 3, 10 // 3 writers + the subscriber fit the pool of 4
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range rounds {
				id := uuid.Must(uuid.NewV7())
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					if _, err := s.AppendTx(ctx, tx, 0, []ticket.Event{openedEvent(id)}, eventstore.Metadata{}); err != nil {
						return err
					}
					time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
					return nil
				})
				if err != nil {
					t.Errorf("writer %d round %d: %v", w, i, err)
					return
				}
			}
		})
	}
	wg.Wait()

	const total = writers * rounds
	if !waitFor(30*time.Second, func() bool { return len(rec.events()) >= total }) {
		t.Fatalf("expected %d events within 30s, got %d", total, len(rec.events()))
	}
	time.Sleep(200 * time.Millisecond) // a duplicate would arrive by now
	stored := storedEvents(t, s, pool)
	seen := map[string]int{}
	for _, r := range rec.events() {
		seen[key(r)]++
	}
	if len(stored) != total || len(seen) != total {
		t.Errorf("expected %d events stored and handed over, got %d stored, %d handed over", total, len(stored), len(seen))
	}
	for k := range stored {
		if seen[k] != 1 {
			t.Errorf("event %s handed over %d times, expected once", k, seen[k])
		}
	}
}
