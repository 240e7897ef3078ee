package webhooks

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/ticket"
)

// TestScrubDeliveriesErasesTheSubjectFromTheLog: the delivery log of the erased
// subject's tickets keeps no value of theirs, in the payload (sent again at a retry)
// or in the receiver's last response; another ticket's deliveries, and a delivery
// without a response, are left as they were.
func TestScrubDeliveriesErasesTheSubjectFromTheLog(t *testing.T) {
	t.Parallel()
	pool := dbtest.NewPool(t)
	ctx := dbtest.Context(t)

	endpoint := uuid.New()
	if _, err := pool.Exec(ctx, `INSERT INTO webhook_endpoints (id, url, events, secret) VALUES ($1, 'http://127.0.0.1:1/hook', '{*}', 'whsec_x')`, endpoint); err != nil {
		t.Fatalf("endpoint: %v", err)
	}
	erased, other := uuid.New(), uuid.New()
	payload := func(id uuid.UUID, email, name string) string {
		return `{"id":"` + uuid.NewString() + `","type":"ticket.opened","ticket_id":"` + id.String() +
			`","data":{"title":"printer","email":"` + email + `","created_by":"` + name + `"},"ticket":{"email":"` + email + `","created_by":"` + name + `"}}`
	}
	type row struct {
		id                uuid.UUID
		ticket            uuid.UUID
		payload, response string
	}
	rows := []row{
		{uuid.New(), erased, payload(erased, "ann@example.com", "Ann Lee"), `{"ok":true,"echo":"Ann Lee"} from ann@example.com`},
		{uuid.New(), erased, payload(erased, "ann@example.com", "Ann Lee"), ""},
		{uuid.New(), other, payload(other, "bob@example.com", "Bob"), `{"ok":true,"echo":"Bob"}`},
	}
	for i, r := range rows {
		var response any
		if r.response != "" {
			response = r.response
		}
		if _, err := pool.Exec(ctx, `INSERT INTO webhook_deliveries (id, endpoint_id, event_type, ticket_id, version, payload,
			event_recorded_at, retry_until, last_response) VALUES ($1, $2, 'ticket.opened', $3, $4, $5, now(), $6, $7)`,
			r.id, endpoint, r.ticket, i+1, r.payload, time.Now().Add(time.Hour), response); err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}

	n, err := ScrubDeliveries(ctx, pool, []uuid.UUID{erased}, []string{"ann@example.com", "Ann Lee"})
	if err != nil {
		t.Fatalf("scrub: %v", err)
	}
	if n != 2 {
		t.Errorf("scrubbed %d deliveries, want the erased ticket's 2", n)
	}
	for i, r := range rows {
		var payload string
		var response *string
		if err := pool.QueryRow(ctx, `SELECT payload, last_response FROM webhook_deliveries WHERE id = $1`, r.id).Scan(&payload, &response); err != nil {
			t.Fatalf("read delivery %d: %v", i, err)
		}
		if r.ticket == other {
			if payload != r.payload || response == nil || *response != r.response {
				t.Errorf("another subject's delivery changed: %s / %v", payload, response)
			}
			continue
		}
		all := payload
		if response != nil {
			all += *response
		}
		if strings.Contains(all, "ann@example.com") || strings.Contains(all, "Ann Lee") {
			t.Errorf("delivery %d still holds the subject: %s", i, all)
		}
		if got := strings.Count(payload, `"`+ticket.Erased+`"`); got != 4 {
			t.Errorf("delivery %d payload has %d erased values, want 4: %s", i, got, payload)
		}
		if !strings.Contains(payload, `"title":"printer"`) {
			t.Errorf("delivery %d lost what is not the subject's: %s", i, payload)
		}
		if (r.response == "") != (response == nil) {
			t.Errorf("delivery %d: a response appeared or vanished: %v", i, response)
		}
	}

	// Erasing twice is harmless: nothing left to change.
	if n, err := ScrubDeliveries(ctx, pool, []uuid.UUID{erased}, []string{"ann@example.com", "Ann Lee"}); err != nil || n != 0 {
		t.Errorf("second scrub: %d changed, err %v; want 0, nil", n, err)
	}
}
