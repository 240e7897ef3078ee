package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// Projector throughput from a backlog. With ticketd stopped, the bench appends
// -backlog-events new events (streams of backlogStream events: opened, comments, a
// status change every tenth) together with their outbox rows, in transactions of about
// backlogTxEvents events, the way the event store writes them: one outbox message per
// event, in the event's own transaction, the payload made by eventstore.EncodeMessage.
// Within a transaction the streams are interleaved (every stream's first event, then
// every stream's second, ...), as many tickets written at once would be. Then it starts
// ticketd and polls each consumer group's acknowledged position in the offsets table
// every backlogPoll until it reaches the outbox head. A group's rate is the outbox rows
// it had to work off over the time from the exec of ticketd to the poll that saw it at
// the head: nothing subtracted, start-up included.
//
// Only the tables and the group names are used, not ticketd's packages: the outbox and
// the offsets are watermill-sql's (db/migrations/20261127000001_events.sql), which
// order messages by (transaction_id, offset) and keep per group the last acknowledged
// (last_processed_transaction_id, offset_acked).
const (
	backlogStream    = 100
	backlogTxEvents  = 50000
	backlogPoll      = 20 * time.Millisecond
	backlogProgress  = 10 * time.Second
	backlogRequestID = "ticketbench-backlog"
	outboxTable      = `"watermill_ticket_events"`
	offsetsTable     = `"watermill_offsets_ticket_events"`
	poisonTable      = `"watermill_ticket_events_poison"`
)

// backlogGroups are ticketd's consumer groups on the outbox: the projectors of the
// Postgres and the Redis read models.
var backlogGroups = []string{"pg-readmodel", "redis-readmodel"}

// outboxPos is a position in the outbox as watermill-sql orders it: by the writing
// transaction, then by offset within it.
type outboxPos struct {
	Tx     uint64
	Offset int64
}

// reached reports whether p is at or past head.
func (p outboxPos) reached(head outboxPos) bool {
	if p.Tx != head.Tx {
		return p.Tx > head.Tx
	}
	return p.Offset >= head.Offset
}

func (p outboxPos) String() string { return fmt.Sprintf("(%d, %d)", p.Tx, p.Offset) }

// backlogGroup is one consumer group's progress through the backlog; the durations
// are since the exec of ticketd, zero while it has not happened.
type backlogGroup struct {
	name    string
	start   outboxPos // acknowledged when ticketd started
	pending int64     // outbox rows past start then: what the group has to work off
	seen    bool      // the group has a row in the offsets table
	last    outboxPos // last acknowledged position polled
	moved   time.Duration
	reached time.Duration
}

// streamLengths splits n events into streams of per events, the last one shorter.
func streamLengths(n, per int) []int {
	var out []int
	for n > 0 {
		k := min(n, per)
		out = append(out, k)
		n -= k
	}
	return out
}

// interleave orders the events of several streams round robin: every stream's first
// event, then every stream's second, and so on. Each stream keeps its own order.
func interleave(streams [][]ticket.Event) []ticket.Event {
	var out []ticket.Event
	for i := 0; ; i++ {
		added := false
		for _, s := range streams {
			if i < len(s) {
				out = append(out, s[i])
				added = true
			}
		}
		if !added {
			return out
		}
	}
}

