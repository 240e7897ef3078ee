package pgmodel

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
)

// RebuildSchema is the schema a rebuild builds the fresh Postgres read model in before
// it swaps it with "readmodel".
const RebuildSchema = "readmodel_new"

// Target is the Postgres read model as a projections.Target: a fresh schema made by
// readmodel_create_tables(), readmodel_create_comment_indexes() and
// readmodel_create_ticket_indexes() (together the same DDL as the live "readmodel"),
// filled by COPY, its tickets indexed once after, then brought up to date by the
// projector's own Apply, and renamed into place in the swap. The comments' key is made
// before the load: the rebuild feeds comments in its order (ticket, version), so each
// insert lands on the index's last page, cheaper than a build after the load (measured:
// less Postgres CPU, and no index build left between the load and the swap). The old
// tables are no longer reachable by name after the swap; the next rebuild (or Begin)
// drops them.
type Target struct {
	Pool   *pgxpool.Pool
	Events projections.Streams
}

// Group returns Group.
func (t Target) Group() string { return Group }

// Begin drops what an earlier rebuild left and creates the empty schema: bare tickets,
// and comments with their key.
func (t Target) Begin(ctx context.Context) error {
	return pgx.BeginFunc(ctx, t.Pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DROP SCHEMA IF EXISTS readmodel_old CASCADE;
			DROP SCHEMA IF EXISTS `+RebuildSchema+` CASCADE;
			SELECT readmodel_create_tables('`+RebuildSchema+`');
			SELECT readmodel_create_comment_indexes('`+RebuildSchema+`')`)
		return err
	})
}

// Load COPYs the views as ticket rows and the comments into the fresh schema, in one
// short transaction that does not wait for its WAL to reach the disk
// (synchronous_commit off): a crash may lose it, but a crash loses the whole unswapped
// copy anyway (the next rebuild drops it), and the swap, which commits synchronously,
// flushes every earlier commit with its own. Each of the rebuild's forty-odd batches
// used to wait for a WAL flush of its megabyte or so, on the Postgres target's path.
// Both COPYs are in COPY's binary format, encoded by hand into a buffer the next Load
// reuses.
func (t Target) Load(ctx context.Context, views []projections.View, comments []projections.TicketComment) error {
	if len(views) == 0 && len(comments) == 0 {
		return nil
	}
	cb := copyBuffers.Get().(*copyBuffer)
	defer copyBuffers.Put(cb)
	return pgx.BeginFunc(ctx, t.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
			return err
		}
		if len(views) > 0 {
			cb.buf = copyTickets(cb.buf[:0], views, cb.hashes(emailHasher(t.Events)))
			if _, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(cb.buf), copyTicketsSQL); err != nil {
				return fmt.Errorf("copy tickets: %w", err)
			}
		}
		if len(comments) > 0 {
			cb.buf = copyComments(cb.buf[:0], comments)
			if _, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(cb.buf), copyCommentsSQL); err != nil {
				return fmt.Errorf("copy comments: %w", err)
			}
		}
		return nil
	})
}

var (
	copyTicketsSQL  = `COPY ` + pgx.Identifier{RebuildSchema, "tickets"}.Sanitize() + ` (` + strings.Join(ticketColumns, ", ") + `) FROM STDIN (FORMAT binary)`
	copyCommentsSQL = `COPY ` + pgx.Identifier{RebuildSchema, "comments"}.Sanitize() + ` (` + strings.Join(commentColumns, ", ") + `) FROM STDIN (FORMAT binary)`
)

// copyBuffer is the room one Load encodes its COPY data in, and the email hashes it
// made, kept for the next Load.
type copyBuffer struct {
	buf    []byte
	hashed map[string][]byte
}

var copyBuffers = sync.Pool{New: func() any { return new(copyBuffer) }}

// hashes returns hash remembering its results in cb: one HMAC per address and batch,
// not one per ticket (many tickets share a requester). Nil when hash is nil.
func (cb *copyBuffer) hashes(hash func(string) []byte) func(string) []byte {
	if hash == nil {
		return nil
	}
	if cb.hashed == nil || len(cb.hashed) > 10_000 {
		cb.hashed = make(map[string][]byte)
	}
	return func(email string) []byte {
		h, ok := cb.hashed[email]
		if !ok {
			h = hash(email)
			cb.hashed[email] = h
		}
		return h
	}
}

// Loaded builds the key and indexes of the loaded tickets, in a transaction that does
// not wait for the WAL of the index build to reach the disk (see Load: the swap's
// synchronous commit flushes it).
func (t Target) Loaded(ctx context.Context) error {
	return pgx.BeginFunc(ctx, t.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT readmodel_create_ticket_indexes('`+RebuildSchema+`')`)
		return err
	})
}

