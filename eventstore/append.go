package eventstore

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// appendStatement writes the events of one or more commands (each on its own stream),
// their outbox rows and their idempotency answers in one statement, so a transaction
// of appends costs one round trip between BEGIN and COMMIT:
//
//   - ev inserts the events (positions from the identity column, transaction_id
//     defaulting to the writing transaction). An event whose (stream_id, version) is
//     taken is skipped rather than failing the statement, so one command's clash does
//     not fail the others: the unique key still decides who wins, and the result says
//     who did;
//   - outbox inserts, into watermill-sql's outbox table for Topic, the rows its
//     publisher would insert for the events that were inserted (uuid, payload,
//     metadata "{}", transaction_id = pg_current_xact_id()), in the order given (each
//     stream in version order), each payload completed with the position its event got:
//     the payload comes as the text after {"position":N (appendMessageTail) and the
//     position is put in front as text, cheaper for Postgres than parsing it as jsonb
//     and setting the key (json validates it; consumers read it as JSON either way);
//   - idem stores the answers of the commands that carry an Idempotency-Key; a live
//     answer under the key is left alone and its row is not returned, which tells the
//     writer that another run under the key committed first;
//   - the statement returns (stream, version, position) of every inserted event and
//     (stream, 0, 0) of every stored answer.
//
// Before them, the keys of the data subjects whose personal fields the commands sealed
// (personal.go): newkey stores the keys made for this append (a subject without one;
// an erased subject's new key is stored before, see personal.keyForWrite), held takes the stored ones FOR SHARE, so an erasure waits for
// this transaction (and this transaction, for an erasure in progress, whose result it
// then reads), and stale names the commands that sealed with a key that is not the
// subject's now: their events and answers are not written, the statement returns
// (stream, -1, 0) for them, and they are sealed again and retried. subj records which
// subjects' data each stream holds (subject_streams), for the erasure.
//
// Postgres runs data-modifying WITH clauses exactly once whether or not the main query
// reads them, and all of it is one atomic statement: an event is stored and published,
// or neither. A command that got only part of what it wrote (some events, or its events
// without its answer) makes the caller roll the transaction back (see outcomeOf).
var appendStatement = appendSQL(true)

// plainAppendStatement is appendStatement for a store without a keyring: nothing
// sealed, no keys to check (and no subject tables needed).
var plainAppendStatement = appendSQL(false)

func appendSQL(keys bool) string {
	sql := `WITH `
	notStale, subj := ``, ``
	if keys {
		sql += `newkey AS (
	INSERT INTO subject_keys AS k (subject, wrapped)
	SELECT DISTINCT ON (u.subject) u.subject, u.wrapped
	FROM unnest($16::bytea[], $17::bytea[], $18::bool[]) AS u(subject, wrapped, fresh)
	WHERE u.fresh ORDER BY u.subject
	ON CONFLICT (subject) DO NOTHING
	RETURNING subject, wrapped
), held AS (
	SELECT subject, wrapped FROM subject_keys
	WHERE subject = ANY($16::bytea[]) AND wrapped IS NOT NULL
	FOR SHARE
), stale AS (
	SELECT DISTINCT u.stream_id
	FROM unnest($15::uuid[], $16::bytea[], $17::bytea[]) AS u(stream_id, subject, wrapped)
	WHERE NOT EXISTS (SELECT 1 FROM newkey n WHERE n.subject = u.subject AND n.wrapped = u.wrapped)
	AND NOT EXISTS (SELECT 1 FROM held h WHERE h.subject = u.subject AND h.wrapped = u.wrapped)
), `
		notStale = `WHERE e.stream_id NOT IN (SELECT stream_id FROM stale)`
		subj = `), subj AS (
	INSERT INTO subject_streams (subject, stream_id)
	SELECT DISTINCT u.subject, u.stream_id FROM unnest($15::uuid[], $16::bytea[]) AS u(stream_id, subject)
	WHERE u.stream_id IN (SELECT stream_id FROM ev)
	ON CONFLICT DO NOTHING
`
	}
	sql += `ev AS (
	INSERT INTO events (stream_id, version, type, data, metadata, recorded_at)
	SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::jsonb[], $5::jsonb[], $6::timestamptz[])
		AS e(stream_id, version, type, data, metadata, recorded_at)
	` + notStale + `
	ON CONFLICT (stream_id, version) DO NOTHING
	RETURNING position, stream_id, version
` + subj + `), outbox AS (
	INSERT INTO ` + wsql.DefaultPostgreSQLSchema{}.MessagesTable(Topic) + ` (uuid, payload, metadata, transaction_id)
	SELECT m.uuid, ('{"position":' || ev.position || m.payload)::json, '{}', pg_current_xact_id()
	FROM unnest($1::uuid[], $2::int[], $7::text[], $8::text[]) WITH ORDINALITY AS m(stream_id, version, uuid, payload, ord)
	JOIN ev USING (stream_id, version)
	ORDER BY m.ord
), idem AS (
	INSERT INTO idempotency_keys AS k (scope, key, request_hash, stream_id, answer)
	SELECT * FROM unnest($9::text[], $10::text[], $11::bytea[], $12::uuid[], $13::bytea[]) AS e(scope, key, request_hash, stream_id, answer)
	` + notStale + `
	ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash,
		stream_id = excluded.stream_id, answer = excluded.answer, created_at = now()
	WHERE k.created_at <= now() - ($14::bigint * interval '1 microsecond')
	RETURNING stream_id
)
SELECT stream_id, version, position FROM ev
UNION ALL
SELECT stream_id, 0, 0 FROM idem`
	if keys {
		sql += `
UNION ALL
SELECT stream_id, -1, 0 FROM stale`
	}
	return sql
}

