// Package projectionstest runs real projectors in tests: a Watermill router over the
// real outbox and offsets tables, stopped (and checked) when the test ends.
package projectionstest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/projections"
)

// RunRouter runs handlers through projections.NewRouter until t ends, and returns once
// the router is running. It fails t if the router does not start or stop within 15 s,
// or stops with an error.
func RunRouter(t testing.TB, pool *pgxpool.Pool, cfg projections.Config, handlers ...projections.Handler) {
	t.Helper()
	router, err := projections.NewRouter(pool, cfg, slog.New(slog.DiscardHandler), handlers...)
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
