package webhooks

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/ticket"
)

// Payload is the JSON body of a delivery.
type Payload struct {
	// ID is the delivery's id, also sent as webhook-id: the same at every attempt and
	// redelivery, so a receiver dedupes on it.
	ID       uuid.UUID  `json:"id"`
	Type     string     `json:"type"`
	TicketID *uuid.UUID `json:"ticket_id,omitempty"`
	Version  int        `json:"version,omitempty"`
	// OccurredAt is when the event happened (the ticket's updated_at after it).
	OccurredAt time.Time `json:"occurred_at"`
	Actor      *Actor    `json:"actor,omitempty"`
	// Data is the event's own data, as the history shows it.
	Data any `json:"data"`
	// Ticket is the ticket as GET /v1/ticket/{id} showed it right after the event;
	// null for ticket.deleted (the ticket is gone).
	Ticket *projections.View `json:"ticket"`
}

// Actor is who recorded the event: the display name the request gave and the
// authenticated principal (absent for events recorded before authentication existed).
type Actor struct {
	Name      string                `json:"name"`
	Principal *eventstore.Principal `json:"principal,omitempty"`
}

// comment is the data of a ticket.comment_added event.
type comment struct {
	ID        uuid.UUID `json:"id"`
	Body      string    `json:"body"`
	Email     string    `json:"email,omitempty"`
	CreatedBy string    `json:"created_by"`
}

// Handler returns the projector of the webhooks consumer group: for every event of a
// batch, one delivery per enabled endpoint subscribed to its type, written in the
// transaction that moves the group's position, so a crash loses or invents none.
//
// While no endpoint is enabled the group only moves its position (Idle): an event
// that no endpoint could receive is not decoded or opened. An endpoint receives the
// events the group takes after its creation commits, as before.
func (s *Service) Handler() projections.Handler {
	return projections.Handler{Group: Group, Apply: s.Apply, Queue: s.Queue, Committed: s.committed, Idle: idle}
}

// idle reports, in the batch's transaction, that no endpoint is enabled.
func idle(ctx context.Context, tx pgx.Tx) (bool, error) {
	var none bool
	err := tx.QueryRow(ctx, `SELECT NOT EXISTS (SELECT FROM webhook_endpoints WHERE enabled)`).Scan(&none)
	return none, err
}

func (s *Service) committed() {
	if cs := s.handing; len(cs) > 0 {
		s.handing = nil
		if d := s.disp.Load(); d != nil {
			d.handover(cs)
		}
	}
	if s.recorded.Swap(false) {
		s.Wake()
	}
}

// Apply records the deliveries of recs in tx (see Handler). It is idempotent: a
// delivery of an (endpoint, ticket, version) already recorded is not recorded again.
func (s *Service) Apply(ctx context.Context, tx pgx.Tx, recs []eventstore.Record) error {
	b := &pgx.Batch{}
	if err := s.Queue(ctx, tx, recs, b); err != nil || b.Len() == 0 {
		return err
	}
	return projections.Unavailable(tx.SendBatch(ctx, b).Close())
}

type target struct {
	id      uuid.UUID
	events  []string
	url     string
	secrets []string
}

func (t target) wants(typ string) bool {
	return slices.Contains(t.events, AllEvents) || slices.Contains(t.events, typ)
}