// pending is one command's append: its records, encoded once by the caller, and the
// idempotency answer to store with them.
type pending struct {
	recs []Record
	rows []encodedRow
	// keys are the subjects' keys the rows are sealed with (none without personal data
	// or a keyring).
	keys []keyUse
	idem *Idempotency
	// answer is what idem stores (nil without idem).
	answer []byte
	// ctx is the caller's: the group's transaction lasts while any caller waits.
	ctx context.Context
	// done receives the append's outcome once; it is buffered so that whoever
	// commits never waits for the caller.
	done chan error
}

// encodedRow is a record as the statement takes it: data and metadata as JSON, the
// outbox payload after its position (appendMessageTail), the message id as text.
type encodedRow struct {
	data, metadata, payload, id string
}

// newPending encodes recs (one stream, in version order) for appendStatement, their
// personal fields sealed when per is set (fromDB: with the keys as stored, see
// personal.sealCommand).
func newPending(ctx context.Context, per *personal, recs []Record, idem *Idempotency, answer []byte, fromDB bool) (*pending, error) {
	p := &pending{recs: recs, rows: make([]encodedRow, len(recs)), idem: idem, answer: answer, done: make(chan error, 1)}
	stored := recs
	if per != nil {
		var err error
		if stored, p.keys, err = per.sealCommand(ctx, recs, fromDB); err != nil {
			return nil, err
		}
	}
	for i, r := range stored {
		d, err := EncodeJSON(r.Data)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", r.Type(), err)
		}
		// data, metadata and payload tail in one buffer, made one string: one
		// allocation for the three (the payload repeats the data and metadata)
		b := make([]byte, 0, 2*len(d)+512)
		b = append(b, d...)
		b = appendMetadata(b, r.Metadata)
		nmd := len(b)
		if b, err = appendMessageTail(b, r, d); err != nil {
			return nil, err
		}
		all := string(b)
		// A deterministic message id per event (stream, version) lets consumers and
		// operators match a message to its event.
		id := uuid.NewSHA1(r.TicketID, strconv.AppendInt(nil, int64(r.Version), 10)).String()
		p.rows[i] = encodedRow{data: all[:len(d)], metadata: all[len(d):nmd], payload: all[nmd:], id: id}
	}
	return p, nil
}

func (p *pending) stream() uuid.UUID { return p.recs[0].TicketID }
func (p *pending) expected() int     { return p.recs[0].Version - 1 }
func (p *pending) clash() error {
	return &ConcurrencyError{StreamID: p.stream(), Expected: p.expected()}
}

