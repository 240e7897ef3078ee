package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/httpapi/auth"
	"github.com/ticketd/ticketd/pii"
	"github.com/ticketd/ticketd/ticket"
)

// bench holds one run: the services, the seeded data and the rows measured so far.
type bench struct {
	o      options
	out    io.Writer
	runID  string
	client *http.Client
	// token is the API token every request to ticketd carries (Authorization: Bearer).
	token string

	// ticketd under test
	base      string
	ownServer bool
	bin       string
	tmp       string
	env       map[string]string
	proc      *ticketdProc
	pprofURL  string
	wrkPath   string // the load generator, unless -generator vegeta

	// Postgres: the bench database (ticketd's when we started it, a scratch one with
	// -url), a small pool on it, and the event store for direct seeding.
	serverDSN string
	dbName    string
	dsn       string
	pool      *pgxpool.Pool
	store     *eventstore.Store

	// Redis Cluster
	rdb            *redis.ClusterClient
	redisAddrs     []string
	redisPrefix    string
	redisKey       func(uuid.UUID) string
	redisKeyFormat string
	redisNA        string

	// seeded data
	ids     []uuid.UUID // every seeded ticket (hot GET set)
	toggles []*toggler  // PUT targets, one toggler per wrk thread
	fresh   *roundRobin // comment targets with few events
	longIDs []uuid.UUID // tickets with -long-events events
	markers atomic.Int64

	// rssPeaks are the peak RSS of each ticketd process the bench ran.
	rssPeaks []rssPeak

	report Report
}

// rssPeak is the peak RSS (VmHWM) of one ticketd process, by what it ran.
type rssPeak struct {
	what string
	kb   int64
}

// newBench prepares the services: the bench database, the Redis client, and ticketd
// (built and started, unless -url).
func newBench(ctx context.Context, o options, getenv func(string) string, out io.Writer) (_ *bench, err error) {
	now := time.Now().UTC()
	b := &bench{
		o: o, out: out, runID: strings.ToLower(now.Format("20060102t150405")),
		client: &http.Client{
			Timeout:   15 * time.Second,
			Transport: &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute},
		},
		serverDSN: getenv("TEST_DATABASE_DSN"),
		ownServer: o.url == "",
	}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if b.token = o.token; b.token == "" {
		b.token = getenv("TICKETD_TOKEN")
	}
	if b.ownServer {
		// the ticketd the bench starts registers this admin token (AUTH_BOOTSTRAP_TOKEN)
		if b.token, err = auth.GenerateToken(); err != nil {
			return nil, err
		}
	}
	b.client.Transport = bearer{token: b.token, next: b.client.Transport}
	b.report = newReport(b.runID, now, o)
	if b.serverDSN == "" {
		b.serverDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	addrs := getenv("TEST_REDIS_ADDRS")
	if addrs == "" {
		addrs = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
	}
	b.redisPrefix = "ticketbench-" + b.runID
	b.redisAddrs = strings.Split(addrs, ",")
	b.rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: b.redisAddrs, ReadTimeout: 2 * time.Second})
	if err := b.rdb.Ping(ctx).Err(); err != nil {
		return nil, fmt.Errorf("redis cluster at %s: %w", addrs, err)
	}

	b.dbName = "ticketbench_" + b.runID
	if b.dsn, err = withDatabase(b.serverDSN, b.dbName); err != nil {
		return nil, err
	}
	if err := createDatabase(ctx, b.serverDSN, b.dbName); err != nil {
		return nil, fmt.Errorf("create the bench database: %w", err)
	}
	b.logf("database %s on %s, redis prefix %s", b.dbName, redactDSN(b.serverDSN), b.redisPrefix)

	if b.tmp, err = os.MkdirTemp("", "ticketbench-"); err != nil {
		return nil, err
	}
	if b.ownServer {
		if err := b.startServer(ctx, addrs); err != nil {
			return nil, err
		}
	} else {
		b.base = strings.TrimRight(o.url, "/")
		b.pprofURL = o.pprofURL
		// A scratch database for the pgx baselines, with ticketd's schema.
		if err := db.Migrate(ctx, b.dsn, io.Discard); err != nil {
			return nil, err
		}
	}
	cfg, err := pgxpool.ParseConfig(b.dsn)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 6
	if b.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, err
	}
	master, err := pii.ParseMasterKey(benchDataKey)
	if err != nil {
		return nil, err
	}
	ring, err := pii.Open(ctx, b.pool, master)
	if err != nil {
		return nil, fmt.Errorf("the bench's DATA_KEY: %w", err)
	}
	b.store = eventstore.New(b.pool, ring)
	b.report.Machine = machine(ctx, b.pool)
	return b, nil
}

