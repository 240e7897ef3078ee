package eventstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Group commit: concurrent appends (from different requests, to different tickets)
// share one transaction, one statement and one commit.
//
// There is no timer. An append joins a queue; if fewer than MaxFlushes transactions
// are in flight, the appending goroutine takes the queue (itself and whoever is
// waiting) and commits it at once, so a lone append costs what it always did. While
// transactions are in flight, new appends wait in the queue, and the next free flush
// takes all of them (up to MaxGroup commands). The busier the store, the larger the
// groups, and the fewer transactions per append.
//
// Each command gets its own result. The statement skips a taken (stream, version)
// instead of failing (see appendStatement), so a command that lost its expected
// version gets its own ConcurrencyError and goes back through Handle's retry while the
// others commit. A command that got only part of what it wrote makes the transaction
// roll back; it gets a ConcurrencyError and the rest are committed again without it. A
// statement that fails outright is retried one command per transaction, so one bad
// command never fails its neighbours. A failed COMMIT is reported to every command of
// the group and never retried: the commit may have happened.

// Group commit limits.
const (
	// DefaultMaxFlushes is how many group transactions a store runs at once. One: the
	// groups grow instead (BenchmarkAppend with 32 writers: 58 µs an append with one,
	// 89 with four), and no group's open transaction holds back the rows another one
	// committed from the projectors, which read below the oldest open transaction.
	DefaultMaxFlushes = 1
	// maxGroup bounds the commands of one group transaction.
	maxGroup = 128
	// maxGroupEvents bounds the events of one group transaction.
	maxGroupEvents = 2000
)

// committer queues appends and commits them in groups.
type committer struct {
	pool       *pgxpool.Pool
	maxFlushes int

	mu       sync.Mutex
	queue    []*pending
	flushing int

	// groups and grouped count the group transactions and the commands they carried.
	groups, grouped atomic.Int64
}

// AppendStats describes the store's group commit so far.
type AppendStats struct {
	// Transactions is how many append transactions ran, Commands how many commands they
	// carried (a command retried alone after a failed group counts twice).
	Transactions, Commands int64
	// Queued is how many commands wait for a transaction now.
	Queued int
}

// AppendStats returns the store's group-commit counters.
func (s *Store) AppendStats() AppendStats {
	c := s.commits
	c.mu.Lock()
	queued := len(c.queue)
	c.mu.Unlock()
	return AppendStats{Transactions: c.groups.Load(), Commands: c.grouped.Load(), Queued: queued}
}

// SetMaxFlushes sets how many group transactions the store runs at once (at least 1;
// DefaultMaxFlushes unless set). Call it before the store is used.
func (s *Store) SetMaxFlushes(n int) { s.commits.maxFlushes = max(n, 1) }

func newCommitter(pool *pgxpool.Pool, maxFlushes int) *committer {
	return &committer{pool: pool, maxFlushes: max(maxFlushes, 1)}
}

// append commits p, alone or in a group, and returns its outcome: nil (the records
// carry their positions), a *ConcurrencyError, or the error of the transaction. The
// group's transaction runs as long as any of its callers' contexts is live.
func (c *committer) append(ctx context.Context, p *pending) error {
	p.ctx = ctx
	c.mu.Lock()
	c.queue = append(c.queue, p)
	var group []*pending
	if c.flushing < c.maxFlushes {
		c.flushing++
		group = c.take()
	}
	c.mu.Unlock()
	if group != nil {
		c.commit(group)
		c.next()
	}
	return <-p.done
}

// next hands the queue to a new flush, or frees the flush slot when nothing waits.
func (c *committer) next() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		c.flushing--
		return
	}
	group := c.take()
	go func() {
		c.commit(group)
		c.next()
	}()
}

// take removes the next group from the queue, oldest first: commands on distinct
// streams, with distinct idempotency keys of one TTL, within maxGroup and
// maxGroupEvents. The rest wait for the next group, in order. c.mu is held.
func (c *committer) take() []*pending {
	type scopedKey struct{ scope, key string }
	var (
		group  []*pending
		rest   = c.queue[:0]
		events int
		ttl    = -1
	)
	streams := map[[16]byte]bool{}
	keys := map[scopedKey]bool{}
	for _, p := range c.queue {
		fits := len(group) < maxGroup && (len(group) == 0 || events+len(p.recs) <= maxGroupEvents) && !streams[p.stream()]
		if fits && p.idem != nil {
			k := scopedKey{p.idem.Scope, p.idem.Key}
			fits = !keys[k] && (ttl < 0 || int(p.idem.TTL) == ttl)
			if fits {
				keys[k], ttl = true, int(p.idem.TTL)
			}
		}
		if !fits {
			rest = append(rest, p)
			continue
		}
		group = append(group, p)
		streams[p.stream()] = true
		events += len(p.recs)
	}
	clear(c.queue[len(rest):])
	c.queue = rest
	return group
}

