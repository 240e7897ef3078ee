package main

import (
	"context"
	"fmt"
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

// measured is the outcome of one load run, whichever generator made it.
type measured struct {
	requests     uint64
	throughput   float64 // successful (2xx/3xx) requests per second
	p50, p99     time.Duration
	errors       uint64
	statusCodes  map[string]int
	errorSamples []string
	// generator says what made the load; genCPU and serverCPU are the cores (CPU
	// seconds per wall second) it and the server process took in the same window, 0
	// when not measured.
	generator         string
	genCPU, serverCPU float64
}

// collector funnels results into vegeta.Metrics, which is not safe for concurrent use.
type collector struct {
	mu     sync.Mutex
	m      vegeta.Metrics
	errors uint64
}

func (c *collector) add(r *vegeta.Result) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m.Add(r)
	if r.Code < 200 || r.Code >= 400 {
		c.errors++
	}
}

func (c *collector) close() measured {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m.Close()
	errs := append([]string(nil), c.m.Errors...)
	sort.Strings(errs)
	if len(errs) > 5 {
		errs = errs[:5]
	}
	return measured{
		requests: c.m.Requests, throughput: c.m.Throughput, p50: c.m.Latencies.P50, p99: c.m.Latencies.P99,
		errors: c.errors, statusCodes: c.m.StatusCodes, errorSamples: errs,
	}
}

// attack runs s with vegeta in this process at s.conns fixed connections, as fast as
// they go (rate 0: every worker sends its next request when the previous one is
// answered), for -duration: the -generator vegeta fallback.
func (b *bench) attack(ctx context.Context, s loadSpec) measured {
	atk := vegeta.NewAttacker(
		vegeta.Workers(uint64(s.conns)),
		vegeta.MaxWorkers(uint64(s.conns)),
		vegeta.Connections(s.conns),
		vegeta.MaxConnections(s.conns),
		vegeta.KeepAlive(true),
		vegeta.Timeout(b.o.timeout),
		vegeta.Redirects(vegeta.NoFollow),
		vegeta.MaxBody(0), // bodies are not needed: the code and the latency are
		vegeta.HTTP2(false),
	)
	var c collector
	win := startCPUWindow(s.serverPID)
	results := atk.Attack(b.withToken(b.targeter(s)), vegeta.ConstantPacer{}, b.o.duration, s.name)
	func() {
		for {
			select {
			case r, ok := <-results:
				if !ok {
					return
				}
				c.add(r)
			case <-ctx.Done():
				atk.Stop()
				for r := range results {
					c.add(r)
				}
				return
			}
		}
	}()
	m := c.close()
	_, m.genCPU, m.serverCPU = win.stop()
	m.generator = "vegeta in ticketbench (fallback)"
	return m
}

// goLoad runs op on conns goroutines for d and measures it like an attack: the
// baselines that are not HTTP (pgx loops). Its generator CPU is this process's: the
// loop itself, the floor's client side.
func goLoad(ctx context.Context, conns int, d time.Duration, op func(ctx context.Context) error) measured {
	var c collector
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	win := startCPUWindow(0)
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
	m := c.close()
	_, m.genCPU, _ = win.stop()
	m.generator = fmt.Sprintf("%d goroutines in ticketbench", conns)
	return m
}

