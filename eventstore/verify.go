package eventstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/ticket"
)

// Verification: `ticketd -verify` reads every stream (or one) in version order,
// recomputes each event's hash from its stored content and its predecessor's stored
// hash, and compares; then it checks the anchors (anchor.go): the latest anchor's root
// against the heads it recorded, and every head ever anchored against the events
// table. The first catches any edit, removal or insertion inside a stream; the second a
// tail cut off or rewritten (with a recomputed chain) after an anchor saw it.

// Break is where a stream's chain stops holding: the first broken version and why.
// Stream is uuid.Nil for a break of the anchors themselves.
type Break struct {
	Stream  uuid.UUID
	Version int
	Reason  string
}

func (b Break) String() string {
	if b.Stream == uuid.Nil {
		return b.Reason
	}
	return fmt.Sprintf("ticket %s, version %d: %s", b.Stream, b.Version, b.Reason)
}

// VerifyOptions selects what Verify checks.
type VerifyOptions struct {
	// Stream limits the check to one stream (and its anchored heads); uuid.Nil checks
	// every stream and the latest anchor's root.
	Stream uuid.UUID
	// Progress, if set, is called now and then with the events checked and the total
	// counted at the start (events appended meanwhile are checked too).
	Progress func(done, total int64)
}

// MaxBreaks is how many breaks a Verification lists; more are only counted.
const MaxBreaks = 1000

// Verification is what Verify found.
type Verification struct {
	// Streams and Events are how many were read and checked.
	Streams, Events int64
	// Breaks are the broken streams, the first broken version of each (the lowest any
	// check found), in stream order, at most MaxBreaks; Broken counts them all.
	Breaks []Break
	Broken int64
	// Anchor is the latest anchor (nil without any), and AnchoredHeads how many
	// anchored heads (of every anchor) were checked against the events.
	Anchor        *Anchor
	AnchoredHeads int64
	Took          time.Duration
}

// Intact reports whether nothing was found broken.
func (v Verification) Intact() bool { return v.Broken == 0 }

// breaks collects the first break per stream, the lowest version winning.
type breaks struct {
	first  map[uuid.UUID]Break
	global []Break
}

func (b *breaks) add(br Break) {
	if br.Stream == uuid.Nil {
		b.global = append(b.global, br)
		return
	}
	if b.first == nil {
		b.first = map[uuid.UUID]Break{}
	}
	if old, ok := b.first[br.Stream]; ok && old.Version <= br.Version {
		return
	}
	// Bounded memory: past a few times MaxBreaks, only streams already listed are
	// refined; the count below is then a lower bound.
	if _, ok := b.first[br.Stream]; !ok && len(b.first) >= 10*MaxBreaks {
		return
	}
	b.first[br.Stream] = br
}

func (b *breaks) list() ([]Break, int64) {
	all := slices.Clone(b.global)
	streams := make([]Break, 0, len(b.first))
	for _, br := range b.first {
		streams = append(streams, br)
	}
	slices.SortFunc(streams, func(x, y Break) int { return bytes.Compare(x.Stream[:], y.Stream[:]) })
	all = append(all, streams...)
	n := int64(len(all))
	if len(all) > MaxBreaks {
		all = all[:MaxBreaks]
	}
	return all, n
}

// Verify checks the hash chain of every stream, or of opts.Stream, and the anchors
// (see above). It reads one stream at a time in one statement, holding one event and
// the breaks found, whatever the store's size. A stream that has neither events nor
// anchored heads is ticket.ErrNotFound; an unreachable database wraps
// ticket.ErrUnavailable. Broken chains are not errors: they are in the result.
func (s *Store) Verify(ctx context.Context, opts VerifyOptions) (Verification, error) {
	start := time.Now()
	var v Verification
	var found breaks
	if err := s.verifyChains(ctx, opts, &v, &found); err != nil {
		return v, err
	}
	if err := s.verifyAnchors(ctx, opts, &v, &found); err != nil {
		return v, err
	}
	if opts.Stream != uuid.Nil && v.Events == 0 && v.AnchoredHeads == 0 {
		return v, fmt.Errorf("ticket %s has no events: %w", opts.Stream, ticket.ErrNotFound)
	}
	v.Breaks, v.Broken = found.list()
	v.Took = time.Since(start)
	return v, nil
}