// startServer builds ticketd (unless -ticketd-bin) and starts it on a free port.
func (b *bench) startServer(ctx context.Context, redisAddrs string) error {
	b.bin = b.o.ticketdBin
	if b.bin == "" {
		root, err := repoRoot()
		if err != nil {
			return err
		}
		t0 := time.Now()
		if b.bin, err = buildTicketd(ctx, root, b.tmp); err != nil {
			return err
		}
		b.logf("built ticketd in %.1fs", time.Since(t0).Seconds())
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	b.base = "http://127.0.0.1:" + strconv.Itoa(port)
	b.env = map[string]string{
		"DATABASE_DSN": b.dsn,
		"REDIS_ADDRS":  redisAddrs,
		"REDIS_PREFIX": b.redisPrefix,
		"HTTP_ADDR":    "127.0.0.1:" + strconv.Itoa(port),
		"PG_MAX_CONNS": strconv.Itoa(b.o.pgConns),
		"LOG_LEVEL":    b.o.logLevel,
		// The generator is one address standing in for many clients: ticketd's
		// per-address cap (256 by default) would refuse the overload row's connections.
		"MAX_CONNS_PER_IP": "0",
		// every request of the bench carries this admin token (b.token)
		"AUTH_BOOTSTRAP_TOKEN": b.token,
		// The same one address and a few principals stand in for many clients: the
		// default rate limits (e.g. 200 admin requests at once, then 100/s) would turn
		// most of the load into 429s and measure the refusal path, not the API's.
		"RATE_LIMIT_ADMIN": "off", "RATE_LIMIT_AGENT": "off", "RATE_LIMIT_AUDITOR": "off",
		"RATE_LIMIT_REQUESTER": "off", "RATE_LIMIT_AUTH_FAILURES": "off",
		// the sse row opens 1,000 streams with the bench's one token
		"SSE_MAX_STREAMS_PER_PRINCIPAL": "0",
		// the webhook row's receiver listens on loopback
		"WEBHOOK_ALLOW_PRIVATE": "true",
	}
	b.pprofURL = b.o.pprofURL
	if len(b.o.pprofScenarios) > 0 && b.pprofURL == "" {
		pp, err := freePort()
		if err != nil {
			return err
		}
		b.env["PPROF_ADDR"] = "127.0.0.1:" + strconv.Itoa(pp)
		b.pprofURL = "http://127.0.0.1:" + strconv.Itoa(pp)
	}
	t0 := time.Now()
	b.proc, err = startTicketd(ctx, b.bin, ticketdEnv(b.env), b.base, filepath.Join(b.tmp, "ticketd.log"))
	if err != nil {
		return err
	}
	b.logf("ticketd pid %d on %s, ready in %.1fs (log: %s)", b.proc.pid(), b.base, time.Since(t0).Seconds(), b.proc.logPath)
	return nil
}

// close stops ticketd and removes everything the run created, unless -keep.
func (b *bench) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b.proc.stop()
	if b.pool != nil {
		b.pool.Close()
	}
	if b.o.keep {
		b.logf("kept database %s, redis keys %s*, files in %s", b.dbName, b.redisPrefix, b.tmp)
	} else {
		if b.dbName != "" {
			if err := dropDatabase(ctx, b.serverDSN, b.dbName); err != nil {
				b.logf("drop database %s: %v", b.dbName, err)
			}
		}
		if b.rdb != nil && b.redisPrefix != "" {
			if _, err := deletePrefix(ctx, b.rdb, b.redisPrefix); err != nil {
				b.logf("delete redis keys %s*: %v", b.redisPrefix, err)
			}
		}
		if b.tmp != "" {
			os.RemoveAll(b.tmp)
		}
	}
	if b.rdb != nil {
		b.rdb.Close()
	}
}

