package webhooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
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
// Every instance runs one. A delivery is taken with a short transaction: the due
// pending deliveries of enabled endpoints that are the oldest pending one of their
// (endpoint, ticket) pair (so a ticket's events reach an endpoint in version order:
// the next one waits until the one before is delivered or failed) are locked FOR
// UPDATE SKIP LOCKED (instances share the work, never the same delivery), at most as
// many per endpoint as this instance has free slots for it, and their next attempt is
// moved to the end of a lease (WEBHOOK_TIMEOUT + 5s). The attempt then runs outside
// any transaction (an open transaction would hold back every outbox consumer), and
// its result is written with a second short one. An instance that dies mid-attempt
// leaves the delivery to be taken again when the lease ends, with the same
// webhook-id: at least once.

// lease is how long a taken delivery is not taken again: its attempt ends before.
func (s *Service) lease() time.Duration { return s.cfg.AttemptTimeout + 5*time.Second }

// claimed is a delivery taken for an attempt.
type claimed struct {
	id, endpoint uuid.UUID
	url, payload string
	secrets      []string
	attempts     int
	recordedAt   time.Time
	retryUntil   time.Time
}

// claimQuery takes up to $1 deliveries; $2/$3 are the endpoints with fewer free
// slots than $4 (the per-endpoint limit) and their free slots. Each enabled endpoint
// offers its 128 longest-due pending deliveries (an index range scan), so one with a
// large backlog costs the query no more than that, and never crowds out another.
const claimQuery = `WITH candidates AS (
	SELECT c.id, c.endpoint_id, c.ticket_id, c.version, c.next_attempt_at
	FROM webhook_endpoints e
	CROSS JOIN LATERAL (SELECT d.id, d.endpoint_id, d.ticket_id, d.version, d.next_attempt_at
		FROM webhook_deliveries d
		WHERE d.endpoint_id = e.id AND d.status = 'pending' AND d.next_attempt_at <= now()
		ORDER BY d.next_attempt_at LIMIT 128) c
	WHERE e.enabled
), eligible AS (
	SELECT c.id, c.next_attempt_at, row_number() OVER (PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at, c.id) AS n,
		coalesce(f.free, $4) AS free
	FROM candidates c
	LEFT JOIN unnest($2::uuid[], $3::int[]) AS f(endpoint_id, free) ON f.endpoint_id = c.endpoint_id
	WHERE NOT EXISTS (SELECT 1 FROM webhook_deliveries o
		WHERE o.status = 'pending' AND o.endpoint_id = c.endpoint_id AND o.ticket_id = c.ticket_id AND o.version < c.version)
), picked AS (
	SELECT d.id FROM webhook_deliveries d JOIN eligible USING (id)
	WHERE eligible.n <= eligible.free AND d.status = 'pending' AND d.next_attempt_at <= now()
	ORDER BY eligible.next_attempt_at, d.id
	LIMIT $1
	FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d SET next_attempt_at = now() + $5 * interval '1 millisecond',
	attempts = d.attempts + 1, last_attempt_at = now()
FROM picked, webhook_endpoints e
WHERE d.id = picked.id AND e.id = d.endpoint_id
RETURNING d.id, d.endpoint_id, e.url, d.payload, e.secret,
	CASE WHEN e.previous_expires_at > now() THEN e.previous_secret END, d.attempts, d.event_recorded_at, d.retry_until`

// Run dispatches due deliveries until ctx ends, and prunes the delivery log. A failing
// database never ends it: it waits and tries again.
func (s *Service) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.maintain(ctx) }()
	defer wg.Wait()

	var mu sync.Mutex
	inflight := map[uuid.UUID]int{}
	total := 0
	done := make(chan struct{}, 1)
	poll := time.NewTimer(0)
	defer poll.Stop()
	var backoff time.Duration
	for {
		mu.Lock()
		free := s.cfg.Concurrency - total
		var busy []uuid.UUID
		var slots []int32
		for ep, n := range inflight {
			busy, slots = append(busy, ep), append(slots, int32(s.cfg.EndpointConcurrency-n))
		}
		mu.Unlock()
		got := 0
		if free > 0 {
			cs, err := s.claim(ctx, free, busy, slots)
			if err != nil && ctx.Err() == nil {
				backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
				s.log.Warn("webhooks: taking due deliveries failed; retrying", "err", err, "in", backoff)
			} else {
				backoff = 0
			}
			got = len(cs)
			mu.Lock()
			for _, c := range cs {
				inflight[c.endpoint]++
				total++
			}
			mu.Unlock()
			for _, c := range cs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s.attempt(context.WithoutCancel(ctx), c)
					mu.Lock()
					if inflight[c.endpoint]--; inflight[c.endpoint] <= 0 {
						delete(inflight, c.endpoint)
					}
					total--
					mu.Unlock()
					select {
					case done <- struct{}{}:
					default:
					}
				}()
			}
		}
		if ctx.Err() != nil {
			return
		}
		if got > 0 && got == free && backoff == 0 {
			continue // there may be more, and no slot is free: wait for one below
		}
		wait := s.cfg.DispatchPoll
		if backoff > 0 {
			wait = backoff
		}
		poll.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
			time.Sleep(gather)
		case <-done:
			time.Sleep(4 * gather) // let more attempts end: one claim takes their successors
		case <-poll.C:
		}
	}
}

