package webhooks

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
)

// Delivery statuses.
const (
	StatusPending   = "pending"
	StatusDelivered = "delivered"
	StatusFailed    = "failed"
)

const deliveryColumns = `id, endpoint_id, event_type, ticket_id, version, status, attempts, created_at,
	CASE WHEN status = 'pending' THEN next_attempt_at END, last_attempt_at, last_status_code,
	coalesce(last_error, ''), last_latency_ms, coalesce(last_response, ''), finished_at`

func scanDelivery(row pgx.Row) (Delivery, error) {
	var d Delivery
	err := row.Scan(&d.ID, &d.EndpointID, &d.Type, &d.TicketID, &d.Version, &d.Status, &d.Attempts, &d.CreatedAt,
		&d.NextAttemptAt, &d.LastAttemptAt, &d.LastStatusCode, &d.LastError, &d.LastLatencyMS, &d.LastResponse, &d.FinishedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, ErrDeliveryNotFound
	}
	return d, projections.Unavailable(err)
}

// LogQuery selects a page of an endpoint's delivery log, newest first.
type LogQuery struct {
	// Status, if set, keeps only deliveries of that status.
	Status string
	// Before continues after the last delivery of the previous page (zero: the newest).
	BeforeTime time.Time
	BeforeID   uuid.UUID
	Limit      int
}

// Deliveries returns a page of endpoint id's delivery log, newest first, and whether
// more follow. Errors: ErrNotFound for an unknown endpoint.
func (s *Service) Deliveries(ctx context.Context, id uuid.UUID, q LogQuery) ([]Delivery, bool, error) {
	if _, err := s.Get(ctx, id); err != nil {
		return nil, false, err
	}
	before := q.BeforeTime
	if before.IsZero() {
		before = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
		q.BeforeID = uuid.Max
	}
	rows, err := s.pool.Query(ctx, `SELECT `+deliveryColumns+` FROM webhook_deliveries
		WHERE endpoint_id = $1 AND (created_at, id) < ($2, $3) AND ($4 = '' OR status = $4)
		ORDER BY created_at DESC, id DESC LIMIT $5`, id, before, q.BeforeID, q.Status, q.Limit+1)
	if err != nil {
		return nil, false, projections.Unavailable(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Delivery, error) { return scanDelivery(r) })
	if err != nil {
		return nil, false, err
	}
	more := len(out) > q.Limit
	if more {
		out = out[:q.Limit]
	}
	return out, more, nil
}

// Redeliver sends delivery did of endpoint id again, with the same id and body: it
// becomes pending, due now, retried until WEBHOOK_MAX_AGE from now. A delivery still
// pending is only made due now. Errors: ErrNotFound, ErrDeliveryNotFound.
func (s *Service) Redeliver(ctx context.Context, id, did uuid.UUID) (Delivery, error) {
	if _, err := s.Get(ctx, id); err != nil {
		return Delivery{}, err
	}
	d, err := scanDelivery(s.pool.QueryRow(ctx, `UPDATE webhook_deliveries SET
		status = 'pending', next_attempt_at = now(), finished_at = NULL,
		attempts = CASE WHEN status = 'pending' THEN attempts ELSE 0 END,
		retry_until = now() + $3 * interval '1 millisecond'
		WHERE endpoint_id = $1 AND id = $2 AND (status <> 'pending' OR next_attempt_at > now())
		RETURNING `+deliveryColumns, id, did, s.cfg.MaxAge.Milliseconds()))
	if errors.Is(err, ErrDeliveryNotFound) {
		// pending and due already (or in flight): nothing to change, if it exists
		d, err = scanDelivery(s.pool.QueryRow(ctx, `SELECT `+deliveryColumns+` FROM webhook_deliveries
			WHERE endpoint_id = $1 AND id = $2`, id, did))
	}
	if err == nil {
		s.Wake()
	}
	return d, err
}

// Ping records a webhook.ping delivery to endpoint id, sent like any delivery, and
// returns it. Errors: ErrNotFound, ErrDisabled.
func (s *Service) Ping(ctx context.Context, id uuid.UUID) (Delivery, error) {
	e, err := s.Get(ctx, id)
	if err != nil {
		return Delivery{}, err
	}
	if !e.Enabled {
		return Delivery{}, ErrDisabled
	}
	now := s.Now().UTC()
	p := Payload{ID: uuid.Must(uuid.NewV7()), Type: TypePing, OccurredAt: now,
		Data: map[string]any{"webhook_id": id, "url": e.URL}}
	body, err := eventstore.EncodeJSON(p)
	if err != nil {
		return Delivery{}, err
	}
	d, err := scanDelivery(s.pool.QueryRow(ctx, `INSERT INTO webhook_deliveries
		(id, endpoint_id, event_type, payload, event_recorded_at, retry_until)
		VALUES ($1, $2, $3, $4, $5, $5::timestamptz + $6 * interval '1 millisecond')
		RETURNING `+deliveryColumns, p.ID, id, TypePing, string(body), now, s.cfg.MaxAge.Milliseconds()))
	if errors.Is(err, ErrDeliveryNotFound) {
		err = ErrNotFound // deleted meanwhile
	}
	if err != nil {
		var pe interface{ SQLState() string }
		if errors.As(err, &pe) && pe.SQLState() == "23503" {
			err = ErrNotFound
		}
		return Delivery{}, err
	}
	s.Wake()
	return d, nil
}