// logf prints a progress line (to stderr, so stdout keeps the table).
func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s ticketbench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// runAll seeds and runs the selected scenarios in order, each baseline right before
// the scenario it is the floor of, so both see the same machine.
func (b *bench) runAll(ctx context.Context) error {
	if err := b.seed(ctx); err != nil {
		return err
	}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"get", b.runGet}, {"auth", b.runAuth}, {"list", b.runList}, {"create", b.runCreate}, {"lag", b.runLag}, {"webhook", b.runWebhook},
		{"put", b.runPut}, {"comment", b.runComment}, {"mixed", b.runMixed}, {"overload", b.runOverload},
		{"replay", b.runReplay}, {"sse", b.runSSE},
	}
	for _, s := range steps {
		if !b.o.runs(s.name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("scenario %s: %w", s.name, err)
		}
		b.sampleRSS(s.name)
	}
	if b.ownServer {
		if kb, err := procStatusKB(b.proc.pid(), "VmHWM"); err == nil {
			b.rssPeaks = append(b.rssPeaks, rssPeak{what: "serving ticketd (seeding and the load scenarios)", kb: kb})
		}
		b.proc.stop()
		b.proc = nil
	}
	// The rebuild and the backlog run on a stopped ticketd; the backlog, which starts a
	// fresh one, comes last so that its events do not change what the rebuild replays.
	if b.o.runs("rebuild") {
		if err := b.runRebuild(ctx); err != nil {
			return fmt.Errorf("scenario rebuild: %w", err)
		}
	}
	if b.o.runs("verify") {
		if err := b.runVerify(ctx); err != nil {
			return fmt.Errorf("scenario verify: %w", err)
		}
	}
	if b.o.runs("backlog") {
		if err := b.runBacklog(ctx); err != nil {
			return fmt.Errorf("scenario backlog: %w", err)
		}
	}
	// Last: its baseline writes events with the chain's trigger off (see runPII).
	if b.o.runs("pii") {
		if err := b.runPII(ctx); err != nil {
			return fmt.Errorf("scenario pii: %w", err)
		}
	}
	b.rssRow()
	b.tenX()
	return nil
}