// gather is how long a woken dispatcher lets further wakes and finished attempts
// gather before it takes due deliveries: under load a wake comes with nearly every
// event and attempt, and a claim of one delivery costs what a claim of many does.
const gather = 2 * time.Millisecond

// claim takes up to limit due deliveries (see claimQuery).
func (s *Service) claim(ctx context.Context, limit int, busy []uuid.UUID, slots []int32) ([]claimed, error) {
	if busy == nil {
		busy, slots = []uuid.UUID{}, []int32{}
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rows, err := s.dpool().Query(qctx, claimQuery, limit, busy, slots, s.cfg.EndpointConcurrency, s.lease().Milliseconds())
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (claimed, error) {
		var c claimed
		var secret string
		var previous *string
		err := r.Scan(&c.id, &c.endpoint, &c.url, &c.payload, &secret, &previous, &c.attempts, &c.recordedAt, &c.retryUntil)
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

// attempt sends claimed delivery c once and records the result.
func (s *Service) attempt(ctx context.Context, c claimed) {
	r := s.send(ctx, c)
	s.metrics.attempts.WithLabelValues(r.kind).Inc()
	for try := 0; ; try++ {
		err := s.record(ctx, c, r)
		if err == nil {
			return
		}
		if try == 3 || ctx.Err() != nil {
			// the lease ends and the delivery is taken again: sent twice, same webhook-id
			s.log.Warn("webhooks: recording an attempt failed", "delivery", c.id, "err", err)
			return
		}
		time.Sleep(time.Duration(200<<try) * time.Millisecond)
	}
}

// send makes one signed POST of c and reads at most readBytes of the answer.
func (s *Service) send(ctx context.Context, c claimed) result {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
	defer cancel()
	body := []byte(c.payload)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return result{err: "bad url: " + err.Error(), kind: "network_error"}
	}
	now := s.Now()
	id := c.id.String()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "ticketd-webhooks/1")
	req.Header[HeaderID] = []string{id}
	req.Header[HeaderTimestamp] = []string{strconv.FormatInt(now.Unix(), 10)}
	req.Header[HeaderSignature] = []string{Sign(id, now, body, c.secrets...)}
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

// record writes the result of an attempt: delivered, retried after a backoff, or
// failed past its retry_until; and the endpoint's run of failures, which disables it
// at DisableAfter.
func (s *Service) record(ctx context.Context, c claimed, r result) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	now := s.Now()
	code := &r.code
	if r.code == 0 {
		code = nil
	}
	latency := int(r.latency.Milliseconds())
	var errText *string
	if r.err != "" {
		errText = &r.err
	}
	b := &pgx.Batch{}
	if r.kind == "success" {
		b.Queue(`UPDATE webhook_deliveries SET status = 'delivered', finished_at = now(), last_status_code = $2,
			last_error = NULL, last_latency_ms = $3, last_response = $4 WHERE id = $1`, c.id, code, latency, r.response)
		b.Queue(`UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE id = $1 AND consecutive_failures <> 0`, c.endpoint)
		if err := s.dpool().SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		s.metrics.delivered(now.Sub(c.recordedAt))
		return nil
	}
	giveUp := !now.Before(c.retryUntil)
	wait := s.backoff(c.attempts)
	b.Queue(`UPDATE webhook_deliveries SET
		status = CASE WHEN $6 THEN 'failed' ELSE 'pending' END,
		finished_at = CASE WHEN $6 THEN now() END,
		next_attempt_at = now() + $7 * interval '1 millisecond',
		last_status_code = $2, last_error = $3, last_latency_ms = $4, last_response = $5
		WHERE id = $1`, c.id, code, errText, latency, r.response, giveUp, wait.Milliseconds())
	reason := fmt.Sprintf("disabled after %d consecutive failed attempts; the last: %s", s.cfg.DisableAfter, r.err)
	var failures int
	var enabled bool
	b.Queue(`UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1,
		enabled = enabled AND NOT ($2 > 0 AND consecutive_failures + 1 >= $2),
		disabled_reason = CASE WHEN enabled AND $2 > 0 AND consecutive_failures + 1 >= $2 THEN $3 ELSE disabled_reason END,
		disabled_at = CASE WHEN enabled AND $2 > 0 AND consecutive_failures + 1 >= $2 THEN now() ELSE disabled_at END
		WHERE id = $1 RETURNING consecutive_failures, enabled`, c.endpoint, s.cfg.DisableAfter, reason).
		QueryRow(func(row pgx.Row) error {
			err := row.Scan(&failures, &enabled)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil // deleted meanwhile
			}
			return err
		})
	if err := s.dpool().SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	if giveUp {
		s.metrics.deliveries.WithLabelValues("failed").Inc()
	}
	if !enabled && s.cfg.DisableAfter > 0 && failures == s.cfg.DisableAfter {
		s.metrics.autoDisabled.Inc()
		s.log.Warn("webhooks: endpoint disabled", "webhook_id", c.endpoint, "reason", reason)
	}
	return nil
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
