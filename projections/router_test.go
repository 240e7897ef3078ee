package projections_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/projectionstest"
)

// TestInstancesSharingAGroupApplyEveryEventOnce: three routers (three instances) run
// the same consumer group while events are written; the group's lock makes them take
// turns, so every event is applied exactly once, in each stream's order.
func TestInstancesSharingAGroupApplyEveryEventOnce(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	var mu sync.Mutex
	applied := map[string]int{} // "ticket vN" -> times applied
	last := map[string]int{}    // ticket -> last version applied
	var outOfOrder []string
	h := projections.Handler{Group: "shared", Apply: func(_ context.Context, _ pgx.Tx, recs []eventstore.Record) error {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range recs {
			applied[fmt.Sprintf("%s v%d", r.TicketID, r.Version)]++
			if r.Version != last[r.TicketID.String()]+1 {
				outOfOrder = append(outOfOrder, fmt.Sprintf("%s v%d after v%d", r.TicketID, r.Version, last[r.TicketID.String()]))
			}
			last[r.TicketID.String()] = r.Version
		}
		return nil
	}}
	for range 3 {
		projectionstest.RunRouter(t, pool, projections.Config{BatchSize: 7}, h)
	}
	var wg sync.WaitGroup
	events := 0
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				id, _ := projectionstest.Open(t, store, fmt.Sprintf("w%di%d", w, i))
				projectionstest.Do(t, store, id, projectionstest.Comment(i))
				projectionstest.Do(t, store, id, projectionstest.Comment(i+1))
			}
		}()
		events += 30
	}
	wg.Wait()
	projectionstest.WaitCaughtUp(t, pool, h.Group, 20*time.Second)

	mu.Lock()
	defer mu.Unlock()
	if len(applied) != events {
		t.Fatalf("%d distinct events applied, want %d", len(applied), events)
	}
	for ev, n := range applied {
		if n != 1 {
			t.Fatalf("event %s applied %d times by the instances, want once", ev, n)
		}
	}
	if len(outOfOrder) > 0 {
		t.Fatalf("events applied out of their stream's order: %v", outOfOrder[:min(5, len(outOfOrder))])
	}
}

// TestDerivedGroupsCommitWithoutTheFlushWait: a derived read model's batch runs with
// synchronous_commit off (its transaction only); any other group's batch keeps the
// server's setting while it applies.
func TestDerivedGroupsCommitWithoutTheFlushWait(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	var mu sync.Mutex
	setting := map[string]string{}
	handler := func(group string, derived bool) projections.Handler {
		return projections.Handler{Group: group, Derived: derived, Apply: func(ctx context.Context, tx pgx.Tx, _ []eventstore.Record) error {
			var v string
			if err := tx.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&v); err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			setting[group] = v
			return nil
		}}
	}
	projectionstest.RunRouter(t, pool, projections.Config{}, handler("derived", true), handler("kept", false))
	projectionstest.Open(t, store, "one")
	projectionstest.WaitCaughtUp(t, pool, "derived", 10*time.Second)
	projectionstest.WaitCaughtUp(t, pool, "kept", 10*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if setting["derived"] != "off" || setting["kept"] != "on" {
		t.Fatalf("synchronous_commit while applying: derived %q, other %q; want off and on", setting["derived"], setting["kept"])
	}
	var v string
	if err := pool.QueryRow(context.Background(), `SELECT current_setting('synchronous_commit')`).Scan(&v); err != nil || v != "on" {
		t.Fatalf("synchronous_commit outside the batches: %q (%v), want on", v, err)
	}
}

