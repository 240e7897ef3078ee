package projectionstest

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// NewStore returns a pool on a fresh migrated database of t's own (dropped when t ends)
// and an event store on it. The pool holds up to 8 connections: enough for a rebuild
// (its lock, the scan and a load per target) beside a running router; connections are
// opened only as they are needed.
func NewStore(t testing.TB) (*pgxpool.Pool, *eventstore.Store) {
	t.Helper()
	pool, err := db.Open(dbtest.Context(t), dbtest.NewDatabase(t), db.PoolConfig{MaxConns: 8})
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool, eventstore.New(pool, dbtest.Keyring(t, pool))
}

// Decide is a command's decision on one ticket, as eventstore.Store.Handle runs it.
type Decide = func(*ticket.Ticket, time.Time) error

// Open opens a new ticket as who (a name: it also makes the ticket's address) and
// returns its id and the records appended. It fails t on an error.
func Open(t testing.TB, store *eventstore.Store, who string) (uuid.UUID, []eventstore.Record) {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	res, err := store.Handle(dbtest.Context(t), id, eventstore.Options{Create: true}, func(tk *ticket.Ticket, now time.Time) error {
		return tk.Open(ticket.OpenTicket{Title: "Ticket of " + who, Description: "printer", Email: who + "@example.com", CreatedBy: who}, now)
	})
	if err != nil {
		t.Fatalf("open ticket: %v", err)
	}
	return id, res.Records
}

// Do runs decide on ticket id and returns the records it appended. It fails t on an
// error.
func Do(t testing.TB, store *eventstore.Store, id uuid.UUID, decide Decide) []eventstore.Record {
	t.Helper()
	res, err := store.Handle(dbtest.Context(t), id, eventstore.Options{}, decide)
	if err != nil {
		t.Fatalf("command on %s: %v", id, err)
	}
	return res.Records
}

// Comment is the command that adds comment number n (body "comment n") by an agent.
// Even-numbered comments carry an address and odd ones none, so both shapes of a
// comment occur.
func Comment(n int) Decide {
	id := uuid.Must(uuid.NewV7())
	email := ""
	if n%2 == 0 {
		email = "c@example.com"
	}
	return func(tk *ticket.Ticket, now time.Time) error {
		return tk.AddComment(ticket.AddComment{ID: id, Body: fmt.Sprintf("comment %d", n), Email: email, CreatedBy: "agent"}, now)
	}
}

// Move is the command that moves a ticket to status to, as who.
func Move(to ticket.Status, who string) Decide {
	return func(tk *ticket.Ticket, now time.Time) error {
		return tk.ChangeStatus(ticket.ChangeStatus{Status: string(to), UpdatedBy: who}, now)
	}
}

// Delete is the command that deletes a ticket, as an admin.
func Delete(tk *ticket.Ticket, now time.Time) error {
	return tk.Delete(ticket.DeleteTicket{DeletedBy: "admin"}, now)
}

// Shuffled returns a copy of recs in a random order, seeded so that a failure repeats.
func Shuffled(recs []eventstore.Record, seed uint64) []eventstore.Record {
	out := slices.Clone(recs)
	r := rand.New(rand.NewPCG(seed, seed))
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}
