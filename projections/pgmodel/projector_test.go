package pgmodel_test

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/projections/projectionstest"
	"github.com/ticketd/ticketd/ticket"
)

// pgLife opens a ticket and takes it through comments and every status up to closed,
// returning the records in order.
func pgLife(t *testing.T, s *eventstore.Store) (uuid.UUID, []eventstore.Record) {
	t.Helper()
	id, recs := projectionstest.Open(t, s, "alice")
	for _, step := range []projectionstest.Decide{
		projectionstest.Comment(1), projectionstest.Comment(2),
		projectionstest.Move(ticket.StatusAnswered, "carol"), projectionstest.Comment(3),
		projectionstest.Move(ticket.StatusWaitAnswer, "carol"), projectionstest.Comment(4),
		projectionstest.Move(ticket.StatusAnswered, "dave"), projectionstest.Move(ticket.StatusClosed, "carol"),
	} {
		recs = append(recs, projectionstest.Do(t, s, id, step)...)
	}
	return id, recs
}

// pgApply applies records through the projector in one transaction, in the given order.
func pgApply(t *testing.T, pool *pgxpool.Pool, recs ...eventstore.Record) {
	t.Helper()
	ctx := dbtest.Context(t)
	// the store gives the email_hash column its keyed hash, as in ticketd
	p := pgmodel.Projector{Events: eventstore.New(pool, dbtest.Keyring(t, pool))}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, r := range recs {
			if err := p.Apply(ctx, tx, []eventstore.Record{r}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("apply %d records: %v", len(recs), err)
	}
}

// pgSnapshot returns every row of the read model, tickets and comments, as JSON: the
// full rows, so any column a redelivery moves shows.
func pgSnapshot(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var snap string
	err := pool.QueryRow(dbtest.Context(t), `SELECT json_build_object(
		'tickets', (SELECT coalesce(json_agg(t ORDER BY t.id), '[]') FROM readmodel.tickets t),
		'comments', (SELECT coalesce(json_agg(c ORDER BY c.ticket_id, c.version), '[]') FROM readmodel.comments c))::text`).Scan(&snap)
	if err != nil {
		t.Fatalf("snapshot read model: %v", err)
	}
	return snap
}

// pgReplayed is the document the event store gives for ticket id: what every read
// model must agree with.
func pgReplayed(t *testing.T, s *eventstore.Store, id uuid.UUID) projections.View {
	t.Helper()
	v, _, err := projections.ViewAt(dbtest.Context(t), s, id, 0)
	if err != nil {
		t.Fatalf("replay %s: %v", id, err)
	}
	return v
}

// pgRowVersion is the version the read model holds for ticket id (0: no row).
func pgRowVersion(t *testing.T, pool *pgxpool.Pool, id uuid.UUID) int {
	t.Helper()
	var v int
	err := pool.QueryRow(dbtest.Context(t), `SELECT version FROM readmodel.tickets WHERE id = $1`, id).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0
	}
	if err != nil {
		t.Fatalf("read model version of %s: %v", id, err)
	}
	return v
}

