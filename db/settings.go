package db

import (
	"context"
	"crypto/rand"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// CursorSecretSetting names the key that signs list cursors when CURSOR_SECRET is unset.
const CursorSecretSetting = "cursor_secret"

// Setting returns the value stored under name in the settings table, storing size
// random bytes there first if nothing is. Every instance on one database gets the
// same value, also when several start at once: the insert does nothing when a row
// exists (waiting for a concurrent insert of the same name to commit or roll back),
// and the value is read by a second statement, whose snapshot sees the winner's row.
// (One statement would not: its snapshot predates a concurrent insert it conflicted with.)
func Setting(ctx context.Context, pool *pgxpool.Pool, name string, size int) ([]byte, error) {
	fresh := make([]byte, size)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("setting %s: %w", name, err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`, name, fresh); err != nil {
		return nil, fmt.Errorf("setting %s: store: %w", name, err)
	}
	var value []byte
	if err := pool.QueryRow(ctx, `SELECT value FROM settings WHERE name = $1`, name).Scan(&value); err != nil {
		return nil, fmt.Errorf("setting %s: read: %w", name, err)
	}
	if len(value) == 0 {
		return nil, fmt.Errorf("setting %s: stored value is empty", name)
	}
	return value, nil
}
