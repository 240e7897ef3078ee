package eventstore_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// BenchmarkAppend measures creates (one event each) from 64 goroutines on a pool of
// 32, as ticketd runs them, against the floor of a create: one bare INSERT of an event
// row per transaction, from as many goroutines, on the same pool. Compare ns/op across
// the sub-benchmarks of one run (the machine's noise moves them together):
//
//	scripts/test-env.sh go test -run '^$' -bench Append -benchtime 3s ./eventstore/
func BenchmarkAppend(b *testing.B) {
	pool, err := db.Open(dbtest.Context(b), dbtest.NewDatabase(b), db.PoolConfig{MaxConns: 32})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	ctx := dbtest.Context(b)
	if _, err := pool.Exec(ctx, `CREATE TABLE bare_insert (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS INCLUDING INDEXES)`); err != nil {
		b.Fatal(err)
	}
	opened := openedEvent(uuid.Nil)
	data, _ := json.Marshal(opened.Data)

	b.Run("baseline=bare-insert", func(b *testing.B) {
		b.SetParallelism(32)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, `INSERT INTO bare_insert (stream_id, version, type, data, recorded_at) VALUES ($1, 1, $2, $3, now())`,
						uuid.New(), ticket.TypeOpened, data)
					return err
				})
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	for _, flushes := range []int{1, 2, 4, 8} {
		b.Run(fmt.Sprintf("flushes=%d", flushes), func(b *testing.B) {
			s := eventstore.New(pool, dbtest.Keyring(b, pool))
			s.SetMaxFlushes(flushes)
			before := s.AppendStats()
			b.SetParallelism(32)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.Append(ctx, 0, []ticket.Event{openedEvent(uuid.New())}, eventstore.Metadata{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			after := s.AppendStats()
			b.ReportMetric(float64(after.Commands-before.Commands)/float64(max(after.Transactions-before.Transactions, 1)), "cmds/tx")
		})
	}
}

// BenchmarkAppendPersonal compares creates with personal data sealed (one requester,
// as the bench's create body) and stored in clear, alternating, on one database:
//
//	scripts/test-env.sh go test -run '^$' -bench AppendPersonal -benchtime 3s ./eventstore/
func BenchmarkAppendPersonal(b *testing.B) {
	pool, err := db.Open(dbtest.Context(b), dbtest.NewDatabase(b), db.PoolConfig{MaxConns: 32})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	ctx := dbtest.Context(b)
	ring := dbtest.Keyring(b, pool)
	for round := range 2 {
		for _, sealed := range []bool{false, true} {
			b.Run(fmt.Sprintf("sealed=%v/round=%d", sealed, round), func(b *testing.B) {
				s := eventstore.New(pool, nil)
				if sealed {
					s = eventstore.New(pool, ring)
				}
				b.SetParallelism(32)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := s.Append(ctx, 0, []ticket.Event{openedEvent(uuid.New())}, eventstore.Metadata{}); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
