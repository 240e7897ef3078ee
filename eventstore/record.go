package eventstore

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
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
	b := append(make([]byte, 0, 320+len(data)), `{"position":`...)
	b = strconv.AppendInt(b, r.Position, 10)
	return appendMessageTail(b, r, data)
}

// appendMessageTail appends the outbox payload of r after its position: what follows
// {"position":N in the envelope's JSON, as EncodeJSON would write it (fields in
// envelope's order), written by hand since reflection cost more than the rest of
// newPending. data is the event's data as EncodeJSON wrote it (compact). The append
// statement puts the position, known only at insert, in front (see appendStatement).
func appendMessageTail(b []byte, r Record, data []byte) ([]byte, error) {
	b = append(b, `,"stream_id":`...)
	b = appendUUID(b, r.TicketID)
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, int64(r.Version), 10)
	b = append(b, `,"type":`...)
	b = AppendJSONString(b, r.Type())
	b = append(b, `,"at":`...)
	b, err := appendJSONTime(b, r.At)
	if err != nil {
		return nil, fmt.Errorf("encode event message: %w", err)
	}
	b = append(b, `,"data":`...)
	if len(data) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, data...)
	}
	b = append(b, `,"metadata":`...)
	b = appendMetadata(b, r.Metadata)
	b = append(b, `,"recorded_at":`...)
	if b, err = appendJSONTime(b, r.RecordedAt); err != nil {
		return nil, fmt.Errorf("encode event message: %w", err)
	}
	return append(b, '}'), nil
}

// appendUUID appends id quoted in its canonical text form (as its MarshalText).
func appendUUID(b []byte, id uuid.UUID) []byte {
	return append(AppendUUID(append(b, '"'), id), '"')
}

// AppendUUID appends id in its canonical text form (uuid.UUID.String's), unquoted,
// without the allocation of String.
func AppendUUID(b []byte, id uuid.UUID) []byte {
	var t [36]byte
	hex.Encode(t[0:8], id[0:4])
	t[8] = '-'
	hex.Encode(t[9:13], id[4:6])
	t[13] = '-'
	hex.Encode(t[14:18], id[6:8])
	t[18] = '-'
	hex.Encode(t[19:23], id[8:10])
	t[23] = '-'
	hex.Encode(t[24:], id[10:16])
	return append(b, t[:]...)
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
