package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/ticket"
)

// fakeTicketd answers the bench's requests like ticketd would, checks every status
// change against the workflow, and counts what it got.
type fakeTicketd struct {
	mu         sync.Mutex
	status     map[uuid.UUID]ticket.Status // the tickets that take PUTs
	known      map[uuid.UUID]bool          // every seeded ticket
	counts     map[string]int              // get, list, create, put, comment
	violations []string
}

func newFakeTicketd(ids, toggled []uuid.UUID) *fakeTicketd {
	f := &fakeTicketd{status: map[uuid.UUID]ticket.Status{}, known: map[uuid.UUID]bool{}, counts: map[string]int{}}
	for _, id := range ids {
		f.known[id] = true
	}
	for _, id := range toggled {
		f.status[id] = ticket.StatusOpen
	}
	return f
}

func (f *fakeTicketd) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	bad := func(format string, args ...any) {
		f.violations = append(f.violations, r.Method+" "+r.URL.String()+": "+strings.TrimSpace(format))
		w.WriteHeader(http.StatusUnprocessableEntity)
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/v1/ticket/")
	if !ok {
		bad("unknown path")
		return
	}
	if rest == "" {
		switch {
		case r.Method == http.MethodGet && r.URL.RawQuery == "status=open":
			f.counts["list"]++
		case r.Method == http.MethodPost && r.Header.Get("Content-Type") == "application/json" && json.Valid(body) && strings.Contains(string(body), `"title"`):
			f.counts["create"]++
			w.WriteHeader(http.StatusCreated)
		default:
			bad("not a list or create request")
		}
		return
	}
	idText, comments := strings.CutSuffix(rest, "/comments")
	id, err := uuid.Parse(idText)
	if err != nil || !f.known[id] {
		bad("unknown ticket")
		return
	}
	switch {
	case r.Method == http.MethodGet && !comments:
		f.counts["get"]++
	case r.Method == http.MethodPost && comments && json.Valid(body):
		f.counts["comment"]++
		w.WriteHeader(http.StatusCreated)
	case r.Method == http.MethodPut && !comments:
		f.counts["put"]++
		var req struct {
			Status ticket.Status `json:"status"`
		}
		cur, toggled := f.status[id]
		if err := json.Unmarshal(body, &req); err != nil || !toggled {
			bad("PUT on a ticket that is not toggled, or a bad body")
			return
		}
		if req.Status == cur || !cur.CanMoveTo(req.Status) {
			bad("status " + string(cur) + " -> " + string(req.Status) + " is not a real allowed change")
			return
		}
		f.status[id] = req.Status
	default:
		bad("unexpected request")
	}
}

func (f *fakeTicketd) snapshot() (map[string]int, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := map[string]int{}
	for k, v := range f.counts {
		c[k] = v
	}
	return c, append([]string(nil), f.violations...)
}

func needWrk(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs wrk for seconds")
	}
	p, err := lookWrk()
	if err != nil {
		t.Skip(err)
	}
	return p
}

func togglerTotal(ts []*toggler) uint64 {
	var n uint64
	for _, t := range ts {
		n += t.n.Load()
	}
	return n
}

func TestWrkScript_drives_every_kind_and_hands_the_toggler_counters_back(t *testing.T) {
	wrk := needWrk(t)
	// Visits of one ticket by its toggler are 1,000 requests apart: as in the bench (5,000),
	// far more than are ever in flight, so they never overlap.
	ids := make([]uuid.UUID, 4000)
	for i := range ids {
		ids[i] = uuid.New()
	}
	half := len(ids) / 2
	b := &bench{
		o:   options{duration: time.Second, timeout: 5 * time.Second, wrkThreads: 2, generator: genWrk},
		tmp: t.TempDir(), wrkPath: wrk,
		ids: ids, toggles: newTogglers(ids[:half], 2), fresh: &roundRobin{ids: ids[half:]},
	}
	fake := newFakeTicketd(ids, ids[:half])
	srv := httptest.NewServer(fake)
	defer srv.Close()

	before := map[string]int{}
	for _, run := range []struct {
		kind  loadKind
		conns int
		ids   []uuid.UUID
	}{
		{kindPut, 8, nil}, {kindMixed, 8, nil}, {kindPut, 6, nil},
		{kindGet, 4, ids}, {kindComment, 4, ids[half:]}, {kindList, 2, nil}, {kindCreate, 2, nil},
	} {
		puts := togglerTotal(b.toggles)
		m, err := b.load(t.Context(), loadSpec{name: string(run.kind), kind: run.kind, base: srv.URL, conns: run.conns, ids: run.ids})
		if err != nil {
			t.Fatal(err)
		}
		if m.requests == 0 || m.errors != 0 || m.throughput <= 0 || m.p99 <= 0 || m.genCPU <= 0 || !strings.HasPrefix(m.generator, "wrk -t") {
			t.Errorf("%s: %+v; want requests, no errors, a throughput, p99 and the generator's CPU", run.kind, m)
		}
		// Requests still in flight when wrk stopped are answered a moment later: wait
		// until the PUTs add up and the counts have stood still for a while, so that
		// none of this run's requests is counted in the next one.
		var after map[string]int
		var violations []string
		last, still := -1, 0
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			after, violations = fake.snapshot()
			sum := 0
			for _, v := range after {
				sum += v
			}
			if sum == last {
				still++
			} else {
				last, still = sum, 0
			}
			if (uint64(after["put"]) == togglerTotal(b.toggles) && still >= 5) || time.Now().After(deadline) {
				break
			}
		}
		if len(violations) > 0 {
			t.Fatalf("%s: %d bad requests, first %v", run.kind, len(violations), violations[:min(3, len(violations))])
		}
		if got, want := uint64(after["put"]-before["put"]), togglerTotal(b.toggles)-puts; got != want {
			t.Errorf("%s: the server got %d PUTs, the togglers moved on by %d", run.kind, got, want)
		}
		d := map[string]int{}
		total := 0
		for k, v := range after {
			d[k] = v - before[k]
			total += d[k]
		}
		switch run.kind {
		case kindMixed:
			if reads := float64(d["get"]+d["list"]) / float64(total); reads < 0.78 || reads > 0.82 {
				t.Errorf("mixed: %.3f reads (%v), want 0.8", reads, d)
			}
			for _, k := range []string{"get", "list", "create", "put", "comment"} {
				if d[k] == 0 {
					t.Errorf("mixed: no %s requests (%v)", k, d)
				}
			}
		case kindList, kindCreate, kindGet, kindComment, kindPut:
			if d[string(run.kind)] != total {
				t.Errorf("%s: the server got %v", run.kind, d)
			}
		}
		before = after
	}
}

