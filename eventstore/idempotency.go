package eventstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/ticket"
)

// Idempotency makes a command safe for a client to retry under its own key: the first
// successful run stores its response with the key in the transaction that appends its
// events, and every later run with the key returns that response instead of deciding
// again. An event therefore never exists without its stored response, nor a stored
// response without its events, also when retries race each other: the (scope, key)
// primary key lets exactly one attempt commit, and the others roll back and replay it.
//
// Only commands that append events store a response; a refused command (validation,
// conflict, not found) stores nothing, so its retry runs again.
type Idempotency struct {
	// Scope is where the key is valid, e.g. the route and, for comments, the ticket.
	// The same key in another scope is another key.
	Scope string
	// Key is the client's Idempotency-Key (the HTTP layer bounds and checks it).
	Key string
	// RequestHash identifies the request (route and canonical body). A run whose hash
	// differs from the stored one fails with ErrIdempotencyKeyReused.
	RequestHash []byte
	// TTL is how long a stored response counts. Older ones are ignored, replaced by a
	// new run under the same key, and purged.
	TTL time.Duration
	// Response renders the answer to store for the command's result. It runs inside
	// the append's transaction, after the events are inserted, and must not block.
	Response func(Result) (Response, error)
}

// Response is an answer stored under an idempotency key: enough for the HTTP layer to
// send the identical answer again.
type Response struct {
	Status int
	Header map[string]string
	Body   []byte
}

// ErrIdempotencyKeyReused is returned when an idempotency key that holds a stored
// response comes back with a different request. It wraps ticket.ErrInvalid: the
// client must pick a new key for a new request.
var ErrIdempotencyKeyReused = fmt.Errorf("the idempotency key was already used for a different request: %w", ticket.ErrInvalid)

// purgeEvery is how often a store deletes expired idempotency keys, at most.
const purgeEvery = time.Minute

// Durations go to Postgres as microseconds: no interval encoding to depend on.
const (
	selectStoredResponse = `SELECT request_hash, status, headers, body FROM idempotency_keys
		WHERE scope = $1 AND key = $2 AND created_at > now() - ($3::bigint * interval '1 microsecond')`
	// An expired row is taken over; a live one is left alone and no row is affected,
	// which tells the writer that another run under the key committed first.
	insertStoredResponse = `INSERT INTO idempotency_keys AS k
		(scope, key, request_hash, stream_id, status, headers, body)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (scope, key) DO UPDATE SET request_hash = excluded.request_hash,
			stream_id = excluded.stream_id, status = excluded.status, headers = excluded.headers,
			body = excluded.body, created_at = now()
		WHERE k.created_at <= now() - ($8::bigint * interval '1 microsecond')`
	deleteExpiredResponses = `DELETE FROM idempotency_keys
		WHERE created_at <= now() - ($1::bigint * interval '1 microsecond')`
)

// storedResponse returns the live response stored under idem's key, or nil when there
// is none (or idem is nil). A response stored for another request hash is
// ErrIdempotencyKeyReused.
func (s *Store) storedResponse(ctx context.Context, idem *Idempotency) (*Response, error) {
	if idem == nil {
		return nil, nil
	}
	var hash, header []byte
	var r Response
	err := s.pool.QueryRow(ctx, selectStoredResponse, idem.Scope, idem.Key, idem.TTL.Microseconds()).
		Scan(&hash, &r.Status, &header, &r.Body)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, interpret(err, uuid.Nil, 0)
	}
	if !bytes.Equal(hash, idem.RequestHash) {
		return nil, ErrIdempotencyKeyReused
	}
	if err := json.Unmarshal(header, &r.Header); err != nil {
		return nil, fmt.Errorf("decode stored headers: %w", err)
	}
	return &r, nil
}

// appendCommand appends a command's events. Without idempotency it is Append. With
// it, the rendered response is stored in the same transaction; when another run under
// the key committed first, the transaction rolls back and a *ConcurrencyError tells
// Handle to look for the stored response.
func (s *Store) appendCommand(ctx context.Context, expected int, events []ticket.Event, opt Options, t *ticket.Ticket) ([]Record, error) {
	idem := opt.Idempotency
	if idem == nil {
		return s.Append(ctx, expected, events, opt.Metadata)
	}
	md := opt.Metadata
	md.IdempotencyKey = idem.Key
	recs, err := records(expected, events, md)
	if err != nil || len(recs) == 0 {
		return nil, err
	}
	id := recs[0].TicketID
	errTaken := errors.New("idempotency key taken")
	// The response is rendered before the append (it never shows an event's global
	// position, the one thing the append fills in), so the events, their outbox rows
	// and the stored response go to Postgres in one round trip.
	resp, err := idem.Response(Result{Ticket: t, Records: recs})
	if err != nil {
		return nil, fmt.Errorf("render idempotent response: %w", err)
	}
	header, err := json.Marshal(resp.Header)
	if err != nil {
		return nil, fmt.Errorf("encode idempotent response headers: %w", err)
	}
	b := &pgx.Batch{}
	if err := queueAppend(b, recs); err != nil {
		return nil, err
	}
	b.Queue(insertStoredResponse, idem.Scope, idem.Key, idem.RequestHash, id,
		resp.Status, header, resp.Body, idem.TTL.Microseconds())
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		br := tx.SendBatch(ctx, b)
		defer br.Close()
		if err := readAppend(br, recs); err != nil {
			return err
		}
		tag, err := br.Exec()
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errTaken
		}
		return br.Close()
	})
	if errors.Is(err, errTaken) {
		return nil, &ConcurrencyError{StreamID: id, Expected: expected}
	}
	if err != nil {
		return nil, interpret(err, id, expected)
	}
	s.purgeDue(ctx, idem.TTL)
	return recs, nil
}

// purgeDue deletes expired idempotency keys when the last purge of this store is older
// than purgeEvery. Several instances purging is harmless; a failure is left for the
// next time (expired rows are ignored anyway).
func (s *Store) purgeDue(ctx context.Context, ttl time.Duration) {
	now := time.Now().UnixNano()
	last := s.lastPurge.Load()
	if now-last < int64(purgeEvery) || !s.lastPurge.CompareAndSwap(last, now) {
		return
	}
	_, _ = s.PurgeIdempotencyKeys(ctx, ttl)
}

// PurgeIdempotencyKeys deletes the responses stored longer than ttl ago and returns how
// many it deleted. Appends with idempotency call it about once a minute.
func (s *Store) PurgeIdempotencyKeys(ctx context.Context, ttl time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, deleteExpiredResponses, ttl.Microseconds())
	if err != nil {
		return 0, interpret(err, uuid.Nil, 0)
	}
	return tag.RowsAffected(), nil
}
