package projections

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pipeTx is a batch's transaction (see consumer.batch) that costs no round trip of its
// own: its BEGIN goes to Postgres in the pipeline of the batch's read (the lock and
// the select) and its COMMIT in the pipeline of its writes (the read model's queued
// writes and the ack), so a batch takes two round trips where pgx's BeginTx, the read,
// the writes and Commit took four. On a loaded machine every round trip is a wait for
// both processes to be scheduled, which is most of a batch's time.
//
// Postgres keeps a transaction block that BEGIN opened inside a pipeline open past its
// Sync, as after a BEGIN of its own; a failed statement skips the rest of its pipeline
// (the COMMIT too) and leaves the block aborted, for Rollback. The handlers use it as
// any pgx.Tx, except for savepoints (Begin; the one-at-a-time retries, which need them,
// use pgx's transaction) and large objects.
type pipeTx struct {
	conn *pgxpool.Conn
	done bool
}

// beginQuery opens a pipeTx's transaction block, as pgx's BeginTx does for ReadCommitted.
const beginQuery = `BEGIN ISOLATION LEVEL READ COMMITTED`

// commitQuery ends a pipeTx's writes pipeline; its command tag says whether the
// transaction committed (a block that failed answers ROLLBACK).
const commitQuery = `COMMIT`

var errNoSavepoints = errors.New("projections: a batch's pipelined transaction has no savepoints")

func (t *pipeTx) Begin(context.Context) (pgx.Tx, error) { return nil, errNoSavepoints }

// committed records that the pipeline's COMMIT succeeded: Commit and Rollback then do
// nothing.
func (t *pipeTx) committed() { t.done = true }

// Commit commits the transaction, if the writes' pipeline did not.
func (t *pipeTx) Commit(ctx context.Context) error {
	if t.done {
		return pgx.ErrTxClosed
	}
	t.done = true
	tag, err := t.conn.Exec(ctx, commitQuery)
	if err == nil && tag.String() != "COMMIT" {
		err = pgx.ErrTxCommitRollback
	}
	return err
}

// Rollback rolls the transaction back unless it ended; a connection it cannot bring
// back to idle is closed (the pool drops it at Release).
func (t *pipeTx) Rollback(ctx context.Context) error {
	if t.done {
		return pgx.ErrTxClosed
	}
	t.done = true
	_, err := t.conn.Exec(ctx, `ROLLBACK`)
	if err != nil {
		_ = t.conn.Conn().Close(ctx)
	}
	return err
}

func (t *pipeTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	return t.conn.CopyFrom(ctx, table, columns, src)
}

func (t *pipeTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return t.conn.SendBatch(ctx, b)
}

// LargeObjects is not supported: the zero value it returns fails on use.
func (t *pipeTx) LargeObjects() pgx.LargeObjects { return pgx.LargeObjects{} }

func (t *pipeTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.conn.Conn().Prepare(ctx, name, sql)
}

func (t *pipeTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return t.conn.Exec(ctx, sql, args...)
}

func (t *pipeTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return t.conn.Query(ctx, sql, args...)
}

func (t *pipeTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return t.conn.QueryRow(ctx, sql, args...)
}

func (t *pipeTx) Conn() *pgx.Conn { return t.conn.Conn() }