// seed creates the tickets through the API, the long tickets directly (or through the
// API with -url), and waits until the read model has caught up.
func (b *bench) seed(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, b.o.seedTimeout)
	defer cancel()
	t0 := time.Now()
	ids, err := b.seedTickets(ctx, b.o.tickets, b.o.conns)
	if err != nil {
		return fmt.Errorf("seeding (bounded by -seed-timeout %v): %w", b.o.seedTimeout, err)
	}
	b.report.Seed.Tickets = len(ids)
	b.report.Seed.TicketsSeconds = time.Since(t0).Seconds()
	b.logf("seeded %d tickets through the API in %.1fs (%.0f/s)", len(ids), time.Since(t0).Seconds(), float64(len(ids))/time.Since(t0).Seconds())
	b.ids = shuffled(ids)
	half := len(ids) / 2
	togglers := 1
	if b.o.generator == genWrk {
		togglers = b.o.wrkThreads
	}
	b.toggles = newTogglers(ids[:half], togglers)
	b.fresh = &roundRobin{ids: shuffled(ids[half:])}

	if b.o.runs("comment") {
		t0 = time.Now()
		long := b.o.longTickets
		if b.ownServer {
			if long == 0 {
				// Four per connection: few enough commands meet on one ticket (whose
				// commands take turns) that the row measures the stream's length, as
				// the fresh row, over 5,000 tickets, does not meet either.
				long = 4 * b.o.conns
			}
			b.longIDs, err = b.copyStreams(ctx, long, b.o.longEvents)
			b.report.Seed.LongHow = "COPY straight into the events table (not through the outbox)"
		} else {
			long = 1
			var id uuid.UUID
			id, err = b.seedLongThroughAPI(ctx, b.o.longEvents)
			b.longIDs = []uuid.UUID{id}
			b.report.Seed.LongHow = "one ticket, commented on through the API"
		}
		if err != nil {
			return fmt.Errorf("seeding long tickets: %w", err)
		}
		b.report.Seed.LongTickets, b.report.Seed.LongEvents = long, b.o.longEvents
		b.report.Seed.LongSeconds = time.Since(t0).Seconds()
		b.logf("seeded %d tickets of %d events in %.1fs", long, b.o.longEvents, time.Since(t0).Seconds())
	}
	d, err := b.waitDrained(ctx, 2*time.Minute)
	if err != nil {
		return fmt.Errorf("after seeding: %w", err)
	}
	b.report.Seed.DrainSeconds = d.Seconds()
	b.logf("read model caught up %.1fs after seeding", d.Seconds())
	b.quiesce(ctx)

	// A fresh ticket shows where ticketd keeps its Redis documents, if it does.
	probe, err := b.createTicket(ctx, createBody)
	if err != nil {
		return err
	}
	b.discoverRedis(ctx, probe, 3*time.Second)
	if b.redisKey != nil {
		b.logf("redis read model found: keys %s", b.redisKeyFormat)
	} else {
		b.logf("redis read model: %s", b.redisNA)
	}
	b.report.RedisKeyFormat = b.redisKeyFormat
	return nil
}

// quiesce lets Postgres finish the seeding's background work (autovacuum, checkpoint)
// before anything is measured, so it does not land on whichever run comes first.
func (b *bench) quiesce(ctx context.Context) {
	if !b.ownServer {
		return
	}
	t0 := time.Now()
	for _, q := range []string{`VACUUM ANALYZE`, `CHECKPOINT`} {
		if _, err := b.pool.Exec(ctx, q); err != nil {
			b.logf("%s: %v", q, err)
		}
	}
	b.logf("vacuum and checkpoint after seeding: %.1fs", time.Since(t0).Seconds())
}

// settle waits for the read model between scenarios, so one scenario's backlog does
// not load the next.
func (b *bench) settle(ctx context.Context, after string) {
	d, err := b.waitDrained(ctx, 15*time.Second)
	if err != nil {
		b.logf("after %s: %v", after, err)
		b.report.Notes = append(b.report.Notes, "after "+after+": "+err.Error())
		return
	}
	if d > time.Second {
		b.logf("after %s the read model caught up in %.1fs", after, d.Seconds())
	}
}

func (b *bench) runGet(ctx context.Context) error {
	code, doc, err := b.get(ctx, b.ticketURL(b.ids[0]))
	if err != nil || code != http.StatusOK {
		return fmt.Errorf("GET a seeded ticket: %d %v", code, err)
	}
	base, err := b.fiberRedisBaseline(ctx, doc)
	if err != nil {
		return err
	}
	b.add(base)
	m, err := b.load(ctx, b.spec("get", kindGet, b.o.conns, b.ids))
	if err != nil {
		return err
	}
	r := m.row("get", fmt.Sprintf("GET /v1/ticket/{id} (hot, %d tickets)", len(b.ids)), b.o.conns)
	r.vs(base, "≥0.9 of baseline, p99 <10ms")
	r.judge(r.Ratio >= 0.9 && r.P99ms < 10)
	r.Note = fmt.Sprintf("document %d bytes", len(doc))
	b.add(r)
	return nil
}

func (b *bench) runList(ctx context.Context) error {
	m, err := b.load(ctx, b.spec("list", kindList, b.o.conns, nil))
	if err != nil {
		return err
	}
	r := m.row("list", "GET /v1/ticket/?status=open (first page)", b.o.conns)
	r.Target = "≥4510/s (10x original)"
	r.judge(r.Value >= 4510)
	b.add(r)
	return nil
}

