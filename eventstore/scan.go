package eventstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"

	"github.com/ticketd/ticketd/ticket"
)

// scanColumns are the columns ScanCommitted reads, each in Postgres' binary format:
// what a fold needs (no position, no metadata).
const scanColumns = `stream_id, version, type, data, recorded_at`

// scanGroupEvents is about how many events (whole streams) one group carries from the
// reading goroutine to a worker: their personal fields are revealed in one call (one
// look-up of the keys not cached, one set of its maps), and the channel is crossed once
// per group instead of once per stream.
const scanGroupEvents = 1024

// scanGroup is whole streams, in order: events, and where each stream ends in it.
type scanGroup struct {
	events []ticket.Event
	ends   []int
}

// ScanCommitted calls fn with every stream written by transactions with
// transaction_id < below, each stream whole and in version order, without metadata
// (Actor empty). One statement reads them outside any transaction (a read-only
// statement holds no transaction id, so it holds back no consumer), in binary, each
// row decoded as it arrives (no copy of its bytes; the data of the usual kinds decoded
// by hand, see decodeData); workers goroutines reveal the personal fields of groups of
// streams and call fn at once, so fn must be safe for concurrent use (with more than
// one worker, streams come in no particular order). fn may keep the slice it gets. It
// stops at the first error.
func (s *Store) ScanCommitted(ctx context.Context, below string, workers int, fn func([]ticket.Event) error) error {
	g, ctx := errgroup.WithContext(ctx)
	groups := make(chan scanGroup, 4*max(workers, 1))
	for range max(workers, 1) {
		g.Go(func() error {
			for grp := range groups {
				if err := s.personal.revealEvents(ctx, grp.events); err != nil {
					return err
				}
				from := 0
				for _, end := range grp.ends {
					if err := fn(grp.events[from:end:end]); err != nil {
						return err
					}
					from = end
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(groups)
		rows, err := s.pool.Query(ctx, `SELECT `+scanColumns+` FROM events
			WHERE transaction_id < $1::xid8 ORDER BY stream_id, version`, below)
		if err != nil {
			return interpret(err, uuid.Nil, 0)
		}
		defer rows.Close()
		jsonbBinary, err := scanFormats(rows.FieldDescriptions())
		if err != nil {
			return err
		}
		cur := scanGroup{events: make([]ticket.Event, 0, scanGroupEvents+64)}
		send := func() error {
			if len(cur.events) == 0 {
				return nil
			}
			cur.ends = append(cur.ends, len(cur.events))
			select {
			case groups <- cur:
			case <-ctx.Done():
				return ctx.Err()
			}
			cur = scanGroup{events: make([]ticket.Event, 0, max(scanGroupEvents+64, cap(cur.events)))}
			return nil
		}
		var types typeNames
		for rows.Next() {
			e, err := scanEventRaw(rows.RawValues(), jsonbBinary, &types)
			if err != nil {
				return err
			}
			if n := len(cur.events); n > 0 && cur.events[n-1].TicketID != e.TicketID {
				// a stream ends: the group goes once it is big enough
				if n >= scanGroupEvents {
					if err := send(); err != nil {
						return err
					}
				} else {
					cur.ends = append(cur.ends, n)
				}
			}
			cur.events = append(cur.events, e)
		}
		if err := rows.Err(); err != nil {
			return interpret(err, uuid.Nil, 0)
		}
		return send()
	})
	return g.Wait()
}

// scanFormats checks the formats the columns of scanColumns came in: the uuid, int4
// and timestamptz in binary (as pgx asks for them), the text in either (its bytes
// alike); it reports whether the jsonb came in binary (its text after a version byte).
func scanFormats(fields []pgconn.FieldDescription) (jsonbBinary bool, err error) {
	if len(fields) != 5 {
		return false, fmt.Errorf("scan events: %d columns", len(fields))
	}
	for _, i := range []int{0, 1, 4} {
		if fields[i].Format != pgx.BinaryFormatCode {
			return false, fmt.Errorf("scan events: column %s came in text format", fields[i].Name)
		}
	}
	return fields[3].Format == pgx.BinaryFormatCode, nil
}

// typeNames interns the event type names a scan reads, so a row's type costs no
// string.
type typeNames []string

func (t *typeNames) of(b []byte) string {
	for _, s := range *t {
		if s == string(b) {
			return s
		}
	}
	s := string(b)
	*t = append(*t, s)
	return s
}

// errRowEncoding: a row of scanColumns that is not what Postgres sends for them.
var errRowEncoding = errors.New("scan events: unexpected row encoding")

// scanEventRaw decodes one row of scanColumns as pgx gives it (see scanFormats: uuid:
// 16 bytes; int4; text: its bytes; jsonb: its text, after a version byte 1 in binary;
// timestamptz: microseconds since 2000-01-01), the event's time in UTC as decode
// makes it.
func scanEventRaw(raw [][]byte, jsonbBinary bool, types *typeNames) (ticket.Event, error) {
	var e ticket.Event
	if len(raw) != 5 || len(raw[0]) != 16 || len(raw[1]) != 4 || len(raw[4]) != 8 {
		return e, errRowEncoding
	}
	data := raw[3]
	if jsonbBinary {
		if len(data) < 1 || data[0] != 1 {
			return e, errRowEncoding
		}
		data = data[1:]
	}
	e.TicketID = uuid.UUID(raw[0])
	e.Version = int(int32(binary.BigEndian.Uint32(raw[1])))
	micros := int64(binary.BigEndian.Uint64(raw[4]))
	if micros == math.MaxInt64 || micros == math.MinInt64 {
		return e, fmt.Errorf("event %d of %s: recorded at infinity", e.Version, e.TicketID)
	}
	micros += pgEpochMicros
	e.At = time.Unix(micros/1_000_000, (micros%1_000_000)*1000).UTC()
	typ := types.of(raw[2])
	d, err := decodeData(typ, data)
	if err != nil {
		return e, fmt.Errorf("event %d of %s: %w", e.Version, e.TicketID, err)
	}
	e.Data = d
	return e, nil
}
