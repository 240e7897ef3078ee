package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/eventstore"
)

// How the projectors consume the outbox
//
// Every event is published by the append's own transaction into watermill-sql's outbox
// table, and each read model is a consumer group of it with its position in
// watermill-sql's offsets table. Watermill's router hands a subscriber's rows to its
// handler one at a time and waits for each acknowledgement, and it has no batch handler
// (watermill issues 218, 439, 586): a projector that applies one event per round trip
// runs at the arrival rate and any burst becomes a standing backlog. So the groups are
// consumed here, with watermill-sql's own queries and tables:
//
//   - one transaction per batch: it takes the group's advisory lock (instances sharing
//     a group take turns, so each batch is applied once), then reads up to BatchSize
//     rows after the group's position, only below the oldest transaction of this
//     database still running (visibleBelow; xid8 order: a transaction that commits
//     late can never be skipped). The lock is an advisory
//     one, not watermill-sql's FOR UPDATE on the offsets row, because a row lock gives
//     the transaction an xid at once, and every consumer's view stops below the oldest
//     open xid: the Redis projector waiting on Redis would hold back the Postgres one.
//     With the advisory lock a transaction gets its xid only at its first write (the
//     Postgres rows, or the ack), a moment before it commits;
//   - the read model applies the whole batch in the same transaction in a constant
//     number of round trips, and DefaultPostgreSQLOffsetsAdapter.AckMessageQuery moves
//     the position to the batch's last row; one commit makes both durable, so a crash
//     anywhere leaves the read model and the position in agreement. The BEGIN travels
//     with the read and the COMMIT with the writes (pipeTx): a batch whose read model
//     reads nothing back takes two round trips;
//   - a batch that fails is rolled back and its rows are taken again one at a time,
//     each retried a few times: an event that still fails is recorded in the poison
//     table with the position that skips it, and its neighbours are applied;
//   - a consumer that found a short batch waits for the poll interval or for Wake, which
//     this instance's event store calls after each append commits (no NOTIFY: it would
//     take a cluster-wide lock at every commit).

// PoisonTopic receives events a projector could not handle after its retries. Its
// table is created by the migrations; rows there are for an operator to inspect.
const PoisonTopic = eventstore.Topic + "_poison"

// ApplyFunc applies a batch of events, in outbox order, to a read model inside tx, the
// transaction that also moves the group's position past them. It must be idempotent
// per event (a batch may be applied again after a crash before the commit, or when an
// instance's transaction was cut off) and must not commit or roll back tx. An error
// fails the whole batch, which is then retried event by event.
type ApplyFunc func(ctx context.Context, tx pgx.Tx, recs []eventstore.Record) error

// QueueFunc is an ApplyFunc that may queue its last writes into b instead of sending
// them: the consumer sends b with the position's ack in one round trip, then commits.
// A failure of b fails the batch like a failed apply.
type QueueFunc func(ctx context.Context, tx pgx.Tx, recs []eventstore.Record, b *pgx.Batch) error

// Handler is a projector: a consumer group and the function applying its batches.
// Queue, when set, is used for whole batches instead of Apply (one round trip less);
// events retried one at a time always go through Apply.
type Handler struct {
	Group string
	Apply ApplyFunc
	Queue QueueFunc
	// Committed, when set, is called after each transaction of the group that applied
	// events has committed (the webhooks group wakes its dispatcher with it: what Apply
	// wrote is visible to others only then).
	Committed func()
	// Derived says the read model can be made again from the event store (a rebuild
	// does): its batches commit without waiting for their WAL flush
	// (synchronous_commit off for the batch's transaction only). The rows and the
	// position still commit together, atomically; what a crash of the Postgres server
	// can lose is the last few batches' commits as a whole, rows and position alike,
	// and the consumer then takes those events again from the position that survived
	// (an ApplyFunc is idempotent per event). Nothing acknowledged to a client is lost:
	// the events are in the event store, committed synchronously by their appends.
	// A batch that writes nothing but the position commits so for every group.
	Derived bool
	// Idle, when set, is asked in each batch's transaction after the batch is read:
	// true says the group has nothing to do with any event now (the webhooks group
	// while no endpoint is enabled), and the batch only moves the position past its
	// events, without decoding or opening them. Until a batch finds it busy again the
	// group polls (PollInterval) instead of being woken by every append. Events
	// retried one at a time are always applied.
	Idle func(ctx context.Context, tx pgx.Tx) (bool, error)
	// WakeDelay, when set, replaces wakeDelay as the least time between the group's
	// reads when woken by appends: longer for a read model that is written through
	// anyway, so that it takes more events per transaction.
	WakeDelay time.Duration
}