// row turns a measurement into a table row.
func (m measured) row(key, scenario string, conns int) Row {
	return Row{
		Key: key, Scenario: scenario, Conns: conns, Requests: m.requests, Unit: "req/s",
		Value: m.throughput, P50ms: ms(m.p50), P99ms: ms(m.p99),
		Errors: m.errors, StatusCodes: m.statusCodes, ErrorSamples: m.errorSamples,
		Generator: m.generator, GenCPU: m.genCPU, ServerCPU: m.serverCPU,
	}
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

// toggler makes every PUT a real status change. The seeded tickets that get PUTs are
// split between several togglers, one per wrk thread, each with tickets and a counter
// of its own (wrkProgram runs the same sequence in Lua and hands the counter back).
// Within one toggler, the k-th visit of a ticket (tickets are visited in turn) asks for
// answered when k is even and wait_answer when k is odd. A ticket starts open, and open->answered, answered->wait_answer, wait_answer->answered
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

func (b *bench) ticketURL(id uuid.UUID) string { return ticketURL(b.base, id) }

func ticketURL(base string, id uuid.UUID) string { return base + "/v1/ticket/" + id.String() }

// listPath is the list request of the list and mixed runs.
const listPath = "/v1/ticket/?status=open"

// targeter is s as a vegeta targeter. vegeta calls a targeter from many workers at once.
func (b *bench) targeter(s loadSpec) vegeta.Targeter {
	switch s.kind {
	case kindGet:
		return getTarget(s.base, s.ids)
	case kindList:
		return listTarget(s.base)
	case kindCreate:
		return createTarget(s.base)
	case kindPut:
		return b.putTarget(s.base)
	case kindComment:
		return commentTarget(s.base, &roundRobin{ids: s.ids})
	default:
		return b.mixedTarget(s.base)
	}
}

func getTarget(base string, ids []uuid.UUID) vegeta.Targeter {
	rr := &roundRobin{ids: ids}
	return func(t *vegeta.Target) error {
		t.Method, t.URL = http.MethodGet, ticketURL(base, rr.next())
		return nil
	}
}

func listTarget(base string) vegeta.Targeter {
	u := base + listPath
	return func(t *vegeta.Target) error {
		t.Method, t.URL = http.MethodGet, u
		return nil
	}
}

func createTarget(base string) vegeta.Targeter {
	u := base + "/v1/ticket/"
	return func(t *vegeta.Target) error {
		t.Method, t.URL, t.Body, t.Header = http.MethodPost, u, createBody, jsonHeader
		return nil
	}
}

// putTarget sends the PUTs through the togglers in turn.
func (b *bench) putTarget(base string) vegeta.Targeter {
	var n atomic.Uint64
	return func(t *vegeta.Target) error {
		id, status := b.toggles[(n.Add(1)-1)%uint64(len(b.toggles))].next()
		t.Method, t.URL, t.Body, t.Header = http.MethodPut, ticketURL(base, id), statusBody(status), jsonHeader
		return nil
	}
}

func commentTarget(base string, rr *roundRobin) vegeta.Targeter {
	return func(t *vegeta.Target) error {
		t.Method, t.URL, t.Body, t.Header = http.MethodPost, ticketURL(base, rr.next())+"/comments", commentBody, jsonHeader
		return nil
	}
}

// mixedTarget is 80% reads (70% GET by id, 10% list) and 20% writes (10% create, 5%
// status change, 5% comment), interleaved in a fixed pattern of 20. The wrk script
// (wrkProgram) has the same pattern.
func (b *bench) mixedTarget(base string) vegeta.Targeter {
	get, list, create, put, comment := getTarget(base, b.ids), listTarget(base), createTarget(base), b.putTarget(base), commentTarget(base, b.fresh)
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

// newTogglers splits ids between n togglers: toggler t gets every n-th id from t on.
func newTogglers(ids []uuid.UUID, n int) []*toggler {
	ts := make([]*toggler, max(1, min(n, len(ids))))
	for i := range ts {
		ts[i] = &toggler{}
	}
	for i, id := range ids {
		t := ts[i%len(ts)]
		t.ids = append(t.ids, id)
	}
	return ts
}

// withToken adds the bench's API token to every target of tr.
func (b *bench) withToken(tr vegeta.Targeter) vegeta.Targeter {
	if b.token == "" {
		return tr
	}
	return func(t *vegeta.Target) error {
		if err := tr(t); err != nil {
			return err
		}
		h := t.Header.Clone()
		if h == nil {
			h = http.Header{}
		}
		h.Set("Authorization", "Bearer "+b.token)
		t.Header = h
		return nil
	}
}

// bearer is a RoundTripper that sends the bench's API token with every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (a bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	if a.token != "" && req.Header.Get("Authorization") == "" {
		req = req.Clone(req.Context())
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	return a.next.RoundTrip(req)
}
