package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/pii"
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
