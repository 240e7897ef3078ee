package eventstore

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// appendStatement writes a command's events and their outbox rows in one statement,
// so an append costs one round trip between BEGIN and COMMIT (the transaction holds
// an id, and with it every consumer's view of newer events, for that long only):
//
//   - ev inserts the events (positions from the identity column, transaction_id
//     defaulting to the writing transaction);
//   - outbox inserts, into watermill-sql's outbox table for Topic, the rows its
//     publisher would insert for them (uuid, payload, metadata "{}", transaction_id =
//     pg_current_xact_id()), in version order, each payload completed with the position
//     the event got;
//   - the statement returns the positions in version order.
//
// Postgres runs data-modifying WITH clauses exactly once whether or not the main query
// reads them, and all of it is one atomic statement: an event is stored and published,
// or neither.
var appendStatement = `WITH ev AS (
	INSERT INTO events (stream_id, version, type, data, metadata, recorded_at)
	SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::jsonb[], $5::jsonb[], $6::timestamptz[])
	RETURNING position, version
), outbox AS (
	INSERT INTO ` + wsql.DefaultPostgreSQLSchema{}.MessagesTable(Topic) + ` (uuid, payload, metadata, transaction_id)
	SELECT m.uuid, jsonb_set(m.payload, '{position}', to_jsonb(ev.position))::json, '{}', pg_current_xact_id()
	FROM unnest($7::text[], $8::jsonb[], $2::int[]) WITH ORDINALITY AS m(uuid, payload, version, ord)
	JOIN ev ON ev.version = m.version
	ORDER BY m.ord
)
SELECT position FROM ev ORDER BY version`

// queueAppend queues appendStatement for recs (all of one stream, in version order);
// readAppend reads its result.
func queueAppend(b *pgx.Batch, recs []Record) error {
	n := len(recs)
	streams := make([]uuid.UUID, n)
	versions := make([]int32, n)
	types := make([]string, n)
	data, metadata, payloads, ids := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	at := make([]time.Time, n)
	for i, r := range recs {
		d, err := json.Marshal(r.Data)
		if err != nil {
			return fmt.Errorf("encode %s: %w", r.Type(), err)
		}
		md, err := json.Marshal(r.Metadata)
		if err != nil {
			return fmt.Errorf("encode metadata: %w", err)
		}
		payload, err := EncodeMessage(r)
		if err != nil {
			return err
		}
		streams[i], versions[i], types[i], at[i] = r.TicketID, int32(r.Version), r.Type(), r.RecordedAt
		data[i], metadata[i], payloads[i] = string(d), string(md), string(payload)
		// A deterministic message id per event (stream, version) lets consumers and
		// operators match a message to its event.
		ids[i] = uuid.NewSHA1(r.TicketID, []byte(strconv.Itoa(r.Version))).String()
	}
	b.Queue(appendStatement, streams, versions, types, data, metadata, at, ids, payloads)
	return nil
}

// readAppend reads the result of the statement queueAppend queued and fills in the
// records' positions.
func readAppend(br pgx.BatchResults, recs []Record) error {
	rows, err := br.Query()
	if err != nil {
		return err
	}
	positions, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return err
	}
	if len(positions) != len(recs) {
		return fmt.Errorf("append of %d events stored %d", len(recs), len(positions))
	}
	for i := range recs {
		recs[i].Position = positions[i]
	}
	return nil
}
