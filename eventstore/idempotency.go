package eventstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/ticket"
)

// Idempotency makes a command safe for a client to retry under its own key: the first
// successful run stores its answer with the key in the transaction that appends its
// events, and every later run with the key returns that answer instead of deciding
// again. An event therefore never exists without its stored answer, nor a stored
// answer without its events, also when retries race each other: the (scope, key)
// primary key lets exactly one attempt commit, and the others roll back and replay it.
// The answer is opaque to the store: bytes the caller renders (the HTTP layer keeps a
// status, headers and a body in them) and reads back.
//
// Only commands that append events store an answer; a refused command (validation,
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
	// TTL is how long a stored answer counts. Older ones are ignored, replaced by a
	// new run under the same key, and purged by a Housekeeper in the background.
	TTL time.Duration
	// Answer renders the answer to store for the command's result, once per attempt to
	// append (the last call is the one that commits). It runs before the append, on
	// the records about to be stored (their positions not yet known), and must not
	// block.
	Answer func(Result) ([]byte, error)
}

// ErrIdempotencyKeyReused is returned when an idempotency key that holds a stored
// response comes back with a different request. It wraps ticket.ErrInvalid: the
// client must pick a new key for a new request.
var ErrIdempotencyKeyReused = fmt.Errorf("the idempotency key was already used for a different request: %w", ticket.ErrInvalid)

// Durations go to Postgres as microseconds: no interval encoding to depend on.
const (
	selectStoredResponse = `SELECT request_hash, answer FROM idempotency_keys
		WHERE scope = $1 AND key = $2 AND created_at > now() - ($3::bigint * interval '1 microsecond')`
)

// storedResponse returns the live answer stored under idem's key, or nil when there is
// none (or idem is nil). An answer stored for another request hash is
// ErrIdempotencyKeyReused.
func (s *Store) storedResponse(ctx context.Context, idem *Idempotency) ([]byte, error) {
	if idem == nil {
		return nil, nil
	}
	var hash, answer []byte
	err := s.pool.QueryRow(ctx, selectStoredResponse, idem.Scope, idem.Key, idem.TTL.Microseconds()).
		Scan(&hash, &answer)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, interpret(err, uuid.Nil, 0)
	}
	if !bytes.Equal(hash, idem.RequestHash) {
		return nil, ErrIdempotencyKeyReused
	}
	if answer == nil {
		answer = []byte{} // stored, if empty: still a replay
	}
	return answer, nil
}

// appendCommand appends a command's events. With idempotency, the rendered answer is
// stored in the same transaction; when another run under the key committed first,
// nothing is written and a *ConcurrencyError tells Handle to look for the stored
// answer.
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
	// The answer is rendered before the append (the append fills in only the events'
	// global positions), so the events, their outbox rows and the stored answer go to
	// Postgres in one statement.
	answer, err := idem.Answer(Result{Ticket: t, Records: recs})
	if err != nil {
		return nil, fmt.Errorf("render idempotent answer: %w", err)
	}
	if err := s.commit(ctx, recs, idem, answer); err != nil {
		return nil, err
	}
	return recs, nil
}

// PurgeIdempotencyKeys deletes the responses stored longer than ttl ago and returns how
// many it deleted, in batches (see Housekeeper, which does this in the background;
// no request ever purges). A ttl of zero or less deletes nothing.
func (s *Store) PurgeIdempotencyKeys(ctx context.Context, ttl time.Duration) (int64, error) {
	sw, err := (&Housekeeper{Pool: s.pool, IdempotencyTTL: ttl}).PurgeIdempotencyKeys(ctx)
	return sw.Deleted, err
}
