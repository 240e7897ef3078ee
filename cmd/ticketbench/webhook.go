package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"
)

// The webhook lag scenario: a receiver in this process subscribes to every event type,
// the POST load runs as in the create row (so every ticket the load creates is
// delivered too: the receiver gets the bench's POST rate), and probe tickets written
// every probeEvery are timed from their 201 to the moment the receiver got their
// ticket.opened delivery. Probes not delivered when the load ends are waited for up
// to lagGiveUp. The subscription is deleted afterwards, so later rows do not pay for
// deliveries.

// webhookReceiver records when each ticket's first delivery arrived.
type webhookReceiver struct {
	mu       sync.Mutex
	arrived  map[uuid.UUID]time.Time
	received int
}

// ServeHTTP takes the payload's top-level ticket_id (its third member, before the data
// and ticket that may name others) without decoding the rest: the receiver shares the
// two cores with ticketd, so it does as little as a receiver can.
func (r *webhookReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	now := time.Now()
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	_, _ = buf.ReadFrom(io.LimitReader(req.Body, 1<<20))
	id := ticketIDOf(buf.Bytes())
	bufPool.Put(buf)
	r.mu.Lock()
	r.received++
	if _, ok := r.arrived[id]; !ok && id != uuid.Nil {
		r.arrived[id] = now
	}
	r.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// ticketIDOf returns the first "ticket_id" of a payload (uuid.Nil if none).
func ticketIDOf(body []byte) uuid.UUID {
	const key = `"ticket_id":"`
	i := bytes.Index(body, []byte(key))
	if i < 0 || len(body) < i+len(key)+36 {
		return uuid.Nil
	}
	id, err := uuid.ParseBytes(body[i+len(key) : i+len(key)+36])
	if err != nil {
		return uuid.Nil
	}
	return id
}

func (r *webhookReceiver) at(id uuid.UUID) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.arrived[id]
	return t, ok
}

func (b *bench) runWebhook(ctx context.Context) error {
	const key, scenario, target = "webhook-lag", "webhook delivery lag (201 -> the receiver got it)", "p99 <250ms"
	recv := &webhookReceiver{arrived: map[uuid.UUID]time.Time{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: recv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	sub, _ := json.Marshal(map[string]any{"url": "http://" + ln.Addr().String() + "/hook", "events": []string{"*"}, "description": "ticketbench " + b.runID})
	code, resp, err := b.post(ctx, b.base+"/v1/webhooks", sub)
	if err != nil || code != http.StatusCreated {
		b.add(Row{Key: key, Scenario: scenario, Unit: "samples", Target: target, NA: true,
			Note: fmt.Sprintf("n/a: subscribing failed (%d %v %.200s): a ticketd without webhooks, or not an admin token, or WEBHOOK_ALLOW_PRIVATE off", code, err, resp)})
		return nil
	}
	var created struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(resp, &created)
	defer func() {
		req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodDelete, b.base+"/v1/webhooks/"+created.ID, nil)
		if err == nil {
			if code, _, err := b.do(req); err != nil || code != http.StatusNoContent {
				b.logf("delete the bench's webhook %s: %d %v", created.ID, code, err)
			}
		}
	}()

	var c collector
	var probes sync.WaitGroup
	loadCtx, stop := context.WithCancel(ctx)
	probes.Add(1)
	go func() {
		defer probes.Done()
		tick := time.NewTicker(probeEvery)
		defer tick.Stop()
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
			}
			probes.Add(1)
			go func() {
				defer probes.Done()
				id, err := b.createTicket(loadCtx, []byte(`{"title":"webhook probe","email":"probe@example.com","created_by":"webhook-probe"}`))
				if err != nil {
					return // the load counts errors; a failed probe measures nothing
				}
				acked := time.Now()
				c.add(pollUntil(ctx, acked, time.Millisecond, "delivered", func(context.Context) (bool, error) {
					_, ok := recv.at(id)
					return ok, nil
				}))
			}()
		}
	}()
	load, err := b.load(ctx, b.spec("webhook-load", kindCreate, b.o.conns, nil))
	stop()
	probes.Wait()
	if err != nil {
		return err
	}
	m := c.close()
	r := m.row(key, scenario, b.o.conns)
	r.Unit, r.Value, r.Target = "samples", float64(m.requests), target
	r.judge(r.Requests > 0 && r.Errors == 0 && r.P99ms < 250)
	recv.mu.Lock()
	got := recv.received
	recv.mu.Unlock()
	r.Note = fmt.Sprintf("a receiver subscribed to every event, under the POST load (%.0f/s); probes timed from their 201 to their delivery's arrival (polled every 1ms); %d deliveries received",
		load.throughput, got)
	b.add(r)
	return nil
}