// Config tunes the projectors' consumers.
type Config struct {
	// PollInterval is how long a consumer waits before asking again when it found no
	// new event and was not woken. Short, so events of other instances show quickly.
	PollInterval time.Duration
	// BatchSize is how many events one transaction takes at most.
	BatchSize int
	// Retries is how often a failing event is retried, alone, before it goes to the
	// poison topic.
	Retries int
	// AckDeadline bounds one batch's transaction: the apply's context ends then, and a
	// batch not committed by then is rolled back and taken again. It keeps a hung
	// dependency from holding the group's lock (every instance's consumer of the
	// group waits for it) for long.
	AckDeadline time.Duration
	// Metrics receives what the projectors do; nil reports nowhere.
	Metrics Metrics
	// BacklogInterval is how often each group's backlog (events behind the head) is
	// sampled for Metrics.
	BacklogInterval time.Duration
	// Wake, when set, wakes the consumers at once (see Signal): the event store of this
	// instance notifies it after every append.
	Wake *Signal
	// Reveal opens the personal fields of a batch of events as the outbox holds them
	// (sealed): the event store's Reveal. Nil leaves them as stored (a store without a
	// keyring; ticketd always sets it).
	Reveal func(ctx context.Context, recs []eventstore.Record) error
}

func (c Config) withDefaults() Config {
	if c.PollInterval <= 0 {
		c.PollInterval = 20 * time.Millisecond
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.Retries <= 0 {
		c.Retries = 5
	}
	if c.AckDeadline <= 0 {
		c.AckDeadline = 15 * time.Second
	}
	if c.Metrics == nil {
		c.Metrics = NopMetrics{}
	}
	if c.BacklogInterval <= 0 {
		c.BacklogInterval = 5 * time.Second
	}
	if c.Wake == nil {
		c.Wake = NewSignal()
	}
	return c
}

// Signal wakes waiting consumers. Notify never blocks: a consumer that is busy finds
// the signal when it next waits. The zero value is not usable; call NewSignal.
type Signal struct {
	mu   sync.Mutex
	subs []chan struct{}
}

// NewSignal returns a signal without subscribers.
func NewSignal() *Signal { return &Signal{} }

// Notify wakes every subscriber.
func (s *Signal) Notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

func (s *Signal) subscribe() <-chan struct{} {
	c := make(chan struct{}, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subs = append(s.subs, c)
	return c
}

// Router runs one consumer per handler on the outbox topic.
type Router struct {
	pool     *pgxpool.Pool
	cfg      Config
	log      *slog.Logger
	handlers []Handler
	running  chan struct{}
	once     sync.Once
	// recent shares decoded records between the groups (nil with one group).
	recent *recentRows
}

// NewRouter returns a router with one consumer (its own consumer group) per handler.
// Run it with Run; it stops when the context ends, after the current batches.
func NewRouter(pool *pgxpool.Pool, cfg Config, log *slog.Logger, handlers ...Handler) (*Router, error) {
	if log == nil {
		log = slog.Default()
	}
	seen := map[string]bool{}
	for _, h := range handlers {
		if h.Group == "" || len(h.Group) > 255 || h.Apply == nil {
			return nil, fmt.Errorf("projection handler %q: a group of 1..255 characters and an apply function are required", h.Group)
		}
		if seen[h.Group] {
			return nil, fmt.Errorf("projection handler %q given twice", h.Group)
		}
		seen[h.Group] = true
	}
	r := &Router{pool: pool, cfg: cfg.withDefaults(), log: log, handlers: handlers, running: make(chan struct{})}
	if len(handlers) > 1 {
		r.recent = newRecentRows()
	}
	return r, nil
}

// Running is closed once every consumer has subscribed (its offsets row exists).
func (r *Router) Running() <-chan struct{} { return r.running }

// Run consumes until ctx ends and returns nil then. A failing database never ends it:
// each consumer backs off and tries again, resuming from its group's position.
func Run(ctx context.Context, r *Router) error { return r.Run(ctx) }

// Run consumes until ctx ends (see the package function Run).
func (r *Router) Run(ctx context.Context) error {
	consumers := make([]*consumer, 0, len(r.handlers))
	groups := make([]string, 0, len(r.handlers))
	for _, h := range r.handlers {
		c := &consumer{Handler: h, r: r}
		if err := c.prepare(); err != nil {
			return err // before any consumer started
		}
		consumers = append(consumers, c)
		groups = append(groups, h.Group)
	}
	// Running closes when the last consumer has subscribed (never, if ctx ends first).
	var waiting atomic.Int32
	waiting.Store(int32(len(consumers)))
	ready := func() {
		if waiting.Add(-1) == 0 {
			r.once.Do(func() { close(r.running) })
		}
	}
	if len(consumers) == 0 {
		r.once.Do(func() { close(r.running) })
	}
	var wg sync.WaitGroup
	for _, c := range consumers {
		c.wake = r.cfg.Wake.subscribe()
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.run(ctx, ready)
		}()
	}
	if _, nop := r.cfg.Metrics.(NopMetrics); !nop && len(groups) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.sampleBacklog(ctx, groups)
		}()
	}
	wg.Wait()
	return nil
}

