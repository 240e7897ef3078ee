package eventstore_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

func TestAppendAndLoadRoundTrip(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := testContext(t)
	md := eventstore.Metadata{RequestID: "req-1", CorrelationID: "corr-1", IdempotencyKey: "key-1"}
	id := newID(t)

	// when: a whole life of commands, one of them appending through the metadata
	var appended []eventstore.Record
	steps := []func(*ticket.Ticket, time.Time) error{
		func(tk *ticket.Ticket, now time.Time) error { return tk.Open(validOpen(), now) },
		addComment(t, "bob"),
		changeStatus(ticket.StatusAnswered, "carol"),
		addComment(t, "alice"),
		changeStatus(ticket.StatusClosed, "carol"),
		func(tk *ticket.Ticket, now time.Time) error {
			return tk.Delete(ticket.DeleteTicket{DeletedBy: "admin"}, now)
		},
	}
	for i, step := range steps {
		res, err := s.Handle(ctx, id, eventstore.Options{Create: i == 0, Metadata: md}, step)
		if err != nil {
			t.Fatalf("step %d: expected no error, got %v", i+1, err)
		}
		if len(res.Records) != 1 {
			t.Fatalf("step %d: expected 1 record appended, got %d", i+1, len(res.Records))
		}
		appended = append(appended, res.Records...)
	}

	// then: Load returns exactly what Append returned
	loaded, err := s.Load(ctx, id, 0, maxVersion)
	if err != nil {
		t.Fatalf("Load: expected no error, got %v", err)
	}
	if len(loaded) != len(appended) {
		t.Fatalf("Load: expected %d records, got %d", len(appended), len(loaded))
	}
	wantTypes := []string{ticket.TypeOpened, ticket.TypeCommentAdded, ticket.TypeStatusChanged,
		ticket.TypeCommentAdded, ticket.TypeStatusChanged, ticket.TypeDeleted}
	wantActors := []string{"alice", "bob", "carol", "alice", "carol", "admin"}
	for i, got := range loaded {
		want := appended[i]
		if !sameRecord(got, want) {
			t.Errorf("record %d:\nexpected %+v\n     got %+v", i+1, normalized(want), normalized(got))
		}
		if got.Version != i+1 {
			t.Errorf("record %d: expected version %d, got %d", i+1, i+1, got.Version)
		}
		if got.Type() != wantTypes[i] {
			t.Errorf("record %d: expected type %s, got %s", i+1, wantTypes[i], got.Type())
		}
		if i > 0 && got.Position <= loaded[i-1].Position {
			t.Errorf("record %d: position %d does not follow %d", i+1, got.Position, loaded[i-1].Position)
		}
		wantMD := md
		wantMD.Actor = wantActors[i]
		if got.Metadata != wantMD || got.Actor != wantActors[i] {
			t.Errorf("record %d: expected metadata %+v and actor %s, got %+v and %s", i+1, wantMD, wantActors[i], got.Metadata, got.Actor)
		}
		if !got.At.Equal(got.RecordedAt) {
			t.Errorf("record %d: event time %v differs from recorded time %v", i+1, got.At, got.RecordedAt)
		}
	}
	if d, ok := loaded[2].Data.(ticket.StatusChanged); !ok || d.From != ticket.StatusOpen || d.To != ticket.StatusAnswered || d.UpdatedBy != "carol" {
		t.Errorf("record 3: expected StatusChanged open -> answered by carol, got %#v", loaded[2].Data)
	}

	t.Run("load_returns_a_window_of_versions", func(t *testing.T) {
		window, err := s.Load(ctx, id, 2, 4)
		if err != nil {
			t.Fatalf("Load(2, 4): expected no error, got %v", err)
		}
		var versions []int
		for _, r := range window {
			versions = append(versions, r.Version)
		}
		if !slices.Equal(versions, []int{3, 4}) {
			t.Errorf("Load(2, 4): expected versions [3 4], got %v", versions)
		}
	})

	t.Run("load_ticket_replays_up_to_a_version", func(t *testing.T) {
		tk, err := s.LoadTicket(ctx, id, 3)
		if err != nil {
			t.Fatalf("LoadTicket(3): expected no error, got %v", err)
		}
		if tk.Version() != 3 || tk.Status() != ticket.StatusAnswered || tk.CommentCount() != 1 {
			t.Errorf("LoadTicket(3): expected version 3, answered, 1 comment; got %d, %s, %d",
				tk.Version(), tk.Status(), tk.CommentCount())
		}
		tk, err = s.LoadTicket(ctx, id, 0)
		if err != nil {
			t.Fatalf("LoadTicket(0): expected no error, got %v", err)
		}
		if tk.Version() != 6 || !tk.Deleted() {
			t.Errorf("LoadTicket(0): expected the deleted ticket at version 6, got version %d deleted %v", tk.Version(), tk.Deleted())
		}
	})

	t.Run("unknown_stream_loads_empty_and_is_not_found_as_a_ticket", func(t *testing.T) {
		unknown := newID(t)
		recs, err := s.Load(ctx, unknown, 0, maxVersion)
		if err != nil || len(recs) != 0 {
			t.Errorf("Load(unknown): expected no records and no error, got %d records, %v", len(recs), err)
		}
		if _, err := s.LoadTicket(ctx, unknown, 0); !errors.Is(err, ticket.ErrNotFound) {
			t.Errorf("LoadTicket(unknown): expected ErrNotFound, got %v", err)
		}
	})

	t.Run("append_of_nothing_stores_nothing", func(t *testing.T) {
		recs, err := s.Append(ctx, 6, nil, md)
		if err != nil || recs != nil {
			t.Errorf("Append(nil): expected nil, nil; got %v, %v", recs, err)
		}
	})
}