// kilo writes an event count as the scenario names do: 200000 as "200k", 1500 as is.
func kilo(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

// runBacklog appends the backlog with ticketd stopped, starts ticketd, and adds one row
// per consumer group: its events/s, against the POST /v1/ticket/ rate of this run.
func (b *bench) runBacklog(ctx context.Context) error {
	n := b.o.backlogEvents
	if !b.ownServer {
		for _, g := range backlogGroups {
			b.add(Row{Key: "backlog-" + g, Scenario: fmt.Sprintf("projector %s, %s-event backlog", g, kilo(n)),
				Unit: "events/s", Target: "≥3× POST rate", NA: true, Note: "n/a (-url: no access to ticketd's database)"})
		}
		return nil
	}
	poisonBefore, poisonErr := b.countRows(ctx, poisonTable)

	t0 := time.Now()
	lengths := streamLengths(n, backlogStream)
	perTx := max(1, backlogTxEvents/backlogStream)
	txs := 0
	start := time.Now().UTC().Truncate(time.Microsecond)
	for i := 0; i < len(lengths); i += perTx {
		if err := b.appendBacklogTx(ctx, lengths[i:min(i+perTx, len(lengths))], start); err != nil {
			return fmt.Errorf("append the backlog: %w", err)
		}
		txs++
	}
	b.logf("appended %d events in %d streams with their outbox rows in %.1fs (transactions: %d)",
		n, len(lengths), time.Since(t0).Seconds(), txs)
	// A backlog that built up over time would have been vacuumed and analyzed meanwhile;
	// and the checkpoint of the appended rows is not the projectors' work.
	for _, q := range []string{`VACUUM ANALYZE events, ` + outboxTable, `CHECKPOINT`} {
		if _, err := b.pool.Exec(ctx, q); err != nil {
			b.logf("%s: %v", q, err)
		}
	}

	head, err := b.outboxHead(ctx)
	if err != nil {
		return err
	}
	pos, err := b.groupPositions(ctx)
	if err != nil {
		return err
	}
	groups := make([]*backlogGroup, len(backlogGroups))
	for i, name := range backlogGroups {
		g := &backlogGroup{name: name}
		g.start, g.seen = pos[name] // no row yet: watermill-sql starts the group at (0, 0)
		g.last = g.start
		if g.pending, err = b.outboxAfter(ctx, g.start); err != nil {
			return err
		}
		groups[i] = g
	}
	b.report.Notes = append(b.report.Notes, fmt.Sprintf(
		"backlog: %d events in %d streams of up to %d (opened, comments, a status change every tenth), interleaved, "+
			"appended with ticketd stopped by COPY into events and the outbox (transactions of up to %d events: %d), then VACUUM ANALYZE and CHECKPOINT; outbox head %v",
		n, len(lengths), backlogStream, perTx*backlogStream, txs, head))

	res, err := b.drainBacklog(ctx, head, groups)
	if err != nil {
		return err
	}
	poisoned := int64(-1)
	if after, err := b.countRows(ctx, poisonTable); err == nil && poisonErr == nil {
		poisoned = after - poisonBefore
	}
	create, haveCreate := b.row("create")
	for _, g := range groups {
		r := Row{Key: "backlog-" + g.name, Scenario: fmt.Sprintf("projector %s, %s-event backlog", g.name, kilo(n)),
			Unit: "events/s", Requests: uint64(max(g.pending, 0)), Target: "≥3× POST rate"}
		var notes []string
		switch {
		case res.fail != nil:
			r.Errors = 1
			notes = append(notes, res.fail.Error())
		case g.reached > 0:
			r.Value = float64(g.pending) / g.reached.Seconds()
			notes = append(notes, fmt.Sprintf("%d outbox rows past the group's position / %.2fs from the exec of ticketd to the poll (every %v) that saw it acknowledge the head; nothing subtracted: start-up (/readyz after %.2fs) and the first acknowledgement (after %.2fs) included",
				g.pending, g.reached.Seconds(), backlogPoll, res.ready.Seconds(), g.moved.Seconds()))
		case !g.seen:
			r.Errors = 1
			notes = append(notes, fmt.Sprintf("no row for consumer group %q in %s after %v: ticketd has no such projector?", g.name, offsetsTable, res.waited.Round(time.Millisecond)))
		default:
			r.Errors = 1
			left, err := b.outboxAfter(ctx, g.last)
			if err != nil {
				return err
			}
			done := g.pending - left
			r.Value = float64(done) / res.waited.Seconds()
			notes = append(notes, fmt.Sprintf("NOT at the outbox head after -backlog-timeout %v: %d of %d events acknowledged, so the value is the rate so far (acknowledged %v, head %v)",
				b.o.backlogLimit, done, g.pending, g.last, head))
		}
		if g.pending != int64(n) && res.fail == nil {
			notes = append(notes, fmt.Sprintf("%d of them appended; the group stood %d events behind the outbox head before", n, g.pending-int64(n)))
		}
		if haveCreate {
			r.vs(create, "≥3× POST rate")
		} else {
			notes = append(notes, "no POST /v1/ticket/ rate in this run to compare with (-only without create)")
		}
		if poisoned > 0 {
			notes = append(notes, fmt.Sprintf("%d events went to the poison table meanwhile (all groups)", poisoned))
		}
		if res.peakKB > 0 {
			notes = append(notes, fmt.Sprintf("peak RSS of this ticketd %.0f MB", float64(res.peakKB)/1024))
		}
		if r.Errors > 0 || haveCreate {
			r.judge(r.Errors == 0 && poisoned <= 0 && r.Ratio >= 3)
		}
		r.Note = strings.Join(notes, "; ")
		b.add(r)
	}
	return nil
}

// backlogRun is what drainBacklog saw.
type backlogRun struct {
	ready  time.Duration // exec of ticketd to /readyz answering 200
	waited time.Duration // exec of ticketd to the end of the wait
	peakKB int64         // VmHWM of that ticketd
	// fail says why no group could be measured (ticketd did not start, exited).
	fail error
}

// drainBacklog starts ticketd and polls the groups' acknowledged positions every
// backlogPoll until all of them reach head, ticketd exits, or -backlog-timeout passes.
// It stops ticketd again. Only the end of ctx is an error.
func (b *bench) drainBacklog(ctx context.Context, head outboxPos, groups []*backlogGroup) (backlogRun, error) {
	type startResult struct {
		proc *ticketdProc
		err  error
		at   time.Duration
	}
	var res backlogRun
	logPath := filepath.Join(b.tmp, "ticketd-backlog.log")
	started := make(chan startResult, 1)
	t0 := time.Now()
	go func() {
		p, err := startTicketd(ctx, b.bin, ticketdEnv(b.env), b.base, logPath)
		started <- startResult{p, err, time.Since(t0)}
	}()
	stopProfile := b.maybeProfile(ctx, "backlog", min(b.o.backlogLimit, 30*time.Second))

	var proc *ticketdProc
	var exited <-chan struct{}
	startc := started // nil once received
	deadline := time.NewTimer(b.o.backlogLimit)
	defer deadline.Stop()
	tick := time.NewTicker(backlogPoll)
	defer tick.Stop()
	lastLog := time.Now()
	all := func() bool {
		for _, g := range groups {
			if g.reached == 0 {
				return false
			}
		}
		return true
	}
wait:
	for !all() {
		select {
		case <-ctx.Done():
			break wait
		case s := <-startc:
			startc = nil
			if s.err != nil {
				res.fail = fmt.Errorf("ticketd did not start: %w", s.err)
				break wait
			}
			proc, res.ready, exited = s.proc, s.at, s.proc.exited
			b.proc = proc // stopped by close() if the bench ends early
			b.logf("ticketd pid %d draining the backlog, ready in %.1fs (log: %s)", proc.pid(), s.at.Seconds(), logPath)
		case <-exited:
			res.fail = fmt.Errorf("ticketd exited while draining the backlog (%v); its log: %s", proc.err, lastLines(tail(logPath, 3), 3))
			break wait
		case <-deadline.C:
			break wait
		case <-tick.C:
			pos, err := b.groupPositions(ctx)
			if err != nil {
				if ctx.Err() != nil {
					break wait
				}
				res.fail = fmt.Errorf("poll %s: %w", offsetsTable, err)
				break wait
			}
			now := time.Since(t0)
			for _, g := range groups {
				p, ok := pos[g.name]
				if !ok {
					continue
				}
				g.seen, g.last = true, p
				if g.moved == 0 && p != g.start {
					g.moved = now
				}
				if g.reached == 0 && p.reached(head) {
					g.reached = now
					b.logf("%s acknowledged the outbox head after %.2fs: %.0f events/s", g.name, now.Seconds(), float64(g.pending)/now.Seconds())
				}
			}
			if time.Since(lastLog) >= backlogProgress {
				lastLog = time.Now()
				b.logProgress(ctx, groups, now)
			}
		}
	}
	res.waited = time.Since(t0)
	if startc != nil { // still starting: wait for it, to stop it
		if s := <-startc; s.err == nil {
			proc = s.proc
			b.proc = proc
		}
	}
	stopProfile()
	if proc != nil {
		if kb, err := procStatusKB(proc.pid(), "VmHWM"); err == nil {
			res.peakKB = kb
			b.rssPeaks = append(b.rssPeaks, rssPeak{what: "ticketd draining the backlog", kb: kb})
		}
		b.sampleRSS("backlog")
		proc.stop()
		b.proc = nil
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, nil
}

// logProgress logs how many events each group has acknowledged so far.
func (b *bench) logProgress(ctx context.Context, groups []*backlogGroup, since time.Duration) {
	var parts []string
	for _, g := range groups {
		if g.reached > 0 {
			parts = append(parts, g.name+" done")
			continue
		}
		left, err := b.outboxAfter(ctx, g.last)
		if err != nil {
			return
		}
		parts = append(parts, fmt.Sprintf("%s %d/%d", g.name, g.pending-left, g.pending))
	}
	b.logf("backlog after %.0fs: %s", since.Seconds(), strings.Join(parts, ", "))
}

// appendBacklogTx appends streams of the given lengths, interleaved, and their outbox
// rows in one transaction. The events take their transaction_id from the column's
// default (pg_current_xact_id()); the outbox rows carry the same id, as watermill-sql's
// publisher writes them, and the message id the event store gives an event.
func (b *bench) appendBacklogTx(ctx context.Context, lengths []int, start time.Time) error {
	streams := make([][]ticket.Event, len(lengths))
	for i, k := range lengths {
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		if streams[i], err = longTicketEvents(id, k, start); err != nil {
			return err
		}
	}
	events := interleave(streams)
	rows := make([][]any, len(events))
	for i, e := range events {
		row, err := eventCopyRow(e, backlogRequestID)
		if err != nil {
			return err
		}
		rows[i] = row
	}
	return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"events"}, eventColumns, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("copy events: %w", err)
		}
		type key struct {
			stream  uuid.UUID
			version int
		}
		positions := make(map[key]int64, len(events))
		var xid uint64
		res, err := tx.Query(ctx, `SELECT stream_id, version, position, transaction_id FROM events WHERE transaction_id = pg_current_xact_id()`)
		if err != nil {
			return fmt.Errorf("read back positions: %w", err)
		}
		var k key
		var pos int64
		if _, err := pgx.ForEachRow(res, []any{&k.stream, &k.version, &pos, &xid}, func() error {
			positions[k] = pos
			return nil
		}); err != nil {
			return fmt.Errorf("read back positions: %w", err)
		}
		outbox := make([][]any, len(events))
		for i, e := range events {
			pos, ok := positions[key{e.TicketID, e.Version}]
			if !ok {
				return fmt.Errorf("event %d of %s has no position after the copy", e.Version, e.TicketID)
			}
			payload, err := eventstore.EncodeMessage(eventstore.Record{
				Event: e, Position: pos, RecordedAt: e.At.UTC(),
				Metadata: eventstore.Metadata{Actor: e.Actor, RequestID: backlogRequestID},
			})
			if err != nil {
				return err
			}
			msgID := uuid.NewSHA1(e.TicketID, []byte(strconv.Itoa(e.Version))).String()
			outbox[i] = []any{msgID, payload, []byte(`{}`), xid}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{strings.Trim(outboxTable, `"`)},
			[]string{"uuid", "payload", "metadata", "transaction_id"}, pgx.CopyFromRows(outbox)); err != nil {
			return fmt.Errorf("copy outbox rows: %w", err)
		}
		return nil
	})
}