func (b *bench) runCreate(ctx context.Context) error {
	base, err := b.pgxInsertBaseline(ctx, b.dsn)
	if err != nil {
		return err
	}
	b.add(base)
	m, err := b.load(ctx, b.spec("create", kindCreate, b.o.conns, nil))
	if err != nil {
		return err
	}
	r := m.row("create", "POST /v1/ticket/", b.o.conns)
	r.vs(base, "≥0.7 of baseline (aim 1.0)")
	r.judge(r.Ratio >= 0.7)
	b.add(r)
	b.settle(ctx, "create")
	return nil
}

func (b *bench) runLag(ctx context.Context) error {
	res := b.lagScenario(ctx)
	if res.loadErr != nil {
		return res.loadErr
	}
	load := res.load.row("lag-load", "POST /v1/ticket/ during lag sampling", b.o.conns)
	load.Note = fmt.Sprintf("plus %d probe tickets (one every %v) whose lag is sampled: list polled every %v, read model row every %v, Redis every %v",
		res.probes, probeEvery, listPollInterval, rowPollEvery, redisPollEvery)
	b.add(load)

	drained := "drained"
	if res.drainErr != nil {
		drained = "NOT drained: " + res.drainErr.Error()
	}
	pr := Row{Key: "lag-row", Scenario: "projection lag: list (Postgres read model row)", Conns: b.o.conns, Target: "p99 <100ms"}
	if b.pool == nil {
		pr.NA, pr.Note = true, "n/a with -url (no database access)"
	} else {
		pr = res.row.row(pr.Key, pr.Scenario, b.o.conns)
		pr.Unit, pr.Value, pr.Target = "samples", float64(res.row.requests), "p99 <100ms"
		pr.judge(pr.Requests > 0 && pr.Errors == 0 && pr.P99ms < 100)
		pr.Note = "2xx -> the ticket's row is in readmodel.tickets (polled directly with pgx, as the Redis row polls Redis)"
	}
	b.add(pr)

	l := res.list.row("lag-list", "projection lag: list seen through GET /v1/ticket/", b.o.conns)
	l.Unit, l.Value = "samples", float64(res.list.requests)
	l.Target = "backlog drains"
	l.judge(l.Requests > 0 && l.Errors == 0 && res.drainErr == nil)
	l.Note = fmt.Sprintf("2xx -> visible in ?created_by= list, time taken when the polling GET returned (so it includes that GET's own latency under the load); after the load: %s in %.0fms (marker write + visible)",
		drained, ms(res.drainedIn))
	b.add(l)

	// How long the list takes to catch up once the load stops, as a row of its own so
	// the table shows it.
	d := Row{Key: "lag-drain", Scenario: "projection lag: list caught up after the load", Unit: "ms", Value: ms(res.drainedIn), Target: "<1s"}
	d.judge(res.drainErr == nil && res.drainedIn < time.Second)
	d.Note = "from the end of the POST load until a marker ticket written then shows in the ?created_by= list (write + visible, polled every 10ms); the projector works in order, so everything written before the marker is projected by then"
	if res.drainErr != nil {
		d.Errors = 1
		d.Note = "NOT drained: " + res.drainErr.Error() + "; " + d.Note
	}
	b.add(d)

	rr := Row{Key: "lag-redis", Scenario: "projection lag: Redis document", Conns: b.o.conns, Target: "p99 <100ms"}
	if b.redisKey == nil {
		rr.NA, rr.Note = true, b.redisNA
	} else {
		rr = res.redis.row(rr.Key, rr.Scenario, b.o.conns)
		rr.Unit, rr.Value, rr.Target = "samples", float64(res.redis.requests), "p99 <100ms"
		rr.judge(rr.Requests > 0 && rr.Errors == 0 && rr.P99ms < 100)
		rr.Note = "2xx -> key " + b.redisKeyFormat + " exists (polled directly with go-redis)"
	}
	b.add(rr)
	b.report.Lag = LagReport{Drained: res.drainErr == nil, DrainMs: ms(res.drainedIn)}
	return nil
}

