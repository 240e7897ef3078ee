package webhooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// The dispatcher
//
// Every instance runs one: a claimer, attempts, and a recorder.
//
// Most deliveries never need a claim: the consumer group inserts those this process
// has room for already leased to it (the first of each ticket and endpoint in its
// batch, when no older one is pending) and hands them over when its transaction
// commits (Service.Queue, committed). A crash before the hand-over leaves them to
// their lease, as a crash mid-attempt does.
//
// The claimer takes the other due deliveries in one short statement: the pending deliveries of
// enabled endpoints that are the oldest pending one of their (endpoint, ticket) pair
// (so a ticket's events reach an endpoint in version order: the next one waits until
// the one before is delivered or failed), locked FOR UPDATE SKIP LOCKED (instances
// share the work, never the same delivery), their next attempt moved to the end of a
// lease (WEBHOOK_TIMEOUT + 5s). It claims ahead: each endpoint's deliveries wait in a
// queue of this process (at most aheadFactor × WEBHOOK_ENDPOINT_CONCURRENCY of them
// held, running or queued), so its attempts never wait for a claim's round trip, and
// one claim takes many. An endpoint whose attempts are slow (over aheadLatency) gets
// no more than its free slots: a queued delivery must start its attempt while its
// lease still covers the attempt (claimed under lease - WEBHOOK_TIMEOUT - 1s ago), or
// it goes back unattempted, due at once.
//
// Attempts run outside any transaction (an open transaction would hold back every
// outbox consumer), at most WEBHOOK_ENDPOINT_CONCURRENCY per endpoint and
// WEBHOOK_CONCURRENCY in all. Their results go to the recorder, which writes all the
// results that arrived meanwhile in one transaction (one UPDATE of the deliveries, one
// of their endpoints' failure runs), then wakes the claimer: a delivered or failed
// delivery lets its ticket's next one go. An instance that dies mid-attempt, or
// before its result is recorded, leaves the delivery to be taken again when the
// lease ends, with the same webhook-id: at least once.

// lease is how long a taken delivery is not taken again: its attempt ends before.
func (s *Service) lease() time.Duration { return s.cfg.AttemptTimeout + 5*time.Second }

// startBy is how long after its claim a queued delivery may still start its attempt:
// the attempt then ends (WEBHOOK_TIMEOUT) a second before the lease.
func (s *Service) startBy() time.Duration { return s.lease() - s.cfg.AttemptTimeout - time.Second }

// aheadFactor × WEBHOOK_ENDPOINT_CONCURRENCY deliveries of an endpoint may be held by
// this process (running or queued) while its attempts are fast; aheadLatency is the
// attempt time above which an endpoint is slow (held: its free slots only).
const (
	aheadFactor  = 16
	aheadLatency = time.Second
)

// recordBatch bounds the results written in one transaction.
const recordBatch = 512

// claimed is a delivery taken for an attempt.
type claimed struct {
	id, endpoint uuid.UUID
	url          string
	payload      []byte
	secrets      []string
	attempts     int // attempts recorded before this one
	recordedAt   time.Time
	retryUntil   time.Time
	// lease is the next_attempt_at the claim wrote (the lease's end); claimedAt is
	// this process's clock just before the claim was sent.
	lease, claimedAt time.Time
}

// claimQuery takes up to $1 deliveries; each enabled endpoint gives at most $2, or
// for those listed in $3, their number in $4 (what this process may still hold of
// them). Each endpoint's due deliveries are walked in due order on its index
// (webhook_deliveries_due), those whose ticket has an older pending delivery skipped
// on the pair index, until its number is found: a claim costs what it takes (plus
// the waiting successors it steps over), never a scan of the table, whose delivered
// rows stay for WEBHOOK_RETENTION. (Written so that the generic plan of the prepared
// statement is index-driven too: no join back to the table by id.)
const claimQuery = `WITH picked AS (
	SELECT p.id
	FROM webhook_endpoints e
	LEFT JOIN unnest($3::text[]::uuid[], $4::int[]) AS f(endpoint_id, n) ON f.endpoint_id = e.id
	CROSS JOIN LATERAL (
		SELECT d.id FROM webhook_deliveries d
		WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= now()
			AND NOT EXISTS (SELECT 1 FROM webhook_deliveries o WHERE o.status = 'pending'
				AND o.endpoint_id = d.endpoint_id AND o.ticket_id = d.ticket_id AND o.version < d.version)
		ORDER BY d.next_attempt_at LIMIT coalesce(f.n, $2)
		FOR UPDATE OF d SKIP LOCKED) p
	WHERE e.enabled AND coalesce(f.n, $2) > 0
	LIMIT $1
), leased AS (
	UPDATE webhook_deliveries d SET next_attempt_at = now() + $5 * interval '1 millisecond'
	WHERE d.id = ANY (ARRAY(SELECT id FROM picked))
	RETURNING d.id, d.endpoint_id, d.payload, d.attempts, d.event_recorded_at, d.retry_until, d.next_attempt_at
)
SELECT l.id, l.endpoint_id, e.url, l.payload, e.secret, CASE WHEN e.previous_expires_at > now() THEN e.previous_secret END,
	l.attempts, l.event_recorded_at, l.retry_until, l.next_attempt_at
FROM leased l JOIN webhook_endpoints e ON e.id = l.endpoint_id`

