// Package projectionstest holds what the tests of the projections packages
// (projections, pgmodel, redismodel) share: a migrated database of a test's own with an
// event store on it, commands that open, comment, move and delete tickets, a real router
// over the real outbox and offsets tables, waiting for a consumer group to catch up,
// and a Redis Cluster client with a key prefix of a test's own.
//
// The database is the one dbtest names (TEST_DATABASE_DSN) and Redis is the cluster at
// TEST_REDIS_ADDRS; scripts/test-env.sh starts both and sets them.
package projectionstest

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
)

// RunRouter runs handlers through projections.NewRouter until t ends, and returns once
// the router is running. It fails t if the router does not start or stop within 15 s,
// or stops with an error.
func RunRouter(t testing.TB, pool *pgxpool.Pool, cfg projections.Config, handlers ...projections.Handler) {
	t.Helper()
	RunRouterWithLogger(t, pool, cfg, slog.New(slog.DiscardHandler), handlers...)
}

// RunRouterWithLogger is RunRouter with the router logging to log, for tests that check
// what it logs.
func RunRouterWithLogger(t testing.TB, pool *pgxpool.Pool, cfg projections.Config, log *slog.Logger, handlers ...projections.Handler) {
	t.Helper()
	if cfg.Reveal == nil {
		// the events' personal fields open as ticketd's router opens them
		cfg.Reveal = eventstore.New(pool, dbtest.Keyring(t, pool)).Reveal
	}
	router, err := projections.NewRouter(pool, cfg, log, handlers...)
	if err != nil {
		t.Fatalf("NewRouter: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- projections.Run(ctx, router) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("router stopped with error: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("router did not stop within 15s")
		}
	})
	select {
	case <-router.Running():
	case <-time.After(15 * time.Second):
		t.Fatalf("router not running within 15s")
	}
}

// WaitCaughtUp waits until consumer group has acknowledged every outbox row, as
// projections.SampleBacklog counts them (in the subscriber's own order: transaction id,
// then offset; a group without an offsets row has the whole outbox ahead of it). It
// fails t if that takes longer than timeout.
func WaitCaughtUp(t testing.TB, pool *pgxpool.Pool, group string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var b Backlogs
	for {
		if err := projections.SampleBacklog(context.Background(), pool, &b, group); err != nil {
			t.Fatalf("backlog of %s: %v", group, err)
		}
		n := b.Of(group)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still %d events behind after %s", group, n, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Backlogs is a projections.Metrics that remembers the last sampled backlog per group
// (see projections.SampleBacklog).
type Backlogs struct {
	projections.NopMetrics
	mu sync.Mutex
	n  map[string]int64
}

// Backlog records a sample.
func (b *Backlogs) Backlog(group string, events int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n == nil {
		b.n = map[string]int64{}
	}
	b.n[group] = events
}

// Of returns the last sample of group (0 before any).
func (b *Backlogs) Of(group string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n[group]
}
