package main

import (
	"context"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// jsonHeader is the header of every request with a body. vegeta copies it per request.
var jsonHeader = http.Header{"Content-Type": {"application/json"}}

// measured is the outcome of one load run: vegeta's metrics plus the error count.
type measured struct {
	m      vegeta.Metrics
	errors uint64
}

// collector funnels results into vegeta.Metrics, which is not safe for concurrent use.
type collector struct {
	mu  sync.Mutex
	out measured
}

func (c *collector) add(r *vegeta.Result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out.m.Add(r)
	if r.Code < 200 || r.Code >= 400 {
		c.out.errors++
	}
}

func (c *collector) close() measured {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out.m.Close()
	return c.out
}

// attack runs targeter at conns fixed connections, as fast as they go (vegeta with
// rate 0: every worker sends its next request when the previous one is answered),
// for d.
func (b *bench) attack(ctx context.Context, name string, conns int, d time.Duration, tr vegeta.Targeter) measured {
	atk := vegeta.NewAttacker(
		vegeta.Workers(uint64(conns)),
		vegeta.MaxWorkers(uint64(conns)),
		vegeta.Connections(conns),
		vegeta.MaxConnections(conns),
		vegeta.KeepAlive(true),
		vegeta.Timeout(b.o.timeout),
		vegeta.Redirects(vegeta.NoFollow),
		vegeta.MaxBody(0), // bodies are not needed: the code and the latency are
		vegeta.HTTP2(false),
	)
	var c collector
	stopProfile := b.maybeProfile(ctx, name, d)
	defer stopProfile()
	results := atk.Attack(tr, vegeta.ConstantPacer{}, d, name)
	for {
		select {
		case r, ok := <-results:
			if !ok {
				return c.close()
			}
			c.add(r)
		case <-ctx.Done():
			atk.Stop()
			for r := range results {
				c.add(r)
			}
			return c.close()
		}
	}
}

// goLoad runs op on conns goroutines for d and measures it like an attack: the
// baselines that are not HTTP (pgx loops) report through the same vegeta.Metrics.
func goLoad(ctx context.Context, conns int, d time.Duration, op func(ctx context.Context) error) measured {
	var c collector
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				start := time.Now()
				err := op(ctx)
				r := &vegeta.Result{Timestamp: start, Latency: time.Since(start), Code: 200}
				if err != nil {
					if ctx.Err() != nil {
						return // cut off by the end of the run, not a failure
					}
					r.Code, r.Error = 0, err.Error()
				}
				c.add(r)
			}
		}()
	}
	wg.Wait()
	return c.close()
}

// row turns a measurement into a table row.
func (m measured) row(key, scenario string, conns int) Row {
	r := Row{
		Key: key, Scenario: scenario, Conns: conns, Requests: m.m.Requests, Unit: "req/s",
		Value: m.m.Throughput, P50ms: ms(m.m.Latencies.P50), P99ms: ms(m.m.Latencies.P99),
		Errors: m.errors, StatusCodes: m.m.StatusCodes,
	}
	errs := append([]string(nil), m.m.Errors...)
	sort.Strings(errs)
	if len(errs) > 5 {
		errs = errs[:5]
	}
	r.ErrorSamples = errs
	return r
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// roundRobin hands out the ids in turn, safe for concurrent use.
type roundRobin struct {
	ids []uuid.UUID
	n   atomic.Uint64
}

func (r *roundRobin) next() uuid.UUID {
	return r.ids[(r.n.Add(1)-1)%uint64(len(r.ids))]
}

// toggler makes every PUT a real status change: the k-th visit of a ticket (tickets are
// visited in turn) asks for answered when k is even and wait_answer when k is odd. A
// ticket starts open, and open->answered, answered->wait_answer, wait_answer->answered
// are all allowed moves. Visits of one ticket are len(ids) requests apart, so they do
// not overlap at any sensible concurrency. The counter carries over between scenarios.
type toggler struct {
	ids []uuid.UUID
	n   atomic.Uint64
}

// next returns the ticket and the status of the next PUT.
func (t *toggler) next() (uuid.UUID, string) {
	i := t.n.Add(1) - 1
	id := t.ids[i%uint64(len(t.ids))]
	if (i/uint64(len(t.ids)))%2 == 0 {
		return id, "answered"
	}
	return id, "wait_answer"
}

// Request bodies. Sizes are those of a typical helpdesk ticket.
var (
	createBody = []byte(`{"title":"Printer on the third floor jams on every second page",` +
		`"description":"Since this morning the printer next to the kitchen jams on every second page. ` +
		`Tried another paper tray and restarting it; same result. Reports from three people so far.",` +
		`"email":"requester@example.com","created_by":"bench"}`)
	commentBody = []byte(`{"body":"Thanks, we are looking at it: a technician is on the way and will report back here.",` +
		`"created_by":"bench-agent","email":"agent@example.com"}`)
)

func statusBody(status string) []byte {
	return []byte(`{"status":"` + status + `","updated_by":"bench-agent"}`)
}

func (b *bench) ticketURL(id uuid.UUID) string { return b.base + "/v1/ticket/" + id.String() }

// Targeters of the scenarios. vegeta calls a targeter from many workers at once.

func (b *bench) getTarget(ids []uuid.UUID) vegeta.Targeter {
	rr := &roundRobin{ids: ids}
	return func(t *vegeta.Target) error {
		t.Method, t.URL = http.MethodGet, b.ticketURL(rr.next())
		return nil
	}
}

func (b *bench) listTarget() vegeta.Targeter {
	u := b.base + "/v1/ticket/?status=open"
	return func(t *vegeta.Target) error {
		t.Method, t.URL = http.MethodGet, u
		return nil
	}
}

func (b *bench) createTarget() vegeta.Targeter {
	u := b.base + "/v1/ticket/"
	return func(t *vegeta.Target) error {
		t.Method, t.URL, t.Body, t.Header = http.MethodPost, u, createBody, jsonHeader
		return nil
	}
}

func (b *bench) putTarget() vegeta.Targeter {
	return func(t *vegeta.Target) error {
		id, status := b.toggle.next()
		t.Method, t.URL, t.Body, t.Header = http.MethodPut, b.ticketURL(id), statusBody(status), jsonHeader
		return nil
	}
}

func (b *bench) commentTarget(rr *roundRobin) vegeta.Targeter {
	return func(t *vegeta.Target) error {
		t.Method, t.URL, t.Body, t.Header = http.MethodPost, b.ticketURL(rr.next())+"/comments", commentBody, jsonHeader
		return nil
	}
}

// mixedTarget is 80% reads (70% GET by id, 10% list) and 20% writes (10% create, 5%
// status change, 5% comment), interleaved in a fixed pattern of 20.
func (b *bench) mixedTarget() vegeta.Targeter {
	get, list, create, put, comment := b.getTarget(b.ids), b.listTarget(), b.createTarget(), b.putTarget(), b.commentTarget(b.fresh)
	var n atomic.Uint64
	return func(t *vegeta.Target) error {
		switch i := (n.Add(1) - 1) % 20; {
		case i < 14:
			return get(t)
		case i < 16:
			return list(t)
		case i < 18:
			return create(t)
		case i < 19:
			return put(t)
		default:
			return comment(t)
		}
	}
}

// shuffled returns ids in a random order, so a round robin over them touches Redis
// slots and Postgres pages in no particular order.
func shuffled(ids []uuid.UUID) []uuid.UUID {
	out := append([]uuid.UUID(nil), ids...)
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}