// outcome is what became of a claimed delivery: an attempt's result, or (release)
// no attempt: it goes back, due at once.
type outcome struct {
	c       claimed
	r       result
	started time.Time
	release bool
}

// endpointState is this process's share of one endpoint's deliveries.
type endpointState struct {
	queued   []claimed
	inflight int
	// slow: its last attempt took over aheadLatency, or a queued delivery of it went
	// stale; the claimer then takes no more of it than its free slots.
	slow bool
}

// dispatcher is the state of Run.
type dispatcher struct {
	s  *Service
	mu sync.Mutex
	// eps holds an endpoint's state while it has deliveries here, or is slow.
	eps map[uuid.UUID]*endpointState
	// inflight: attempts running; held: deliveries claimed and not yet finished
	// (queued or running).
	inflight, held int
	stopping       bool
	// room wakes the claimer when an endpoint's queue has run low; results feed the
	// recorder.
	room    chan struct{}
	results chan outcome
	ctx     context.Context // for attempts: Run's, without its cancellation
	running sync.WaitGroup  // attempts, and releases on their way to results
}

// Run dispatches due deliveries until ctx ends, and prunes the delivery log. A failing
// database never ends it: it waits and tries again. When ctx ends, queued deliveries
// go back unattempted, and Run returns once the attempts in flight (bounded by
// WEBHOOK_TIMEOUT) are recorded.
func (s *Service) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.maintain(ctx) }()
	defer wg.Wait()

	d := &dispatcher{s: s, eps: map[uuid.UUID]*endpointState{}, room: make(chan struct{}, 1),
		results: make(chan outcome, aheadFactor*s.cfg.Concurrency), ctx: context.WithoutCancel(ctx)}
	recorded := make(chan struct{})
	go func() { defer close(recorded); d.recordLoop() }()
	s.disp.Store(d)
	d.claimLoop(ctx)

	d.mu.Lock()
	d.stopping = true
	var back []claimed
	for _, ep := range d.eps {
		back = append(back, ep.queued...)
		d.held -= len(ep.queued)
		ep.queued = nil
	}
	d.mu.Unlock()
	for _, c := range back {
		d.results <- outcome{c: c, release: true}
	}
	d.running.Wait()
	s.disp.Store(nil)
	close(d.results)
	<-recorded
}

// claimLoop claims due deliveries until ctx ends: when woken (deliveries recorded or
// finished, an endpoint enabled, a redelivery), when a queue ran low after a claim that
// filled its budget, and every WEBHOOK_POLL_INTERVAL (other instances' deliveries,
// retries that became due).
func (d *dispatcher) claimLoop(ctx context.Context) {
	s := d.s
	poll := time.NewTimer(0)
	defer poll.Stop()
	var backoff time.Duration
	for {
		limit, busy, slots := d.budget()
		full := false
		if limit > 0 {
			cs, err := s.claim(ctx, limit, busy, slots, aheadFactor*s.cfg.EndpointConcurrency)
			if err != nil && ctx.Err() == nil {
				backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
				s.log.Warn("webhooks: taking due deliveries failed; retrying", "err", err, "in", backoff)
			} else {
				backoff = 0
			}
			full = d.enqueue(cs, limit, busy, slots)
		}
		if ctx.Err() != nil {
			return
		}
		wait := s.cfg.DispatchPoll
		if backoff > 0 {
			wait = backoff
		}
		poll.Reset(wait)
		var room <-chan struct{}
		if full && backoff == 0 {
			room = d.room // more may be due: claim again when there is room for it
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
			time.Sleep(gather)
		case <-room:
			time.Sleep(gather)
		case <-poll.C:
		}
	}
}

