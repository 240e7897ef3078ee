// Package webhooks delivers ticket events to the HTTP endpoints admins subscribe:
// the endpoints and the delivery log (tables webhook_endpoints and webhook_deliveries,
// which no other package queries), the consumer group of the outbox that records one
// delivery per event and endpoint in the transaction that moves the group's position
// (Service.Handler), the dispatcher that sends them signed in the Standard Webhooks
// form and retries with backoff (Service.Run), and the outbound safety rules (CheckURL).
package webhooks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/ticket"
)

// Group is the consumer group of the outbox that records deliveries.
const Group = "webhooks"

// Event types as webhooks name them, and the stored event kinds they stand for.
const (
	TypeOpened        = "ticket.opened"
	TypeCommentAdded  = "ticket.comment_added"
	TypeStatusChanged = "ticket.status_changed"
	TypeDeleted       = "ticket.deleted"
	// TypeSubjectErased: a data subject's personal data in the ticket was erased.
	TypeSubjectErased = "ticket.subject_erased"
	// TypePing is sent by POST /v1/webhooks/{id}/ping only; it cannot be subscribed to.
	TypePing = "webhook.ping"
	// AllEvents subscribes to every event type, those added later included.
	AllEvents = "*"
)

// eventTypes maps the event store's kinds to the webhook types.
var eventTypes = map[string]string{
	ticket.TypeOpened:        TypeOpened,
	ticket.TypeCommentAdded:  TypeCommentAdded,
	ticket.TypeStatusChanged: TypeStatusChanged,
	ticket.TypeDeleted:       TypeDeleted,
	ticket.TypeSubjectErased: TypeSubjectErased,
}