func TestAppendWithStaleVersionIsAConcurrencyError(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	id := openTicket(t, s)
	mustHandle(t, s, id, addComment(t, "bob")) // the stream stands at 2

	for _, tc := range []struct {
		name     string
		expected int
		events   []ticket.Event
	}{
		{"one_event_on_a_taken_version", 1, []ticket.Event{commentEvent(id, 2)}},
		{"batch_whose_first_version_is_taken", 1, []ticket.Event{commentEvent(id, 2), commentEvent(id, 3)}},
		{"batch_from_the_very_start", 0, []ticket.Event{commentEvent(id, 1), commentEvent(id, 2), commentEvent(id, 3)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := s.Append(ctx, tc.expected, tc.events, eventstore.Metadata{})
			var ce *eventstore.ConcurrencyError
			if !errors.As(err, &ce) {
				t.Fatalf("expected a *ConcurrencyError, got %v (%d records)", err, len(recs))
			}
			if !errors.Is(err, eventstore.ErrConcurrency) {
				t.Errorf("expected errors.Is(err, ErrConcurrency), got %v", err)
			}
			if ce.StreamID != id || ce.Expected != tc.expected {
				t.Errorf("expected the error to name stream %s at %d, got %s at %d", id, tc.expected, ce.StreamID, ce.Expected)
			}
			if recs != nil {
				t.Errorf("expected no records with the error, got %d", len(recs))
			}
			// then: nothing of the batch was stored or published
			if ev, msg := streamCounts(t, pool, id); ev != 2 || msg != 2 {
				t.Errorf("expected 2 events and 2 outbox messages, got %d and %d", ev, msg)
			}
		})
	}

	t.Run("racing_appends_on_one_version_let_exactly_one_win", func(t *testing.T) {
		const writers = 8
		var wg sync.WaitGroup
		var won, clashed atomic.Int32
		start := make(chan struct{})
		for range writers {
			wg.Go(func() {
				<-start
				_, err := s.Append(ctx, 2, []ticket.Event{commentEvent(id, 3)}, eventstore.Metadata{})
				switch {
				case err == nil:
					won.Add(1)
				case errors.Is(err, eventstore.ErrConcurrency):
					clashed.Add(1)
				default:
					t.Errorf("expected success or a concurrency error, got %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		if won.Load() != 1 || clashed.Load() != writers-1 {
			t.Errorf("expected 1 winner and %d clashes, got %d and %d", writers-1, won.Load(), clashed.Load())
		}
		if ev, msg := streamCounts(t, pool, id); ev != 3 || msg != 3 {
			t.Errorf("expected 3 events and 3 outbox messages, got %d and %d", ev, msg)
		}
	})
}

func TestAppendRefusesEventsThatDoNotContinueTheStream(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	id := openTicket(t, s) // the stream stands at 1
	other := newID(t)

	for _, tc := range []struct {
		name     string
		expected int
		events   []ticket.Event
	}{
		{"gap_after_expected", 1, []ticket.Event{commentEvent(id, 3)}},
		{"version_at_expected", 1, []ticket.Event{commentEvent(id, 1)}},
		{"gap_inside_the_batch", 1, []ticket.Event{commentEvent(id, 2), commentEvent(id, 4)}},
		{"repeat_inside_the_batch", 1, []ticket.Event{commentEvent(id, 2), commentEvent(id, 2)}},
		{"two_streams_in_one_batch", 1, []ticket.Event{commentEvent(id, 2), commentEvent(other, 3)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := s.Append(ctx, tc.expected, tc.events, eventstore.Metadata{})
			if err == nil {
				t.Fatalf("expected an error, got %d records", len(recs))
			}
			if errors.Is(err, eventstore.ErrConcurrency) {
				t.Errorf("expected a refusal before touching the database, got a concurrency error %v", err)
			}
			if ev, msg := streamCounts(t, pool, id); ev != 1 || msg != 1 {
				t.Errorf("expected 1 event and 1 outbox message, got %d and %d", ev, msg)
			}
			if ev, msg := streamCounts(t, pool, other); ev != 0 || msg != 0 {
				t.Errorf("expected nothing stored for the other stream, got %d events and %d messages", ev, msg)
			}
		})
	}
}

func TestHandleRetriesConcurrentCommands(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	id := openTicket(t, s)

	// when: 16 writers comment at once, each on the version it loaded
	const writers = 16
	var wg sync.WaitGroup
	start := make(chan struct{})
	versions := make(chan int, writers)
	for i := range writers {
		decide := addComment(t, fmt.Sprintf("writer-%d", i))
		wg.Go(func() {
			<-start
			res, err := s.Handle(ctx, id, eventstore.Options{}, decide)
			if err != nil {
				t.Errorf("writer %d: expected no error, got %v", i, err)
				return
			}
			if len(res.Records) != 1 {
				t.Errorf("writer %d: expected 1 record, got %d", i, len(res.Records))
				return
			}
			versions <- res.Records[0].Version
		})
	}
	close(start)
	wg.Wait()
	close(versions)

	// then: every comment is stored once, on versions 2..17 without a gap
	got := slices.Sorted(func(yield func(int) bool) {
		for v := range versions {
			if !yield(v) {
				return
			}
		}
	})
	want := make([]int, writers)
	for i := range want {
		want[i] = i + 2
	}
	if !slices.Equal(got, want) {
		t.Errorf("appended versions: expected %v, got %v", want, got)
	}
	tk, err := s.LoadTicket(ctx, id, 0)
	if err != nil {
		t.Fatalf("LoadTicket: %v", err)
	}
	if tk.Version() != writers+1 || tk.CommentCount() != writers {
		t.Errorf("expected version %d with %d comments, got version %d with %d", writers+1, writers, tk.Version(), tk.CommentCount())
	}
	recs, err := s.Load(ctx, id, 1, maxVersion)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	authors := map[string]bool{}
	for _, r := range recs {
		if c, ok := r.Data.(ticket.CommentAdded); ok {
			authors[c.CreatedBy] = true
		}
	}
	if len(authors) != writers {
		t.Errorf("expected comments by %d distinct authors, got %d: %v", writers, len(authors), authors)
	}
	if ev, msg := streamCounts(t, pool, id); ev != writers+1 || msg != writers+1 {
		t.Errorf("expected %d events and as many messages, got %d and %d", writers+1, ev, msg)
	}
}

// clashOnce returns a decide function that, the first time it runs, lets another
// writer append a comment to id (between this command's load and its append), and then
// changes the status to answered. calls counts its runs.
func clashOnce(t *testing.T, s *eventstore.Store, id uuid.UUID, calls *int) func(*ticket.Ticket, time.Time) error {
	t.Helper()
	return clashOn(t, s, id, calls, 1)
}

// clashOn is clashOnce with another instance appending during each of the first n
// decisions.
func clashOn(t *testing.T, s *eventstore.Store, id uuid.UUID, calls *int, n int) func(*ticket.Ticket, time.Time) error {
	t.Helper()
	intruder := addComment(t, "intruder")
	return func(tk *ticket.Ticket, now time.Time) error {
		*calls++
		if *calls <= n {
			// another instance: a store of its own on the same database (one store
			// queues its own commands on a ticket, so it cannot clash with itself)
			if _, err := eventstore.New(s.Pool(), dbtest.Keyring(t, s.Pool())).Handle(testContext(t), id, eventstore.Options{}, intruder); err != nil {
				return fmt.Errorf("intruder: %w", err)
			}
		}
		return tk.ChangeStatus(ticket.ChangeStatus{Status: "answered", UpdatedBy: "carol"}, now)
	}
}

func TestHandleRetriesFromAFreshLoadAfterAClash(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	id := openTicket(t, s)

	var calls int
	res, err := s.Handle(testContext(t), id, eventstore.Options{}, clashOnce(t, s, id, &calls))
	if err != nil {
		t.Fatalf("expected the retry to succeed, got %v", err)
	}
	if calls != 2 {
		t.Errorf("expected decide to run twice (clash, then retry), ran %d times", calls)
	}
	if len(res.Records) != 1 || res.Records[0].Version != 3 || res.Ticket.Version() != 3 || res.Ticket.Status() != ticket.StatusAnswered {
		t.Errorf("expected one record at version 3 and an answered ticket, got %d records, ticket at %d %s",
			len(res.Records), res.Ticket.Version(), res.Ticket.Status())
	}
	if ev, msg := streamCounts(t, pool, id); ev != 3 || msg != 3 {
		t.Errorf("expected 3 events and 3 messages, got %d and %d", ev, msg)
	}
}

func TestHandleGivesUpAfterMaxRetries(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	s.MaxRetries = 0
	id := openTicket(t, s)

	// The first decision is on the cached ticket: its clash is decided again on the
	// store's state, which is not a retry; the clash of that one is.
	var calls int
	_, err := s.Handle(testContext(t), id, eventstore.Options{}, clashOn(t, s, id, &calls, 2))
	var ce *eventstore.ConcurrencyError
	if !errors.As(err, &ce) {
		t.Fatalf("expected a *ConcurrencyError once the retries are spent, got %v", err)
	}
	if calls != 2 {
		t.Errorf("expected decide to run twice (on the cache, then on the store), ran %d times", calls)
	}
	if ev, msg := streamCounts(t, pool, id); ev != 3 || msg != 3 {
		t.Errorf("expected the intruder's events only (3 events, 3 messages), got %d and %d", ev, msg)
	}
}

// A command decided on the cached ticket commits only if the store is where the cache
// says; when another instance moved the ticket on, every outcome is decided again on
// the store's state: the clash, a refusal, a failed precondition, a no-op.
func TestHandleDecidesAgainOnTheStoreWhenTheCacheIsStale(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	other := eventstore.New(s.Pool(), dbtest.Keyring(t, s.Pool()))
	elsewhere := func(id uuid.UUID, decide func(*ticket.Ticket, time.Time) error) {
		t.Helper()
		if _, err := other.Handle(ctx, id, eventstore.Options{}, decide); err != nil {
			t.Fatal(err)
		}
	}

	// Closed elsewhere: a comment is refused (closed is final), not appended.
	closed := openTicket(t, s)
	elsewhere(closed, changeStatus(ticket.StatusClosed, "bob"))
	if _, err := s.Handle(ctx, closed, eventstore.Options{}, addComment(t, "ann")); !errors.Is(err, ticket.ErrConflict) {
		t.Fatalf("comment on a ticket closed by another instance: %v, want a conflict", err)
	}
	if ev, _ := streamCounts(t, pool, closed); ev != 2 {
		t.Fatalf("%d events, want 2 (open, close)", ev)
	}

	// Answered elsewhere: the client's If-Match of the new version holds.
	answered := openTicket(t, s)
	elsewhere(answered, changeStatus(ticket.StatusAnswered, "bob"))
	two := 2
	res, err := s.Handle(ctx, answered, eventstore.Options{IfMatch: &two}, changeStatus(ticket.StatusWaitAnswer, "ann"))
	if err != nil || res.Ticket.Version() != 3 || res.Ticket.Status() != ticket.StatusWaitAnswer {
		t.Fatalf("If-Match of the version another instance wrote: %v, %+v", err, res.Ticket)
	}
	// and the one of the cached version fails
	if _, err := s.Handle(ctx, answered, eventstore.Options{IfMatch: &two}, changeStatus(ticket.StatusAnswered, "ann")); !errors.Is(err, ticket.ErrPrecondition) {
		t.Fatalf("If-Match of a version the ticket left: %v, want a precondition failure", err)
	}

	// Answered elsewhere: answering it is the no-op it is on the store's state (not an
	// append on the cache's), and "open", a no-op on the cache, is refused.
	again := openTicket(t, s)
	elsewhere(again, changeStatus(ticket.StatusAnswered, "bob"))
	res, err = s.Handle(ctx, again, eventstore.Options{}, changeStatus(ticket.StatusAnswered, "ann"))
	if err != nil || len(res.Records) != 0 || res.Ticket.Version() != 2 {
		t.Fatalf("answering a ticket answered by another instance: %v, %d records, v%d; want a no-op at v2", err, len(res.Records), res.Ticket.Version())
	}
	reopened := openTicket(t, s)
	elsewhere(reopened, changeStatus(ticket.StatusAnswered, "bob"))
	var te *ticket.TransitionError
	if _, err := s.Handle(ctx, reopened, eventstore.Options{}, changeStatus(ticket.StatusOpen, "ann")); !errors.As(err, &te) {
		t.Fatalf("\"open\" for a ticket answered by another instance: %v, want a refused transition", err)
	}

	// A comment on a stale cache appends at the store's version.
	commented := openTicket(t, s)
	elsewhere(commented, addComment(t, "bob"))
	res, err = s.Handle(ctx, commented, eventstore.Options{}, addComment(t, "ann"))
	if err != nil || len(res.Records) != 1 || res.Records[0].Version != 3 || res.Ticket.CommentCount() != 2 {
		t.Fatalf("comment after another instance's: %v %+v", err, res.Records)
	}
}

func TestHandleWithIfMatch(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)

	t.Run("stale_version_is_a_precondition_failure", func(t *testing.T) {
		id := openTicket(t, s)
		mustHandle(t, s, id, addComment(t, "bob"))
		stale := 1
		called := false
		_, err := s.Handle(ctx, id, eventstore.Options{IfMatch: &stale}, func(tk *ticket.Ticket, now time.Time) error {
			called = true
			return changeStatus(ticket.StatusAnswered, "carol")(tk, now)
		})
		if !errors.Is(err, ticket.ErrPrecondition) {
			t.Fatalf("expected ErrPrecondition, got %v", err)
		}
		if called {
			t.Errorf("expected the command not to run on a stale version")
		}
		if ev, msg := streamCounts(t, pool, id); ev != 2 || msg != 2 {
			t.Errorf("expected 2 events and 2 messages, got %d and %d", ev, msg)
		}
	})

	t.Run("clash_during_append_is_a_precondition_failure_without_retry", func(t *testing.T) {
		id := openTicket(t, s)
		current := 1
		var calls int
		_, err := s.Handle(ctx, id, eventstore.Options{IfMatch: &current}, clashOnce(t, s, id, &calls))
		if !errors.Is(err, ticket.ErrPrecondition) {
			t.Fatalf("expected ErrPrecondition, got %v", err)
		}
		if calls != 1 {
			t.Errorf("expected no retry (decide ran once), decide ran %d times", calls)
		}
		tk, err := s.LoadTicket(ctx, id, 0)
		if err != nil {
			t.Fatalf("LoadTicket: %v", err)
		}
		if tk.Version() != 2 || tk.Status() != ticket.StatusOpen {
			t.Errorf("expected the intruder's comment only (version 2, open), got version %d %s", tk.Version(), tk.Status())
		}
	})

	t.Run("current_version_succeeds", func(t *testing.T) {
		id := openTicket(t, s)
		current := 1
		res, err := s.Handle(ctx, id, eventstore.Options{IfMatch: &current}, changeStatus(ticket.StatusClosed, "carol"))
		if err != nil || len(res.Records) != 1 || res.Records[0].Version != 2 {
			t.Errorf("expected one record at version 2, got %+v, %v", res.Records, err)
		}
	})
}

func TestHandleNoOpAppendsNothing(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	id := openTicket(t, s)

	res, err := s.Handle(testContext(t), id, eventstore.Options{}, changeStatus(ticket.StatusOpen, "carol"))
	if err != nil {
		t.Fatalf("expected no error, got %v", err)
	}
	if len(res.Records) != 0 {
		t.Errorf("expected no records, got %d", len(res.Records))
	}
	if res.Ticket == nil || res.Ticket.Version() != 1 || res.Ticket.Status() != ticket.StatusOpen {
		t.Errorf("expected the ticket as it stands (version 1, open), got %+v", res.Ticket)
	}
	if ev, msg := streamCounts(t, pool, id); ev != 1 || msg != 1 {
		t.Errorf("expected 1 event and 1 message, got %d and %d", ev, msg)
	}
}

func TestHandlePassesDomainErrorsThrough(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	id := openTicket(t, s)
	mustHandle(t, s, id, changeStatus(ticket.StatusClosed, "carol"))

	_, err := s.Handle(ctx, id, eventstore.Options{}, addComment(t, "bob"))
	var te *ticket.TransitionError
	if !errors.As(err, &te) || !errors.Is(err, ticket.ErrConflict) {
		t.Errorf("comment on a closed ticket: expected a *TransitionError (ErrConflict), got %v", err)
	}
	_, err = s.Handle(ctx, newID(t), eventstore.Options{}, addComment(t, "bob"))
	if !errors.Is(err, ticket.ErrNotFound) {
		t.Errorf("comment on an unknown ticket: expected ErrNotFound, got %v", err)
	}
	if ev, msg := streamCounts(t, pool, id); ev != 2 || msg != 2 {
		t.Errorf("expected 2 events and 2 messages, got %d and %d", ev, msg)
	}
}

func TestUnreachableDatabaseIsUnavailable(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	// Nothing listens on port 1: every connection attempt is refused.
	pool, err := db.Open(ctx, "postgres://postgres@127.0.0.1:1/ticketd?sslmode=disable&connect_timeout=2", db.PoolConfig{MaxConns: 1})
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	s := eventstore.New(pool, nil)
	id := newID(t)

	_, err = s.Load(ctx, id, 0, maxVersion)
	assertUnavailable(t, "Load", err)
	_, err = s.LoadTicket(ctx, id, 0)
	assertUnavailable(t, "LoadTicket", err)
	_, err = s.Append(ctx, 1, []ticket.Event{commentEvent(id, 2)}, eventstore.Metadata{})
	assertUnavailable(t, "Append", err)
	_, err = s.Handle(ctx, id, eventstore.Options{Create: true}, func(tk *ticket.Ticket, now time.Time) error {
		return tk.Open(validOpen(), now)
	})
	assertUnavailable(t, "Handle(create)", err)
	_, err = s.Handle(ctx, id, eventstore.Options{}, addComment(t, "bob"))
	assertUnavailable(t, "Handle", err)
}

func assertUnavailable(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ticket.ErrUnavailable) {
		t.Errorf("%s: expected ErrUnavailable, got %v", what, err)
	}
	if errors.Is(err, ticket.ErrNotFound) || errors.Is(err, eventstore.ErrConcurrency) {
		t.Errorf("%s: an unreachable database must not read as another kind, got %v", what, err)
	}
}

func TestEventsTableIsAppendOnly(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	id := openTicket(t, s)
	mustHandle(t, s, id, addComment(t, "bob"))
	before := storedEvents(t, s, pool)

	for _, tc := range []struct{ name, stmt string }{
		{"update_of_every_row_is_refused", `UPDATE events SET type = 'Rewritten'`},
		{"update_of_one_row_is_refused", `UPDATE events SET data = '{}' WHERE version = 2`},
		{"delete_of_every_row_is_refused", `DELETE FROM events`},
		{"delete_of_one_row_is_refused", `DELETE FROM events WHERE version = 2`},
		{"truncate_is_refused", `TRUNCATE events`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pool.Exec(ctx, tc.stmt)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || !strings.Contains(pe.Message, "append-only") {
				t.Fatalf("%s: expected the append-only trigger to refuse it, got %v", tc.stmt, err)
			}
		})
	}
	after := storedEvents(t, s, pool)
	if len(after) != len(before) {
		t.Fatalf("expected %d events to remain, got %d", len(before), len(after))
	}
	for k, r := range before {
		if !sameRecord(after[k], r) {
			t.Errorf("event %s changed:\nexpected %+v\n     got %+v", k, r, after[k])
		}
	}
}

// Holds answers, per (stream, version) pair and in the pairs' order, whether the store
// has that event: not for a version past the stream's head, nor for an unknown stream.
func TestHoldsSaysWhichVersionsTheStoreHas(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := testContext(t)
	a := openTicket(t, s)
	mustHandle(t, s, a, addComment(t, "ann"))
	b := openTicket(t, s)
	ids := []uuid.UUID{a, a, a, b, b, newID(t)}
	versions := []int{1, 2, 3, 1, 2, 1}
	got, err := s.Holds(ctx, ids, versions)
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, true, false, true, false, false}; !slices.Equal(got, want) {
		t.Fatalf("holds %v, want %v", got, want)
	}
	if _, err := s.Holds(ctx, ids, versions[:2]); !errors.Is(err, ticket.ErrInvalid) {
		t.Fatalf("pairs of unequal lengths: %v, want ticket.ErrInvalid", err)
	}
	if got, err := s.Holds(ctx, nil, nil); err != nil || len(got) != 0 {
		t.Fatalf("no pairs: %v %v", got, err)
	}
}

