package eventstore

import (
	"context"
	"fmt"

	gojson "github.com/goccy/go-json"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/ticket"
)

// The reads of the events table. Every query of it lives in this package and every row
// goes through scanEvent, so the decoding of a stored event is written once.

// eventColumns are the columns scanEvent reads, in its order. A query that does not
// need the metadata selects NULL in its place (the record's Actor is then empty).
const eventColumns = `position, stream_id, version, type, data, metadata, recorded_at`

// leanColumns are eventColumns without the metadata: folds need neither the actor nor
// the request ids, and decoding a JSON document per event is a third of a replay.
const leanColumns = `position, stream_id, version, type, data, NULL::jsonb, recorded_at`

// Querier runs a query: a pool, a connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// rawEvent is one row of eventColumns as read, before its JSON is decoded.
type rawEvent struct {
	rec      Record
	typ      string
	data, md []byte
}

// scanRaw reads one row of eventColumns (then into extra any columns after them)
// without decoding it.
func scanRaw(row pgx.Row, extra ...any) (rawEvent, error) {
	var r rawEvent
	// The id as [16]byte takes pgx's binary path; uuid.UUID is a database/sql Scanner,
	// which pgx feeds the id's text to parse again.
	dest := append([]any{&r.rec.Position, (*[16]byte)(&r.rec.TicketID), &r.rec.Version, &r.typ, &r.data, &r.md, &r.rec.RecordedAt}, extra...)
	return r, row.Scan(dest...)
}

// decode turns a raw row into its record: the one place a stored event is decoded.
func (r rawEvent) decode() (Record, error) {
	rec := r.rec
	if r.data == nil {
		r.data = []byte("{}") // not read (StreamQuery.WithoutDataOf): the zero data
	}
	d, err := ticket.DecodeData(r.typ, r.data)
	if err != nil {
		return rec, fmt.Errorf("event %d of %s: %w", rec.Version, rec.TicketID, err)
	}
	if len(r.md) > 0 {
		if err := gojson.Unmarshal(r.md, &rec.Metadata); err != nil {
			return rec, fmt.Errorf("decode metadata of %s version %d: %w", rec.TicketID, rec.Version, err)
		}
	}
	// pgx reads timestamptz in the process's zone; events are recorded in UTC, and a
	// loaded record must equal the appended one (and render the same in JSON).
	rec.RecordedAt = rec.RecordedAt.UTC()
	rec.Event = ticket.Event{TicketID: rec.TicketID, Version: rec.Version, At: rec.RecordedAt, Actor: rec.Metadata.Actor, Data: d}
	return rec, nil
}

// scanEvent reads and decodes one row of eventColumns (then into extra any columns
// after them).
func scanEvent(row pgx.Row, extra ...any) (Record, error) {
	r, err := scanRaw(row, extra...)
	if err != nil {
		return r.rec, err
	}
	return r.decode()
}

func collect(rows pgx.Rows) ([]Record, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Record, error) { return scanEvent(row) })
}

// Range returns, through q, the events written by transactions with from <=
// transaction_id < to (xid8 values in decimal), in commit order as the outbox has them
// (transaction, then position), with their metadata. With to at or below the
// snapshot's xmin the set can no longer change: every transaction below it has ended.
func (s *Store) Range(ctx context.Context, q Querier, from, to string) ([]Record, error) {
	rows, err := q.Query(ctx, `SELECT `+eventColumns+` FROM events
		WHERE transaction_id >= $1::xid8 AND transaction_id < $2::xid8 ORDER BY transaction_id, position`, from, to)
	if err != nil {
		return nil, interpret(err, uuid.Nil, 0)
	}
	recs, err := collect(rows)
	if err == nil {
		err = s.personal.revealVia(ctx, q, recs)
	}
	if err != nil {
		return nil, interpret(err, uuid.Nil, 0)
	}
	return recs, nil
}

// LoadStreams returns, through q, the events of each stream ids[i] up to version
// upTo[i], in (stream, version) order, in one statement. A caller inside a transaction
// reads through it rather than taking another connection from the pool.
func (s *Store) LoadStreams(ctx context.Context, q Querier, ids []uuid.UUID, upTo []int) ([]Record, error) {
	if len(ids) != len(upTo) {
		return nil, fmt.Errorf("load streams: %d streams, %d versions: %w", len(ids), len(upTo), ticket.ErrInvalid)
	}
	rows, err := q.Query(ctx, `SELECT `+eventColumns+` FROM events
		JOIN unnest($1::uuid[], $2::int[]) AS k(id, up_to) ON stream_id = k.id AND version <= k.up_to
		ORDER BY stream_id, version`, ids, upTo)
	if err != nil {
		return nil, interpret(err, uuid.Nil, 0)
	}
	recs, err := collect(rows)
	if err == nil {
		err = s.personal.revealVia(ctx, q, recs)
	}
	if err != nil {
		return nil, interpret(err, uuid.Nil, 0)
	}
	return recs, nil
}

