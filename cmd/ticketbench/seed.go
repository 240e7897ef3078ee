package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// post sends a JSON body and returns the status and the response body.
func (b *bench) post(ctx context.Context, url string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return b.do(req)
}

func (b *bench) get(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	return b.do(req)
}

func (b *bench) do(req *http.Request) (int, []byte, error) {
	resp, err := b.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// createTicket creates one ticket through the API and returns its id.
func (b *bench) createTicket(ctx context.Context, body []byte) (uuid.UUID, error) {
	code, resp, err := b.post(ctx, b.base+"/v1/ticket/", body)
	if err != nil {
		return uuid.Nil, err
	}
	if code != http.StatusCreated {
		return uuid.Nil, fmt.Errorf("POST /v1/ticket/: %d %s", code, bytes.TrimSpace(resp))
	}
	var v struct {
		ID uuid.UUID `json:"id"`
	}
	if err := json.Unmarshal(resp, &v); err != nil {
		return uuid.Nil, fmt.Errorf("POST /v1/ticket/: %w", err)
	}
	return v.ID, nil
}

// seedTickets creates n tickets through the API on conns connections.
func (b *bench) seedTickets(ctx context.Context, n, conns int) ([]uuid.UUID, error) {
	ids := make([]uuid.UUID, n)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				body := []byte(`{"title":"Seeded ticket ` + strconv.Itoa(i) + ` about a broken laptop dock",` +
					`"description":"The dock stopped charging the laptop after the update; the screens stay dark.",` +
					`"email":"user` + strconv.Itoa(i%500) + `@example.com","created_by":"seed-` + strconv.Itoa(i%50) + `"}`)
				id, err := b.createTicket(ctx, body)
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("seed ticket %d: %w", i, err); cancel() })
					return
				}
				ids[i] = id
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	return ids, ctx.Err()
}

// longTicketEvents returns the events of a ticket with n events: opened, then comments
// with a status change every tenth event (answered and wait_answer in turn).
func longTicketEvents(id uuid.UUID, n int, start time.Time) ([]ticket.Event, error) {
	t := ticket.New(id)
	at := func(i int) time.Time { return start.Add(time.Duration(i) * time.Microsecond) }
	if err := t.Open(ticket.OpenTicket{
		Title: "A long thread: VPN drops every few minutes", Description: "Seeded by ticketbench.",
		Email: "long@example.com", CreatedBy: "bench-seed",
	}, at(0)); err != nil {
		return nil, err
	}
	for i := 1; i < n; i++ {
		var err error
		if i%10 == 0 {
			to := "answered"
			if t.Status() == ticket.StatusAnswered {
				to = "wait_answer"
			}
			err = t.ChangeStatus(ticket.ChangeStatus{Status: to, UpdatedBy: "bench-agent"}, at(i))
		} else {
			err = t.AddComment(ticket.AddComment{
				ID: uuid.New(), Body: "Still happening here, log attached as comment " + strconv.Itoa(i) + ".",
				CreatedBy: "bench-seed", Email: "long@example.com",
			}, at(i))
		}
		if err != nil {
			return nil, err
		}
	}
	return t.Pending(), nil
}

// copyStreams writes count new streams of perStream events each straight into the
// events table with COPY, encoded as the event store encodes them, and returns their
// ids. It bypasses the outbox on purpose: the command path and the rebuild read only
// the events table, and the projectors need not chew through the seeding first (they
// would take minutes for the 64,000 events of the long tickets). The read models do
// not know these tickets; commands on them work, and their new events project normally.
func (b *bench) copyStreams(ctx context.Context, count, perStream int) ([]uuid.UUID, error) {
	ids := make([]uuid.UUID, count)
	start := time.Now().UTC().Truncate(time.Microsecond)
	const rowsPerCopy = 20000
	var rows [][]any
	flush := func() error {
		if len(rows) == 0 {
			return nil
		}
		_, err := b.pool.CopyFrom(ctx, pgx.Identifier{"events"}, eventColumns, pgx.CopyFromRows(rows))
		rows = rows[:0]
		return err
	}
	for i := range ids {
		id, err := uuid.NewV7()
		if err != nil {
			return nil, err
		}
		events, err := longTicketEvents(id, perStream, start)
		if err != nil {
			return nil, err
		}
		for _, e := range events {
			row, err := eventCopyRow(e, "ticketbench-seed")
			if err != nil {
				return nil, err
			}
			rows = append(rows, row)
		}
		ids[i] = id
		if len(rows) >= rowsPerCopy {
			if err := flush(); err != nil {
				return nil, fmt.Errorf("copy events: %w", err)
			}
		}
	}
	if err := flush(); err != nil {
		return nil, fmt.Errorf("copy events: %w", err)
	}
	return ids, nil
}

// eventColumns are the columns of the events table the bench copies into; position and
// transaction_id take their defaults.
var eventColumns = []string{"stream_id", "version", "type", "data", "metadata", "recorded_at"}

// eventCopyRow is an event as a row of eventColumns, encoded as the event store encodes
// it, with requestID in its metadata.
func eventCopyRow(e ticket.Event, requestID string) ([]any, error) {
	data, err := json.Marshal(e.Data)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", e.Type(), err)
	}
	md, err := json.Marshal(eventstore.Metadata{Actor: e.Actor, RequestID: requestID})
	if err != nil {
		return nil, fmt.Errorf("encode metadata: %w", err)
	}
	return []any{e.TicketID, e.Version, e.Type(), data, md, e.At}, nil
}

// seedLongThroughAPI creates one ticket and comments on it until it has n events.
func (b *bench) seedLongThroughAPI(ctx context.Context, n int) (uuid.UUID, error) {
	id, err := b.createTicket(ctx, createBody)
	if err != nil {
		return uuid.Nil, err
	}
	for i := 1; i < n; i++ {
		code, resp, err := b.post(ctx, b.ticketURL(id)+"/comments", commentBody)
		if err != nil {
			return uuid.Nil, err
		}
		if code != http.StatusCreated {
			return uuid.Nil, fmt.Errorf("seed comment %d: %d %s", i, code, bytes.TrimSpace(resp))
		}
	}
	return id, nil
}

// waitDrained writes a marker ticket and waits until the list (the Postgres read model)
// shows it. The projector handles events in order, so once the marker shows, every
// event written before it has been projected. It returns how long that took.
func (b *bench) waitDrained(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	creator := "marker-" + b.runID + "-" + strconv.FormatInt(b.markers.Add(1), 10)
	if _, err := b.createTicket(ctx, []byte(`{"title":"marker","email":"marker@example.com","created_by":"`+creator+`"}`)); err != nil {
		return 0, err
	}
	ok, err := b.pollList(ctx, creator, timeout, 10*time.Millisecond)
	if err != nil {
		return 0, err
	}
	if !ok {
		return time.Since(start), fmt.Errorf("the read model did not catch up within %v", timeout)
	}
	return time.Since(start), nil
}

// pollList polls the list filtered on created_by every interval until it is not empty.
func (b *bench) pollList(ctx context.Context, creator string, timeout, interval time.Duration) (bool, error) {
	u := b.base + "/v1/ticket/?limit=1&created_by=" + creator
	deadline := time.Now().Add(timeout)
	for {
		code, body, err := b.get(ctx, u)
		if err != nil {
			return false, err
		}
		if code == http.StatusOK && len(bytes.TrimSpace(body)) > 2 {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(interval):
		}
	}
}
