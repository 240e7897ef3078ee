package eventstore_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// maxVersion loads a stream to its end.
const maxVersion = int(^uint32(0) >> 1)

// testContext is bounded so a hung database fails the test instead of the run.
func testContext(t *testing.T) context.Context { return dbtest.Context(t) }

// newStore returns a store on a fresh migrated database of its own, with a small pool:
// many parallel tests share one Postgres.
func newStore(t *testing.T) (*eventstore.Store, *pgxpool.Pool) {
	t.Helper()
	pool := dbtest.NewPool(t)
	return eventstore.New(pool, dbtest.Keyring(t, pool)), pool
}

func newID(t *testing.T) uuid.UUID {
	t.Helper()
	id, err := uuid.NewV7()
	if err != nil {
		t.Fatalf("new id: %v", err)
	}
	return id
}

func validOpen() ticket.OpenTicket {
	return ticket.OpenTicket{Title: "Printer on fire", Description: "Again.", Email: "alice@example.com", CreatedBy: "alice"}
}

// openTicket creates a ticket through Handle and returns its id.
func openTicket(t *testing.T, s *eventstore.Store) uuid.UUID {
	t.Helper()
	id := newID(t)
	_, err := s.Handle(testContext(t), id, eventstore.Options{Create: true}, func(tk *ticket.Ticket, now time.Time) error {
		return tk.Open(validOpen(), now)
	})
	if err != nil {
		t.Fatalf("open ticket: expected no error, got %v", err)
	}
	return id
}

// addComment is the decide function of a comment by who.
func addComment(t *testing.T, who string) func(*ticket.Ticket, time.Time) error {
	t.Helper()
	id := newID(t)
	return func(tk *ticket.Ticket, now time.Time) error {
		return tk.AddComment(ticket.AddComment{ID: id, Body: "comment by " + who, CreatedBy: who}, now)
	}
}

func changeStatus(to ticket.Status, who string) func(*ticket.Ticket, time.Time) error {
	return func(tk *ticket.Ticket, now time.Time) error {
		return tk.ChangeStatus(ticket.ChangeStatus{Status: string(to), UpdatedBy: who}, now)
	}
}

// mustHandle runs a command that must succeed and returns what it appended.
func mustHandle(t *testing.T, s *eventstore.Store, id uuid.UUID, decide func(*ticket.Ticket, time.Time) error) []eventstore.Record {
	t.Helper()
	res, err := s.Handle(testContext(t), id, eventstore.Options{}, decide)
	if err != nil {
		t.Fatalf("command on %s: expected no error, got %v", id, err)
	}
	return res.Records
}

// commentEvent is a CommentAdded event at version v of stream id, at a time Postgres
// keeps exactly (microseconds).
func commentEvent(id uuid.UUID, v int) ticket.Event {
	return ticket.Event{
		TicketID: id, Version: v, Actor: "bob",
		At:   time.Now().UTC().Truncate(time.Microsecond),
		Data: ticket.CommentAdded{CommentID: uuid.New(), Body: fmt.Sprintf("comment %d", v), CreatedBy: "bob"},
	}
}

// normalized returns r with its times in UTC, so records read back from Postgres (local
// time) and from JSON compare equal to those the store returned.
func normalized(r eventstore.Record) eventstore.Record {
	r.At = r.At.UTC()
	r.RecordedAt = r.RecordedAt.UTC()
	return r
}

func sameRecord(a, b eventstore.Record) bool {
	return reflect.DeepEqual(normalized(a), normalized(b))
}

// count returns the result of a count(*) query.
func count(t *testing.T, pool *pgxpool.Pool, query string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(testContext(t), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// streamCounts returns how many events and how many outbox messages stream id has.
func streamCounts(t *testing.T, pool *pgxpool.Pool, id uuid.UUID) (events, messages int) {
	t.Helper()
	events = count(t, pool, `SELECT count(*) FROM events WHERE stream_id = $1`, id)
	messages = count(t, pool, `SELECT count(*) FROM watermill_ticket_events WHERE payload->>'stream_id' = $1`, id.String())
	return events, messages
}

// outboxRecord is one outbox message with its decoded record.
type outboxRecord struct {
	UUID          string
	TransactionID string
	Record        eventstore.Record
}

// outbox decodes every message in the outbox, in offset order.
func outbox(t *testing.T, pool *pgxpool.Pool) []outboxRecord {
	t.Helper()
	rows, err := pool.Query(testContext(t),
		`SELECT uuid, transaction_id::text, payload::text FROM watermill_ticket_events ORDER BY "offset"`)
	if err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (outboxRecord, error) {
		var o outboxRecord
		var payload string
		if err := row.Scan(&o.UUID, &o.TransactionID, &payload); err != nil {
			return o, err
		}
		r, err := eventstore.DecodeMessage([]byte(payload))
		if err != nil {
			return o, fmt.Errorf("message %s: %w", o.UUID, err)
		}
		o.Record = r
		return o, nil
	})
	if err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	// the outbox holds personal fields sealed, as the events table does: opened as a
	// projector opens them
	recs := make([]eventstore.Record, len(out))
	for i := range out {
		recs[i] = out[i].Record
	}
	if err := eventstore.New(pool, dbtest.Keyring(t, pool)).Reveal(testContext(t), recs); err != nil {
		t.Fatalf("reveal outbox: %v", err)
	}
	for i := range out {
		out[i].Record = recs[i]
	}
	return out
}

// storedEvents loads every stream in the store, keyed by stream and version.
func storedEvents(t *testing.T, s *eventstore.Store, pool *pgxpool.Pool) map[string]eventstore.Record {
	t.Helper()
	rows, err := pool.Query(testContext(t), `SELECT DISTINCT stream_id FROM events`)
	if err != nil {
		t.Fatalf("list streams: %v", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatalf("list streams: %v", err)
	}
	all := map[string]eventstore.Record{}
	for _, id := range ids {
		recs, err := s.Load(testContext(t), id, 0, maxVersion)
		if err != nil {
			t.Fatalf("load %s: %v", id, err)
		}
		for _, r := range recs {
			all[key(r)] = r
		}
	}
	return all
}

func key(r eventstore.Record) string { return fmt.Sprintf("%s/%d", r.TicketID, r.Version) }
