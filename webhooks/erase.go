package webhooks

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// ScrubDeliveries removes an erased data subject's values (eventstore.Erasure.Values)
// from the delivery log of the given tickets: in each delivery's payload (the body
// sent, and signed, at every attempt: a pending delivery sends the scrubbed one) and
// in the receiver's last response, a JSON string equal to a value becomes "[erased]",
// and an email anywhere in the response text does too. It returns how many deliveries
// it changed.
func ScrubDeliveries(ctx context.Context, pool *pgxpool.Pool, tickets []uuid.UUID, values []string) (int64, error) {
	if len(tickets) == 0 {
		return 0, nil
	}
	rows, err := pool.Query(ctx, `SELECT id, payload, coalesce(last_response, '') FROM webhook_deliveries WHERE ticket_id = ANY($1)`, tickets)
	if err != nil {
		return 0, fmt.Errorf("scrub deliveries: %w", err)
	}
	type delivery struct {
		id                uuid.UUID
		payload, response string
	}
	all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (delivery, error) {
		var d delivery
		return d, row.Scan(&d.id, &d.payload, &d.response)
	})
	if err != nil {
		return 0, fmt.Errorf("scrub deliveries: %w", err)
	}
	var n int64
	for _, d := range all {
		payload := string(eventstore.ScrubJSON([]byte(d.payload), values))
		response := eventstore.ScrubJSON([]byte(d.response), values)
		for _, v := range values {
			if strings.Contains(v, "@") {
				response = bytes.ReplaceAll(response, []byte(v), []byte(ticket.Erased))
			}
		}
		if payload == d.payload && string(response) == d.response {
			continue
		}
		if _, err := pool.Exec(ctx, `UPDATE webhook_deliveries SET payload = $2,
			last_response = CASE WHEN last_response IS NULL THEN NULL ELSE $3 END WHERE id = $1`, d.id, payload, string(response)); err != nil {
			return n, fmt.Errorf("scrub deliveries: %w", err)
		}
		n++
	}
	return n, nil
}
