// Package eventstore is ticketd's source of truth: an append-only Postgres table of
// events per ticket stream, with optimistic concurrency on the stream version, and a
// transactional outbox that publishes every appended event to Watermill in the same
// transaction.
package eventstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/pii"
	"github.com/ticketd/ticketd/ticket"
)

// Store appends and loads ticket event streams.
type Store struct {
	pool *pgxpool.Pool
	// Now is the clock used for event times; tests may replace it.
	Now func() time.Time
	// MaxRetries bounds how often a command is retried from a fresh load after a
	// concurrency clash when the caller gave no precondition.
	MaxRetries int
	// OnAppend, if set, is called after every append that committed (it must not
	// block): this instance's projectors are woken by it instead of waiting for their
	// next poll.
	OnAppend func()
	cache    *tickets
	locks    *streamLocks
	commits  *committer
	// personal seals and opens personal data (nil: stored as given, see New).
	personal *personal
	ring     *pii.Keyring
}

// DefaultCacheEntries bounds the aggregate cache: how many tickets it holds (about
// 200 bytes each, so some 10 MB when full, whatever the tickets' lengths).
const DefaultCacheEntries = 50_000

// New returns a store on pool that keeps the personal data of events sealed under the
// data keys of ring (see personal.go). A nil ring stores them as given: only for tests
// of other concerns and the benchmark's baseline; ticketd never runs without one.
func New(pool *pgxpool.Pool, ring *pii.Keyring) *Store {
	s := &Store{
		pool: pool, Now: time.Now, MaxRetries: 20, ring: ring,
		cache: newTickets(DefaultCacheEntries), locks: newStreamLocks(), commits: newCommitter(pool, DefaultMaxFlushes),
	}
	if ring != nil {
		s.personal = newPersonal(pool, ring)
	}
	return s
}

// Keyring returns the store's keyring (nil without one).
func (s *Store) Keyring() *pii.Keyring { return s.ring }

// Pool returns the store's connection pool.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Load returns the events of a stream with after < version <= upTo, in order. An
// unknown stream yields no records and no error.
func (s *Store) Load(ctx context.Context, id uuid.UUID, after, upTo int) ([]Record, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+eventColumns+`
		FROM events WHERE stream_id = $1 AND version > $2 AND version <= $3 ORDER BY version`, id, after, upTo)
	if err != nil {
		return nil, interpret(err, id, 0)
	}
	recs, err := collect(rows)
	if err == nil {
		err = s.personal.reveal(ctx, recs)
	}
	if err != nil {
		return nil, interpret(err, id, 0)
	}
	return recs, nil
}

// Holds reports, for each i, whether stream ids[i] has an event at versions[i], in
// one statement (the unique key's index).
func (s *Store) Holds(ctx context.Context, ids []uuid.UUID, versions []int) ([]bool, error) {
	if len(ids) != len(versions) {
		return nil, fmt.Errorf("holds: %d streams, %d versions: %w", len(ids), len(versions), ticket.ErrInvalid)
	}
	out := make([]bool, len(ids))
	rows, err := s.pool.Query(ctx, `SELECT k.i - 1 FROM unnest($1::uuid[], $2::int[]) WITH ORDINALITY AS k(id, v, i)
		WHERE EXISTS (SELECT FROM events e WHERE e.stream_id = k.id AND e.version = k.v)`, ids, versions)
	if err != nil {
		return nil, fmt.Errorf("holds: %w", err)
	}
	i := 0
	_, err = pgx.ForEachRow(rows, []any{&i}, func() error {
		out[i] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("holds: %w", err)
	}
	return out, nil
}

// LoadTicket replays a stream up to version upTo (0 or less: all of it). It returns
// ticket.ErrNotFound for a stream with no events.
func (s *Store) LoadTicket(ctx context.Context, id uuid.UUID, upTo int) (*ticket.Ticket, error) {
	if upTo <= 0 {
		upTo = int(^uint32(0) >> 1)
	}
	t := ticket.New(id)
	n, err := s.replayInto(ctx, t, upTo)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("ticket %s: %w", id, ticket.ErrNotFound)
	}
	return t, nil
}

// Append stores events as the next versions of their stream, which must stand at
// expected, and publishes them to Topic through the outbox in the same transaction:
// an event is either stored and published, or neither. Concurrent appends share
// transactions (group commit, see committer). A clash with another writer returns a
// *ConcurrencyError; an unreachable database wraps ticket.ErrUnavailable.
func (s *Store) Append(ctx context.Context, expected int, events []ticket.Event, md Metadata) ([]Record, error) {
	return s.appendPending(ctx, expected, events, md, nil, nil)
}