// EventTypes lists the types an endpoint may subscribe to, sorted.
func EventTypes() []string {
	out := make([]string, 0, len(eventTypes))
	for _, t := range eventTypes {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// Errors of the service. Invalid input is a *ticket.ValidationError naming the field.
var (
	ErrNotFound = errors.New("no webhook with this id")
	// ErrDeliveryNotFound: no delivery with this id for this webhook.
	ErrDeliveryNotFound = errors.New("no delivery with this id for this webhook")
	// ErrDisabled: the endpoint is disabled (a ping would wait until it is enabled).
	ErrDisabled = errors.New("the webhook is disabled")
)

// Endpoint is a subscription as the API shows it: never with its secret.
type Endpoint struct {
	ID          uuid.UUID `json:"id"`
	URL         string    `json:"url"`
	Events      []string  `json:"events"`
	Description string    `json:"description"`
	Enabled     bool      `json:"enabled"`
	// DisabledReason says why the endpoint was disabled (by the dispatcher after its
	// consecutive failures, or by an admin); absent while enabled.
	DisabledReason      string     `json:"disabled_reason,omitempty"`
	DisabledAt          *time.Time `json:"disabled_at,omitempty"`
	ConsecutiveFailures int        `json:"consecutive_failures"`
	// SecretRotatedUntil, while a rotated-out secret still signs beside the new one,
	// is when it stops.
	PreviousSecretExpiresAt *time.Time `json:"previous_secret_expires_at,omitempty"`
	CreatedAt               time.Time  `json:"created_at"`
	UpdatedAt               time.Time  `json:"updated_at"`
}

// NewEndpoint is what POST /v1/webhooks asks for.
type NewEndpoint struct {
	URL         string
	Events      []string
	Description string
}

// Patch is a change of an endpoint: nil fields stay as they are.
type Patch struct {
	URL         *string
	Events      []string // nil: unchanged
	Description *string
	Enabled     *bool
}

// Delivery is one entry of the delivery log.
type Delivery struct {
	ID         uuid.UUID  `json:"id"`
	EndpointID uuid.UUID  `json:"webhook_id"`
	Type       string     `json:"type"`
	TicketID   *uuid.UUID `json:"ticket_id,omitempty"`
	Version    *int       `json:"version,omitempty"`
	// Status is pending (waiting for its next attempt, or in flight), delivered
	// (answered 2xx) or failed (given up after WEBHOOK_MAX_AGE).
	Status         string     `json:"status"`
	Attempts       int        `json:"attempts"`
	CreatedAt      time.Time  `json:"created_at"`
	NextAttemptAt  *time.Time `json:"next_attempt_at,omitempty"`
	LastAttemptAt  *time.Time `json:"last_attempt_at,omitempty"`
	LastStatusCode *int       `json:"last_status_code,omitempty"`
	LastError      string     `json:"last_error,omitempty"`
	LastLatencyMS  *int       `json:"last_latency_ms,omitempty"`
	// LastResponse is the start of the last answer's body (at most ResponseBytes).
	LastResponse string     `json:"last_response,omitempty"`
	FinishedAt   *time.Time `json:"finished_at,omitempty"`
}

// ResponseBytes is how much of an answer's body the delivery log keeps; the dispatcher
// reads at most readBytes of it and drops the rest with the connection.
const (
	ResponseBytes = 1024
	readBytes     = 16 << 10
)

// Service owns the webhook tables: the API's operations, the consumer group's
// projector and the dispatcher.
type Service struct {
	pool    *pgxpool.Pool
	cfg     Config
	log     *slog.Logger
	streams projections.StreamReader
	views   *projections.ViewCache
	metrics *metrics
	client  *http.Client
	// wake wakes the dispatcher; recorded says the group's current batch recorded
	// deliveries (its Committed then wakes).
	wake     chan struct{}
	recorded atomic.Bool
	// disp is the running dispatcher (Run), nil outside it. handing is what the
	// consumer group's current batch inserted leased to it, handed over at the commit
	// (only the group's goroutine touches it).
	disp    atomic.Pointer[dispatcher]
	handing []claimed
	// Now is the clock (tests move it); time.Now by default.
	Now func() time.Time
	// DispatchPool, when set, is the pool the dispatcher takes and records deliveries
	// with: a pool of its own, so that under load its short transactions do not queue
	// behind every request for a connection. Nil: the service's pool.
	DispatchPool *pgxpool.Pool
}

// dpool is the dispatcher's pool.
func (s *Service) dpool() *pgxpool.Pool {
	if s.DispatchPool != nil {
		return s.DispatchPool
	}
	return s.pool
}

// New returns the service on pool, folding tickets from streams for the payloads'
// ticket state; reg receives its metrics (nil: none).
func New(pool *pgxpool.Pool, streams projections.StreamReader, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Service, error) {
	if log == nil {
		log = slog.Default()
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Service{pool: pool, cfg: cfg, log: log, streams: streams, views: projections.NewViewCache(8 << 20),
		metrics: m, wake: make(chan struct{}, 1), Now: time.Now}
	s.client = newClient(cfg)
	return s, nil
}

// newClient is the dispatcher's HTTP client: no proxy (the dial check must see the
// target), the dial-time address check unless private targets are allowed, no
// redirects followed (a 3xx is a failed attempt), every phase bounded by Timeout.
func newClient(cfg Config) *http.Client {
	d := &net.Dialer{Timeout: cfg.AttemptTimeout, KeepAlive: 30 * time.Second}
	if !cfg.AllowPrivate {
		d.Control = dialControl
	}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            d.DialContext,
		TLSHandshakeTimeout:    cfg.AttemptTimeout,
		ResponseHeaderTimeout:  cfg.AttemptTimeout,
		MaxIdleConnsPerHost:    cfg.EndpointConcurrency,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: 16 << 10,
	}
	return &http.Client{Transport: tr, Timeout: cfg.AttemptTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// Config returns the configuration in effect (defaults filled in).
func (s *Service) Config() Config { return s.cfg }

// Wake makes the dispatcher look for due deliveries now.
func (s *Service) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func invalid(field, reason string) error {
	return &ticket.ValidationError{Field: field, Reason: reason}
}

// checkEvents validates and normalizes an events list: known types, or ["*"] alone.
func checkEvents(events []string) ([]string, error) {
	if len(events) == 0 {
		return nil, invalid("events", `must list at least one event type, or be ["*"] for all`)
	}
	var out []string
	for i, e := range events {
		if e == AllEvents {
			if len(events) != 1 {
				return nil, invalid("events", `"*" stands for every type and must be alone`)
			}
			return []string{AllEvents}, nil
		}
		if !slices.Contains(EventTypes(), e) {
			return nil, invalid(fmt.Sprintf("events[%d]", i), fmt.Sprintf("%.60q is not an event type: one of %s, or \"*\"", e, strings.Join(EventTypes(), ", ")))
		}
		if !slices.Contains(out, e) {
			out = append(out, e)
		}
	}
	slices.Sort(out)
	return out, nil
}

func checkDescription(d string) error {
	if !utf8.ValidString(d) || utf8.RuneCountInString(d) > 500 {
		return invalid("description", "must be at most 500 characters")
	}
	return nil
}

func (s *Service) checkURL(ctx context.Context, u string) error {
	if err := CheckURL(ctx, u, s.cfg.AllowPrivate); err != nil {
		return invalid("url", err.Error())
	}
	return nil
}

const endpointColumns = `id, url, events, description, enabled, coalesce(disabled_reason, ''), disabled_at,
	consecutive_failures, CASE WHEN previous_expires_at > now() THEN previous_expires_at END, created_at, updated_at`

func scanEndpoint(row pgx.Row) (Endpoint, error) {
	var e Endpoint
	err := row.Scan(&e.ID, &e.URL, &e.Events, &e.Description, &e.Enabled, &e.DisabledReason, &e.DisabledAt,
		&e.ConsecutiveFailures, &e.PreviousSecretExpiresAt, &e.CreatedAt, &e.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return e, ErrNotFound
	}
	return e, projections.Unavailable(err)
}

// Create adds an endpoint, enabled, and returns it with its signing secret, which is
// shown this once. Errors: *ticket.ValidationError for a bad url, events or
// description.
func (s *Service) Create(ctx context.Context, n NewEndpoint) (Endpoint, string, error) {
	var errs ticket.ValidationErrors
	events, err := checkEvents(n.Events)
	for _, e := range []error{s.checkURL(ctx, n.URL), err, checkDescription(n.Description)} {
		var ve *ticket.ValidationError
		if errors.As(e, &ve) {
			errs = append(errs, ve)
		}
	}
	if len(errs) > 0 {
		return Endpoint{}, "", errs
	}
	secret := NewSecret()
	e, err := scanEndpoint(s.pool.QueryRow(ctx, `INSERT INTO webhook_endpoints (id, url, events, description, secret)
		VALUES ($1, $2, $3, $4, $5) RETURNING `+endpointColumns, uuid.Must(uuid.NewV7()), n.URL, events, n.Description, secret))
	return e, secret, err
}

// List returns every endpoint, oldest first.
func (s *Service) List(ctx context.Context) ([]Endpoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+endpointColumns+` FROM webhook_endpoints ORDER BY created_at, id`)
	if err != nil {
		return nil, projections.Unavailable(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Endpoint, error) { return scanEndpoint(r) })
	return out, projections.Unavailable(err)
}

// Get returns endpoint id, or ErrNotFound.
func (s *Service) Get(ctx context.Context, id uuid.UUID) (Endpoint, error) {
	return scanEndpoint(s.pool.QueryRow(ctx, `SELECT `+endpointColumns+` FROM webhook_endpoints WHERE id = $1`, id))
}

// Update changes endpoint id. Enabling it clears its failures and disabled reason (its
// pending deliveries go out again); disabling it by hand records the reason "disabled
// by an admin". Errors: ErrNotFound, *ticket.ValidationError.
func (s *Service) Update(ctx context.Context, id uuid.UUID, p Patch) (Endpoint, error) {
	var errs ticket.ValidationErrors
	add := func(e error) {
		var ve *ticket.ValidationError
		if errors.As(e, &ve) {
			errs = append(errs, ve)
		}
	}
	var events []string
	if p.URL != nil {
		add(s.checkURL(ctx, *p.URL))
	}
	if p.Events != nil {
		var err error
		events, err = checkEvents(p.Events)
		add(err)
	}
	if p.Description != nil {
		add(checkDescription(*p.Description))
	}
	if len(errs) > 0 {
		return Endpoint{}, errs
	}
	e, err := scanEndpoint(s.pool.QueryRow(ctx, `UPDATE webhook_endpoints SET
		url = coalesce($2, url), events = coalesce($3, events), description = coalesce($4, description),
		enabled = coalesce($5, enabled),
		consecutive_failures = CASE WHEN $5 AND NOT enabled THEN 0 ELSE consecutive_failures END,
		disabled_reason = CASE WHEN $5 THEN NULL WHEN NOT $5 AND enabled THEN 'disabled by an admin' ELSE disabled_reason END,
		disabled_at = CASE WHEN $5 THEN NULL WHEN NOT $5 AND enabled THEN now() ELSE disabled_at END,
		updated_at = now()
		WHERE id = $1 RETURNING `+endpointColumns, id, p.URL, events, p.Description, p.Enabled))
	if err == nil && e.Enabled {
		s.Wake() // its pending deliveries may go now
	}
	if err == nil && !e.Enabled {
		s.forget(id) // what this process claimed ahead goes back unsent
	}
	return e, err
}

// Delete removes endpoint id and its delivery log; nothing more is sent to it.
func (s *Service) Delete(ctx context.Context, id uuid.UUID) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM webhook_endpoints WHERE id = $1`, id)
	if err != nil {
		return projections.Unavailable(err)
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	s.forget(id) // nothing claimed ahead is sent
	return nil
}

// Rotate gives endpoint id a new secret, returned this once. The old one keeps signing
// beside it for grace (nil: WEBHOOK_ROTATION_GRACE; 0: not at all).
func (s *Service) Rotate(ctx context.Context, id uuid.UUID, grace *time.Duration) (Endpoint, string, error) {
	g := s.cfg.RotationGrace
	if grace != nil {
		g = *grace
	}
	secret := NewSecret()
	e, err := scanEndpoint(s.pool.QueryRow(ctx, `UPDATE webhook_endpoints SET
		previous_secret = CASE WHEN $3 > 0 THEN secret END,
		previous_expires_at = CASE WHEN $3 > 0 THEN now() + $3 * interval '1 millisecond' END,
		secret = $2, updated_at = now()
		WHERE id = $1 RETURNING `+endpointColumns, id, secret, g.Milliseconds()))
	return e, secret, err
}
