package eventstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/ticket"
)

// The reads of a live tail (the SSE streams of httpapi): which streams grew since a
// point, for every tail at once, and where one stream stands. The events themselves
// are read with History.

// Watermark is a point in the events table's commit order: every event written by a
// transaction with an id below it is committed and visible. It is the xmin of a
// snapshot (xid8, as the outbox orders by), kept as its number. The zero Watermark is
// "not known yet".
type Watermark uint64

// CurrentWatermark returns the xmin of a snapshot taken now: an event committed from
// now on was written by a transaction at or above it. It reads no table. Errors wrap
// ticket.ErrUnavailable for an unreachable database.
func (s *Store) CurrentWatermark(ctx context.Context) (Watermark, error) {
	var x string
	if err := s.pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&x); err != nil {
		return 0, interpret(err, uuid.Nil, 0)
	}
	return parseWatermark(x)
}

func parseWatermark(x string) (Watermark, error) {
	n, err := strconv.ParseUint(x, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("snapshot xmin %q: %w", x, err)
	}
	return Watermark(n), nil
}

// Changes returns the streams that transactions with ids at or above from wrote and
// that are committed now, each with its highest version committed, and the watermark
// to pass next time. One statement, one short use of a pool connection, whatever the
// number of streams a caller follows; it reads the events of those transactions only
// (the events_transaction index), so its cost follows the write rate.
//
// Nothing committed from now on is missed by the next call from next: its transaction
// is at or above next (it was running at this snapshot, or began after it). Events of
// transactions that committed at or above next are reported again by that call: a
// caller compares versions. A transaction that stays open holds next back, and the
// range read grows until it ends (as it holds back the projectors).
func (s *Store) Changes(ctx context.Context, from Watermark) (heads map[uuid.UUID]int, next Watermark, err error) {
	rows, err := s.pool.Query(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text, NULL::uuid, 0
		UNION ALL
		SELECT NULL, stream_id, max(version) FROM events WHERE transaction_id >= $1::text::xid8 GROUP BY stream_id`,
		strconv.FormatUint(uint64(from), 10))
	if err != nil {
		return nil, 0, interpret(err, uuid.Nil, 0)
	}
	defer rows.Close()
	heads = map[uuid.UUID]int{}
	for rows.Next() {
		var x *string
		var id *uuid.UUID
		var v int
		if err := rows.Scan(&x, &id, &v); err != nil {
			return nil, 0, interpret(err, uuid.Nil, 0)
		}
		if x != nil {
			if next, err = parseWatermark(*x); err != nil {
				return nil, 0, err
			}
			continue
		}
		heads[*id] = v
	}
	if err := rows.Err(); err != nil {
		return nil, 0, interpret(err, uuid.Nil, 0)
	}
	return heads, max(next, from), nil
}

// Head returns the version and type of stream id's last event. It returns
// ticket.ErrNotFound for a stream with no events, and wraps ticket.ErrUnavailable for
// an unreachable database.
func (s *Store) Head(ctx context.Context, id uuid.UUID) (version int, typ string, err error) {
	err = s.pool.QueryRow(ctx, `SELECT version, type FROM events WHERE stream_id = $1 ORDER BY version DESC LIMIT 1`, id).Scan(&version, &typ)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, "", fmt.Errorf("ticket %s has no events: %w", id, ticket.ErrNotFound)
	}
	if err != nil {
		return 0, "", interpret(err, id, 0)
	}
	return version, typ, nil
}