func TestPostgresProjectorIsIdempotentByVersion(t *testing.T) {
	t.Parallel()
	pool, s := projectionstest.NewStore(t)
	rm := pgmodel.NewReadModel(pool, s)
	ctx := dbtest.Context(t)
	id, recs := pgLife(t, s)
	otherID, other := projectionstest.Open(t, s, "erin")
	other = append(other, projectionstest.Do(t, s, otherID, projectionstest.Comment(1))...)

	// given: every event applied once, in order
	pgApply(t, pool, recs...)
	pgApply(t, pool, other...)
	want := pgSnapshot(t, pool)
	if v := pgRowVersion(t, pool, id); v != len(recs) {
		t.Fatalf("expected the read model at version %d, got %d", len(recs), v)
	}
	got, err := rm.Get(ctx, id)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if replayed := pgReplayed(t, s, id); !reflect.DeepEqual(got, replayed) {
		t.Errorf("read model document differs from the replayed one:\nread model %+v\n  replayed %+v", got, replayed)
	}

	t.Run("redelivery_of_every_event_changes_nothing", func(t *testing.T) {
		pgApply(t, pool, recs...)
		pgApply(t, pool, other...)
		if snap := pgSnapshot(t, pool); snap != want {
			t.Errorf("read model moved:\nexpected %s\n     got %s", want, snap)
		}
	})

	t.Run("redelivered_batches_from_the_first_event_change_nothing", func(t *testing.T) {
		// A batch holding a ticket's first event folds it from nothing, without
		// reading its row: the version guard keeps the newer row.
		for k := 1; k <= len(recs); k++ {
			pgApplyBatch(t, pool, append(slices.Clone(recs[:k]), other...)...)
			if snap := pgSnapshot(t, pool); snap != want {
				t.Fatalf("first %d events in one batch: read model moved:\nexpected %s\n     got %s", k, want, snap)
			}
		}
	})

	t.Run("older_events_in_random_order_change_nothing", func(t *testing.T) {
		for seed := range uint64(8) {
			pgApply(t, pool, projectionstest.Shuffled(append(slices.Clone(recs), other...), seed)...)
			if snap := pgSnapshot(t, pool); snap != want {
				t.Fatalf("seed %d: read model moved:\nexpected %s\n     got %s", seed, want, snap)
			}
		}
	})

	t.Run("deletion_is_final_under_redelivery", func(t *testing.T) {
		del := projectionstest.Do(t, s, id, projectionstest.Delete)
		pgApply(t, pool, del...)
		deleted := pgSnapshot(t, pool)
		var flag bool
		if err := pool.QueryRow(ctx, `SELECT deleted FROM readmodel.tickets WHERE id = $1`, id).Scan(&flag); err != nil || !flag {
			t.Fatalf("expected a tombstone row for the deleted ticket, got deleted=%v, %v", flag, err)
		}
		if _, err := rm.Get(ctx, id); !errors.Is(err, ticket.ErrNotFound) {
			t.Errorf("Get of the deleted ticket: expected ErrNotFound, got %v", err)
		}
		for seed := range uint64(4) {
			pgApply(t, pool, projectionstest.Shuffled(append(slices.Clone(recs), del...), seed)...)
			if snap := pgSnapshot(t, pool); snap != deleted {
				t.Fatalf("seed %d: read model moved after deletion:\nexpected %s\n     got %s", seed, deleted, snap)
			}
		}
		if _, err := rm.Get(ctx, id); !errors.Is(err, ticket.ErrNotFound) {
			t.Errorf("Get after redelivery: expected ErrNotFound, got %v", err)
		}
	})
}

// pgApplyBatch applies records through the projector as one batch, in one transaction.
func pgApplyBatch(t *testing.T, pool *pgxpool.Pool, recs ...eventstore.Record) {
	t.Helper()
	ctx := dbtest.Context(t)
	p := pgmodel.Projector{Events: eventstore.New(pool, dbtest.Keyring(t, pool))}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return p.Apply(ctx, tx, recs) }); err != nil {
		t.Fatalf("apply a batch of %d records: %v", len(recs), err)
	}
}