// LoadStreams reads, through the querier it is given (here a transaction), each
// stream up to its own version, in (stream, version) order, personal fields opened.
func TestLoadStreamsReadsEachStreamUpToItsVersion(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	a := openTicket(t, s)
	mustHandle(t, s, a, addComment(t, "ann"))
	mustHandle(t, s, a, addComment(t, "bob"))
	b := openTicket(t, s)
	mustHandle(t, s, b, addComment(t, "cid"))
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read only
	recs, err := s.LoadStreams(ctx, tx, []uuid.UUID{b, a, newID(t)}, []int{1, 2, 5})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, fmt.Sprintf("%s v%d", r.TicketID, r.Version))
	}
	want := []string{fmt.Sprintf("%s v1", a), fmt.Sprintf("%s v2", a), fmt.Sprintf("%s v1", b)}
	if b.String() < a.String() {
		want = []string{fmt.Sprintf("%s v1", b), fmt.Sprintf("%s v1", a), fmt.Sprintf("%s v2", a)}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("streams read %v, want %v", got, want)
	}
	if o, ok := recs[0].Data.(ticket.Opened); !ok || o.Email != validOpen().Email {
		t.Fatalf("first event's data %+v, want the opened ticket with its email opened", recs[0].Data)
	}
	if _, err := s.LoadStreams(ctx, tx, []uuid.UUID{a}, nil); !errors.Is(err, ticket.ErrInvalid) {
		t.Fatalf("streams and versions of unequal lengths: %v, want ticket.ErrInvalid", err)
	}
}
