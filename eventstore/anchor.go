package eventstore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Anchors. The chain shows an event edited, removed or inserted inside a stream, but
// not a tail cut off, nor a stream whose chain was recomputed from some version on:
// what remains is a valid chain. An anchor records every stream's head (its last
// version and that event's hash) at a moment, and a root over them (rootHasher) that
// ticketd also logs; -verify then finds any head it recorded that the events table no
// longer has, or has with another hash. The anchor proves the history up to its heads
// only as far as its root is kept somewhere the database's writers cannot reach: the
// log line, shipped elsewhere (README, "Audit: the hash chain").
//
// Tables (migration 20261216000002_event_chain.sql): audit_anchors, one row per anchor
// with its root and counts; audit_anchor_heads, the heads that moved since the previous
// anchor, so the heads as of anchor N are per stream the row with the highest
// anchor_id <= N and the table grows with the streams written per interval, not with
// the streams times the anchors. Both are append-only like events.

// AnchorLock is the transaction advisory lock ("anchors" in ASCII) an instance holds
// while it writes an anchor; the others skip.
const AnchorLock int64 = 0x616e63686f7273

// DefaultAnchorInterval is AUDIT_ANCHOR_INTERVAL's default.
const DefaultAnchorInterval = time.Hour

// Anchor is one row of audit_anchors.
type Anchor struct {
	ID        int64
	CreatedAt time.Time
	// Streams and Events count the streams anchored and their events.
	Streams, Events int64
	// Root is the SHA-256 over every stream's (id, head version, head hash), in id order.
	Root []byte
}

// LatestAnchor returns the newest anchor, or nil when none was written.
func LatestAnchor(ctx context.Context, q Querier) (*Anchor, error) {
	rows, err := q.Query(ctx, `SELECT id, created_at, streams, events, root FROM audit_anchors ORDER BY id DESC LIMIT 1`)
	if err != nil {
		return nil, interpret(err, uuid.Nil, 0)
	}
	a, err := pgx.CollectOneRow(rows, func(row pgx.CollectableRow) (Anchor, error) {
		var a Anchor
		err := row.Scan(&a.ID, &a.CreatedAt, &a.Streams, &a.Events, &a.Root)
		a.CreatedAt = a.CreatedAt.UTC()
		return a, err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, interpret(err, uuid.Nil, 0)
	}
	return &a, nil
}

// anchoredRoot recomputes the root of anchor id from the heads recorded up to it.
func anchoredRoot(ctx context.Context, q Querier, id int64) (*rootHasher, error) {
	rows, err := q.Query(ctx, `SELECT DISTINCT ON (stream_id) stream_id, version, hash
		FROM audit_anchor_heads WHERE anchor_id <= $1 ORDER BY stream_id, anchor_id DESC`, id)
	if err != nil {
		return nil, interpret(err, uuid.Nil, 0)
	}
	root := newRootHasher()
	var (
		stream  uuid.UUID
		version int
		head    []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&stream, &version, &head}, func() error {
		root.add(stream, version, head)
		return nil
	})
	return root, interpret(err, uuid.Nil, 0)
}

// headsQuery reads every stream's head and the version its last anchored head had
// (NULL for a stream never anchored), in stream order. The heads come from an
// index-only scan of events_stream_version and one index lookup per stream.
const headsQuery = `SELECT h.stream_id, h.version, e.hash, a.version
	FROM (SELECT stream_id, max(version) AS version FROM events GROUP BY stream_id) h
	JOIN events e ON e.stream_id = h.stream_id AND e.version = h.version
	LEFT JOIN (SELECT DISTINCT ON (stream_id) stream_id, version FROM audit_anchor_heads
		ORDER BY stream_id, anchor_id DESC) a ON a.stream_id = h.stream_id
	ORDER BY h.stream_id`

// WriteAnchor records an anchor of every stream's current head, if no other session
// is writing one (it returns nil, nil then). The heads are read and written in one
// REPEATABLE READ transaction, so the anchor is of one snapshot; the transaction takes
// a transaction id (which holds back the outbox consumers) only for its two inserts,
// after the reading.
func WriteAnchor(ctx context.Context, pool *pgxpool.Pool) (*Anchor, error) {
	return writeAnchor(ctx, pool, 0)
}