// outboxHead returns the position of the last outbox row.
func (b *bench) outboxHead(ctx context.Context) (outboxPos, error) {
	var p outboxPos
	err := b.pool.QueryRow(ctx, `SELECT transaction_id, "offset" FROM `+outboxTable+
		` ORDER BY transaction_id DESC, "offset" DESC LIMIT 1`).Scan(&p.Tx, &p.Offset)
	if err != nil {
		return p, fmt.Errorf("outbox head: %w", err)
	}
	return p, nil
}

// groupPositions returns the acknowledged position of every consumer group of
// backlogGroups that has a row in the offsets table.
func (b *bench) groupPositions(ctx context.Context) (map[string]outboxPos, error) {
	rows, err := b.pool.Query(ctx, `SELECT consumer_group, last_processed_transaction_id, coalesce(offset_acked, 0) FROM `+
		offsetsTable+` WHERE consumer_group = ANY($1)`, backlogGroups)
	if err != nil {
		return nil, fmt.Errorf("consumer group positions: %w", err)
	}
	out := map[string]outboxPos{}
	var group string
	var p outboxPos
	if _, err := pgx.ForEachRow(rows, []any{&group, &p.Tx, &p.Offset}, func() error {
		out[group] = p
		return nil
	}); err != nil {
		return nil, fmt.Errorf("consumer group positions: %w", err)
	}
	return out, nil
}

// outboxAfter counts the outbox rows past p.
func (b *bench) outboxAfter(ctx context.Context, p outboxPos) (int64, error) {
	var n int64
	err := b.pool.QueryRow(ctx, `SELECT count(*) FROM `+outboxTable+` WHERE (transaction_id, "offset") > ($1::xid8, $2)`,
		p.Tx, p.Offset).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count outbox rows after %v: %w", p, err)
	}
	return n, nil
}

// countRows counts the rows of a table.
func (b *bench) countRows(ctx context.Context, table string) (int64, error) {
	var n int64
	err := b.pool.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&n)
	return n, err
}

// row returns the measured (not n/a) row with key, if the run has one.
func (b *bench) row(key string) (Row, bool) {
	for _, r := range b.report.Rows {
		if r.Key == key && !r.NA {
			return r, true
		}
	}
	return Row{}, false
}
