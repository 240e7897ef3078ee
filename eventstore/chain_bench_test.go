package eventstore_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// BenchmarkVerify measures Verify over every stream of a store of 200,000 events
// (20,000 tickets of 10 events: opened and 9 comments, hashed by the trigger as they
// are copied in), and reports events/s. The issue asks for at least 100,000:
//
//	scripts/test-env.sh go test -run '^$' -bench Verify -benchtime 3x ./eventstore/
func BenchmarkVerify(b *testing.B) {
	const tickets, perTicket = 20_000, 10
	pool, err := db.Open(dbtest.Context(b), dbtest.NewDatabase(b), db.PoolConfig{MaxConns: 4})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	ctx := dbtest.Context(b)
	at := time.Now().UTC().Truncate(time.Microsecond)
	md, _ := eventstore.EncodeJSON(eventstore.Metadata{Actor: "bench", RequestID: "0123456789abcdef0123456789abcdef",
		Principal: &eventstore.Principal{ID: uuid.NewString(), Name: "bench", Role: "agent"}})
	for start := 0; start < tickets; start += 2000 {
		var rows [][]any
		for range 2000 {
			id := uuid.New()
			opened, _ := eventstore.EncodeJSON(ticket.Opened{Title: "Printer on fire", Description: "It is on fire again, third time this week.", Email: "alice@example.com", CreatedBy: "alice"})
			rows = append(rows, []any{id, 1, ticket.TypeOpened, string(opened), string(md), at})
			for v := 2; v <= perTicket; v++ {
				c, _ := eventstore.EncodeJSON(ticket.CommentAdded{CommentID: uuid.New(), Body: fmt.Sprintf("comment %d: have you tried turning it off and on again?", v), CreatedBy: "bob"})
				rows = append(rows, []any{id, v, ticket.TypeCommentAdded, string(c), string(md), at})
			}
		}
		if _, err := pool.CopyFrom(ctx, pgx.Identifier{"events"}, []string{"stream_id", "version", "type", "data", "metadata", "recorded_at"}, pgx.CopyFromRows(rows)); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE events`); err != nil {
		b.Fatal(err)
	}
	s := eventstore.New(pool, dbtest.Keyring(b, pool))
	b.ResetTimer()
	var events int64
	for range b.N {
		v, err := s.Verify(ctx, eventstore.VerifyOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if !v.Intact() || v.Events != tickets*perTicket {
			b.Fatalf("want %d intact events, got %+v", tickets*perTicket, v)
		}
		events += v.Events
	}
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAppendChain measures what the chain trigger costs an append: comments
// appended from 32 goroutines (each on a ticket of its own, so the trigger looks up
// the predecessor's hash every time), with the trigger on and off in alternating
// rounds of one run (compare the medians of the on and off rounds):
//
//	scripts/test-env.sh go test -run '^$' -bench AppendChain -benchtime 3s ./eventstore/
func BenchmarkAppendChain(b *testing.B) {
	pool, err := db.Open(dbtest.Context(b), dbtest.NewDatabase(b), db.PoolConfig{MaxConns: 32})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	ctx := dbtest.Context(b)
	// Without the trigger nothing computes the hash: the column must take NULL then.
	if _, err := pool.Exec(ctx, `ALTER TABLE events ALTER COLUMN hash DROP NOT NULL`); err != nil {
		b.Fatal(err)
	}
	for round := 1; round <= 3; round++ {
		for _, on := range []bool{true, false} {
			toggle := `ALTER TABLE events ENABLE TRIGGER events_chain`
			name := "chain=on"
			if !on {
				toggle, name = `ALTER TABLE events DISABLE TRIGGER events_chain`, "chain=off"
			}
			if _, err := pool.Exec(ctx, toggle); err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("%s/round=%d", name, round), func(b *testing.B) {
				s := eventstore.New(pool, dbtest.Keyring(b, pool))
				var n atomic.Int64
				b.SetParallelism(16) // 32 goroutines on 2 cores
				b.RunParallel(func(pb *testing.PB) {
					id := uuid.New()
					if _, err := s.Append(ctx, 0, []ticket.Event{openedEvent(id)}, eventstore.Metadata{Actor: "bench"}); err != nil {
						b.Error(err)
						return
					}
					for v := 1; pb.Next(); v++ {
						if _, err := s.Append(ctx, v, []ticket.Event{commentEvent(id, v+1)}, eventstore.Metadata{Actor: "bench"}); err != nil {
							b.Error(err)
							return
						}
						n.Add(1)
					}
				})
				b.ReportMetric(float64(n.Load())/b.Elapsed().Seconds(), "appends/s")
			})
		}
	}
}