func (b *bench) runPut(ctx context.Context) error {
	before := b.countEvents(ctx, ticket.TypeStatusChanged)
	m, err := b.load(ctx, b.spec("put", kindPut, b.o.conns, nil))
	if err != nil {
		return err
	}
	r := m.row("put", "PUT /v1/ticket/{id} (status toggle)", b.o.conns)
	if after := b.countEvents(ctx, ticket.TypeStatusChanged); before >= 0 && after >= 0 {
		toggled := 0
		for _, t := range b.toggles {
			toggled += len(t.ids)
		}
		r.Note = fmt.Sprintf("%d StatusChanged events appended for %d successful PUTs (answered<->wait_answer over %d tickets)",
			after-before, m.requests-min(m.requests, m.errors), toggled)
		if b.o.generator == genWrk {
			r.Note += fmt.Sprintf("; wrk does not count the answers to the up to %d PUTs in flight when it stops, which ticketd still applies", b.o.conns)
		}
	}
	b.add(r)
	b.settle(ctx, "put")
	return nil
}

func (b *bench) runComment(ctx context.Context) error {
	m, err := b.load(ctx, b.spec("comment-fresh", kindComment, b.o.conns, b.fresh.ids))
	if err != nil {
		return err
	}
	fresh := m.row("comment-fresh", "POST comment, fresh tickets", b.o.conns)
	fresh.Note = fmt.Sprintf("round robin over %d tickets with ~1-2 events", len(b.fresh.ids))
	b.add(fresh)
	b.settle(ctx, "comment-fresh")

	// The long streams were copied into the events table past the outbox (see
	// copyStreams), so neither the read models nor ticketd's aggregate cache know them:
	// the first command on each folds its whole stream, once. One warm-up comment per
	// ticket pays that before the clock starts, so the row measures a comment on a
	// long ticket the service already serves, as in production.
	t0 := time.Now()
	if err := b.warmLong(ctx); err != nil {
		return err
	}
	b.settle(ctx, "the long tickets' warm-up")
	b.logf("warmed %d long tickets in %.1fs", len(b.longIDs), time.Since(t0).Seconds())

	m, err = b.load(ctx, b.spec("comment-long", kindComment, b.o.conns, b.longIDs))
	if err != nil {
		return err
	}
	long := m.row("comment-long", fmt.Sprintf("POST comment, %d-event tickets", b.o.longEvents), b.o.conns)
	long.vs(fresh, "≥0.8 of fresh")
	long.Baseline = "POST comment, fresh tickets"
	long.judge(long.Ratio >= 0.8)
	long.Note = fmt.Sprintf("round robin over %d tickets that start with %d events, after one warm-up comment each", len(b.longIDs), b.o.longEvents)
	if len(b.longIDs) < b.o.conns {
		long.Note += fmt.Sprintf(" (%d connections share them: concurrency clashes and retries included)", b.o.conns)
	}
	b.add(long)
	b.settle(ctx, "comment-long")
	return nil
}

// warmLong posts one comment to each long ticket, a few at a time.
func (b *bench) warmLong(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, id := range b.longIDs {
		g.Go(func() error {
			code, resp, err := b.post(ctx, b.ticketURL(id)+"/comments", commentBody)
			if err == nil && code != http.StatusCreated {
				err = fmt.Errorf("%d %s", code, bytes.TrimSpace(resp))
			}
			if err != nil {
				return fmt.Errorf("warm-up comment on %s: %w", id, err)
			}
			return nil
		})
	}
	return g.Wait()
}

func (b *bench) runMixed(ctx context.Context) error {
	m, err := b.load(ctx, b.spec("mixed", kindMixed, b.o.conns, nil))
	if err != nil {
		return err
	}
	r := m.row("mixed", "mixed 80% read / 20% write", b.o.conns)
	r.Note = "70% GET id, 10% list, 10% create, 5% PUT, 5% comment"
	b.add(r)
	b.settle(ctx, "mixed")
	return nil
}

