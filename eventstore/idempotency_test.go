package eventstore_test

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// keyed returns an Idempotency whose stored answer names the ticket and version.
func keyed(key string, hash string, ttl time.Duration) *eventstore.Idempotency {
	return &eventstore.Idempotency{
		Scope: "test", Key: key, RequestHash: []byte(hash), TTL: ttl,
		Answer: func(r eventstore.Result) ([]byte, error) {
			return []byte(fmt.Sprintf("%s v%d", r.Ticket.ID(), r.Ticket.Version())), nil
		},
	}
}

func opening(cmd ticket.OpenTicket) func(*ticket.Ticket, time.Time) error {
	return func(t *ticket.Ticket, now time.Time) error { return t.Open(cmd, now) }
}

func TestIdempotencyRetryReplaysTheStoredResponse(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	first, err := s.Handle(ctx, newID(t), eventstore.Options{Create: true, Idempotency: keyed("k1", "h1", time.Hour)}, opening(validOpen()))
	if err != nil || first.Replayed != nil || len(first.Records) != 1 {
		t.Fatalf("first run: %+v, %v", first, err)
	}
	if first.Records[0].Metadata.IdempotencyKey != "k1" {
		t.Fatalf("metadata %+v lacks the key", first.Records[0].Metadata)
	}
	again, err := s.Handle(ctx, newID(t), eventstore.Options{Create: true, Idempotency: keyed("k1", "h1", time.Hour)}, opening(validOpen()))
	if err != nil || again.Replayed == nil || len(again.Records) != 0 {
		t.Fatalf("retry: %+v, %v", again, err)
	}
	if want := first.Ticket.ID().String() + " v1"; string(again.Replayed) != want {
		t.Fatalf("replayed %q, want the stored answer %q", again.Replayed, want)
	}
	if n := count(t, pool, "SELECT count(*) FROM events"); n != 1 {
		t.Fatalf("%d events after a retry", n)
	}

	_, err = s.Handle(ctx, newID(t), eventstore.Options{Create: true, Idempotency: keyed("k1", "another body", time.Hour)}, opening(validOpen()))
	if !errors.Is(err, eventstore.ErrIdempotencyKeyReused) || !errors.Is(err, ticket.ErrInvalid) {
		t.Fatalf("same key, other request: %v", err)
	}
	// the key is scoped: in another scope it is another key
	other := keyed("k1", "another body", time.Hour)
	other.Scope = "elsewhere"
	if r, err := s.Handle(ctx, newID(t), eventstore.Options{Create: true, Idempotency: other}, opening(validOpen())); err != nil || r.Replayed != nil {
		t.Fatalf("same key in another scope: %+v, %v", r, err)
	}
}

func TestIdempotencyRefusedCommandStoresNothing(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	bad := validOpen()
	bad.Title = ""
	if _, err := s.Handle(ctx, newID(t), eventstore.Options{Create: true, Idempotency: keyed("k", "h", time.Hour)}, opening(bad)); !errors.Is(err, ticket.ErrInvalid) {
		t.Fatalf("invalid create: %v", err)
	}
	if n := count(t, pool, "SELECT count(*) FROM idempotency_keys"); n != 0 {
		t.Fatalf("a refused command stored %d responses", n)
	}
}

func TestIdempotencyExpiredKeyIsTakenOverAndPurged(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	ttl := 50 * time.Millisecond
	a, err := s.Handle(ctx, newID(t), eventstore.Options{Create: true, Idempotency: keyed("k", "h1", ttl)}, opening(validOpen()))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * ttl)
	// expired: a new request under the key runs, even with another body
	b, err := s.Handle(ctx, newID(t), eventstore.Options{Create: true, Idempotency: keyed("k", "h2", ttl)}, opening(validOpen()))
	if err != nil || b.Replayed != nil || b.Ticket.ID() == a.Ticket.ID() {
		t.Fatalf("run after expiry: %+v, %v", b, err)
	}
	if n := count(t, pool, "SELECT count(*) FROM idempotency_keys WHERE key = 'k' AND request_hash = 'h2'"); n != 1 {
		t.Fatalf("the expired row was not taken over (%d rows with the new hash)", n)
	}
	time.Sleep(2 * ttl)
	if n, err := s.PurgeIdempotencyKeys(ctx, ttl); err != nil || n != 1 {
		t.Fatalf("purge deleted %d, err %v", n, err)
	}
}

