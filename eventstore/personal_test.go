package eventstore_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// plaintextIn returns the tables that hold any of needles in clear: the events (data
// and metadata), the outbox, and the subject tables.
func plaintextIn(t *testing.T, pool *pgxpool.Pool, needles ...string) []string {
	t.Helper()
	var found []string
	for _, q := range []string{
		`SELECT data::text || metadata::text FROM events`,
		`SELECT payload::text FROM watermill_ticket_events`,
		`SELECT encode(subject, 'escape') FROM subject_streams`,
	} {
		rows, err := pool.Query(testContext(t), q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			for _, n := range needles {
				if holds(s, n) {
					found = append(found, fmt.Sprintf("%q in %s", n, q))
				}
			}
		}
		rows.Close()
	}
	return found
}

// holds reports whether stored text s holds value in clear, ignoring case. A value of
// base64url characters only (a short name such as "Ann") is looked for as a whole JSON
// string: as a bare substring it turns up by chance in the sealed values' base64 (the
// case-insensitive "ann" about once in every 30,000 positions), which made this check
// fail now and then on a correct store. Anything else (an email: '@' and '.' are not
// base64url) is looked for as a substring.
func holds(s, value string) bool {
	s, value = strings.ToLower(s), strings.ToLower(value)
	base64url := strings.Trim(value, "abcdefghijklmnopqrstuvwxyz0123456789-_") == ""
	if base64url {
		return strings.Contains(s, `"`+value+`"`)
	}
	return strings.Contains(s, value)
}