// TestBatchesLeaveNoTransactionOpen: a batch's transaction begins in its read's round
// trip and commits in its writes' (or rolls back when it found nothing); afterwards no
// connection of the database stays inside a transaction.
func TestBatchesLeaveNoTransactionOpen(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	h := projections.Handler{Group: "pipelined", Apply: func(context.Context, pgx.Tx, []eventstore.Record) error { return nil }}
	projectionstest.RunRouter(t, pool, projections.Config{BatchSize: 3}, h)
	for i := range 10 {
		projectionstest.Open(t, store, fmt.Sprintf("p%d", i))
	}
	projectionstest.WaitCaughtUp(t, pool, h.Group, 10*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var open int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND state LIKE 'idle in transaction%'`).Scan(&open); err != nil {
			t.Fatal(err)
		}
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections idle in a transaction after the batches", open)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOnlyDerivedGroupsShareOpenedEvents: groups of one router that are not derived
// read models (the webhooks: their output leaves ticketd) open every event themselves,
// so an erasure reaches them as soon as it is committed; a derived group may take the
// events another group opened a moment before, and sees the same records.
func TestOnlyDerivedGroupsShareOpenedEvents(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	const tickets = 10
	for i := range tickets {
		id, _ := projectionstest.Open(t, store, fmt.Sprintf("u%d", i))
		projectionstest.Do(t, store, id, projectionstest.Comment(i))
	}
	const events = 2 * tickets
	var (
		mu       sync.Mutex
		revealed int
		seen     = map[string]map[string]string{} // group -> event -> what it held
	)
	reveal := func(ctx context.Context, recs []eventstore.Record) error {
		mu.Lock()
		revealed += len(recs)
		mu.Unlock()
		return store.Reveal(ctx, recs)
	}
	handler := func(group string, derived bool) projections.Handler {
		seen[group] = map[string]string{}
		return projections.Handler{Group: group, Derived: derived, Apply: func(_ context.Context, _ pgx.Tx, recs []eventstore.Record) error {
			mu.Lock()
			defer mu.Unlock()
			for _, r := range recs {
				seen[group][fmt.Sprintf("%s v%d", r.TicketID, r.Version)] = fmt.Sprintf("%+v %+v", r.Data, r.Metadata)
			}
			return nil
		}}
	}
	hooks, audit, model := handler("hooks", false), handler("audit", false), handler("model", true)
	projectionstest.RunRouter(t, pool, projections.Config{Reveal: reveal}, hooks, audit, model)
	for _, g := range []string{"hooks", "audit", "model"} {
		projectionstest.WaitCaughtUp(t, pool, g, 20*time.Second)
	}
	mu.Lock()
	defer mu.Unlock()
	if revealed < 2*events || revealed > 3*events {
		t.Fatalf("%d events opened for %d events and two groups that are not derived, want %d to %d", revealed, events, 2*events, 3*events)
	}
	for _, g := range []string{"hooks", "audit", "model"} {
		if len(seen[g]) != events {
			t.Fatalf("group %s applied %d events, want %d", g, len(seen[g]), events)
		}
		for ev, held := range seen[g] {
			if held != seen["hooks"][ev] {
				t.Fatalf("group %s held %s as\n%s\nhooks as\n%s", g, ev, held, seen["hooks"][ev])
			}
		}
	}
}

// An idle group (Handler.Idle) moves its position past the events without decoding,
// opening or applying them; once it is no longer idle it applies what comes after,
// in order, and nothing before.
func TestAnIdleGroupMovesPastEventsWithoutOpeningThem(t *testing.T) {
	t.Parallel()
	pool, store := projectionstest.NewStore(t)
	for i := range 10 {
		projectionstest.Open(t, store, fmt.Sprintf("i%d", i))
	}
	var (
		mu       sync.Mutex
		revealed int
		applied  []uuid.UUID
		idle     atomic.Bool
		asked    atomic.Int32
	)
	idle.Store(true)
	reveal := func(ctx context.Context, recs []eventstore.Record) error {
		mu.Lock()
		revealed += len(recs)
		mu.Unlock()
		return store.Reveal(ctx, recs)
	}
	h := projections.Handler{Group: "sleepy",
		Idle: func(ctx context.Context, tx pgx.Tx) (bool, error) {
			asked.Add(1)
			var one int // in the batch's transaction
			return idle.Load(), tx.QueryRow(ctx, `SELECT 1`).Scan(&one)
		},
		Apply: func(_ context.Context, _ pgx.Tx, recs []eventstore.Record) error {
			mu.Lock()
			defer mu.Unlock()
			for _, r := range recs {
				applied = append(applied, r.TicketID)
			}
			return nil
		}}
	wake := projections.NewSignal()
	projectionstest.RunRouter(t, pool, projections.Config{Reveal: reveal, Wake: wake, PollInterval: 300 * time.Millisecond}, h)
	projectionstest.WaitCaughtUp(t, pool, "sleepy", 20*time.Second)
	mu.Lock()
	if revealed != 0 || len(applied) != 0 || asked.Load() == 0 {
		mu.Unlock()
		t.Fatalf("idle group: %d events opened, %d applied, asked %d times; want none opened or applied", revealed, len(applied), asked.Load())
	}
	mu.Unlock()
	// Appends do not wake an idle group: what they write gathers until its next poll.
	asked.Store(0)
	start := time.Now()
	for i := range 10 {
		projectionstest.Open(t, store, fmt.Sprintf("j%d", i))
		wake.Notify()
		time.Sleep(10 * time.Millisecond)
	}
	projectionstest.WaitCaughtUp(t, pool, "sleepy", 20*time.Second)
	if n, most := asked.Load(), int32(time.Since(start)/(300*time.Millisecond))+2; n > most {
		t.Fatalf("an idle group took 10 woken appends in %d batches over %v, want at most %d (one per poll)", n, time.Since(start), most)
	}

	idle.Store(false)
	var want []uuid.UUID
	for i := range 5 {
		id, _ := projectionstest.Open(t, store, fmt.Sprintf("a%d", i))
		want = append(want, id)
	}
	projectionstest.WaitCaughtUp(t, pool, "sleepy", 20*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(applied, want) || revealed != len(want) {
		t.Fatalf("after waking the group applied %v (%d opened), want %v", applied, revealed, want)
	}
}
