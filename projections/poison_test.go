package projections_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/projections/projectionstest"
)

// lockedBuffer collects log output across goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// metricValue returns the value of a metric of group in reg: a counter's or gauge's
// value, a histogram's sample count; 0 when it has no sample.
func metricValue(t testing.TB, reg *prometheus.Registry, name, group string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "group" && l.GetValue() == group {
					switch {
					case m.Counter != nil:
						return m.Counter.GetValue()
					case m.Gauge != nil:
						return m.Gauge.GetValue()
					case m.Histogram != nil:
						return float64(m.Histogram.GetSampleCount())
					}
				}
			}
		}
	}
	return 0
}

// publishRaw puts a message with the given payload on the outbox topic, as a broken
// or foreign writer could.
func publishRaw(t testing.TB, pool *pgxpool.Pool, id string, payload []byte) {
	t.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		pub, err := wsql.NewPublisher(wsql.TxFromPgx(tx), wsql.PublisherConfig{SchemaAdapter: wsql.DefaultPostgreSQLSchema{}}, nil)
		if err != nil {
			return err
		}
		return pub.Publish(eventstore.Topic, message.NewMessage(id, payload))
	})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func TestUndecodableEventIsDeadLetteredAndProjectionMovesOn(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	reg := prometheus.NewRegistry()
	metrics, err := projections.NewPrometheusMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))

	a, _ := projectionstest.Open(t, store, "before")
	projectionstest.Do(t, store, a, projectionstest.Comment(1))
	poisonID := uuid.NewString()
	publishRaw(t, pool, poisonID, []byte(`{"type":"TicketExploded","stream_id":"`+a.String()+`","version":3}`))
	b, _ := projectionstest.Open(t, store, "after")
	projectionstest.Do(t, store, a, projectionstest.Comment(2))
	projectionstest.Do(t, store, b, projectionstest.Comment(3))

	const retries = 3
	projectionstest.RunRouterWithLogger(t, pool, projections.Config{Metrics: metrics, Retries: retries, BacklogInterval: 20 * time.Millisecond}, log, pgProjector)
	projectionstest.WaitCaughtUp(t, pool, pgmodel.Group, 20*time.Second)
	// The metrics and the log line follow the commit the offsets show: wait for them.
	var stored int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM events`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if metricValue(t, reg, "ticketd_projection_poisoned_total", pgmodel.Group) >= 1 &&
			int(metricValue(t, reg, "ticketd_projection_events_total", pgmodel.Group)) >= stored &&
			strings.Contains(logs.String(), poisonID) {
			break
		}
	}

	// dead-lettered, with the reason and the projector that gave up
	var uuids []string
	var metadata []byte
	rows, err := pool.Query(context.Background(), `SELECT uuid, metadata::text FROM watermill_ticket_events_poison`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id, &metadata); err != nil {
			t.Fatal(err)
		}
		uuids = append(uuids, id)
	}
	if len(uuids) != 1 || uuids[0] != poisonID {
		t.Fatalf("poison table holds %v, want just %s", uuids, poisonID)
	}
	var md map[string]string
	if err := json.Unmarshal(metadata, &md); err != nil {
		t.Fatal(err)
	}
	if md["handler_poisoned"] != pgmodel.Group || !strings.Contains(md["reason_poisoned"], "TicketExploded") {
		t.Fatalf("poison metadata %v: want the handler and the reason", md)
	}

	// an undecodable event cannot get better: not retried, counted once, and logged
	if got := metricValue(t, reg, "ticketd_projection_failures_total", pgmodel.Group); got != 1 {
		t.Fatalf("failures_total %v, want 1 (an undecodable event is not retried)", got)
	}
	if got := metricValue(t, reg, "ticketd_projection_poisoned_total", pgmodel.Group); got != 1 {
		t.Fatalf("poisoned_total %v, want 1", got)
	}
	if !strings.Contains(logs.String(), poisonID) || !strings.Contains(logs.String(), "poison") {
		t.Fatalf("no log line names the poisoned message %s:\n%s", poisonID, logs.String())
	}

	// every real event was projected, before and after the poison, and the read model
	// is what the events say
	var events int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM events`).Scan(&events); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(t, reg, "ticketd_projection_events_total", pgmodel.Group); int(got) != events {
		t.Fatalf("events_total %v, want %d", got, events)
	}
	if got := metricValue(t, reg, "ticketd_projection_lag_seconds", pgmodel.Group); int(got) != events {
		t.Fatalf("lag_seconds has %v samples, want %d", got, events)
	}
	tickets, comments := readModel(t, pool, "readmodel")
	wantTickets, wantComments := expectedReadModel(replayAll(t, pool, store))
	sameLines(t, "tickets", tickets, wantTickets)
	sameLines(t, "comments", comments, wantComments)

	// the backlog gauge is sampled and reaches zero
	deadline := time.Now().Add(5 * time.Second)
	for metricValue(t, reg, "ticketd_projection_lag_events", pgmodel.Group) != 0 ||
		!strings.Contains(gatherText(t, reg), "ticketd_projection_lag_events") {
		if time.Now().After(deadline) {
			t.Fatalf("lag_events not sampled down to 0:\n%s", gatherText(t, reg))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func gatherText(t testing.TB, reg *prometheus.Registry) string {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	return strings.Join(names, "\n")
}

func TestBacklogCountsEventsNotYetAcknowledged(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	a, _ := projectionstest.Open(t, store, "one")
	projectionstest.Do(t, store, a, projectionstest.Comment(2))
	projectionstest.Open(t, store, "three")
	var b projectionstest.Backlogs
	if err := projections.SampleBacklog(context.Background(), pool, &b, pgmodel.Group, "never-subscribed"); err != nil {
		t.Fatal(err)
	}
	if b.Of(pgmodel.Group) != 3 || b.Of("never-subscribed") != 3 {
		t.Fatalf("backlog %d and %d, want 3 for both groups", b.Of(pgmodel.Group), b.Of("never-subscribed"))
	}
	projectionstest.RunRouter(t, pool, projections.Config{}, pgProjector)
	projectionstest.WaitCaughtUp(t, pool, pgmodel.Group, 10*time.Second)
	projectionstest.Do(t, store, a, projectionstest.Comment(4))
	projectionstest.WaitCaughtUp(t, pool, pgmodel.Group, 10*time.Second)
}

func TestHungProjectorIsCutOffByTheAckDeadlineAndRedelivered(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	const deadline = 700 * time.Millisecond
	var deliveries atomic.Int32
	var hung atomic.Int64 // how long the first delivery was let hang, in ns
	var handlerDeadline atomic.Int64
	slow := projections.Handler{Group: "hangs-once", Apply: func(ctx context.Context, _ pgx.Tx, _ []eventstore.Record) error {
		if deliveries.Add(1) == 1 {
			if d, ok := ctx.Deadline(); ok {
				handlerDeadline.Store(int64(time.Until(d)))
			}
			start := time.Now()
			<-ctx.Done() // a handler stuck on a dependency that honours its context
			hung.Store(int64(time.Since(start)))
			return ctx.Err()
		}
		return nil
	}}
	projectionstest.Open(t, store, "one")
	start := time.Now()
	projectionstest.RunRouter(t, pool, projections.Config{AckDeadline: deadline}, slow, pgProjector)
	projectionstest.WaitCaughtUp(t, pool, "hangs-once", 10*time.Second)
	projectionstest.WaitCaughtUp(t, pool, pgmodel.Group, 10*time.Second)
	took := time.Since(start)

	if d := time.Duration(handlerDeadline.Load()); d <= 0 || d > deadline {
		t.Fatalf("the handler's context ends in %s, want within the ack deadline %s", d, deadline)
	}
	if h := time.Duration(hung.Load()); h < deadline/2 || h > 3*deadline {
		t.Fatalf("the hung delivery was cut off after %s, want about the ack deadline %s", h, deadline)
	}
	if n := deliveries.Load(); n < 2 {
		t.Fatalf("%d deliveries: the event was not redelivered after the cut-off", n)
	}
	if took > 5*time.Second {
		t.Fatalf("projection took %s to get past a hung handler with a %s ack deadline", took, deadline)
	}
}

func TestHandlerStillUsingTheTransactionAfterTheAckDeadlineIsWaitedFor(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	var deliveries atomic.Int32
	var lateExec atomic.Value
	lingers := projections.Handler{Group: "lingers-once", Apply: func(ctx context.Context, tx pgx.Tx, _ []eventstore.Record) error {
		if deliveries.Add(1) > 1 {
			return nil
		}
		<-ctx.Done()
		// Still busy with the batch's transaction after the deadline (with a context
		// that outlives it): the consumer must not roll the transaction back under it.
		_, err := tx.Exec(context.WithoutCancel(ctx), `SELECT pg_sleep(0.3)`)
		lateExec.Store(fmt.Sprint(err))
		return ctx.Err()
	}}
	projectionstest.Open(t, store, "one")
	projectionstest.Open(t, store, "two")
	projectionstest.RunRouter(t, pool, projections.Config{AckDeadline: 300 * time.Millisecond}, lingers)
	projectionstest.WaitCaughtUp(t, pool, "lingers-once", 10*time.Second)
	if got := lateExec.Load(); got != "<nil>" {
		t.Fatalf("the late statement in the handler failed: %v", got)
	}
}

// TestHungProjectorDoesNotHoldBackTheOthers: a projector stuck in its batch (a hung
// Redis, say) holds its group's lock and its transaction open, but no transaction id,
// so the other groups keep seeing and applying new events at once.
func TestHungProjectorDoesNotHoldBackTheOthers(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	release := make(chan struct{})
	var hung atomic.Int32
	stuck := projections.Handler{Group: "stuck", Apply: func(ctx context.Context, _ pgx.Tx, _ []eventstore.Record) error {
		hung.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ctx.Err()
	}}
	defer close(release)
	projectionstest.RunRouter(t, pool, projections.Config{AckDeadline: time.Minute}, stuck, pgProjector)
	projectionstest.Open(t, store, "first")
	deadline := time.Now().Add(10 * time.Second)
	for hung.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the stuck projector never got a batch")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The stuck group is now inside its batch; events written from here on must still
	// reach the Postgres read model promptly.
	for i := range 5 {
		start := time.Now()
		id, _ := projectionstest.Open(t, store, fmt.Sprintf("stuck%d", i))
		for {
			var n int
			if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM readmodel.tickets WHERE id = $1`, id).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n == 1 {
				break
			}
			if time.Since(start) > 2*time.Second {
				t.Fatalf("ticket %d written while another projector hangs is not in the read model after %s", i, time.Since(start))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestEventWhoseQueuedWritesFailIsIsolatedAndItsNeighboursApplied: a batch whose
// queued writes fail (sent with the ack, after the apply returned) is taken again one
// event at a time; the event that keeps failing goes to the poison topic and every
// other event of the batch is applied.
func TestEventWhoseQueuedWritesFailIsIsolatedAndItsNeighboursApplied(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	ctx := context.Background()
	// What the handler writes, committed with the group's position or not at all; the
	// primary key makes a second write of an event fail loudly.
	if _, err := pool.Exec(ctx, `CREATE TABLE applied (ticket uuid PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	bad, _ := projectionstest.Open(t, store, "bad")
	var ids []uuid.UUID
	for i := range 4 {
		id, _ := projectionstest.Open(t, store, fmt.Sprintf("good%d", i))
		ids = append(ids, id)
	}
	queue := func(_ context.Context, _ pgx.Tx, recs []eventstore.Record, b *pgx.Batch) error {
		for _, r := range recs {
			if r.TicketID == bad {
				b.Queue(`SELECT 1 / 0`) // fails when the batch is sent, not in the apply
				continue
			}
			b.Queue(`INSERT INTO applied VALUES ($1)`, r.TicketID)
		}
		return nil
	}
	h := projections.Handler{Group: "queues-a-failure",
		Queue: queue,
		Apply: func(ctx context.Context, tx pgx.Tx, recs []eventstore.Record) error {
			b := &pgx.Batch{}
			if err := queue(ctx, tx, recs, b); err != nil {
				return err
			}
			return tx.SendBatch(ctx, b).Close()
		}}
	projectionstest.RunRouter(t, pool, projections.Config{Retries: 2}, h)
	projectionstest.WaitCaughtUp(t, pool, h.Group, 20*time.Second)

	var poisoned []string
	rows, err := pool.Query(ctx, `SELECT payload::json->>'stream_id' FROM watermill_ticket_events_poison`)
	if err != nil {
		t.Fatal(err)
	}
	if poisoned, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(poisoned) != 1 || poisoned[0] != bad.String() {
		t.Fatalf("poison table holds events of %v, want only %s", poisoned, bad)
	}
	rows, err = pool.Query(ctx, `SELECT ticket FROM applied`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	slices.SortFunc(ids, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	if !slices.Equal(got, ids) {
		t.Fatalf("applied %v, want every neighbour once and not the bad one: %v", got, ids)
	}
}
