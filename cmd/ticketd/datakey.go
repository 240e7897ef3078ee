package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/pii"
	"github.com/ticketd/ticketd/ticket"
	"github.com/ticketd/ticketd/webhooks"
)

// openKeyring opens the keyring of the database under DATA_KEY. A missing or malformed
// key is a *ConfigError naming the variable; a key that is not the one the database
// was first used with (its check value differs) is one too: ticketd must not serve
// with it (nothing sealed would open, and new data would be sealed under another key).
func openKeyring(ctx context.Context, cfg Config, pool *pgxpool.Pool) (*pii.Keyring, error) {
	m, err := cfg.MasterKey()
	if err != nil {
		return nil, err
	}
	ring, err := pii.Open(ctx, pool, m)
	if errors.Is(err, pii.ErrWrongMasterKey) {
		return nil, &ConfigError{Problems: []error{err}}
	}
	return ring, err
}

// rotateDataKey moves every data key (and the lookup key) from DATA_KEY to
// NEW_DATA_KEY in one transaction. Stop every instance first (they hold the old key;
// after the rotation they would refuse to start with it, and running ones could no
// longer unwrap keys made since), rotate, then start them with the new key as
// DATA_KEY.
func rotateDataKey(ctx context.Context, cfg Config, pool *pgxpool.Pool, stdout io.Writer) error {
	from, err := cfg.MasterKey()
	if err != nil {
		return err
	}
	to, err := cfg.NewMasterKey()
	if err != nil {
		return err
	}
	n, err := pii.Rotate(ctx, pool, from, to)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "rotated %d data keys to NEW_DATA_KEY: start ticketd with it as DATA_KEY\n", n)
	return nil
}

// eraser erases a data subject everywhere: the event store's EraseSubject (key,
// erasure events, stored answers), then the webhook delivery log. The read models are
// scrubbed by the projectors' fold of the erasure events.
func eraser(store *eventstore.Store, pool *pgxpool.Pool) func(ctx context.Context, email, by, reason string, md eventstore.Metadata) (eventstore.Erasure, error) {
	return func(ctx context.Context, email, by, reason string, md eventstore.Metadata) (eventstore.Erasure, error) {
		er, err := store.EraseSubject(ctx, email, by, reason, md)
		if err != nil {
			return er, err
		}
		if _, err := webhooks.ScrubDeliveries(ctx, pool, er.Tickets, er.Values); err != nil {
			return er, err
		}
		return er, nil
	}
}

// withPool runs fn with a small pool on the database (no migrations: a task on a
// database some ticketd has migrated).
func withPool(ctx context.Context, cfg Config, fn func(*pgxpool.Pool) error) error {
	pool, err := db.Open(ctx, cfg.DatabaseDSN, db.PoolConfig{MaxConns: 4})
	if err != nil {
		return err
	}
	defer pool.Close()
	return fn(pool)
}

// eraseSubject runs -erase-subject EMAIL [-reason TEXT]: what DELETE
// /v1/subjects/{email} does, recorded as done by "ticketd -erase-subject" (the
// operator at the terminal). It prints a summary line; an unknown subject is an error
// (exit 1), erasing twice is not.
func eraseSubject(ctx context.Context, cfg Config, email, reason string, stdout io.Writer) error {
	if err := ticket.ValidEmail("-erase-subject", email); err != nil {
		return usageError{err}
	}
	return withPool(ctx, cfg, func(pool *pgxpool.Pool) error {
		ring, err := openKeyring(ctx, cfg, pool)
		if err != nil {
			return err
		}
		store := eventstore.New(pool, ring)
		const by = "ticketd -erase-subject"
		er, err := eraser(store, pool)(ctx, email, by, reason, eventstore.Metadata{Actor: by,
			Principal: &eventstore.Principal{ID: "cli", Name: by, Role: "admin"}})
		if errors.Is(err, eventstore.ErrUnknownSubject) {
			return fmt.Errorf("-erase-subject: no personal data of %s is stored", email)
		}
		if err != nil {
			return err
		}
		state := "erased"
		if er.AlreadyErased {
			state = "already erased"
		}
		fmt.Fprintf(stdout, "subject %s %s: %d tickets, %d erasure events appended\n", er.Subject, state, len(er.Tickets), len(er.Appended))
		return nil
	})
}