// Apply applies events to the fresh schema with the projector's own code.
func (t Target) Apply(ctx context.Context, tx pgx.Tx, recs []eventstore.Record) error {
	return Projector{Schema: RebuildSchema, Events: t.Events}.Apply(ctx, tx, recs)
}

// Swap renames the live schema away and the fresh one into its place.
func (t Target) Swap(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `ALTER SCHEMA readmodel RENAME TO readmodel_old;
		ALTER SCHEMA `+RebuildSchema+` RENAME TO readmodel`)
	return err
}

// Abort drops the fresh schema (the live one was never touched).
func (t Target) Abort(ctx context.Context) error {
	_, err := t.Pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+RebuildSchema+` CASCADE`)
	return err
}

// Finish drops the schema the swap renamed away, after the swap committed, so the swap
// never waits for a reader of the old tables. A failure is left for the next Begin.
func (t Target) Finish(ctx context.Context) error {
	_, err := t.Pool.Exec(ctx, `DROP SCHEMA IF EXISTS readmodel_old CASCADE`)
	return err
}

// copyHeader starts COPY's binary format: its signature, flags and header extension.
const copyHeader = "PGCOPY\n\xff\r\n\x00" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00"

func copyText(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// copyTickets appends the views as the rows of ticketColumns (ticketRow's values) in
// COPY's binary format to b, by hand like copyComments; hash gives email_hash (nil:
// NULL). TestRebuildEqualsIncrementalProjection compares what it writes with what the
// projector's upserts write.
func copyTickets(b []byte, views []projections.View, hash func(string) []byte) []byte {
	b = append(b, copyHeader...)
	for i := range views {
		v := &views[i]
		b = binary.BigEndian.AppendUint16(b, uint16(len(ticketColumns)))
		b = binary.BigEndian.AppendUint32(b, 16)
		b = append(b, v.ID[:]...)
		b = copyText(b, v.Title)
		b = copyText(b, v.Description)
		b = copyText(b, v.Email)
		b = copyText(b, v.CreatedBy)
		b = copyText(b, v.UpdatedBy)
		b = copyText(b, string(v.Status))
		b = binary.BigEndian.AppendUint32(b, 4)
		b = binary.BigEndian.AppendUint32(b, uint32(int32(v.Version)))
		b = binary.BigEndian.AppendUint32(b, 4)
		b = binary.BigEndian.AppendUint32(b, uint32(int32(v.CommentCount)))
		b = binary.BigEndian.AppendUint32(b, 8)
		b = binary.BigEndian.AppendUint64(b, uint64(pgMicros(v.CreatedAt)))
		b = binary.BigEndian.AppendUint32(b, 8)
		b = binary.BigEndian.AppendUint64(b, uint64(pgMicros(v.UpdatedAt)))
		b = binary.BigEndian.AppendUint32(b, 1)
		if v.Deleted {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		if h := hashOf(hash, v.Email); h == nil {
			b = binary.BigEndian.AppendUint32(b, 0xffffffff) // NULL
		} else {
			b = binary.BigEndian.AppendUint32(b, uint32(len(h)))
			b = append(b, h...)
		}
	}
	return binary.BigEndian.AppendUint16(b, 0xffff) // the trailer: a field count of -1
}

// copyComments appends comments as the rows of commentColumns in COPY's binary format
// to b, by hand: a rebuild COPYs every comment of the store, and pgx's generic encoding
// (a boxed value and an encode plan looked up per column and row) was a tenth of the
// rebuild's CPU in ticketd. TestRebuildEqualsIncrementalProjection compares what it
// writes with what the projector's inserts write.
func copyComments(b []byte, comments []projections.TicketComment) []byte {
	b = append(b, copyHeader...)
	for i := range comments {
		c := &comments[i]
		b = binary.BigEndian.AppendUint16(b, uint16(len(commentColumns)))
		b = binary.BigEndian.AppendUint32(b, 16)
		b = append(b, c.ID[:]...)
		b = binary.BigEndian.AppendUint32(b, 16)
		b = append(b, c.TicketID[:]...)
		b = binary.BigEndian.AppendUint32(b, 4)
		b = binary.BigEndian.AppendUint32(b, uint32(int32(c.Version)))
		b = copyText(b, c.Body)
		b = copyText(b, c.Email)
		b = copyText(b, c.CreatedBy)
		b = binary.BigEndian.AppendUint32(b, 8)
		b = binary.BigEndian.AppendUint64(b, uint64(pgMicros(c.CreatedAt)))
	}
	return binary.BigEndian.AppendUint16(b, 0xffff) // the trailer: a field count of -1
}

// pgMicros is t as Postgres' binary timestamptz: microseconds since 2000-01-01 UTC.
func pgMicros(t time.Time) int64 {
	return t.Unix()*1_000_000 + int64(t.Nanosecond())/1000 - 946_684_800*1_000_000
}
