package main

import (
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ticketd/ticketd/httpapi/ratelimit"
)

// setupRateLimit returns the limiter of the /v1 requests, its budgets kept in rdb (the
// Redis the read model uses) under REDIS_PREFIX so every instance of a deployment
// spends the same ones, its metrics registered in reg; nil when authentication is off
// (every request is the same anonymous admin: one budget would throttle a developer's
// every client together). Redis being down at start is no error: the limiter fails
// open, counted in /metrics and logged.
func setupRateLimit(cfg Config, rdb redis.UniversalClient, reg prometheus.Registerer, log *slog.Logger) (*ratelimit.Limiter, error) {
	if cfg.Auth == "off" {
		return nil, nil
	}
	limits, err := cfg.RateLimit.Limits()
	if err != nil {
		return nil, err // Validate has reported it already; not reached
	}
	m, err := ratelimit.NewMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("rate limit metrics: %w", err)
	}
	lim, err := ratelimit.New(rdb, limits, ratelimit.Options{Prefix: cfg.RedisPrefix, Logger: log, Metrics: m})
	if err != nil {
		return nil, err
	}
	log.Info("rate limits", "admin", limits.Roles["admin"].String(), "agent", limits.Roles["agent"].String(),
		"auditor", limits.Roles["auditor"].String(), "requester", limits.Roles["requester"].String(),
		"auth_failures", limits.AuthFailures.String())
	return lim, nil
}