// gather is how long a woken claimer lets further wakes and finished attempts gather
// before it claims: under load a wake comes with nearly every batch of events and of
// results, and a claim of one delivery costs what a claim of many does.
const gather = 2 * time.Millisecond

// heldCap is how many deliveries of ep this process may hold.
func (d *dispatcher) heldCap(ep *endpointState) int {
	if ep.slow {
		return d.s.cfg.EndpointConcurrency
	}
	return aheadFactor * d.s.cfg.EndpointConcurrency
}

// budget returns how many deliveries a claim may take in all, and per endpoint
// that holds some here (or is slow) how many more of it.
func (d *dispatcher) budget() (limit int, busy []uuid.UUID, slots []int32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	busy, slots = []uuid.UUID{}, []int32{}
	for id, ep := range d.eps {
		busy = append(busy, id)
		slots = append(slots, int32(max(0, d.heldCap(ep)-len(ep.queued)-ep.inflight)))
	}
	return aheadFactor*d.s.cfg.Concurrency - d.held, busy, slots
}

// enqueue queues claimed deliveries and starts what free slots allow. It reports
// whether the claim filled a budget (more may be due).
func (d *dispatcher) enqueue(cs []claimed, limit int, busy []uuid.UUID, slots []int32) bool {
	full := len(cs) >= limit
	got := map[uuid.UUID]int{}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range cs {
		got[c.endpoint]++
		d.queue(c)
	}
	for i, id := range busy {
		if slots[i] > 0 && got[id] >= int(slots[i]) {
			full = true
		}
	}
	for id, n := range got {
		if !slices.Contains(busy, id) && n >= aheadFactor*d.s.cfg.EndpointConcurrency {
			full = true
		}
		d.pump(d.eps[id])
	}
	return full
}

// roomFor is how many more deliveries of endpoint id this process may hold now (0 for
// a slow endpoint without a free slot), for the consumer group's hand-over.
func (d *dispatcher) roomFor(id uuid.UUID) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return 0
	}
	n := aheadFactor*d.s.cfg.Concurrency - d.held
	if ep := d.eps[id]; ep != nil {
		n = min(n, d.heldCap(ep)-len(ep.queued)-ep.inflight)
	} else {
		n = min(n, aheadFactor*d.s.cfg.EndpointConcurrency)
	}
	return max(n, 0)
}

// handover queues deliveries the consumer group recorded leased to this process (its
// transaction committed) and starts what free slots allow. If the dispatcher is
// stopping they are left to their leases.
func (d *dispatcher) handover(cs []claimed) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return
	}
	for _, c := range cs {
		d.queue(c)
	}
	for _, c := range cs {
		d.pump(d.eps[c.endpoint])
	}
}

// queue puts c, claimed or handed over to this process, in its endpoint's queue
// (d.mu held).
func (d *dispatcher) queue(c claimed) {
	ep := d.eps[c.endpoint]
	if ep == nil {
		ep = &endpointState{}
		d.eps[c.endpoint] = ep
	}
	ep.queued = append(ep.queued, c)
	d.held++
}

// pump starts attempts of ep's queued deliveries while slots are free (d.mu held).
func (d *dispatcher) pump(ep *endpointState) {
	for ep.inflight < d.s.cfg.EndpointConcurrency && len(ep.queued) > 0 && d.inflight < d.s.cfg.Concurrency {
		c := d.pop(ep)
		ep.inflight++
		d.inflight++
		d.running.Add(1)
		go d.run(c)
	}
}

// pop takes ep's next queued delivery, and wakes the claimer when the queue is down
// to half of what the endpoint may hold, so the next claim's round trip ends before
// the queue does (d.mu held).
func (d *dispatcher) pop(ep *endpointState) claimed {
	c := ep.queued[0]
	ep.queued[0] = claimed{}
	ep.queued = ep.queued[1:]
	if len(ep.queued) <= d.heldCap(ep)/2 {
		select {
		case d.room <- struct{}{}:
		default:
		}
	}
	return c
}