func (b *bench) runOverload(ctx context.Context) error {
	m, err := b.load(ctx, b.spec("overload", kindMixed, b.o.overloadConns, nil))
	if err != nil {
		return err
	}
	r := m.row("overload", fmt.Sprintf("overload: mixed at %d connections", b.o.overloadConns), b.o.overloadConns)
	r.Target = "0 errors, p99 <1s"
	r.judge(r.Requests > 0 && r.Errors == 0 && r.P99ms < 1000)
	if r.Errors > 0 {
		r.Note = fmt.Sprintf("status codes %v; errors %v", r.StatusCodes, r.ErrorSamples)
	}
	b.add(r)
	b.settle(ctx, "overload")
	// never wedge: a plain request still answers promptly after the overload
	t0 := time.Now()
	code, _, err := b.get(ctx, b.ticketURL(b.ids[0]))
	b.report.Notes = append(b.report.Notes, fmt.Sprintf("after the overload a GET answered %d in %.1fms (err %v)", code, ms(time.Since(t0)), err))
	return nil
}

// spec is a throughput run against ticketd.
func (b *bench) spec(name string, kind loadKind, conns int, ids []uuid.UUID) loadSpec {
	s := loadSpec{name: name, kind: kind, base: b.base, conns: conns, ids: ids}
	if b.proc != nil {
		s.serverPID = b.proc.pid()
	}
	return s
}

// countEvents counts events of a type in the bench database, -1 when it cannot.
func (b *bench) countEvents(ctx context.Context, typ string) int64 {
	if !b.ownServer {
		return -1
	}
	var n int64
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE type = $1`, typ).Scan(&n); err != nil {
		return -1
	}
	return n
}

// sampleRSS records ticketd's resident and peak memory after a scenario.
func (b *bench) sampleRSS(after string) {
	if b.proc == nil {
		return
	}
	rss, err1 := procStatusKB(b.proc.pid(), "VmRSS")
	hwm, err2 := procStatusKB(b.proc.pid(), "VmHWM")
	if errors.Join(err1, err2) == nil {
		b.report.RSS = append(b.report.RSS, RSSSample{After: after, RSSMB: float64(rss) / 1024, PeakMB: float64(hwm) / 1024})
	}
}

// rssRow adds ticketd's peak RSS: the highest VmHWM of the ticketd processes the bench
// ran (the one serving the seeding and the load scenarios, and the one that worked off
// the backlog). The rebuild's own process is reported in its row.
func (b *bench) rssRow() {
	r := Row{Key: "rss", Scenario: "peak RSS of ticketd (VmHWM)", Unit: "MB", Target: "<200 MB"}
	if !b.ownServer {
		r.NA, r.Note = true, "n/a (-url: not our process)"
		b.add(r)
		return
	}
	if len(b.rssPeaks) == 0 {
		r.NA, r.Note = true, "n/a (no VmHWM read)"
		b.add(r)
		return
	}
	var parts []string
	for _, p := range b.rssPeaks {
		r.Value = max(r.Value, float64(p.kb)/1024)
		parts = append(parts, fmt.Sprintf("%s %.0f MB", p.what, float64(p.kb)/1024))
	}
	r.judge(r.Value < 200)
	r.Note = strings.Join(parts, "; ")
	b.add(r)
}

func (b *bench) add(r Row) {
	if strings.HasPrefix(r.Generator, genVegeta) {
		r.Note = strings.TrimPrefix(r.Note+"; LOAD FROM VEGETA in the bench process (-generator vegeta): it takes CPU from the server, so the server looks cheaper than with wrk", "; ")
	}
	if r.Errors > 0 && r.Key != "overload" && r.Key != "rebuild" && (len(r.StatusCodes) > 0 || len(r.ErrorSamples) > 0) {
		r.Note = strings.TrimPrefix(r.Note+fmt.Sprintf("; errors: status codes %v, %v", r.StatusCodes, r.ErrorSamples), "; ")
	}
	b.report.Rows = append(b.report.Rows, r)
	b.logf("%s", r.short())
}