// appendPending commits a command's events, and its idempotency answer if idem is set,
// through the group committer.
func (s *Store) appendPending(ctx context.Context, expected int, events []ticket.Event, md Metadata, idem *Idempotency, answer []byte) ([]Record, error) {
	recs, err := records(expected, events, md)
	if err != nil || len(recs) == 0 {
		return nil, err
	}
	if err := s.commit(ctx, recs, idem, answer); err != nil {
		return nil, err
	}
	return recs, nil
}

// commit seals recs' personal data and commits them through the group committer; a
// command whose keys changed under it (an erasure, a concurrent first key) is sealed
// again with the keys as stored and committed again.
func (s *Store) commit(ctx context.Context, recs []Record, idem *Idempotency, answer []byte) error {
	for attempt := 0; ; attempt++ {
		p, err := newPending(ctx, s.personal, recs, idem, answer, attempt > 0)
		if err != nil {
			return interpret(err, recs[0].TicketID, recs[0].Version-1)
		}
		err = s.commits.append(ctx, p)
		if errors.As(err, new(errStaleKey)) && attempt < maxResealAttempts {
			continue
		}
		if err != nil {
			return err
		}
		if s.personal != nil {
			s.personal.confirm(p.keys)
		}
		return nil
	}
}

// AppendTx is Append inside the caller's transaction, alone: the events and their
// outbox messages commit or roll back with tx, and the caller commits. A clash returns
// a *ConcurrencyError and writes nothing (tx stays usable); an unreachable database
// wraps ticket.ErrUnavailable.
func (s *Store) AppendTx(ctx context.Context, tx pgx.Tx, expected int, events []ticket.Event, md Metadata) ([]Record, error) {
	recs, err := records(expected, events, md)
	if err != nil || len(recs) == 0 {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		p, err := newPending(ctx, s.personal, recs, nil, nil, attempt > 0)
		if err != nil {
			return nil, interpret(err, recs[0].TicketID, expected)
		}
		err = appendTx(ctx, tx, p)
		if errors.As(err, new(errStaleKey)) && attempt < maxResealAttempts {
			continue
		}
		if err != nil {
			return nil, interpret(err, recs[0].TicketID, expected)
		}
		if s.personal != nil {
			s.personal.confirm(p.keys)
		}
		return recs, nil
	}
}

// records checks that events continue their stream from expected and makes the
// records to store.
func records(expected int, events []ticket.Event, md Metadata) ([]Record, error) {
	if len(events) == 0 {
		return nil, nil
	}
	id := events[0].TicketID
	recs := make([]Record, len(events))
	for i, e := range events {
		if e.TicketID != id || e.Version != expected+1+i {
			return nil, fmt.Errorf("append: event %d of %s does not follow version %d", e.Version, e.TicketID, expected+i)
		}
		m := md
		m.Actor = e.Actor
		// The command ran on the store's clock (Handle passes s.Now), so the event's
		// time is the recording time: one time per event, not two that disagree.
		recs[i] = Record{Event: e, Metadata: m, RecordedAt: e.At.UTC()}
	}
	return recs, nil
}

// Options qualify one command.
type Options struct {
	// IfMatch, when set, is the version the client last saw. If the stream is elsewhere,
	// or moves before the append, the command fails with ticket.ErrPrecondition and is
	// not retried.
	IfMatch *int
	// Create skips loading: the command runs on a new, empty ticket (the id is fresh).
	Create   bool
	Metadata Metadata
	// Idempotency, when set, stores the command's response with the client's key in the
	// append's transaction, and answers a retry with the stored response (see
	// Idempotency).
	Idempotency *Idempotency
}

// Result is what a command produced: the ticket after it and the records it appended
// (none for a no-op).
type Result struct {
	Ticket  *ticket.Ticket
	Records []Record
	// Replayed is the answer stored under Options.Idempotency's key by an earlier run;
	// when it is not nil, nothing was decided or appended and Ticket is nil.
	Replayed []byte
}

