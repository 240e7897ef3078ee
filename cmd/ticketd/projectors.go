package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/projections"
)

// projectorRestartDelay is the pause before a failed projection router is rebuilt.
const projectorRestartDelay = 2 * time.Second

// routerFactory returns a constructor of identical projection routers: a Watermill
// router runs once, so a restart needs a new one.
func routerFactory(pool *pgxpool.Pool, cfg projections.Config, log *slog.Logger, handlers ...projections.Handler) func() (*message.Router, error) {
	return func() (*message.Router, error) { return projections.NewRouter(pool, cfg, log, handlers...) }
}

// keepProjecting runs router until ctx ends. A router that stops on its own, which
// Watermill does when a subscription fails (Postgres going away while the router
// subscribes, at start or later), is closed, rebuilt with newRouter and run again after
// a pause: an outage of the database must not end the process, and the consumer
// groups' offsets make the new router resume where the old one acknowledged.
func keepProjecting(ctx context.Context, log *slog.Logger, router *message.Router, newRouter func() (*message.Router, error)) error {
	for {
		err := projections.Run(ctx, router)
		_ = router.Close()
		if ctx.Err() != nil {
			return nil
		}
		log.Error("projection router stopped; restarting it", "err", err, "in", projectorRestartDelay.String())
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(projectorRestartDelay):
			}
			if router, err = newRouter(); err == nil {
				break
			}
			log.Error("rebuild projection router", "err", err)
		}
	}
}