// queueAppend queues appendStatement (plainAppendStatement when no command has keys to
// check) for ps, whose streams differ and whose
// idempotency keys (if any) differ and share one TTL. Streams go in ascending order, so
// that two transactions appending to the same streams take their locks in one order.
func queueAppend(b *pgx.Batch, ps []*pending) {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b *pending) int { x, y := a.stream(), b.stream(); return bytes.Compare(x[:], y[:]) })
	var n, k int
	for _, p := range ps {
		n += len(p.recs)
		if p.idem != nil {
			k++
		}
	}
	// uuids go as [16]byte, which pgx sends in binary: a uuid.UUID is a driver.Valuer
	// that pgx turns into text, fails to send as binary and parses back, per element.
	streams, versions, types, at := make([][16]byte, 0, n), make([]int32, 0, n), make([]string, 0, n), make([]time.Time, 0, n)
	data, metadata, ids, payloads := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
	scopes, keys, hashes, keyStreams, answers := make([]string, 0, k), make([]string, 0, k), make([][]byte, 0, k), make([][16]byte, 0, k), make([][]byte, 0, k)
	var ttl time.Duration
	var keyStreamIDs [][16]byte
	var keySubjects, keyWrapped [][]byte
	var keyFresh []bool
	for _, p := range ps {
		for _, k := range p.keys {
			keyStreamIDs, keySubjects = append(keyStreamIDs, k.stream), append(keySubjects, k.subject[:])
			keyWrapped, keyFresh = append(keyWrapped, k.wrapped), append(keyFresh, k.fresh)
		}
		for i, r := range p.recs {
			streams, versions, types, at = append(streams, r.TicketID), append(versions, int32(r.Version)), append(types, r.Type()), append(at, r.RecordedAt)
			row := p.rows[i]
			data, metadata, ids, payloads = append(data, row.data), append(metadata, row.metadata), append(ids, row.id), append(payloads, row.payload)
		}
		if p.idem != nil {
			scopes, keys, hashes = append(scopes, p.idem.Scope), append(keys, p.idem.Key), append(hashes, p.idem.RequestHash)
			keyStreams, answers, ttl = append(keyStreams, p.stream()), append(answers, p.answer), p.idem.TTL
		}
	}
	if len(keySubjects) == 0 {
		b.Queue(plainAppendStatement, streams, versions, types, data, metadata, at, ids, payloads,
			scopes, keys, hashes, keyStreams, answers, ttl.Microseconds())
		return
	}
	b.Queue(appendStatement, streams, versions, types, data, metadata, at, ids, payloads,
		scopes, keys, hashes, keyStreams, answers, ttl.Microseconds(),
		keyStreamIDs, keySubjects, keyWrapped, keyFresh)
}

// outcome is what appendStatement did for one command.
type outcome int

const (
	// applied: every event and the answer (if any) were written.
	applied outcome = iota
	// clashed: nothing was written: a version or the idempotency key was taken.
	clashed
	// partial: some of it was written: the transaction must roll back.
	partial
	// stale: nothing was written: a key it sealed with is no longer its subject's.
	stale
)

// readAppend reads the statement's result: the outcome of each of ps (in ps's order)
// and, for those applied, their records' positions.
func readAppend(br pgx.BatchResults, ps []*pending) ([]outcome, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	// what the statement wrote for each of ps (by index)
	type written struct {
		positions int // how many of its events got positions (in its records)
		stored    bool
		stale     bool
	}
	got := make([]written, len(ps))
	index := make(map[[16]byte]int, len(ps))
	for i, p := range ps {
		index[p.stream()] = i
		for j := range p.recs {
			p.recs[j].Position = 0
		}
	}
	var (
		stream   [16]byte
		version  int
		position int64
	)
	_, err = pgx.ForEachRow(rows, []any{&stream, &version, &position}, func() error {
		i, ok := index[stream]
		if !ok {
			return fmt.Errorf("append returned stream %s, which it was not given", uuid.UUID(stream))
		}
		w := &got[i]
		switch version {
		case 0:
			w.stored = true
		case -1:
			w.stale = true
		default:
			p := ps[i]
			j := version - p.recs[0].Version
			if j < 0 || j >= len(p.recs) || p.recs[j].Position != 0 {
				return fmt.Errorf("append returned version %d of %s, which it was not given once", version, uuid.UUID(stream))
			}
			p.recs[j].Position = position
			w.positions++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]outcome, len(ps))
	for i, p := range ps {
		w := got[i]
		switch {
		case w.positions == 0 && !w.stored && !w.stale:
			out[i] = clashed
		case w.stale && w.positions == 0 && !w.stored:
			out[i] = stale
		case w.positions == len(p.recs) && w.stored == (p.idem != nil):
			out[i] = applied
		default:
			out[i] = partial
		}
		if out[i] != applied {
			for j := range p.recs {
				p.recs[j].Position = 0 // positions only of what was written
			}
		}
	}
	return out, nil
}

// appendIn runs appendStatement for ps on tx and returns each one's outcome.
func appendIn(ctx context.Context, tx pgx.Tx, ps []*pending) ([]outcome, error) {
	b := &pgx.Batch{}
	queueAppend(b, ps)
	br := tx.SendBatch(ctx, b)
	out, err := readAppend(br, ps)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return out, err
}
