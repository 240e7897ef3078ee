package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/httpapi"
)

// sseConfig is the configuration of the live event streams (GET
// /v1/ticket/{id}/events): SSE_* variables.
type sseConfig struct {
	// Heartbeat is the time between comment lines on a quiet stream; a client that
	// went away is noticed at the next one.
	Heartbeat time.Duration `env:"SSE_HEARTBEAT" envDefault:"15s"`
	// MaxStreams caps the streams open at once in this process (503 beyond).
	MaxStreams int `env:"SSE_MAX_STREAMS" envDefault:"2048"`
	// MaxPerPrincipal caps one principal's streams in this process (429 beyond); 0: no
	// cap per principal.
	MaxPerPrincipal int `env:"SSE_MAX_STREAMS_PER_PRINCIPAL" envDefault:"64"`
	// PollInterval is how often the event hub looks for events other instances wrote.
	PollInterval time.Duration `env:"SSE_POLL_INTERVAL" envDefault:"250ms"`
}

// Validate names each bad SSE_* variable.
func (c sseConfig) Validate() error {
	var errs []error
	if c.Heartbeat < time.Second || c.Heartbeat > 5*time.Minute {
		errs = append(errs, fmt.Errorf("SSE_HEARTBEAT must be from 1s to 5m, not %s", c.Heartbeat))
	}
	if c.MaxStreams < 1 {
		errs = append(errs, fmt.Errorf("SSE_MAX_STREAMS must be at least 1, not %d", c.MaxStreams))
	}
	if c.MaxPerPrincipal < 0 {
		errs = append(errs, fmt.Errorf("SSE_MAX_STREAMS_PER_PRINCIPAL must be 0 (no cap per principal) or more, not %d", c.MaxPerPrincipal))
	}
	if c.PollInterval < 10*time.Millisecond || c.PollInterval > time.Minute {
		errs = append(errs, fmt.Errorf("SSE_POLL_INTERVAL must be from 10ms to 1m, not %s", c.PollInterval))
	}
	return errors.Join(errs...)
}

// setupStreams starts the event hub of the live streams, chained to the store's
// OnAppend (after what was there: the projectors' wake), and returns the HTTP layer's
// stream configuration. The hub runs until ctx ends; stop also ends it, and with it
// every stream.
func setupStreams(ctx context.Context, cfg sseConfig, store *eventstore.Store, log *slog.Logger) (httpapi.StreamConfig, func()) {
	hub := httpapi.NewEventHub(store, cfg.PollInterval, log)
	if prev := store.OnAppend; prev != nil {
		store.OnAppend = func() { prev(); hub.Wake() }
	} else {
		store.OnAppend = hub.Wake
	}
	go hub.Run(ctx)
	per := cfg.MaxPerPrincipal
	if per == 0 {
		per = -1 // httpapi: negative is no cap
	}
	return httpapi.StreamConfig{Hub: hub, Heartbeat: cfg.Heartbeat, MaxStreams: cfg.MaxStreams, MaxPerPrincipal: per}, hub.Close
}