// commit appends group in one transaction and answers each command.
func (c *committer) commit(group []*pending) {
	ctx, cancel := groupContext(group)
	defer cancel()
	for len(group) > 0 {
		outcomes, rolledBack, err := c.try(ctx, group)
		if err != nil {
			// Retried one command per transaction only when the statement failed (not
			// the commit, which may have happened) and Postgres is reachable.
			if len(group) == 1 || errors.As(err, new(errCommit)) || Unreachable(err) {
				for _, p := range group {
					p.done <- interpret(callerErr(p, err), p.stream(), p.expected())
				}
				return
			}
			// The statement failed before any commit: one command per transaction.
			for _, p := range group {
				c.commit([]*pending{p})
			}
			return
		}
		var again []*pending
		for i, p := range group {
			switch {
			case outcomes[i] == stale:
				p.done <- errStaleKey{p.stream()}
			case outcomes[i] != applied:
				p.done <- p.clash()
			case rolledBack:
				again = append(again, p)
			default:
				p.done <- nil
			}
		}
		group = again
	}
}

// callerErr returns err, naming the caller's own context error when the caller has
// given up: the group's context is cancelled once every caller has, and pgx then
// reports a plain cancellation where the caller's deadline is what ended the work (a
// request past its deadline is a 503, not a 500).
func callerErr(p *pending, err error) error {
	if cerr := p.ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}

// errCommit marks a failed COMMIT: its outcome is unknown.
type errCommit struct{ error }

func (e errCommit) Unwrap() error { return e.error }

// try runs one transaction for group on a connection of its own: BEGIN and the
// statement in one round trip, then COMMIT, or ROLLBACK when a command's outcome is
// partial (reported as rolledBack).
func (c *committer) try(ctx context.Context, group []*pending) (outcomes []outcome, rolledBack bool, err error) {
	c.groups.Add(1)
	c.grouped.Add(int64(len(group)))
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		return nil, false, err
	}
	// The pool destroys a connection released inside a transaction instead of reusing
	// it, so a failed ROLLBACK below cannot leak a transaction.
	defer conn.Release()
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	queueAppend(b, group)
	br := conn.SendBatch(ctx, b)
	if _, err = br.Exec(); err == nil {
		outcomes, err = readAppend(br, group)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil && slices.Contains(outcomes, partial) {
		rolledBack = true
	}
	if err != nil || rolledBack {
		if _, rerr := conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil && err == nil {
			err = rerr
		}
		return outcomes, rolledBack, err
	}
	tag, err := conn.Exec(ctx, "COMMIT")
	if err == nil && tag.String() != "COMMIT" {
		err = fmt.Errorf("commit answered %q", tag.String())
	}
	if err != nil {
		return nil, false, errCommit{err}
	}
	return outcomes, false, nil
}

// groupContext returns a context that ends when every command's caller has given up:
// a group is not abandoned while anyone waits for it, nor kept once nobody does.
func groupContext(group []*pending) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	live := atomic.Int64{}
	live.Store(int64(len(group)))
	stops := make([]func() bool, len(group))
	for i, p := range group {
		stops[i] = context.AfterFunc(p.ctx, func() {
			if live.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// appendTx is appendStatement for one command inside the caller's transaction, behind
// a savepoint: a clash, or a partial write, is undone and leaves tx usable.
func appendTx(ctx context.Context, tx pgx.Tx, p *pending) error {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	outcomes, err := appendIn(ctx, sp, []*pending{p})
	if err != nil {
		_ = sp.Rollback(ctx)
		return err
	}
	if outcomes[0] != applied {
		if err := sp.Rollback(ctx); err != nil {
			return err
		}
		if outcomes[0] == stale {
			return errStaleKey{p.stream()}
		}
		return p.clash()
	}
	return sp.Commit(ctx)
}