// pgRepublish publishes the outbox messages with the given offsets again, in that
// order, through the watermill-sql publisher: as a redelivery or an operator's replay
// would hand them to the projector.
func pgRepublish(t *testing.T, pool *pgxpool.Pool, offsets []int64) {
	t.Helper()
	ctx := dbtest.Context(t)
	rows, err := pool.Query(ctx, `SELECT "offset", uuid, payload::text, coalesce(metadata::text, '{}')
		FROM watermill_ticket_events WHERE "offset" = ANY($1)`, offsets)
	if err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	defer rows.Close()
	byOffset := map[int64]*message.Message{}
	for rows.Next() {
		var off int64
		var id, payload, md string
		if err := rows.Scan(&off, &id, &payload, &md); err != nil {
			t.Fatalf("read outbox: %v", err)
		}
		msg := message.NewMessage(id, []byte(payload))
		if err := json.Unmarshal([]byte(md), &msg.Metadata); err != nil {
			t.Fatalf("message metadata: %v", err)
		}
		byOffset[off] = msg
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	msgs := make([]*message.Message, 0, len(offsets))
	for _, off := range offsets {
		msgs = append(msgs, byOffset[off])
	}
	pub, err := wsql.NewPublisher(wsql.BeginnerFromPgx(pool), wsql.PublisherConfig{SchemaAdapter: wsql.DefaultPostgreSQLSchema{}}, watermill.NopLogger{})
	if err != nil {
		t.Fatalf("publisher: %v", err)
	}
	if err := pub.Publish(eventstore.Topic, msgs...); err != nil {
		t.Fatalf("republish: %v", err)
	}
}

func TestPostgresProjectorThroughTheRouter(t *testing.T) {
	t.Parallel()
	pool, s := projectionstest.NewStore(t)
	rm := pgmodel.NewReadModel(pool, s)
	ctx := dbtest.Context(t)
	projectionstest.RunRouter(t, pool, projections.Config{}, pgmodel.Projector{}.Handler())

	// when: events of three tickets are appended while the projector runs
	a, _ := pgLife(t, s)
	b, _ := projectionstest.Open(t, s, "erin")
	projectionstest.Do(t, s, b, projectionstest.Comment(1))
	c, _ := projectionstest.Open(t, s, "gina")
	projectionstest.Do(t, s, c, projectionstest.Delete)
	projectionstest.WaitCaughtUp(t, pool, pgmodel.Group, 30*time.Second)

	// then: the read model reflects them, and agrees with the event store
	check := func(t *testing.T) {
		t.Helper()
		for _, id := range []uuid.UUID{a, b} {
			replayed := pgReplayed(t, s, id)
			if v := pgRowVersion(t, pool, id); v != replayed.Version {
				t.Errorf("ticket %s: expected the read model at version %d, got %d", id, replayed.Version, v)
			}
			got, err := rm.Get(ctx, id)
			if err != nil {
				t.Fatalf("Get %s: %v", id, err)
			}
			if !reflect.DeepEqual(got, replayed) {
				t.Errorf("ticket %s:\nread model %+v\n  replayed %+v", id, got, replayed)
			}
		}
		if _, err := rm.Get(ctx, c); !errors.Is(err, ticket.ErrNotFound) {
			t.Errorf("Get of the deleted ticket: expected ErrNotFound, got %v", err)
		}
	}
	check(t)
	want := pgSnapshot(t, pool)

	t.Run("republished_old_messages_move_nothing_backwards", func(t *testing.T) {
		var offsets []int64
		rows, err := pool.Query(ctx, `SELECT "offset" FROM watermill_ticket_events ORDER BY "offset" DESC`)
		if err != nil {
			t.Fatalf("outbox offsets: %v", err)
		}
		offsets, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatalf("outbox offsets: %v", err)
		}
		pgRepublish(t, pool, offsets) // newest first: every one is older than the state
		shuffled := slices.Clone(offsets)
		rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		pgRepublish(t, pool, shuffled[:len(shuffled)/2])
		projectionstest.WaitCaughtUp(t, pool, pgmodel.Group, 30*time.Second)

		if snap := pgSnapshot(t, pool); snap != want {
			t.Errorf("read model moved after redelivery:\nexpected %s\n     got %s", want, snap)
		}
		check(t)
		var poisoned int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM watermill_ticket_events_poison`).Scan(&poisoned); err != nil || poisoned != 0 {
			t.Errorf("expected no poisoned events, got %d (%v)", poisoned, err)
		}
	})

	t.Run("new_events_still_project_after_redelivery", func(t *testing.T) {
		projectionstest.Do(t, s, b, projectionstest.Move(ticket.StatusAnswered, "carol"))
		projectionstest.WaitCaughtUp(t, pool, pgmodel.Group, 30*time.Second)
		check(t)
		if v := pgRowVersion(t, pool, b); v != 3 {
			t.Errorf("expected ticket %s at version 3 in the read model, got %d", b, v)
		}
	})
}

// TestPostgresProjectorWithARowCacheWritesTheSameRows: the row cache only saves reads.
// Batches of every size, a batch rolled back after the projector cached its rows, and
// the redelivery of every batch give the rows one event at a time without a cache
// gives.
func TestPostgresProjectorWithARowCacheWritesTheSameRows(t *testing.T) {
	t.Parallel()
	pool, s := projectionstest.NewStore(t)
	ctx := dbtest.Context(t)
	_, recs := pgLife(t, s)
	otherID, other := projectionstest.Open(t, s, "erin")
	other = append(other, projectionstest.Do(t, s, otherID, projectionstest.Comment(1))...)
	// the two tickets' events interleaved, each ticket's in order, as the outbox has them
	var all []eventstore.Record
	for i := range max(len(recs), len(other)) {
		if i < len(recs) {
			all = append(all, recs[i])
		}
		if i < len(other) {
			all = append(all, other[i])
		}
	}
	pgApply(t, pool, all...)
	want := pgSnapshot(t, pool)

	for _, size := range []int{1, 2, 3, 5, len(all)} {
		if _, err := pool.Exec(ctx, `TRUNCATE readmodel.tickets, readmodel.comments`); err != nil {
			t.Fatal(err)
		}
		p := pgmodel.Projector{Events: s, Cache: projections.NewViewCache(1 << 20)}
		// A batch written (and cached) but rolled back: its rows never were.
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Apply(ctx, tx, all[:min(7, len(all))]); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(all); i += size {
			batch := all[i:min(i+size, len(all))]
			for range 2 { // every batch delivered twice
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return p.Apply(ctx, tx, batch) })
				if err != nil {
					t.Fatalf("batch size %d at %d: %v", size, i, err)
				}
			}
		}
		if got := pgSnapshot(t, pool); got != want {
			t.Fatalf("batch size %d with a row cache:\n got %s\nwant %s", size, got, want)
		}
	}
}