// Handle runs one command on ticket id: load -> decide -> append. decide calls a
// command method on the ticket with the given time. The first load is the cached
// aggregate, if any, without reading the store; whatever does not commit from it is
// decided again on the store's state (see below). On a concurrency clash without
// IfMatch the whole cycle is retried from a fresh load, at most MaxRetries times.
// With opt.Idempotency, an answer stored under the key is returned as Result.Replayed
// without deciding again (also when a racing retry commits first).
// Errors: whatever decide returns (the ticket kinds), ticket.ErrPrecondition,
// ErrIdempotencyKeyReused, ticket.ErrUnavailable, or a *ConcurrencyError once the
// retries are spent.
func (s *Store) Handle(ctx context.Context, id uuid.UUID, opt Options, decide func(t *ticket.Ticket, now time.Time) error) (Result, error) {
	if !opt.Create && s.locks != nil {
		unlock, err := s.locks.lock(ctx, id)
		if err != nil {
			return Result{}, err
		}
		defer unlock()
	}
	// The first try decides on the cached aggregate, if there is one, without reading
	// the store: an append succeeds only at the version it expects (the unique key), so
	// a success proves the cache was the store's state. Anything else decided on it (a
	// refusal, a failed precondition, a no-op, a clash: another instance may have
	// appended) is decided again on the store's state, read now, and that try does not
	// count as a retry.
	optimistic := !opt.Create
	for attempt := 0; ; attempt++ {
		if r, err := s.storedResponse(ctx, opt.Idempotency); r != nil || err != nil {
			return Result{Replayed: r}, err
		}
		t := ticket.New(id)
		cached := false
		if !opt.Create {
			if c := s.cache.get(id); optimistic && c != nil {
				t, cached = c, true
			} else {
				var err error
				if t, err = s.current(ctx, id); err != nil {
					return Result{}, err
				}
			}
		}
		optimistic = false
		if opt.IfMatch != nil && t.Exists() && *opt.IfMatch != t.Version() {
			if cached {
				attempt--
				continue
			}
			return s.refused(ctx, opt.Idempotency, fmt.Errorf("ticket is at version %d, not %d: %w", t.Version(), *opt.IfMatch, ticket.ErrPrecondition))
		}
		expected := t.Version()
		// Postgres keeps microseconds: an event's time is cut to them before anything
		// sees it, so a replayed ticket equals the one answered at write time.
		if err := decide(t, s.Now().UTC().Truncate(time.Microsecond)); err != nil {
			if cached {
				attempt--
				continue
			}
			return s.refused(ctx, opt.Idempotency, err)
		}
		pending := t.Pending()
		if len(pending) == 0 {
			if cached {
				attempt--
				continue
			}
			return Result{Ticket: t}, nil
		}
		recs, err := s.appendCommand(ctx, expected, pending, opt, t)
		var ce *ConcurrencyError
		if errors.As(err, &ce) && cached {
			attempt--
			continue
		}
		if errors.As(err, &ce) {
			// the clash may be a retry of this very request that committed first
			if r, err := s.storedResponse(ctx, opt.Idempotency); r != nil || err != nil {
				return Result{Replayed: r}, err
			}
			if opt.IfMatch != nil {
				return Result{}, fmt.Errorf("ticket changed concurrently: %w", ticket.ErrPrecondition)
			}
			if attempt < s.MaxRetries {
				if err := sleep(ctx, backoff(attempt)); err != nil {
					return Result{}, err
				}
				continue
			}
		}
		if err != nil {
			return Result{}, err
		}
		s.cache.put(t)
		s.appended()
		return Result{Ticket: t, Records: recs}, nil
	}
}

// refused returns a command's refusal, unless a run under its idempotency key has
// committed since Handle looked (another instance's, racing this retry: the stream
// lock orders commands within one process only): then the refusal is that run's own
// effect, and the client gets its stored answer.
func (s *Store) refused(ctx context.Context, idem *Idempotency, refusal error) (Result, error) {
	if idem != nil {
		if r, err := s.storedResponse(ctx, idem); r != nil || err != nil {
			return Result{Replayed: r}, err
		}
	}
	return Result{}, refusal
}

// current returns the ticket as it stands in the store: the cached aggregate, if any,
// brought up to date with the events appended since (by any instance), else a full
// replay. The result is the caller's own copy.
func (s *Store) current(ctx context.Context, id uuid.UUID) (*ticket.Ticket, error) {
	t := s.cache.get(id)
	if t == nil {
		t = ticket.New(id)
	}
	n, err := s.replayInto(ctx, t, int(^uint32(0)>>1))
	if err != nil {
		return nil, err
	}
	if n > 0 {
		s.cache.put(t)
	}
	return t, nil
}

// appended runs the OnAppend hook.
func (s *Store) appended() {
	if s.OnAppend != nil {
		s.OnAppend()
	}
}

// backoff is a short jittered wait so clashing writers spread out.
func backoff(attempt int) time.Duration {
	d := time.Millisecond << min(attempt, 6)
	return d/2 + time.Duration(rand.Int64N(int64(d)))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