// Queue is Apply queueing its one insert into b.
func (s *Service) Queue(ctx context.Context, tx pgx.Tx, recs []eventstore.Record, b *pgx.Batch) error {
	s.handing = nil // what an earlier batch queued and did not commit
	rows, err := tx.Query(ctx, `SELECT id, events, url, secret,
		CASE WHEN previous_expires_at > now() THEN previous_secret END FROM webhook_endpoints WHERE enabled`)
	if err != nil {
		return projections.Unavailable(err)
	}
	targets, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (target, error) {
		var t target
		var secret string
		var previous *string
		err := r.Scan(&t.id, &t.events, &t.url, &secret, &previous)
		t.secrets = []string{secret}
		if previous != nil {
			t.secrets = append(t.secrets, *previous)
		}
		return t, err
	})
	if err != nil {
		return projections.Unavailable(err)
	}
	if len(targets) == 0 {
		return nil
	}
	var (
		ids, endpoints, tickets []uuid.UUID
		types, payloads         []string
		versions                []int32
		recorded                []time.Time
		lease                   []bool
	)
	retryUntil := s.Now().Add(s.cfg.MaxAge)
	// Deliveries this process's dispatcher has room for are inserted leased to it and
	// handed over after the commit (no claim's round trip): per endpoint, the first
	// of each ticket in the batch, if no older one of the ticket is pending (the
	// insert checks that).
	d := s.disp.Load()
	room := map[uuid.UUID]int{}
	if d != nil {
		for _, t := range targets {
			room[t.id] = d.roomFor(t.id)
		}
	}
	type pair struct{ endpoint, ticket uuid.UUID }
	first := map[pair]bool{}
	byID := map[uuid.UUID]claimed{}
	at := time.Now()
	for _, r := range recs {
		typ, ok := eventTypes[r.Type()]
		if !ok {
			return fmt.Errorf("webhooks: %w: %s", projections.ErrUnknownEvent, r.Type())
		}
		var to []target
		for _, t := range targets {
			if t.wants(typ) {
				to = append(to, t)
			}
		}
		if len(to) == 0 {
			continue
		}
		view, err := s.viewAfter(ctx, r)
		if err != nil {
			return err
		}
		p := payloadOf(r, typ, view)
		for _, ep := range to {
			p.ID = uuid.Must(uuid.NewV7())
			body, err := eventstore.EncodeJSON(p)
			if err != nil {
				return err
			}
			ids, endpoints, tickets = append(ids, p.ID), append(endpoints, ep.id), append(tickets, r.TicketID)
			types, payloads = append(types, typ), append(payloads, string(body))
			versions, recorded = append(versions, int32(r.Version)), append(recorded, r.RecordedAt)
			k := pair{ep.id, r.TicketID}
			leased := !first[k] && room[ep.id] > 0
			first[k] = true
			lease = append(lease, leased)
			if leased {
				room[ep.id]--
				byID[p.ID] = claimed{id: p.ID, endpoint: ep.id, url: ep.url, payload: body, secrets: ep.secrets,
					recordedAt: r.RecordedAt, retryUntil: retryUntil, claimedAt: at}
			}
		}
	}
	if len(ids) == 0 {
		return nil
	}
	b.Queue(`INSERT INTO webhook_deliveries (id, endpoint_id, ticket_id, version, event_type, payload, event_recorded_at, retry_until, next_attempt_at)
		SELECT d.id, d.endpoint_id, d.ticket_id, d.version, d.event_type, d.payload, d.recorded, $8::timestamptz,
			CASE WHEN d.lease AND NOT EXISTS (SELECT 1 FROM webhook_deliveries o WHERE o.status = 'pending'
				AND o.endpoint_id = d.endpoint_id AND o.ticket_id = d.ticket_id AND o.version < d.version)
			THEN now() + $10 * interval '1 millisecond' ELSE now() END
		FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int[], $5::text[], $6::text[], $7::timestamptz[], $9::bool[])
			AS d(id, endpoint_id, ticket_id, version, event_type, payload, recorded, lease)
		ON CONFLICT (endpoint_id, ticket_id, version) DO NOTHING
		RETURNING id, next_attempt_at, next_attempt_at > now(), extract(epoch FROM clock_timestamp() - now())`,
		ids, endpoints, tickets, versions, types, payloads, recorded, retryUntil, lease, s.lease().Milliseconds()).
		Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var id uuid.UUID
				var until time.Time
				var leased bool
				var open float64 // how long the transaction (and the lease, from its start) had run
				if err := rows.Scan(&id, &until, &leased, &open); err != nil {
					return err
				}
				if c, ok := byID[id]; ok && leased {
					c.lease = until
					c.claimedAt = at.Add(-time.Duration(open * float64(time.Second)))
					s.handing = append(s.handing, c)
				}
			}
			return rows.Err()
		})
	s.recorded.Store(true)
	return nil
}

// viewAfter returns the ticket as it stood right after r: folded onto the view the
// service last made of the ticket when that is the one before r, else folded from the
// event store (projections.FoldStream: the one fold, never one of our own).
func (s *Service) viewAfter(ctx context.Context, r eventstore.Record) (projections.View, error) {
	if r.Version == 1 {
		// the first event: the view before it is the zero View, nothing to read
		if v, err := projections.Fold(projections.View{}, r.Event); err == nil {
			s.remember(v)
			return v, nil
		}
	}
	if v, ok := s.views.Get(r.TicketID); ok {
		if v.Version == r.Version {
			return v, nil
		}
		if v.Version == r.Version-1 {
			if next, err := projections.Fold(v, r.Event); err == nil {
				s.remember(next)
				return next, nil
			}
		}
	}
	v, _, err := projections.FoldStream(ctx, s.streams, r.TicketID, r.Version)
	if err != nil {
		return projections.View{}, projections.Unavailable(fmt.Errorf("webhooks: fold %s up to v%d: %w", r.TicketID, r.Version, err))
	}
	if v.Version != r.Version {
		return projections.View{}, fmt.Errorf("webhooks: %w: ticket %s folded to v%d, not v%d", projections.ErrOutOfOrder, r.TicketID, v.Version, r.Version)
	}
	s.remember(v)
	return v, nil
}

func (s *Service) remember(v projections.View) {
	if v.Deleted {
		return
	}
	size := 300 + len(v.Title) + len(v.Description) + len(v.Email) + len(v.CreatedBy) + len(v.UpdatedBy)
	for _, c := range v.Comments {
		size += 120 + len(c.Body) + len(c.Email) + len(c.CreatedBy)
	}
	s.views.Put(v, size)
}

// payloadOf is the payload of r (without its id).
func payloadOf(r eventstore.Record, typ string, v projections.View) Payload {
	id := r.TicketID
	p := Payload{Type: typ, TicketID: &id, Version: r.Version, OccurredAt: r.At.UTC(),
		Actor: &Actor{Name: r.Actor, Principal: r.Metadata.Principal}, Data: r.Data}
	if c, ok := r.Data.(ticket.CommentAdded); ok {
		p.Data = comment{ID: c.CommentID, Body: c.Body, Email: c.Email, CreatedBy: c.CreatedBy}
	}
	if !v.Deleted {
		p.Ticket = &v
	}
	return p
}