// sampleBacklog reports the groups' backlogs every BacklogInterval until ctx ends.
func (r *Router) sampleBacklog(ctx context.Context, groups []string) {
	t := time.NewTicker(r.cfg.BacklogInterval)
	defer t.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, r.cfg.BacklogInterval)
		if err := SampleBacklog(sctx, r.pool, r.cfg.Metrics, groups...); err != nil && ctx.Err() == nil {
			r.log.Debug("projection backlog", "err", err)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// consumer consumes one group.
type consumer struct {
	Handler
	r    *Router
	wake <-chan struct{}
	// selectBatch and selectOne read up to BatchSize rows, or one row, after the
	// group's position (selectQuery); ack moves it (watermill-sql's own query).
	selectBatch, selectOne, ack string
	subscribe                   wsql.Query
	// lastRead is when the last read of the outbox was sent (see wait).
	lastRead time.Time
	// idle: the last batch found the group idle (Handler.Idle). An idle group is not
	// woken by appends: it polls, and moves past what gathered meanwhile in one
	// transaction instead of one per wake.
	idle bool
}

var (
	outboxSchema  = wsql.DefaultPostgreSQLSchema{}
	outboxOffsets = wsql.DefaultPostgreSQLOffsetsAdapter{}
)

// lockGroup takes consumer group $1's lock for the rest of the transaction. The live
// consumers and the rebuild's swap take it before they read or move the position.
const lockGroup = `SELECT pg_advisory_xact_lock(hashtext('ticketd.projection'), hashtext($1))`

// asyncCommit makes the transaction's commit skip the wait for its WAL flush (see
// Handler.Derived).
const asyncCommit = `SET LOCAL synchronous_commit = off`

// asyncCommitIfUnwritten does what asyncCommit does when the transaction has written
// nothing so far (it has no transaction id: a statement that changed no row, such as
// an insert whose every row conflicted, assigns none). Sent just before the ack, it
// makes a batch that only moves the position commit without the flush wait: a crash
// can then lose only the move, and the events are taken again from the position
// before it, which their application (having written nothing) allows.
const asyncCommitIfUnwritten = `SELECT CASE WHEN pg_current_xact_id_if_assigned() IS NULL
	THEN set_config('synchronous_commit', 'off', true) END`

// selectQuery reads up to limit outbox rows after the position of consumer group $1.
// It selects exactly the rows watermill-sql's DefaultPostgreSQLSchema.SelectQuery
// selects (after the position in (transaction_id, offset) order, only below the
// snapshot's xmin), without its FOR UPDATE (see lockGroup), and says "after" as one
// row comparison, which the outbox's primary key (transaction_id, offset) answers with
// an index range scan: watermill-sql's "same transaction and a later offset, or a
// later transaction" makes Postgres read and sort every pending row on each fetch, so
// a fetch from a 100,000-event backlog took 157 ms and the rate fell as the backlog
// grew (0.4 ms for 1,000 rows of a 200,000-row backlog with this form).
func selectQuery(limit int) string {
	return `WITH last_processed AS (SELECT offset_acked, last_processed_transaction_id
		FROM ` + outboxOffsets.MessagesOffsetsTable(eventstore.Topic) + ` WHERE consumer_group = $1)
	SELECT "offset", transaction_id, uuid, payload, metadata FROM ` + outboxSchema.MessagesTable(eventstore.Topic) + `
	WHERE (transaction_id, "offset") > (
			(SELECT last_processed_transaction_id FROM last_processed),
			(SELECT coalesce(offset_acked, 0) FROM last_processed))
		AND transaction_id < (` + visibleBelow + `)
	ORDER BY transaction_id, "offset"
	LIMIT ` + strconv.Itoa(limit)
}

// visibleBelow is the consumers' visibility bound: below it, every transaction that
// could write outbox rows of this database has ended, as the statement's snapshot
// sees them, so no row can still appear below it and the position may move past
// every row there.
//
// pg_snapshot_xmin, the bound before, is the oldest transaction id running anywhere on
// the server when the snapshot was taken: a long writing transaction in another
// database (a test, a migration, another application) held every consumer here back
// for as long as it ran, though it cannot write a row into this database's outbox.
// This bound is the snapshot's own list of running transactions (pg_snapshot_xip,
// top-level ids: the outbox's transaction_id is pg_current_xact_id(), a top-level id)
// without those known to belong to another database, then the snapshot's xmax:
//
//   - a transaction id below the bound is either below xmax and not running at the
//     snapshot (then it has ended: committed, and its rows are visible to the
//     statement that reads with this snapshot, or aborted), or running at it and
//     known to belong to another database, which cannot have written this outbox;
//   - an id is taken as another database's only when pg_stat_get_activity shows a
//     backend of another database (datid, which a backend never changes) whose
//     backend_xid is that id. Ids are unique (within the 2^31 around the present that
//     a running transaction's id always is, so comparing them as 32-bit xids is
//     exact), so this holds whenever the activity was read, before the snapshot or
//     after, even from a table Postgres keeps per transaction: a stale read, or a
//     backend whose id it does not show (a prepared transaction, a subtransaction, a
//     backend_xid hidden from this role), can only leave an id in, which lowers the
//     bound and is safe;
//   - a transaction that gets its id after the snapshot gets one at or above xmax,
//     which is at or above the bound: it sorts after every row taken now, so the
//     position never passes a row that commits later.
//
// With nothing running in other databases it equals pg_snapshot_xmin; it is never
// below it. The activity is read only when the snapshot lists running transactions
// (an anti-join on a hash of it, a few microseconds). The rebuild keeps
// pg_snapshot_xmin for its own bounds, which only makes them more conservative.
const visibleBelow = `SELECT least(pg_snapshot_xmax(s), (SELECT min(x) FROM pg_snapshot_xip(s) x
		WHERE NOT EXISTS (SELECT FROM pg_stat_get_activity(NULL) a
			WHERE a.backend_xid = x::xid AND a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database()))))
	FROM pg_current_snapshot() s`

func (c *consumer) prepare() error {
	c.selectBatch, c.selectOne = selectQuery(c.r.cfg.BatchSize), selectQuery(1)
	ack, err := outboxOffsets.AckMessageQuery(wsql.AckMessageQueryParams{Topic: eventstore.Topic, ConsumerGroup: c.Group,
		LastRow: wsql.Row{ExtraData: map[string]any{"transaction_id": wsql.XID8(0)}}})
	if err != nil {
		return fmt.Errorf("outbox ack query of %s: %w", c.Group, err)
	}
	c.ack = ack.Query
	subs, err := outboxOffsets.BeforeSubscribingQueries(wsql.BeforeSubscribingQueriesParams{Topic: eventstore.Topic, ConsumerGroup: c.Group})
	if err != nil || len(subs) != 1 {
		return fmt.Errorf("outbox subscribe query of %s: %v", c.Group, err)
	}
	c.subscribe = subs[0]
	return nil
}

// run consumes until ctx ends. ready is called once the group's offsets row exists.
func (c *consumer) run(ctx context.Context, ready func()) {
	log := c.r.log.With("group", c.Group)
	var backoff time.Duration
	failing := false
	subscribed := false
	// single > 0: that many rows are taken one at a time (after a failed batch).
	single := 0
	for ctx.Err() == nil {
		var n int
		var err error
		if !subscribed {
			if _, err = c.r.pool.Exec(ctx, c.subscribe.Query, c.subscribe.Args...); err == nil {
				subscribed = true
				ready()
			}
		} else if single > 0 {
			n, err = c.one(ctx)
			if err == nil {
				single -= max(n, 1) // nothing found: the failed rows were taken by another instance
			}
		} else {
			var failed int
			n, failed, err = c.batch(ctx)
			if failed > 0 {
				single = failed
				log.Warn("projection batch failed; applying its events one at a time", "events", failed, "err", err)
				err = nil
				continue
			}
		}
		if ctx.Err() != nil {
			return
		}
		var pause time.Duration
		switch {
		case err != nil:
			backoff = min(max(2*backoff, 50*time.Millisecond), 2*time.Second)
			pause = backoff
			if !failing {
				failing = true
				log.Warn("projection failing; retrying with backoff", "err", err)
			}
		case failing:
			failing, backoff = false, 0
			log.Info("projection resumed")
		}
		if err == nil && single == 0 && n < c.r.cfg.BatchSize {
			pause = c.r.cfg.PollInterval
		}
		if pause > 0 {
			c.wait(ctx, pause, err == nil && !c.idle)
		}
	}
}

// wakeDelay is the least time between a woken consumer's reads: under a steady write
// load a wake comes with nearly every append, and a batch of one event costs the
// transaction, the lock and the round trips of a batch of fifty, so a consumer woken
// sooner than wakeDelay after its last read lets further appends gather for the rest
// of it. A consumer woken later reads at once: its wait was already long enough to
// gather what came.
const wakeDelay = 2 * time.Millisecond

// wait pauses for d, or until woken (and until wakeDelay has passed since the last
// read began) when wakeable.
func (c *consumer) wait(ctx context.Context, d time.Duration, wakeable bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	wake := c.wake
	if !wakeable {
		wake = nil
	}
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
		delay := wakeDelay
		if c.WakeDelay > 0 {
			delay = c.WakeDelay
		}
		if rest := delay - time.Since(c.lastRead); rest > 0 {
			_ = sleepCtx(ctx, rest)
		}
	}
}

