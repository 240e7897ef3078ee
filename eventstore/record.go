package eventstore

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

// Topic is the Watermill topic every ticket event is published on through the outbox.
const Topic = "ticket_events"

// Metadata is recorded with every event at append: who did it and through which request.
type Metadata struct {
	// Actor is the display name the request gave (created_by, updated_by, X-Actor):
	// what the client says, kept for compatibility. Principal is who it was.
	Actor string `json:"actor,omitempty"`
	// Principal is the authenticated caller that recorded the event, whatever the body
	// says; nil for events recorded before authentication existed or outside a request.
	Principal *Principal `json:"principal,omitempty"`
	// RequestID is the server's id of the request that recorded the event (unique per
	// request); ClientRequestID and CorrelationID are what the client sent as
	// X-Request-ID and X-Correlation-ID: its own labels, which it may reuse.
	RequestID       string `json:"request_id,omitempty"`
	ClientRequestID string `json:"client_request_id,omitempty"`
	CorrelationID   string `json:"correlation_id,omitempty"`
	IdempotencyKey  string `json:"idempotency_key,omitempty"`
}

// Principal is the authenticated caller an event is recorded for: a credential's id (an
// API token's id, or "jwt:<issuer>#<subject>"; "anonymous" when the server runs with
// AUTH=off), its name and its role. The store keeps it as given.
type Principal struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Role string `json:"role"`
}

// Record is an event as stored: the domain event plus its global position, metadata and
// the time the store recorded it.
type Record struct {
	ticket.Event
	Position   int64
	Metadata   Metadata
	RecordedAt time.Time
	// Hash is the event's link in its stream's hash chain (EventHash), as stored: set
	// only by the auditors' reads (History, HistoryPage); nil elsewhere, and on records
	// just appended (Postgres computes it at insert).
	Hash []byte
}

// envelope is the outbox payload: a stored event in a self-contained JSON form.
type envelope struct {
	Position   int64           `json:"position"`
	StreamID   uuid.UUID       `json:"stream_id"`
	Version    int             `json:"version"`
	Type       string          `json:"type"`
	At         time.Time       `json:"at"`
	Data       json.RawMessage `json:"data"`
	Metadata   Metadata        `json:"metadata"`
	RecordedAt time.Time       `json:"recorded_at"`
}

// EncodeMessage returns the outbox payload of a record.
func EncodeMessage(r Record) ([]byte, error) {
	data, err := EncodeJSON(r.Data)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", r.Type(), err)
	}
	return encodeMessage(r, data)
}

// encodeMessage is EncodeMessage with the event's data already encoded.
func encodeMessage(r Record, data json.RawMessage) ([]byte, error) {
	return EncodeJSON(envelope{
		Position: r.Position, StreamID: r.TicketID, Version: r.Version, Type: r.Type(),
		At: r.At, Data: data, Metadata: r.Metadata, RecordedAt: r.RecordedAt,
	})
}

// Reveal opens the personal fields of records decoded by DecodeMessage (the outbox
// holds them sealed, as the events table does): a field whose subject is erased reads
// ticket.Erased. A store without a keyring leaves them as they are.
func (s *Store) Reveal(ctx context.Context, recs []Record) error {
	if err := s.personal.reveal(ctx, recs); err != nil {
		return interpret(err, uuid.Nil, 0)
	}
	return nil
}

// DecodeMessage turns an outbox payload back into the record it was made from, its
// personal fields as stored (sealed): see Store.Reveal.
func DecodeMessage(payload []byte) (Record, error) {
	var m envelope
	if err := gojson.Unmarshal(payload, &m); err != nil {
		return Record{}, fmt.Errorf("decode event message: %w", err)
	}
	d, err := ticket.DecodeData(m.Type, m.Data)
	if err != nil {
		return Record{}, err
	}
	return Record{
		Event:    ticket.Event{TicketID: m.StreamID, Version: m.Version, At: m.At, Actor: m.Metadata.Actor, Data: d},
		Position: m.Position, Metadata: m.Metadata, RecordedAt: m.RecordedAt,
	}, nil
}