// progressEvery is how many events Verify checks between Progress calls.
const progressEvery = 4096

func (s *Store) verifyChains(ctx context.Context, opts VerifyOptions, v *Verification, found *breaks) error {
	where, args := "", []any{}
	if opts.Stream != uuid.Nil {
		where, args = "WHERE stream_id = $1", []any{opts.Stream}
	}
	var total int64
	if opts.Progress != nil {
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM events `+where, args...).Scan(&total); err != nil {
			return interpret(err, opts.Stream, 0)
		}
		opts.Progress(0, total)
	}
	rows, err := s.pool.Query(ctx, `SELECT stream_id, version, type, recorded_at, metadata, data, hash
		FROM events `+where+` ORDER BY stream_id, version`, args...)
	if err != nil {
		return interpret(err, opts.Stream, 0)
	}
	defer rows.Close()
	// The rows are read as Postgres sends them, without decoding: in binary, the
	// uuid, version and timestamptz bytes are what the hash takes; text is its UTF-8
	// bytes in either format, and jsonb its text (in binary after a version byte, 1).
	// The chain of 200,000 events is then checked at the speed Postgres sends it.
	fields := rows.FieldDescriptions()
	for _, i := range []int{0, 1, 3, 6} {
		if fields[i].Format != pgx.BinaryFormatCode {
			return fmt.Errorf("verify: column %s came in text format", fields[i].Name)
		}
	}
	mdSkip, dataSkip := 0, 0
	if fields[4].Format == pgx.BinaryFormatCode {
		mdSkip = 1
	}
	if fields[5].Format == pgx.BinaryFormatCode {
		dataSkip = 1
	}
	var (
		h           chainHasher
		cur         uuid.UUID
		want        int
		prev        []byte
		broken      bool
		versionWire [4]byte
	)
	for rows.Next() {
		raw := rows.RawValues()
		if len(raw) != 7 || len(raw[0]) != 16 || len(raw[1]) != 4 || len(raw[3]) != 8 ||
			(mdSkip == 1 && (len(raw[4]) < 1 || raw[4][0] != 1)) || (dataSkip == 1 && (len(raw[5]) < 1 || raw[5][0] != 1)) {
			return fmt.Errorf("verify: unexpected row encoding")
		}
		stream := uuid.UUID(raw[0])
		version := int(int32(binary.BigEndian.Uint32(raw[1])))
		v.Events++
		if v.Events%progressEvery == 0 {
			if err := ctx.Err(); err != nil {
				return interpret(context.Cause(ctx), opts.Stream, 0)
			}
			if opts.Progress != nil {
				opts.Progress(v.Events, max(total, v.Events))
			}
		}
		if stream != cur || v.Streams == 0 {
			cur, want, prev, broken = stream, 1, append(prev[:0], GenesisHash...), false
			v.Streams++
		}
		if broken {
			continue // only a stream's first break is reported
		}
		stored := raw[6]
		switch {
		case version != want:
			found.add(Break{Stream: stream, Version: want, Reason: missingReason(want, version)})
			broken = true
			continue
		case len(stored) != HashSize:
			found.add(Break{Stream: stream, Version: version, Reason: "no hash stored"})
			broken = true
			continue
		}
		binary.BigEndian.PutUint32(versionWire[:], uint32(int32(version)))
		if sum := h.sumWire(raw[0], versionWire[:], raw[2], raw[3], raw[4][mdSkip:], raw[5][dataSkip:], prev); !bytes.Equal(sum[:], stored) {
			found.add(Break{Stream: stream, Version: version, Reason: fmt.Sprintf(
				"hash mismatch: stored %s, the content and the previous hash give %s (the event was edited, or an event before it was replaced)",
				short(stored), short(sum[:]))})
			broken = true
			continue
		}
		prev, want = append(prev[:0], stored...), want+1
	}
	if err := rows.Err(); err != nil {
		return interpret(err, opts.Stream, 0)
	}
	if opts.Progress != nil {
		opts.Progress(v.Events, max(total, v.Events))
	}
	return nil
}

func missingReason(want, got int) string {
	if got == want+1 {
		return fmt.Sprintf("missing version: version %d follows version %d", got, want-1)
	}
	return fmt.Sprintf("missing versions %d to %d: version %d follows version %d", want, got-1, got, want-1)
}

// short is the first 16 hex digits of a hash, enough to tell two apart in a message.
func short(h []byte) string {
	s := hex.EncodeToString(h)
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}

func (s *Store) verifyAnchors(ctx context.Context, opts VerifyOptions, v *Verification, found *breaks) error {
	a, err := LatestAnchor(ctx, s.pool)
	if err != nil {
		return err
	}
	if a == nil {
		return nil
	}
	v.Anchor = a
	if opts.Stream == uuid.Nil {
		// The heads the latest anchor recorded must still hash to its root (the copy of
		// the root kept outside the database, from the log, is what makes the root itself
		// trustworthy: the auditor compares it with Anchor.Root).
		root, err := anchoredRoot(ctx, s.pool, a.ID)
		if err != nil {
			return err
		}
		if !bytes.Equal(root.sum(), a.Root) || root.streams != a.Streams || root.events != a.Events {
			found.add(Break{Reason: fmt.Sprintf(
				"anchor %d: its recorded heads (%d streams, %d events) hash to %s, not to its root %s (%d streams, %d events): the anchor tables were edited",
				a.ID, root.streams, root.events, hex.EncodeToString(root.sum()), hex.EncodeToString(a.Root), a.Streams, a.Events)})
		}
	}
	// Every head ever anchored must still be in the events table with the hash the
	// anchor saw.
	where, args := "", []any{}
	if opts.Stream != uuid.Nil {
		where, args = "WHERE h.stream_id = $1", []any{opts.Stream}
	}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM audit_anchor_heads h `+where, args...).Scan(&v.AnchoredHeads); err != nil {
		return interpret(err, opts.Stream, 0)
	}
	cond := "e.hash IS DISTINCT FROM h.hash"
	if where != "" {
		cond = where + " AND " + cond
	} else {
		cond = "WHERE " + cond
	}
	rows, err := s.pool.Query(ctx, `SELECT h.stream_id, h.version, h.anchor_id, a.created_at, e.hash IS NOT NULL,
			(SELECT coalesce(max(x.version), 0) FROM events x WHERE x.stream_id = h.stream_id)
		FROM audit_anchor_heads h JOIN audit_anchors a ON a.id = h.anchor_id
		LEFT JOIN events e ON e.stream_id = h.stream_id AND e.version = h.version
		`+cond+` ORDER BY h.stream_id, h.version`, args...)
	if err != nil {
		return interpret(err, opts.Stream, 0)
	}
	var (
		stream        uuid.UUID
		version, head int
		anchor        int64
		at            time.Time
		present       bool
	)
	_, err = pgx.ForEachRow(rows, []any{&stream, &version, &anchor, &at, &present, &head}, func() error {
		when := at.UTC().Format(time.RFC3339)
		if present {
			found.add(Break{Stream: stream, Version: version, Reason: fmt.Sprintf(
				"rewritten: anchor %d (%s) recorded another hash for this version; the chain was recomputed from here or earlier", anchor, when)})
		} else {
			found.add(Break{Stream: stream, Version: min(head+1, version), Reason: fmt.Sprintf(
				"truncated tail: anchor %d (%s) recorded version %d, the stream now ends at version %d", anchor, when, version, head)})
		}
		return nil
	})
	return interpret(err, opts.Stream, 0)
}