// writeAnchor is WriteAnchor, except that with fresh > 0 it writes nothing (nil, nil)
// when, under the lock, an anchor is younger than fresh: two Anchorers that both found
// the latest anchor stale write one anchor, not one each, one after the other. Both
// sides of the comparison are transaction start times (created_at is now()), so
// anchors' created_at are always at least fresh apart.
func writeAnchor(ctx context.Context, pool *pgxpool.Pool, fresh time.Duration) (*Anchor, error) {
	var a *Anchor
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		var got, young bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, AnchorLock).Scan(&got); err != nil || !got {
			return err
		}
		if fresh > 0 {
			err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM audit_anchors
				WHERE created_at > now() - make_interval(secs => $1))`, fresh.Seconds()).Scan(&young)
			if err != nil || young {
				return err
			}
		}
		rows, err := tx.Query(ctx, headsQuery)
		if err != nil {
			return err
		}
		root := newRootHasher()
		var (
			streams  []uuid.UUID
			hashes   [][]byte
			versions []int32
			stream   uuid.UUID
			version  int
			head     []byte
			anchored *int
		)
		_, err = pgx.ForEachRow(rows, []any{&stream, &version, &head, &anchored}, func() error {
			root.add(stream, version, head)
			if anchored == nil || *anchored != version {
				streams, versions, hashes = append(streams, stream), append(versions, int32(version)), append(hashes, append([]byte(nil), head...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		a = &Anchor{Streams: root.streams, Events: root.events, Root: root.sum()}
		if err := tx.QueryRow(ctx, `INSERT INTO audit_anchors (streams, events, root) VALUES ($1, $2, $3) RETURNING id, created_at`,
			a.Streams, a.Events, a.Root).Scan(&a.ID, &a.CreatedAt); err != nil {
			return err
		}
		a.CreatedAt = a.CreatedAt.UTC()
		_, err = tx.Exec(ctx, `INSERT INTO audit_anchor_heads (anchor_id, stream_id, version, hash)
			SELECT $1, * FROM unnest($2::uuid[], $3::int[], $4::bytea[])`, a.ID, streams, versions, hashes)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("write audit anchor: %w", interpret(err, uuid.Nil, 0))
	}
	return a, nil
}

// anchorTimeout bounds the writing of one anchor.
const anchorTimeout = 30 * time.Second

// Anchorer writes an anchor every Interval, one instance at a time, and logs each
// one's root (the line an auditor keeps outside the database).
type Anchorer struct {
	Pool *pgxpool.Pool
	// Interval is the time between anchors; zero or negative: none are written.
	Interval time.Duration
	Log      *slog.Logger
}

// Run looks every quarter Interval until ctx ends and writes an anchor when the
// latest one is older than Interval (or there is none), logging each one: a restart
// does not multiply them, and with several instances the one that wins the lock writes
// while the others find the anchor fresh and skip. Failures are logged and retried at
// the next look.
func (a *Anchorer) Run(ctx context.Context) {
	if a.Interval <= 0 {
		return
	}
	log := a.Log
	if log == nil {
		log = slog.Default()
	}
	// Ticks come at a fraction of the interval, so an instance notices soon after
	// another stopped writing them.
	t := time.NewTicker(max(a.Interval/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		latest, err := LatestAnchor(ctx, a.Pool)
		if err == nil && latest != nil && time.Since(latest.CreatedAt) < a.Interval {
			continue
		}
		var anc *Anchor
		if err == nil {
			// Not cut off by ctx: a shutdown waits for an anchor begun (a short
			// transaction) so that it is committed and logged, or neither.
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), anchorTimeout)
			anc, err = writeAnchor(wctx, a.Pool, a.Interval)
			cancel()
		}
		// An anchor written is logged even when ctx ended meanwhile: the log line is the
		// anchor's copy outside the database.
		switch {
		case anc != nil:
			log.Info("audit anchor", "anchor_id", anc.ID, "root", hex.EncodeToString(anc.Root),
				"streams", anc.Streams, "events", anc.Events, "created_at", anc.CreatedAt.Format(time.RFC3339Nano))
		case ctx.Err() != nil:
			return
		case err != nil:
			log.Warn("audit anchor failed; the next tick tries again", "err", err)
		}
	}
}