// run attempts c, then the next queued deliveries of its endpoint while a slot is free.
func (d *dispatcher) run(c claimed) {
	defer d.running.Done()
	s := d.s
	for {
		o := outcome{c: c}
		if time.Since(c.claimedAt) > s.startBy() {
			o.release = true // its lease would end before the attempt: back, due now
		} else {
			o.started = s.Now()
			o.r = s.send(d.ctx, c)
			s.metrics.attempts.WithLabelValues(o.r.kind).Inc()
		}
		d.results <- o
		d.mu.Lock()
		d.held--
		ep := d.eps[c.endpoint]
		ep.slow = o.release || o.r.latency > aheadLatency
		if len(ep.queued) > 0 && d.inflight < s.cfg.Concurrency {
			c = d.pop(ep)
			d.mu.Unlock()
			continue
		}
		ep.inflight--
		d.inflight--
		if ep.inflight == 0 && len(ep.queued) == 0 && !ep.slow {
			delete(d.eps, c.endpoint)
		}
		// a slot is free: this endpoint's, or one another endpoint's queue waits for
		for _, other := range d.eps {
			d.pump(other)
		}
		d.mu.Unlock()
		return
	}
}

// forget drops the queued deliveries of endpoint id (disabled or deleted): they go
// back unattempted. Attempts in flight end as they do.
func (s *Service) forget(id uuid.UUID) {
	d := s.disp.Load()
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	ep := d.eps[id]
	if d.stopping || ep == nil || len(ep.queued) == 0 {
		return
	}
	back := ep.queued
	ep.queued = nil
	d.held -= len(back)
	d.running.Add(1)
	go func() {
		defer d.running.Done()
		for _, c := range back {
			d.results <- outcome{c: c, release: true}
		}
	}()
}

// claim takes up to limit due deliveries, at most perEndpoint of an endpoint and
// slots[i] of busy[i] (see claimQuery).
func (s *Service) claim(ctx context.Context, limit int, busy []uuid.UUID, slots []int32, perEndpoint int) ([]claimed, error) {
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	at := time.Now()
	// Planned at every claim (QueryExecModeExec: no prepared statement, so no generic
	// plan): a plan cached while webhook_deliveries was empty or small (a new install,
	// or before autovacuum's first analyze) walked every pending delivery for each
	// one it took, O(n²): 15-20 deliveries a second with 4,000 pending.
	ids := make([]string, len(busy)) // the text format of QueryExecModeExec has no uuid[] encoder
	for i, id := range busy {
		ids[i] = id.String()
	}
	rows, err := s.dpool().Query(qctx, claimQuery, pgx.QueryExecModeExec, limit, perEndpoint, ids, slots, s.lease().Milliseconds())
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (claimed, error) {
		c := claimed{claimedAt: at}
		var secret string
		var previous *string
		err := r.Scan(&c.id, &c.endpoint, &c.url, &c.payload, &secret, &previous, &c.attempts, &c.recordedAt, &c.retryUntil, &c.lease)
		c.secrets = []string{secret}
		if previous != nil {
			c.secrets = append(c.secrets, *previous)
		}
		return c, err
	})
}

// result is what an attempt came to.
type result struct {
	code     int // 0: no HTTP answer
	err      string
	latency  time.Duration
	response string
	kind     string // the attempts metric's result
}

// send makes one signed POST of c and reads at most readBytes of the answer.
func (s *Service) send(ctx context.Context, c claimed) result {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(c.payload))
	if err != nil {
		return result{err: "bad url: " + err.Error(), kind: "network_error"}
	}
	now := s.Now()
	id := c.id.String()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "ticketd-webhooks/1")
	req.Header[HeaderID] = []string{id}
	req.Header[HeaderTimestamp] = []string{strconv.FormatInt(now.Unix(), 10)}
	req.Header[HeaderSignature] = []string{Sign(id, now, c.payload, c.secrets...)}
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		kind := "network_error"
		if errors.Is(err, ErrForbiddenAddress) {
			kind = "refused"
		}
		return result{err: clipText(err.Error(), 500), latency: time.Since(start), kind: kind}
	}
	defer resp.Body.Close()
	raw, rerr := io.ReadAll(io.LimitReader(resp.Body, readBytes))
	r := result{code: resp.StatusCode, latency: time.Since(start), response: clipText(string(raw), ResponseBytes), kind: "success"}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		r.kind = "http_error"
		r.err = "HTTP " + strconv.Itoa(resp.StatusCode)
		if resp.StatusCode >= 300 && resp.StatusCode < 400 {
			r.err += " (redirects are not followed)"
		}
	} else if rerr != nil && !errors.Is(rerr, io.EOF) {
		// a 2xx whose body broke off still counts: the receiver answered
		r.response = clipText(r.response, ResponseBytes)
	}
	return r
}