// outboxRow is one outbox message of a batch.
type outboxRow struct {
	offset int64
	txID   wsql.XID8
	uuid   string
	// payload and metadata as stored, for the poison table
	payload, metadata []byte
	rec               eventstore.Record
	err               error // undecodable: permanent
}

// read runs a select query in tx and decodes the rows (see open). With begin, it
// first opens tx's transaction block (a pipeTx), in the same round trip.
func (c *consumer) read(ctx context.Context, tx pgx.Tx, query string, begin bool) ([]outboxRow, error) {
	out, err := c.fetch(ctx, tx, query, begin)
	if err != nil {
		return nil, err
	}
	return out, c.open(ctx, out)
}

// fetch is read without the decoding: the rows as stored.
func (c *consumer) fetch(ctx context.Context, tx pgx.Tx, query string, begin bool) ([]outboxRow, error) {
	// The lock first, the read after it: under READ COMMITTED each statement takes a
	// new snapshot, so the read sees the position the last holder committed. One
	// round trip for both.
	b := &pgx.Batch{}
	if begin {
		b.Queue(beginQuery)
	}
	if c.Derived {
		b.Queue(asyncCommit)
	}
	b.Queue(lockGroup, c.Group)
	b.Queue(query, c.Group)
	c.lastRead = time.Now()
	br := tx.SendBatch(ctx, b)
	defer br.Close()
	for range b.Len() - 1 {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (outboxRow, error) {
		var o outboxRow
		err := row.Scan(&o.offset, &o.txID, &o.uuid, &o.payload, &o.metadata)
		return o, err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// open decodes the rows' events and opens their personal fields. A derived read model
// takes the rows another group of this process decoded and opened lately as they are
// (recentRows); the other rows are decoded, opened together, and kept for the derived
// groups.
func (c *consumer) open(ctx context.Context, out []outboxRow) error {
	now := time.Now()
	var (
		recs  []eventstore.Record
		fresh []int // the rows of recs
	)
	for i := range out {
		if c.r.recent != nil && c.Derived {
			if rec, ok := c.r.recent.get(rowKey{out[i].txID, out[i].offset}, now); ok {
				out[i].rec = rec
				continue
			}
		}
		out[i].rec, out[i].err = eventstore.DecodeMessage(out[i].payload)
		if out[i].err == nil {
			recs = append(recs, out[i].rec)
			fresh = append(fresh, i)
		}
	}
	if c.r.cfg.Reveal != nil && len(recs) > 0 {
		if err := c.r.cfg.Reveal(ctx, recs); err != nil {
			return err
		}
	}
	for j, i := range fresh {
		out[i].rec = recs[j]
		if c.r.recent != nil {
			c.r.recent.put(rowKey{out[i].txID, out[i].offset}, recs[j], now)
		}
	}
	return nil
}

// begin opens a batch's transaction, bounded by the ack deadline.
func (c *consumer) begin(ctx context.Context) (context.Context, context.CancelFunc, pgx.Tx, error) {
	bctx, cancel := context.WithTimeout(ctx, c.r.cfg.AckDeadline)
	tx, err := c.r.pool.BeginTx(bctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		cancel()
		return nil, nil, nil, Unavailable(err)
	}
	return bctx, cancel, tx, nil
}

// batch applies up to BatchSize rows in one transaction. It returns how many rows it
// consumed; failed > 0 (with the error) when the apply failed and that many rows are to
// be taken one at a time.
func (c *consumer) batch(ctx context.Context) (n, failed int, err error) {
	bctx, cancel := context.WithTimeout(ctx, c.r.cfg.AckDeadline)
	defer cancel()
	conn, err := c.r.pool.Acquire(bctx)
	if err != nil {
		return 0, 0, Unavailable(err)
	}
	defer conn.Release()
	tx := &pipeTx{conn: conn}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after a commit it does nothing
	rows, err := c.fetch(bctx, tx, c.selectBatch, true)
	if err != nil || len(rows) == 0 {
		return 0, 0, Unavailable(err)
	}
	b := &pgx.Batch{}
	if c.Idle != nil {
		idle, err := c.Idle(bctx, tx)
		if err != nil {
			return 0, 0, Unavailable(err)
		}
		c.idle = idle
		if idle {
			if failed, err := c.ackAndCommit(bctx, tx, b, rows); err != nil {
				return 0, failed, err
			}
			return len(rows), 0, nil
		}
	}
	if err := c.open(bctx, rows); err != nil {
		return 0, 0, Unavailable(err)
	}
	recs := make([]eventstore.Record, 0, len(rows))
	var bad []outboxRow
	for _, o := range rows {
		if o.err != nil {
			bad = append(bad, o)
			continue
		}
		recs = append(recs, o.rec)
	}
	if len(recs) > 0 {
		var err error
		if c.Queue != nil {
			err = c.Queue(bctx, tx, recs, b)
		} else {
			err = c.Apply(bctx, tx, recs)
		}
		if err != nil {
			return c.failedBatch(bctx, len(rows), err)
		}
	}
	for _, o := range bad {
		c.r.cfg.Metrics.Failed(c.Group)
		if err := c.poison(bctx, tx, o, o.err); err != nil {
			return 0, 0, err
		}
	}
	if failed, err := c.ackAndCommit(bctx, tx, b, rows); err != nil {
		return 0, failed, err
	}
	c.committed(len(recs))
	c.projected(recs)
	c.poisoned(bad)
	return len(rows), 0, nil
}

// ackAndCommit sends b's writes with the ack past rows and the COMMIT (see send). When
// the writes fail, failed > 0 says how many rows to take one at a time (failedBatch).
func (c *consumer) ackAndCommit(ctx context.Context, tx *pipeTx, b *pgx.Batch, rows []outboxRow) (failed int, err error) {
	if !c.Derived {
		b.Queue(asyncCommitIfUnwritten)
	}
	last := rows[len(rows)-1]
	b.Queue(c.ack, last.offset, strconv.FormatUint(uint64(last.txID), 10), c.Group)
	if err := c.send(ctx, tx, b); err != nil {
		if errors.Is(err, errCommit) {
			return 0, Unavailable(err)
		}
		_, failed, err = c.failedBatch(ctx, len(rows), err)
		return failed, err
	}
	return 0, nil
}

// errCommit marks a batch whose writes succeeded and whose COMMIT did not.
var errCommit = errors.New("commit")

// send sends a batch's writes, the ack and the COMMIT that ends b in one round trip and
// tells tx when the COMMIT succeeded. An error of the COMMIT itself wraps errCommit.
// The results are read by Close, which runs the callbacks the handler queued with its
// writes (the webhooks group reads its inserts' RETURNING so).
func (c *consumer) send(ctx context.Context, tx *pipeTx, b *pgx.Batch) error {
	ahead := b.Len() // the writes and the ack, before the COMMIT
	reached := 0
	for _, q := range b.QueuedQueries {
		if q.Fn == nil {
			q.Exec(func(pgconn.CommandTag) error { reached++; return nil })
		} else {
			fn := q.Fn
			q.Fn = func(br pgx.BatchResults) error { reached++; return fn(br) }
		}
	}
	committed := false
	b.Queue(commitQuery).Exec(func(tag pgconn.CommandTag) error {
		if tag.String() != "COMMIT" {
			return pgx.ErrTxCommitRollback
		}
		committed = true
		return nil
	})
	err := tx.SendBatch(ctx, b).Close()
	if committed {
		tx.committed()
		return nil
	}
	if err == nil {
		err = pgx.ErrTxCommitRollback
	}
	if reached == ahead {
		return fmt.Errorf("%w %s: %w", errCommit, c.Group, err)
	}
	return err
}

// failedBatch reports a batch whose apply (or queued writes) failed: a transient
// error is retried as it is, any other has the batch's rows taken one at a time.
func (c *consumer) failedBatch(ctx context.Context, rows int, err error) (int, int, error) {
	c.r.cfg.Metrics.Failed(c.Group)
	if transient(ctx, err) {
		return 0, 0, err
	}
	return 0, rows, err
}

// one applies the next row alone, retrying it in savepoints; an event that keeps
// failing (or cannot be decoded) goes to the poison topic with the position past it.
func (c *consumer) one(ctx context.Context) (int, error) {
	bctx, cancel, tx, err := c.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer cancel()
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after a commit it does nothing
	rows, err := c.read(bctx, tx, c.selectOne, false)
	if err != nil || len(rows) == 0 {
		return 0, Unavailable(err)
	}
	o := rows[0]
	cause := o.err
	if cause == nil {
		for attempt := 0; attempt <= c.r.cfg.Retries; attempt++ {
			if attempt > 0 {
				if err := sleepCtx(bctx, time.Duration(10<<min(attempt, 6))*time.Millisecond); err != nil {
					return 0, err
				}
			}
			cause = pgx.BeginFunc(bctx, tx, func(sp pgx.Tx) error {
				return c.Apply(bctx, sp, []eventstore.Record{o.rec})
			})
			if cause == nil {
				break
			}
			c.r.cfg.Metrics.Failed(c.Group)
			if transient(bctx, cause) {
				return 0, cause
			}
			if errors.Is(cause, ErrUnknownEvent) {
				break // retrying cannot teach the fold a new kind
			}
		}
	} else {
		c.r.cfg.Metrics.Failed(c.Group)
	}
	if cause != nil {
		if err := c.poison(bctx, tx, o, cause); err != nil {
			return 0, err
		}
	}
	if err := c.commit(bctx, tx, o); err != nil {
		return 0, err
	}
	if cause != nil {
		o.err = cause
		c.poisoned([]outboxRow{o})
	} else {
		c.committed(1)
		c.projected([]eventstore.Record{o.rec})
	}
	return 1, nil
}

// commit moves the group's position to last and commits tx.
func (c *consumer) commit(ctx context.Context, tx pgx.Tx, last outboxRow) error {
	if _, err := tx.Exec(ctx, c.ack, last.offset, strconv.FormatUint(uint64(last.txID), 10), c.Group); err != nil {
		return Unavailable(fmt.Errorf("ack %s: %w", c.Group, err))
	}
	if err := tx.Commit(ctx); err != nil {
		return Unavailable(fmt.Errorf("commit %s: %w", c.Group, err))
	}
	return nil
}

// poison records row o in the poison topic's table, in tx, with the reason and the
// group that gave up, in the metadata keys of Watermill's poison middleware.
func (c *consumer) poison(ctx context.Context, tx pgx.Tx, o outboxRow, cause error) error {
	pub, err := wsql.NewPublisher(wsql.TxFromPgx(tx), wsql.PublisherConfig{SchemaAdapter: outboxSchema}, nil)
	if err != nil {
		return err
	}
	msg := message.NewMessage(o.uuid, o.payload)
	_ = json.Unmarshal(o.metadata, &msg.Metadata) // the outbox row's own metadata, if any
	msg.Metadata.Set(middleware.ReasonForPoisonedKey, cause.Error())
	msg.Metadata.Set(middleware.PoisonedTopicKey, eventstore.Topic)
	msg.Metadata.Set(middleware.PoisonedHandlerKey, c.Group)
	msg.Metadata.Set(middleware.PoisonedSubscriberKey, "ticketd-projections")
	msg.SetContext(ctx)
	if err := pub.Publish(PoisonTopic, msg); err != nil {
		return Unavailable(fmt.Errorf("poison publish: %w", err))
	}
	return nil
}

// committed calls the handler's Committed after a commit that applied n > 0 events.
func (c *consumer) committed(n int) {
	if n > 0 && c.Committed != nil {
		c.Committed()
	}
}

func (c *consumer) projected(recs []eventstore.Record) {
	now := time.Now()
	for _, r := range recs {
		c.r.cfg.Metrics.Projected(c.Group, now.Sub(r.RecordedAt))
	}
}

func (c *consumer) poisoned(rows []outboxRow) {
	for _, o := range rows {
		c.r.cfg.Metrics.Poisoned(c.Group)
		c.r.log.Error("projection: event sent to the poison topic", "group", c.Group, "topic", PoisonTopic,
			"message_uuid", o.uuid, "reason", fmt.Sprint(o.err))
	}
}

// transient reports whether err is worth retrying later rather than poisoning an
// event: the database unreachable or shutting down, a serialization failure or
// deadlock, a lock timeout, or the batch's own deadline.
func transient(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || eventstore.Unreachable(err) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "40001", "40P01", "55P03", "57014":
			return true
		}
	}
	return false
}