// CountRange returns, through q, how many events transactions with from <=
// transaction_id < to wrote.
func CountRange(ctx context.Context, q Querier, from, to string) (int64, error) {
	rows, err := q.Query(ctx, `SELECT count(*) FROM events WHERE transaction_id >= $1::xid8 AND transaction_id < $2::xid8`, from, to)
	if err != nil {
		return 0, interpret(err, uuid.Nil, 0)
	}
	n, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, interpret(err, uuid.Nil, 0)
	}
	return n, nil
}

// replayInto applies to t the events of its stream after t's version up to upTo, read
// without metadata and applied as they arrive, so nothing of a long stream is held at
// once. It returns how many it applied.
func (s *Store) replayInto(ctx context.Context, t *ticket.Ticket, upTo int) (int, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+leanColumns+`
		FROM events WHERE stream_id = $1 AND version > $2 AND version <= $3 ORDER BY version`, t.ID(), t.Version(), upTo)
	if err != nil {
		return 0, interpret(err, t.ID(), 0)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		r, err := scanEvent(rows)
		if err != nil {
			return n, interpret(err, t.ID(), 0)
		}
		if err := t.Apply(r.Event); err != nil {
			return n, err
		}
		if s.personal != nil && r.Version == 1 {
			s.personal.learnOpened(r)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return n, interpret(err, t.ID(), 0)
	}
	return n, nil
}

// ctxCheckEvery is how many rows a long read decodes between checks of its context.
const ctxCheckEvery = 64

// HeadQuery selects the version of stream $1's last event (0 for an unknown stream),
// for a read model that checks in the same round trip whether it is behind the store.
const HeadQuery = `SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1`

// HeadOf is HeadQuery as an SQL expression on the stream id expression id, for a query
// over many streams.
func HeadOf(id string) string {
	return `(SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ` + id + `)`
}

// StreamAt returns stream id's events up to and including version (clamped to the
// stream's head), without metadata, and the head version read in the same statement,
// so the caller can tell a version beyond the stream from one inside it. It returns
// ticket.ErrNotFound for a stream with no events, a *ticket.ValidationError for a
// version below 1, and wraps ticket.ErrUnavailable for an unreachable database.
func (s *Store) StreamAt(ctx context.Context, id uuid.UUID, version int) ([]Record, int, error) {
	if version < 1 {
		return nil, 0, &ticket.ValidationError{Field: "version", Reason: "must be a whole number of at least 1"}
	}
	recs, head, err := s.ReadStream(ctx, id, StreamQuery{UpTo: version})
	if err == nil && len(recs) == 0 {
		// No event at or below version means no stream at all: versions start at 1.
		return nil, 0, fmt.Errorf("ticket %s has no events: %w", id, ticket.ErrNotFound)
	}
	return recs, head, err
}

// StreamQuery selects events of one stream for ReadStream.
type StreamQuery struct {
	// After and UpTo bound the versions: After < version <= UpTo (UpTo 0: no bound).
	After, UpTo int
	// Limit caps the events returned (0: no cap).
	Limit int
	// WithoutDataOf names an event type whose data is not read: those events come back
	// with their kind's zero data. For a reader that needs such events' order and
	// count but not their content; their payloads (large ones are TOASTed) are then
	// neither read from disk, nor sent, nor decoded.
	WithoutDataOf string
}

// ReadStream returns stream id's events that q selects, in version order, without
// metadata, and the stream's head version read in the same statement (0 when no event
// is selected). A read of many events checks ctx between batches of rows, so a request
// whose client left stops reading. Errors wrap ticket.ErrUnavailable for an
// unreachable database.
func (s *Store) ReadStream(ctx context.Context, id uuid.UUID, q StreamQuery) ([]Record, int, error) {
	upTo, limit := q.UpTo, q.Limit
	if upTo <= 0 {
		upTo = int(^uint32(0) >> 1)
	}
	if limit <= 0 {
		limit = upTo
	}
	rows, err := s.pool.Query(ctx, `SELECT position, stream_id, version, type,
		CASE WHEN type = $5 THEN NULL ELSE data END, NULL::jsonb, recorded_at, (`+HeadQuery+`)
		FROM events WHERE stream_id = $1 AND version > $2 AND version <= $3
		ORDER BY version LIMIT $4`, id, q.After, upTo, limit, q.WithoutDataOf)
	if err != nil {
		return nil, 0, interpret(err, id, 0)
	}
	defer rows.Close()
	var head int
	var recs []Record
	for rows.Next() {
		// pgx notices an ended context only when it waits for the network; rows already
		// received would still be decoded, so a long stream checks it between batches.
		if len(recs)%ctxCheckEvery == ctxCheckEvery-1 {
			if err := ctx.Err(); err != nil {
				return nil, 0, interpret(context.Cause(ctx), id, 0)
			}
		}
		r, err := scanEvent(rows, &head)
		if err != nil {
			return nil, 0, interpret(err, id, 0)
		}
		recs = append(recs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, interpret(err, id, 0)
	}
	if err := s.personal.reveal(ctx, recs); err != nil {
		return nil, 0, interpret(err, id, 0)
	}
	return recs, head, nil
}
