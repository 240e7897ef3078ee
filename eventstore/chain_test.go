package eventstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// storedRow is an event as the chain hashes it, read straight from the table.
type storedRow struct {
	stream         uuid.UUID
	version        int
	typ            string
	at             time.Time
	md, data, hash []byte
}

func storedRows(t *testing.T, pool *pgxpool.Pool) []storedRow {
	t.Helper()
	rows, err := pool.Query(testContext(t), `SELECT stream_id, version, type, recorded_at, metadata, data, hash FROM events ORDER BY stream_id, version`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (storedRow, error) {
		var r storedRow
		return r, row.Scan(&r.stream, &r.version, &r.typ, &r.at, &r.md, &r.data, &r.hash)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkChainInGo recomputes every stored hash with eventstore.EventHash, from the
// predecessor's stored hash, and fails on any difference.
func checkChainInGo(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var prev []byte
	rows := storedRows(t, pool)
	for i, r := range rows {
		if i == 0 || rows[i-1].stream != r.stream {
			prev = nil
		}
		want := eventstore.EventHash(r.stream, r.version, r.typ, r.at, r.md, r.data, prev)
		if !bytes.Equal(want[:], r.hash) {
			t.Fatalf("%s/%d: Postgres stored %x, EventHash computes %x", r.stream, r.version, r.hash, want)
		}
		prev = r.hash
	}
	return len(rows)
}

// superuser runs statements as the attacker the chain is for: one who can turn the
// append-only triggers off (the tests' role is a superuser).
func superuser(t *testing.T, pool *pgxpool.Pool, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := pool.Exec(testContext(t), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

func verify(t *testing.T, s *eventstore.Store, stream uuid.UUID) eventstore.Verification {
	t.Helper()
	v, err := s.Verify(testContext(t), eventstore.VerifyOptions{Stream: stream})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return v
}

// wantBreak checks that v names stream at version for the reason.
func wantBreak(t *testing.T, v eventstore.Verification, stream uuid.UUID, version int, reason string) {
	t.Helper()
	if v.Intact() || v.Broken != 1 || len(v.Breaks) != 1 {
		t.Fatalf("want one break (%s at %d: %s), got %d: %v", stream, version, reason, v.Broken, v.Breaks)
	}
	b := v.Breaks[0]
	if b.Stream != stream || b.Version != version || !strings.Contains(b.Reason, reason) {
		t.Fatalf("want %s at version %d (%s), got %v", stream, version, reason, b)
	}
}

// A ticket with n events, each command its own transaction.
func ticketWith(t *testing.T, s *eventstore.Store, n int) uuid.UUID {
	t.Helper()
	id := openTicket(t, s)
	for i := 1; i < n; i++ {
		mustHandle(t, s, id, addComment(t, fmt.Sprintf("user%d", i)))
	}
	return id
}

// Postgres (event_hash, through the trigger) and Go (EventHash) agree on every row,
// including JSON that jsonb normalises (key order, spaces, escapes, non-ASCII text)
// and metadata with a principal; and event_hash called directly agrees too.
func TestEventHashAgreesWithPostgres(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	id := newID(t)
	_, err := s.Handle(testContext(t), id, eventstore.Options{Create: true, Metadata: eventstore.Metadata{
		Actor: "Zoë", RequestID: "r-1", Principal: &eventstore.Principal{ID: "tok", Name: "Ünïcode <&>", Role: "agent"},
	}}, func(tk *ticket.Ticket, now time.Time) error {
		return tk.Open(ticket.OpenTicket{Title: "Ü \"quoted\" \\ <&>", Description: "日本語 😀", Email: "a@example.com", CreatedBy: "z"}, now)
	})
	if err != nil {
		t.Fatal(err)
	}
	mustHandle(t, s, id, addComment(t, "bob"))
	mustHandle(t, s, id, changeStatus(ticket.StatusAnswered, "bob"))
	if n := checkChainInGo(t, pool); n != 3 {
		t.Fatalf("want 3 rows, got %d", n)
	}

	prev := bytes.Repeat([]byte{7}, 32)
	at := time.Date(1999, 12, 31, 23, 59, 59, 123456000, time.UTC) // before Postgres' epoch
	md, data := []byte(`{"b": 1, "a": [1, 2]}`), []byte(`{"x": "é\u00e9"}`)
	var sql []byte
	var mdText, dataText string
	if err := pool.QueryRow(testContext(t), `SELECT event_hash($1, 42, 'Tÿpe', $2, $3::jsonb, $4::jsonb, $5), $3::jsonb::text, $4::jsonb::text`,
		id, at, string(md), string(data), prev).Scan(&sql, &mdText, &dataText); err != nil {
		t.Fatal(err)
	}
	goHash := eventstore.EventHash(id, 42, "Tÿpe", at, []byte(mdText), []byte(dataText), prev)
	if !bytes.Equal(sql, goHash[:]) {
		t.Fatalf("event_hash %x, EventHash %x", sql, goHash)
	}
}

// Several versions of one stream in one INSERT chain in order (the trigger sees the
// statement's earlier rows), beside other streams' events in the same statement.
func TestOneStatementChainsSeveralVersions(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	a, b := newID(t), newID(t)
	var wg sync.WaitGroup
	for _, id := range []uuid.UUID{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			evs := []ticket.Event{{TicketID: id, Version: 1, At: time.Now().UTC(), Data: ticket.Opened{Title: "t", Email: "a@example.com", CreatedBy: "a"}}}
			for v := 2; v <= 5; v++ {
				evs = append(evs, commentEvent(id, v))
			}
			if _, err := s.Append(testContext(t), 0, evs, eventstore.Metadata{Actor: "a"}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := checkChainInGo(t, pool); n != 10 {
		t.Fatalf("want 10 rows, got %d", n)
	}
	if v := verify(t, s, uuid.Nil); !v.Intact() || v.Events != 10 || v.Streams != 2 {
		t.Fatalf("want an intact store of 10 events in 2 streams, got %+v", v)
	}
}

// An append that would leave a gap is not written: the trigger finds no predecessor,
// and the appender gets the clash it is.
func TestAppendPastTheHeadIsAClash(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	id := ticketWith(t, s, 2)
	_, err := s.Append(testContext(t), 5, []ticket.Event{commentEvent(id, 6)}, eventstore.Metadata{})
	if !errors.Is(err, eventstore.ErrConcurrency) {
		t.Fatalf("want a concurrency error, got %v", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM events WHERE stream_id = $1`, id); n != 2 {
		t.Fatalf("want 2 events, got %d", n)
	}
}

// Writers racing on the same streams (two stores: two instances, so the races reach
// the unique key) leave every chain intact and gapless.
func TestConcurrentAppendsChain(t *testing.T) {
	t.Parallel()
	s1, pool := newStore(t)
	s2 := eventstore.New(pool, dbtest.Keyring(t, pool))
	ids := []uuid.UUID{openTicket(t, s1), openTicket(t, s1), openTicket(t, s1)}
	var wg sync.WaitGroup
	for w := range 8 {
		s := s1
		if w%2 == 1 {
			s = s2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				id := ids[(w+i)%len(ids)]
				if _, err := s.Handle(testContext(t), id, eventstore.Options{}, addComment(t, fmt.Sprintf("w%d", w))); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if n := checkChainInGo(t, pool); n != 83 {
		t.Fatalf("want 83 events, got %d", n)
	}
	if v := verify(t, s1, uuid.Nil); !v.Intact() || v.Events != 83 {
		t.Fatalf("want 83 intact events, got %+v", v)
	}
}

// Each way of editing history as a superuser is caught and named by its version.
func TestVerifyCatchesTampering(t *testing.T) {
	t.Parallel()
	offTrigger := `ALTER TABLE events DISABLE TRIGGER events_append_only`

	t.Run("clean_store_verifies", func(t *testing.T) {
		t.Parallel()
		s, _ := newStore(t)
		a, b := ticketWith(t, s, 4), ticketWith(t, s, 1)
		if _, err := eventstore.WriteAnchor(testContext(t), s.Pool()); err != nil {
			t.Fatal(err)
		}
		mustHandle(t, s, a, addComment(t, "after the anchor"))
		v := verify(t, s, uuid.Nil)
		if !v.Intact() || v.Events != 6 || v.Streams != 2 || v.Anchor == nil || v.AnchoredHeads != 2 {
			t.Fatalf("want 6 intact events in 2 streams and 2 anchored heads, got %+v", v)
		}
		if one := verify(t, s, b); !one.Intact() || one.Events != 1 || one.AnchoredHeads != 1 {
			t.Fatalf("want stream b intact alone, got %+v", one)
		}
		if _, err := s.Verify(testContext(t), eventstore.VerifyOptions{Stream: newID(t)}); !errors.Is(err, ticket.ErrNotFound) {
			t.Fatalf("unknown stream: want ErrNotFound, got %v", err)
		}
	})
	t.Run("edited_payload", func(t *testing.T) {
		t.Parallel()
		s, pool := newStore(t)
		id, other := ticketWith(t, s, 4), ticketWith(t, s, 3)
		superuser(t, pool, offTrigger, fmt.Sprintf(`UPDATE events SET data = jsonb_set(data, '{body}', '"edited"') WHERE stream_id = '%s' AND version = 3`, id))
		wantBreak(t, verify(t, s, uuid.Nil), id, 3, "hash mismatch")
		if v := verify(t, s, other); !v.Intact() {
			t.Fatalf("the other stream is intact, got %v", v.Breaks)
		}
	})
	t.Run("edited_metadata", func(t *testing.T) {
		t.Parallel()
		s, pool := newStore(t)
		id := ticketWith(t, s, 4)
		superuser(t, pool, offTrigger, fmt.Sprintf(`UPDATE events SET metadata = metadata || '{"actor": "mallory"}' WHERE stream_id = '%s' AND version = 2`, id))
		wantBreak(t, verify(t, s, id), id, 2, "hash mismatch")
	})
	t.Run("edited_time_with_hash_recomputed", func(t *testing.T) {
		t.Parallel()
		s, pool := newStore(t)
		id := ticketWith(t, s, 4)
		// The attacker recomputes the edited event's own hash, but not its successors'.
		superuser(t, pool, offTrigger, fmt.Sprintf(`UPDATE events e SET recorded_at = e.recorded_at - interval '1 day',
			hash = event_hash(e.stream_id, e.version, e.type, e.recorded_at - interval '1 day', e.metadata, e.data, p.hash)
			FROM events p WHERE p.stream_id = e.stream_id AND p.version = 1 AND e.stream_id = '%s' AND e.version = 2`, id))
		wantBreak(t, verify(t, s, id), id, 3, "hash mismatch")
	})
	t.Run("deleted_middle_event", func(t *testing.T) {
		t.Parallel()
		s, pool := newStore(t)
		id := ticketWith(t, s, 5)
		superuser(t, pool, offTrigger, fmt.Sprintf(`DELETE FROM events WHERE stream_id = '%s' AND version = 3`, id))
		wantBreak(t, verify(t, s, uuid.Nil), id, 3, "missing version")
	})
	t.Run("truncated_tail_caught_by_the_anchor", func(t *testing.T) {
		t.Parallel()
		s, pool := newStore(t)
		id := ticketWith(t, s, 5)
		ticketWith(t, s, 2)
		if _, err := eventstore.WriteAnchor(testContext(t), pool); err != nil {
			t.Fatal(err)
		}
		superuser(t, pool, offTrigger, fmt.Sprintf(`DELETE FROM events WHERE stream_id = '%s' AND version >= 4`, id))
		wantBreak(t, verify(t, s, uuid.Nil), id, 4, "truncated tail: anchor 1")
		wantBreak(t, verify(t, s, id), id, 4, "recorded version 5, the stream now ends at version 3")
	})
	t.Run("truncated_tail_without_an_anchor_goes_unseen", func(t *testing.T) {
		t.Parallel()
		s, pool := newStore(t)
		id := ticketWith(t, s, 5)
		superuser(t, pool, offTrigger, fmt.Sprintf(`DELETE FROM events WHERE stream_id = '%s' AND version >= 4`, id))
		if v := verify(t, s, uuid.Nil); !v.Intact() {
			t.Fatalf("a chain cut at its end is still a chain; only an anchor tells: got %v", v.Breaks)
		}
	})
	t.Run("rewritten_tail_caught_by_the_anchor", func(t *testing.T) {
		t.Parallel()
		s, pool := newStore(t)
		id := ticketWith(t, s, 4)
		if _, err := eventstore.WriteAnchor(testContext(t), pool); err != nil {
			t.Fatal(err)
		}
		// Edit version 4 and recompute its hash: the chain holds, the anchor does not.
		superuser(t, pool, offTrigger, fmt.Sprintf(`UPDATE events e SET data = jsonb_set(e.data, '{body}', '"rewritten"'),
			hash = event_hash(e.stream_id, e.version, e.type, e.recorded_at, e.metadata, jsonb_set(e.data, '{body}', '"rewritten"'), p.hash)
			FROM events p WHERE p.stream_id = e.stream_id AND p.version = 3 AND e.stream_id = '%s' AND e.version = 4`, id))
		wantBreak(t, verify(t, s, uuid.Nil), id, 4, "rewritten: anchor 1")
	})
	t.Run("edited_anchor_heads", func(t *testing.T) {
		t.Parallel()
		s, pool := newStore(t)
		id := ticketWith(t, s, 4)
		if _, err := eventstore.WriteAnchor(testContext(t), pool); err != nil {
			t.Fatal(err)
		}
		// Cut the tail and the anchored head that would tell: the root no longer matches.
		superuser(t, pool, offTrigger, `ALTER TABLE audit_anchor_heads DISABLE TRIGGER audit_anchor_heads_append_only`,
			fmt.Sprintf(`DELETE FROM events WHERE stream_id = '%s' AND version = 4`, id), `DELETE FROM audit_anchor_heads`)
		v := verify(t, s, uuid.Nil)
		if v.Broken != 1 || v.Breaks[0].Stream != uuid.Nil || !strings.Contains(v.Breaks[0].Reason, "the anchor tables were edited") {
			t.Fatalf("want the anchor's root mismatch, got %v", v.Breaks)
		}
	})
}

// An anchor records only the heads that moved since the previous one, and its root
// covers them all.
func TestAnchorsRecordMovedHeads(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	a, _ := ticketWith(t, s, 3), ticketWith(t, s, 2)
	first, err := eventstore.WriteAnchor(testContext(t), pool)
	if err != nil {
		t.Fatal(err)
	}
	if first.Streams != 2 || first.Events != 5 || len(first.Root) != 32 {
		t.Fatalf("first anchor: want 2 streams, 5 events, got %+v", first)
	}
	mustHandle(t, s, a, addComment(t, "later"))
	second, err := eventstore.WriteAnchor(testContext(t), pool)
	if err != nil {
		t.Fatal(err)
	}
	if second.Streams != 2 || second.Events != 6 || bytes.Equal(first.Root, second.Root) {
		t.Fatalf("second anchor: want 2 streams, 6 events and a new root, got %+v", second)
	}
	if n := count(t, pool, `SELECT count(*) FROM audit_anchor_heads WHERE anchor_id = $1`, second.ID); n != 1 {
		t.Fatalf("second anchor: want only the moved head recorded, got %d", n)
	}
	latest, err := eventstore.LatestAnchor(testContext(t), pool)
	if err != nil || latest.ID != second.ID || !bytes.Equal(latest.Root, second.Root) {
		t.Fatalf("latest anchor: want %+v, got %+v (%v)", second, latest, err)
	}
	if v := verify(t, s, uuid.Nil); !v.Intact() || v.AnchoredHeads != 3 {
		t.Fatalf("want intact with 3 anchored heads, got %+v", v)
	}
}

// The Anchorer writes anchors at its interval, one per interval with two of them
// running, and logs each root.
func TestAnchorerWritesAndLogs(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ticketWith(t, s, 2)
	var mu sync.Mutex
	var logs strings.Builder
	log := slog.New(slog.NewJSONHandler(lockedWriter{&mu, &logs}, nil))
	ctx, cancel := context.WithCancel(testContext(t))
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			(&eventstore.Anchorer{Pool: pool, Interval: 400 * time.Millisecond, Log: log}).Run(ctx)
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	cancel()
	wg.Wait()
	n := count(t, pool, `SELECT count(*) FROM audit_anchors`)
	if n < 1 || n > 4 {
		t.Fatalf("want 1 to 4 anchors in 1.5 s at 400 ms, got %d", n)
	}
	latest, err := eventstore.LatestAnchor(testContext(t), pool)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), fmt.Sprintf(`"msg":"audit anchor","anchor_id":%d,"root":"%x"`, latest.ID, latest.Root)) {
		t.Fatalf("want the latest anchor's root logged, got %s", logs.String())
	}
	if c := strings.Count(logs.String(), `"msg":"audit anchor"`); c != n {
		t.Fatalf("want one line per anchor (%d), got %d", n, c)
	}
}

// A database of the schema before the chain, with events, gets every hash from the
// migration, in order, and verifies; appends after it chain on.
func TestMigrationHashesExistingEvents(t *testing.T) {
	t.Parallel()
	dsn := dbtest.NewDatabaseAt(t, "20261210000001")
	pool, err := db.Open(testContext(t), dsn, db.PoolConfig{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	old := eventstore.New(pool, nil) // a ticketd of that schema: no keyring yet
	a, b := ticketWith(t, old, 5), ticketWith(t, old, 3)
	if err := db.Migrate(testContext(t), dsn, io.Discard); err != nil {
		t.Fatal(err)
	}
	pool.Reset() // connections cached the old table's row type
	s := eventstore.New(pool, dbtest.Keyring(t, pool))
	if n := checkChainInGo(t, pool); n != 8 {
		t.Fatalf("want 8 hashed events, got %d", n)
	}
	mustHandle(t, s, a, addComment(t, "after the migration"))
	mustHandle(t, s, b, addComment(t, "after the migration"))
	if v := verify(t, s, uuid.Nil); !v.Intact() || v.Events != 10 {
		t.Fatalf("want 10 intact events, got %+v", v)
	}
	// The append-only protection is back.
	if _, err := pool.Exec(testContext(t), `UPDATE events SET type = type`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Fatalf("want the update refused, got %v", err)
	}
}