// TestIdempotencyRacingAttemptsStoreOne holds every racing attempt inside its append
// transaction until all of them have appended their events, so they all reach the key
// together: exactly one commits, the others roll back their events and answer with the
// winner's response.
func TestIdempotencyRacingAttemptsStoreOne(t *testing.T) {
	t.Parallel()
	const racers = 6
	pool, err := db.Open(testContext(t), dbtest.NewDatabase(t), db.PoolConfig{MaxConns: racers + 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := eventstore.New(pool, dbtest.Keyring(t, pool))
	ctx := testContext(t)

	var arrived sync.WaitGroup
	arrived.Add(racers)
	all := make(chan struct{})
	go func() { arrived.Wait(); close(all) }()
	var once sync.Map
	results := make([]eventstore.Result, racers)
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			idem := keyed("race", "h", time.Hour)
			render := idem.Answer
			idem.Answer = func(r eventstore.Result) ([]byte, error) {
				if _, seen := once.LoadOrStore(i, true); !seen {
					arrived.Done()
				}
				select {
				case <-all:
				case <-time.After(10 * time.Second):
				}
				return render(r)
			}
			results[i], errs[i] = s.Handle(ctx, newID(t), eventstore.Options{Create: true, Idempotency: idem}, opening(validOpen()))
		}()
	}
	wg.Wait()
	var winner *eventstore.Result
	for i := range results {
		if errs[i] != nil {
			t.Fatalf("racer %d: %v", i, errs[i])
		}
		if results[i].Replayed == nil {
			if winner != nil {
				t.Fatal("two racers committed under one key")
			}
			winner = &results[i]
		}
	}
	if winner == nil {
		t.Fatal("no racer committed")
	}
	for i, r := range results {
		if r.Replayed != nil && !bytes.Equal(r.Replayed, []byte(winner.Ticket.ID().String()+" v1")) {
			t.Fatalf("racer %d replayed %q, winner %s", i, r.Replayed, winner.Ticket.ID())
		}
	}
	events := count(t, pool, "SELECT count(*) FROM events")
	outbox := count(t, pool, "SELECT count(*) FROM watermill_ticket_events")
	// positions of rolled-back appends are never reused: the sequence counts attempts
	lost := count(t, pool, "SELECT pg_sequence_last_value(pg_get_serial_sequence('events', 'position')) - count(*) FROM events")
	if events != 1 || outbox != 1 {
		t.Fatalf("%d events and %d outbox messages after %d racers, want 1 and 1", events, outbox, racers)
	}
	if lost != racers-1 {
		t.Fatalf("%d racers rolled back an append, want %d (the race was not exercised)", lost, racers-1)
	}
}

// TestIdempotencyRefusalAfterARacingRunReplaysIt: two instances (two stores on one
// database, so no shared stream lock) run the same keyed command; the one that loses
// sees the ticket as the winner left it and would refuse (an If-Match that no longer
// holds, a rule the winner's own event now breaks). The refusal is the winner's own
// effect: the loser answers with the stored answer instead. The store of the loser is
// made to look at the ticket only after the winner committed by running the winner
// inside its decide.
func TestIdempotencyRefusalAfterARacingRunReplaysIt(t *testing.T) {
	t.Parallel()
	a, pool := newStore(t)
	b := eventstore.New(pool, dbtest.Keyring(t, pool))
	ctx := testContext(t)
	id := openTicket(t, a)

	var winner eventstore.Result
	loser, err := b.Handle(ctx, id, eventstore.Options{Idempotency: keyed("c1", "h", time.Hour)}, func(tk *ticket.Ticket, now time.Time) error {
		var err error
		winner, err = a.Handle(ctx, id, eventstore.Options{Idempotency: keyed("c1", "h", time.Hour)}, addComment(t, "bob"))
		if err != nil || winner.Replayed != nil {
			t.Fatalf("the winner: %+v, %v", winner, err)
		}
		return fmt.Errorf("as if the winner's comment broke a rule: %w", ticket.ErrConflict)
	})
	if err != nil || loser.Replayed == nil {
		t.Fatalf("the loser: expected the stored answer, got %+v, %v", loser, err)
	}
	if want := id.String() + " v2"; string(loser.Replayed) != want {
		t.Fatalf("replayed %q, want the winner's answer %q", loser.Replayed, want)
	}
	if n := count(t, pool, "SELECT count(*) FROM events WHERE stream_id = $1", id); n != 2 {
		t.Fatalf("%d events, want 2", n)
	}

	// Without a stored answer a refusal stays a refusal.
	_, err = b.Handle(ctx, id, eventstore.Options{Idempotency: keyed("c2", "h", time.Hour)}, func(*ticket.Ticket, time.Time) error {
		return ticket.ErrConflict
	})
	if !errors.Is(err, ticket.ErrConflict) {
		t.Fatalf("a refusal without a racing run: %v", err)
	}
}