// clipText cuts s to at most n bytes at a rune boundary, and makes it valid UTF-8.
func clipText(s string, n int) string {
	if len(s) > n {
		s = s[:n]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// recordLoop writes the outcomes as they come, each write taking all that arrived
// meanwhile (up to recordBatch), until results is closed and drained.
func (d *dispatcher) recordLoop() {
	batch := make([]outcome, 0, recordBatch)
	for o := range d.results {
		batch = append(batch[:0], o)
	more:
		for len(batch) < recordBatch {
			select {
			case o, ok := <-d.results:
				if !ok {
					break more
				}
				batch = append(batch, o)
			default:
				break more
			}
		}
		d.s.recordAll(d.ctx, batch)
		clear(batch)
	}
}

// recordAll records a batch of outcomes, trying a few times. If it cannot, their
// leases end and the deliveries are sent again (same webhook-id): at least once.
func (s *Service) recordAll(ctx context.Context, batch []outcome) {
	for try := 0; ; try++ {
		disabled, err := s.record(ctx, batch)
		if err == nil {
			for _, id := range disabled {
				s.forget(id)
			}
			s.Wake() // their tickets' next deliveries, and released ones, may go now
			return
		}
		if try == 3 || ctx.Err() != nil {
			s.log.Warn("webhooks: recording attempts failed; their deliveries are sent again when their leases end",
				"deliveries", len(batch), "err", err)
			return
		}
		time.Sleep(time.Duration(200<<try) * time.Millisecond)
	}
}

// run of failures of one endpoint in a batch of results.
type failureRun struct {
	reset bool // an attempt of the batch succeeded: the run starts after the last one
	fails int  // failed attempts (after the last success)
	last  string
}

// record writes a batch of outcomes in one transaction: each attempt's result
// (delivered, retried after a backoff, or failed past its retry_until), the
// unattempted deliveries given back (due now, if their lease is still the claim's),
// and each endpoint's run of failures, which disables it at DisableAfter. It returns
// the endpoints it disabled.
func (s *Service) record(ctx context.Context, batch []outcome) ([]uuid.UUID, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var (
		ids               []uuid.UUID
		delivered, giveUp []bool
		waits             []int64
		started           []time.Time
		codes, latencies  []*int32
		errTexts          []*string
		responses         []string
		back              []uuid.UUID
		leases            []time.Time
		runs              = map[uuid.UUID]*failureRun{}
		order             []uuid.UUID
		nGivenUp, nR      int
	)
	for _, o := range batch {
		if o.release {
			back, leases = append(back, o.c.id), append(leases, o.c.lease)
			continue
		}
		nR++
		r, c := o.r, o.c
		ok := r.kind == "success"
		var code *int32
		if r.code != 0 {
			code = new(int32(r.code))
		}
		var errText *string
		if r.err != "" {
			errText = new(r.err)
		}
		end := o.started.Add(r.latency)
		gu := !ok && !end.Before(c.retryUntil)
		ids, delivered, giveUp = append(ids, c.id), append(delivered, ok), append(giveUp, gu)
		waits, started = append(waits, s.backoff(c.attempts+1).Milliseconds()), append(started, o.started)
		codes, latencies = append(codes, code), append(latencies, new(int32(r.latency.Milliseconds())))
		errTexts, responses = append(errTexts, errText), append(responses, r.response)
		run := runs[c.endpoint]
		if run == nil {
			run = &failureRun{}
			runs[c.endpoint] = run
			order = append(order, c.endpoint)
		}
		if ok {
			run.reset, run.fails = true, 0
		} else {
			run.fails++
			run.last = r.err
		}
	}
	b := &pgx.Batch{}
	if nR > 0 {
		b.Queue(`UPDATE webhook_deliveries d SET
			status = CASE WHEN r.delivered THEN 'delivered' WHEN r.give_up THEN 'failed' ELSE 'pending' END,
			finished_at = CASE WHEN r.delivered OR r.give_up THEN now() END,
			next_attempt_at = CASE WHEN r.delivered OR r.give_up THEN d.next_attempt_at
				ELSE now() + r.wait * interval '1 millisecond' END,
			attempts = d.attempts + 1, last_attempt_at = r.started,
			last_status_code = r.code, last_error = r.err, last_latency_ms = r.latency, last_response = r.response
			FROM unnest($1::uuid[], $2::bool[], $3::bool[], $4::bigint[], $5::timestamptz[], $6::int[], $7::text[], $8::int[], $9::text[])
				AS r(id, delivered, give_up, wait, started, code, err, latency, response)
			WHERE d.id = r.id`, ids, delivered, giveUp, waits, started, codes, errTexts, latencies, responses)
	}
	if len(back) > 0 {
		b.Queue(`UPDATE webhook_deliveries d SET next_attempt_at = now()
			FROM unnest($1::uuid[], $2::timestamptz[]) AS r(id, lease)
			WHERE d.id = r.id AND d.status = 'pending' AND d.next_attempt_at = r.lease`, back, leases)
	}
	var disabled []uuid.UUID
	if len(order) > 0 {
		var eps []uuid.UUID
		var resets []bool
		var fails []int32
		var reasons []string
		for _, id := range order {
			run := runs[id]
			eps, resets, fails = append(eps, id), append(resets, run.reset), append(fails, int32(run.fails))
			reasons = append(reasons, fmt.Sprintf("disabled after %d consecutive failed attempts; the last: %s", s.cfg.DisableAfter, run.last))
		}
		b.Queue(`WITH r AS (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::int[], $4::text[]) AS r(id, reset, fails, reason)),
			old AS (SELECT e.id, e.enabled, e.consecutive_failures FROM webhook_endpoints e JOIN r ON r.id = e.id
				WHERE r.fails > 0 OR e.consecutive_failures <> 0 FOR UPDATE OF e),
			n AS (SELECT old.id, old.enabled AS was_enabled, r.reason, f.failures,
					r.fails > 0 AND $5 > 0 AND f.failures >= $5 AS trip
				FROM old JOIN r ON r.id = old.id,
				LATERAL (SELECT CASE WHEN r.reset THEN r.fails ELSE old.consecutive_failures + r.fails END AS failures) f)
			UPDATE webhook_endpoints e SET consecutive_failures = n.failures,
				enabled = e.enabled AND NOT n.trip,
				disabled_reason = CASE WHEN e.enabled AND n.trip THEN n.reason ELSE e.disabled_reason END,
				disabled_at = CASE WHEN e.enabled AND n.trip THEN now() ELSE e.disabled_at END
			FROM n WHERE e.id = n.id
			RETURNING e.id, n.was_enabled AND NOT e.enabled, n.reason`, eps, resets, fails, reasons, s.cfg.DisableAfter).
			Query(func(rows pgx.Rows) error {
				for rows.Next() {
					var id uuid.UUID
					var tripped bool
					var reason string
					if err := rows.Scan(&id, &tripped, &reason); err != nil {
						return err
					}
					if tripped {
						disabled = append(disabled, id)
						s.log.Warn("webhooks: endpoint disabled", "webhook_id", id, "reason", reason)
					}
				}
				return rows.Err()
			})
	}
	if b.Len() == 0 {
		return nil, nil
	}
	if err := s.dpool().SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	for _, o := range batch {
		switch {
		case o.release:
		case o.r.kind == "success":
			s.metrics.delivered(o.started.Add(o.r.latency).Sub(o.c.recordedAt))
		case !o.started.Add(o.r.latency).Before(o.c.retryUntil):
			nGivenUp++
		}
	}
	if nGivenUp > 0 {
		s.metrics.deliveries.WithLabelValues("failed").Add(float64(nGivenUp))
	}
	if len(disabled) > 0 {
		s.metrics.autoDisabled.Add(float64(len(disabled)))
	}
	return disabled, nil
}

// backoff is the wait after the attempts-th failed attempt: BackoffMin doubled per
// earlier attempt, at most BackoffMax, jittered to a random point in its upper half.
func (s *Service) backoff(attempts int) time.Duration {
	d := s.cfg.BackoffMin
	for i := 1; i < attempts && d < s.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, s.cfg.BackoffMax)
	return d/2 + rand.N(d/2+1)
}

// maintain prunes the delivery log and samples the disabled endpoints, every minute
// (and at start).
func (s *Service) maintain(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		if n, err := s.Prune(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("webhooks: pruning the delivery log failed", "err", err)
		} else if n > 0 {
			s.log.Info("webhooks: delivery log pruned", "deliveries", n)
		}
		var disabled int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM webhook_endpoints WHERE NOT enabled`).Scan(&disabled); err == nil {
			s.metrics.disabled.Set(float64(disabled))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Prune deletes the deliveries finished (delivered or failed) more than
// WEBHOOK_RETENTION ago, in chunks, and returns how many.
func (s *Service) Prune(ctx context.Context) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, `DELETE FROM webhook_deliveries WHERE id IN (
			SELECT id FROM webhook_deliveries WHERE finished_at < $1 LIMIT 5000)`, s.Now().Add(-s.cfg.Retention))
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < 5000 {
			return total, nil
		}
	}
}