func openAs(t *testing.T, s *eventstore.Store, email, name string) uuid.UUID {
	t.Helper()
	id := newID(t)
	_, err := s.Handle(testContext(t), id, eventstore.Options{Create: true, Metadata: eventstore.Metadata{
		Principal: &eventstore.Principal{ID: "tok-" + uuid.NewString(), Name: name + " (requester)", Role: "requester"}}},
		func(tk *ticket.Ticket, now time.Time) error {
			return tk.Open(ticket.OpenTicket{Title: "printer", Description: "on fire", Email: email, CreatedBy: name}, now)
		})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func comment(email, name string) func(*ticket.Ticket, time.Time) error {
	return func(tk *ticket.Ticket, now time.Time) error {
		return tk.AddComment(ticket.AddComment{ID: uuid.New(), Body: "a body", Email: email, CreatedBy: name}, now)
	}
}

// TestPersonalDataIsStoredSealedAndReadsBack: nothing personal is stored in clear
// (events, metadata, outbox), every reader gets it back, and a sealed value moved to
// another event does not open.
func TestPersonalDataIsStoredSealedAndReadsBack(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	id := openAs(t, s, "Ann.Person@example.com", "Ann Person")
	mustHandle(t, s, id, comment("", "Agent Smith"))
	mustHandle(t, s, id, comment("bob.other@example.com", "Bob Other"))
	mustHandle(t, s, id, changeStatus(ticket.StatusAnswered, "Agent Smith"))
	if found := plaintextIn(t, pool, "ann.person@example.com", "Ann Person", "Agent Smith", "bob.other", "Bob Other"); len(found) > 0 {
		t.Fatalf("plaintext stored: %v", found)
	}
	recs, _, err := s.History(ctx, id, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if d := recs[0].Data.(ticket.Opened); d.Email != "Ann.Person@example.com" || d.CreatedBy != "Ann Person" || recs[0].Actor != "Ann Person" ||
		recs[0].Metadata.Principal.Name != "Ann Person (requester)" {
		t.Fatalf("opened reads back as %+v / %+v", d, recs[0].Metadata)
	}
	if d := recs[2].Data.(ticket.CommentAdded); d.Email != "bob.other@example.com" || d.CreatedBy != "Bob Other" {
		t.Fatalf("comment reads back as %+v", d)
	}
	if d := recs[3].Data.(ticket.StatusChanged); d.UpdatedBy != "Agent Smith" {
		t.Fatalf("status change reads back as %+v", d)
	}
	// every event verifies: the chain is over the sealed form
	if v, err := s.Verify(ctx, eventstore.VerifyOptions{Stream: id}); err != nil || !v.Intact() {
		t.Fatalf("verify: %+v, %v", v, err)
	}
	// a sealed value copied into another event's field does not open there
	if _, err := pool.Exec(ctx, `ALTER TABLE events DISABLE TRIGGER USER`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE events SET data = jsonb_set(data, '{created_by}', (SELECT data->'created_by' FROM events WHERE stream_id = $1 AND version = 2))
		WHERE stream_id = $1 AND version = 4`, id); err == nil {
		// version 4 is a status change: its field is updated_by; move the value there
		_, err = pool.Exec(ctx, `UPDATE events SET data = jsonb_set(data, '{updated_by}', data->'created_by') - 'created_by' WHERE stream_id = $1 AND version = 4`, id)
		if err != nil {
			t.Fatal(err)
		}
	}
	recs, err = eventstore.New(pool, s.Keyring()).Load(ctx, id, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if d := recs[3].Data.(ticket.StatusChanged); d.UpdatedBy != ticket.Erased {
		t.Fatalf("a value moved from another event opens: %+v", d)
	}
}

// TestEraseSubject: after erasure, the subject's fields read "[erased]" in the history
// and every load, the other subject's stay readable, the chain still verifies, erasing
// again is harmless and appends nothing, an unknown subject is ErrUnknownSubject, and
// data written afterwards is under a new key and readable.
func TestEraseSubject(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	a := openAs(t, s, "ann@example.com", "Ann")
	mustHandle(t, s, a, comment("", "Ann"))
	mustHandle(t, s, a, comment("bob@example.com", "Bob"))
	b := openAs(t, s, "bob@example.com", "Bob")
	mustHandle(t, s, b, comment("ann@example.com", "Ann"))
	mustHandle(t, s, b, func(tk *ticket.Ticket, now time.Time) error {
		return tk.Delete(ticket.DeleteTicket{DeletedBy: "Admin"}, now)
	})

	er, err := s.EraseSubject(ctx, "ANN@example.com", "admin", "GDPR request 42", eventstore.Metadata{Actor: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	if len(er.Tickets) != 2 || len(er.Appended) != 2 || er.AlreadyErased {
		t.Fatalf("erasure %+v", er)
	}
	ra, _, err := s.History(ctx, a, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if d := ra[0].Data.(ticket.Opened); d.Email != ticket.Erased || d.CreatedBy != ticket.Erased || ra[0].Actor != ticket.Erased || d.Title != "printer" {
		t.Fatalf("opened after erasure: %+v actor %q", d, ra[0].Actor)
	}
	if d := ra[2].Data.(ticket.CommentAdded); d.Email != "bob@example.com" || d.CreatedBy != "Bob" {
		t.Fatalf("bob's comment after ann's erasure: %+v", d)
	}
	last := ra[len(ra)-1]
	d, ok := last.Data.(ticket.SubjectErased)
	if !ok || !d.Requester || len(d.Comments) != 1 || d.ErasedBy != "admin" || d.Reason != "GDPR request 42" || d.Subject != er.Subject.String() {
		t.Fatalf("erasure event %+v", last)
	}
	rb, _, err := s.History(ctx, b, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if d := rb[1].Data.(ticket.CommentAdded); d.Email != ticket.Erased || d.CreatedBy != ticket.Erased {
		t.Fatalf("ann's comment on bob's ticket: %+v", d)
	}
	if d := rb[0].Data.(ticket.Opened); d.Email != "bob@example.com" {
		t.Fatalf("bob's ticket: %+v", d)
	}
	if d, ok := rb[len(rb)-1].Data.(ticket.SubjectErased); !ok || d.Requester || len(d.Comments) != 1 {
		t.Fatalf("the erasure on a deleted ticket: %+v", rb[len(rb)-1])
	}
	if v, err := s.Verify(ctx, eventstore.VerifyOptions{}); err != nil || !v.Intact() {
		t.Fatalf("verify after erasure: %+v, %v", v, err)
	}
	// a fresh store (another instance, no cache) reads the same
	other := eventstore.New(pool, s.Keyring())
	if recs, err := other.Load(ctx, a, 0, 1); err != nil || recs[0].Data.(ticket.Opened).Email != ticket.Erased {
		t.Fatalf("another instance reads %+v, %v", recs, err)
	}
	again, err := s.EraseSubject(ctx, "ann@example.com", "admin", "again", eventstore.Metadata{})
	if err != nil || !again.AlreadyErased || len(again.Appended) != 0 {
		t.Fatalf("erasing twice: %+v, %v", again, err)
	}
	if _, err := s.EraseSubject(ctx, "nobody@example.com", "admin", "", eventstore.Metadata{}); !errors.Is(err, eventstore.ErrUnknownSubject) || !errors.Is(err, ticket.ErrNotFound) {
		t.Fatalf("unknown subject: %v", err)
	}
	// ann comes back: a new key, readable; the old data stays erased
	c := openAs(t, s, "ann@example.com", "Ann Again")
	for _, st := range []*eventstore.Store{s, other, eventstore.New(pool, s.Keyring())} {
		recs, err := st.Load(ctx, c, 0, 1)
		if err != nil || recs[0].Data.(ticket.Opened).Email != "ann@example.com" {
			t.Fatalf("data after erasure: %+v, %v", recs, err)
		}
		if recs, err := st.Load(ctx, a, 0, 1); err != nil || recs[0].Data.(ticket.Opened).Email != ticket.Erased {
			t.Fatalf("old data after a new key: %+v, %v", recs, err)
		}
	}
	if found := plaintextIn(t, pool, "ann@example.com", "Ann"); len(found) > 0 {
		t.Fatalf("plaintext stored: %v", found)
	}
}

// TestErasureDuringConcurrentWrites: writers keep commenting (as the subject) on the
// subject's tickets while the subject is erased; every acknowledged write is stored,
// nothing in clear, and afterwards nothing sealed before the erasure opens.
func TestErasureDuringConcurrentWrites(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := testContext(t)
	ids := []uuid.UUID{openAs(t, s, "cat@example.com", "Cat"), openAs(t, s, "cat@example.com", "Cat"), openAs(t, s, "dan@example.com", "Dan")}
	var acked sync.Map // comment id -> ticket
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				id := ids[(w+i)%len(ids)]
				cid := uuid.New()
				_, err := s.Handle(ctx, id, eventstore.Options{}, func(tk *ticket.Ticket, now time.Time) error {
					return tk.AddComment(ticket.AddComment{ID: cid, Body: "b", Email: "cat@example.com", CreatedBy: "Cat"}, now)
				})
				if err != nil {
					t.Errorf("comment: %v", err)
					return
				}
				acked.Store(cid, id)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	er, err := s.EraseSubject(ctx, "cat@example.com", "admin", "", eventstore.Metadata{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	// every acknowledged comment is stored
	stored := map[uuid.UUID]eventstore.Record{}
	erasedAt := map[uuid.UUID]int{}
	for _, id := range ids {
		recs, err := s.Load(ctx, id, 0, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if d, ok := r.Data.(ticket.CommentAdded); ok {
				stored[d.CommentID] = r
			}
			if d, ok := r.Data.(ticket.SubjectErased); ok && d.Subject == er.Subject.String() && erasedAt[id] == 0 {
				erasedAt[id] = r.Version
			}
		}
	}
	n := 0
	acked.Range(func(k, v any) bool {
		n++
		r, ok := stored[k.(uuid.UUID)]
		if !ok {
			t.Errorf("acknowledged comment %s on %s is not stored", k, v)
			return true
		}
		// before the erasure event: erased; after it: under the new key, readable
		d := r.Data.(ticket.CommentAdded)
		if at := erasedAt[r.TicketID]; r.Version < at && d.Email != ticket.Erased {
			t.Errorf("comment v%d of %s before the erasure (v%d) opens: %+v", r.Version, r.TicketID, at, d)
		}
		return true
	})
	if n == 0 || len(erasedAt) != 3 {
		t.Fatalf("%d comments acknowledged, erasure events on %d tickets", n, len(erasedAt))
	}
	if found := plaintextIn(t, pool, "cat@example.com"); len(found) > 0 {
		t.Fatalf("plaintext stored: %v", found[:min(3, len(found))])
	}
	if v, err := s.Verify(ctx, eventstore.VerifyOptions{}); err != nil || !v.Intact() {
		t.Fatalf("verify: %+v, %v", v, err)
	}
}

// TestScrubJSON: a JSON string equal to a value (an email without case) becomes
// "[erased]", also inside a JSON document embedded as a string (and a key equal to one,
// which is rare in answers); a value inside a longer text is left alone.
func TestScrubJSON(t *testing.T) {
	t.Parallel()
	doc := `{"status":201,"body":{"email":"Ann@Example.com","created_by":"Ann","title":"Ann's printer"},"raw":"{\"created_by\":\"Ann\"}","Ann":1}`
	got := string(eventstore.ScrubJSON([]byte(doc), []string{"ann@example.com", "Ann"}))
	want := `{"status":201,"body":{"email":"[erased]","created_by":"[erased]","title":"Ann's printer"},"raw":"{\"created_by\":\"[erased]\"}","[erased]":1}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
