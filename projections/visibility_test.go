package projections_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/projectionstest"
)

// recorder is a handler's apply that remembers the tickets it saw.
type recorder struct {
	mu   sync.Mutex
	seen map[uuid.UUID]bool
}

func (r *recorder) apply(_ context.Context, _ pgx.Tx, recs []eventstore.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[uuid.UUID]bool{}
	}
	for _, rec := range recs {
		r.seen[rec.TicketID] = true
	}
	return nil
}

func (r *recorder) has(id uuid.UUID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[id]
}

// waitSeen reports whether r saw id within d.
func (r *recorder) waitSeen(id uuid.UUID, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !r.has(id) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// openWriter begins a transaction on pool and gives it a transaction id, as a
// transaction that has written something has: the consumers cannot see past it while
// it may still write outbox rows. It returns the transaction and its id.
func openWriter(t *testing.T, pool *pgxpool.Pool) (pgx.Tx, string) {
	t.Helper()
	tx, err := pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	var xid string
	if err := tx.QueryRow(context.Background(), `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	return tx, xid
}

// TestWriterInAnotherDatabaseDoesNotHoldBackTheConsumers: a transaction with an id,
// open in another database of the same server, holds back pg_snapshot_xmin (the bound
// the consumers used before), but it cannot write into this database's outbox, so the
// consumers see and apply new events while it stays open.
//
// Not parallel: it holds the server-wide xmin back while it runs, which other tests of
// this package (the rebuild's, which bound by it) would wait for.
func TestWriterInAnotherDatabaseDoesNotHoldBackTheConsumers(t *testing.T) {
	pool, store := projectionstest.NewStore(t)
	other, _ := projectionstest.NewStore(t)
	var rec recorder
	projectionstest.RunRouter(t, pool, projections.Config{}, projections.Handler{Group: "foreign", Apply: rec.apply})
	before, _ := projectionstest.Open(t, store, "before")
	if !rec.waitSeen(before, 10*time.Second) {
		t.Fatal("the event written before the foreign transaction was not applied")
	}

	tx, xid := openWriter(t, other)
	id, _ := projectionstest.Open(t, store, "during")
	// The server-wide bound stands at or below the foreign transaction now.
	var held bool
	if err := pool.QueryRow(context.Background(), `SELECT pg_snapshot_xmin(pg_current_snapshot()) <= $1::xid8`, xid).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if !held {
		t.Fatalf("pg_snapshot_xmin is past the open transaction %s: the test shows nothing", xid)
	}
	if !rec.waitSeen(id, 5*time.Second) {
		t.Fatal("an event was not applied while a transaction of another database stayed open")
	}
	if err := tx.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestWriterInThisDatabaseHoldsBackTheConsumers: an open transaction of this database
// that has an id may still write outbox rows below the ids of later transactions, so
// the consumers take nothing after it until it ends, even events committed meanwhile.
func TestWriterInThisDatabaseHoldsBackTheConsumers(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	var rec recorder
	projectionstest.RunRouter(t, pool, projections.Config{}, projections.Handler{Group: "local", Apply: rec.apply})
	before, _ := projectionstest.Open(t, store, "before")
	if !rec.waitSeen(before, 10*time.Second) {
		t.Fatal("the event written before the open transaction was not applied")
	}

	tx, _ := openWriter(t, pool)
	id, _ := projectionstest.Open(t, store, "during")
	if rec.waitSeen(id, 500*time.Millisecond) {
		t.Fatal("an event committed after an open transaction of this database was applied before it ended")
	}
	if err := tx.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !rec.waitSeen(id, 10*time.Second) {
		t.Fatal("the event was not applied once the open transaction ended")
	}
}