func TestWrk_counts_error_statuses_and_only_successes_in_the_rate(t *testing.T) {
	wrk := needWrk(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	ids := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	b := &bench{o: options{duration: time.Second, timeout: 5 * time.Second, wrkThreads: 2, generator: genWrk}, tmp: t.TempDir(), wrkPath: wrk}
	m, err := b.load(t.Context(), loadSpec{name: "comment", kind: kindComment, base: srv.URL, conns: 2, ids: ids})
	if err != nil {
		t.Fatal(err)
	}
	if m.requests == 0 || m.errors != m.requests || m.throughput != 0 || m.statusCodes[">=400"] != int(m.requests) {
		t.Errorf("all 503: %+v; want every request an error and no successful rate", m)
	}
}

func TestWrkThreads_divide_the_connections(t *testing.T) {
	for _, tc := range []struct{ want, conns, got int }{{2, 64, 2}, {2, 256, 2}, {2, 1, 1}, {2, 7, 1}, {4, 6, 3}, {3, 9, 3}} {
		if got := wrkThreads(tc.want, tc.conns); got != tc.got {
			t.Errorf("wrkThreads(%d, %d) = %d, want %d", tc.want, tc.conns, got, tc.got)
		}
	}
}

func TestParseProcStatCPU(t *testing.T) {
	// A command name with spaces and a parenthesis; utime 250 and stime 50 ticks.
	stat := "4242 (tick etd) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 9 0 100 2000000 3000 18446744073709551615"
	d, ok := parseProcStatCPU(stat)
	if !ok || d != 3*time.Second {
		t.Errorf("parseProcStatCPU = %v, %v; want 3s", d, ok)
	}
	if _, ok := parseProcStatCPU("garbage"); ok {
		t.Error("garbage parsed")
	}
}

func TestLuaQuote(t *testing.T) {
	if got, want := luaQuote("a\"b\\c\nd"), `"a\"b\\c\010d"`; got != want {
		t.Errorf("luaQuote = %s, want %s", got, want)
	}
}

func TestParseOptions_generator(t *testing.T) {
	o, err := parseOptions(nil, io.Discard)
	if err != nil || o.generator != genWrk || o.wrkThreads != 2 {
		t.Errorf("defaults: %q, %d threads, %v; want wrk, 2", o.generator, o.wrkThreads, err)
	}
	if _, err := parseOptions([]string{"-generator", "ab"}, io.Discard); err == nil {
		t.Error("-generator ab accepted")
	}
	if o, err := parseOptions([]string{"-generator", "vegeta"}, io.Discard); err != nil || o.generator != genVegeta {
		t.Errorf("-generator vegeta: %q, %v", o.generator, err)
	}
}

func TestParseWrkOutput(t *testing.T) {
	out := "Running 1s test @ http://127.0.0.1:1/\n  2 threads and 8 connections\nRequests/sec: 1.00\n\n" +
		wrkMarker + `{"duration_us":2000000,"requests":1000,"bytes":5,"errors":{"connect":0,"read":1,"write":0,"status":100,"timeout":2},` +
		`"latency_us":{"p50":1500,"p90":2000,"p99":9000,"max":12000},"threads":[{"tid":0,"put_n":7,"sent":500},{"tid":1,"put_n":9,"sent":500}]}` + "\n"
	s, err := parseWrkOutput([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	m := s.measured()
	if m.requests != 1000 || m.errors != 103 || m.throughput != 450 || m.p50 != 1500*time.Microsecond || m.p99 != 9*time.Millisecond ||
		len(s.Threads) != 2 || s.Threads[1].PutN != 9 || len(m.errorSamples) != 3 {
		t.Errorf("parsed %+v -> %+v", s, m)
	}
	if _, err := parseWrkOutput([]byte("Running 1s test\n")); err == nil {
		t.Error("output without the summary line accepted")
	}
}
