package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// fiberRedisBaseline measures the floor of a Redis-served GET: a bare Fiber app whose
// one handler does one Redis Cluster GET of a document of the same size as ticketd's
// and sends it, loaded exactly like the hot-GET scenario (same generator, same ids). The app runs as a separate
// process (this binary re-executed), like ticketd; with -baseline-in-process it runs
// inside the bench process instead, where it shares two cores' worth of Go scheduler
// and GC with the load generator.
func (b *bench) fiberRedisBaseline(ctx context.Context, doc []byte) (Row, error) {
	// Store the document under every ticket's baseline key, pipelined per node.
	for i := 0; i < len(b.ids); i += 1000 {
		chunk := b.ids[i:min(i+1000, len(b.ids))]
		_, err := b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, id := range chunk {
				p.Set(ctx, baselineKey(b.redisPrefix, id.String()), doc, time.Hour)
			}
			return nil
		})
		if err != nil {
			return Row{}, fmt.Errorf("baseline: store documents: %w", err)
		}
	}
	var base, where string
	pid := 0
	if b.o.baselineInProcess {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return Row{}, err
		}
		app := fiberRedisApp(b.rdb, b.redisPrefix)
		go func() { _ = app.Listener(ln) }()
		defer func() { _ = app.ShutdownWithTimeout(5 * time.Second) }()
		base, where = "http://"+ln.Addr().String(), "in the bench process"
	} else {
		stop, url, p, err := b.startBaselineProcess(ctx)
		if err != nil {
			return Row{}, err
		}
		defer stop()
		base, where, pid = url, "in its own process", p
	}
	m, err := b.load(ctx, loadSpec{name: "baseline-get", kind: kindGet, base: base, conns: b.o.conns, ids: shuffled(b.ids), serverPID: pid})
	if err != nil {
		return Row{}, err
	}
	r := m.row("baseline-get", "baseline: Fiber + 1 Redis GET", b.o.conns)
	r.Note = "bare Fiber handler " + where + ": one Redis Cluster GET of a " + strconv.Itoa(len(doc)) + "-byte document, sent as is"
	return r, nil
}

// baselineKey is where the Fiber baseline finds the document of ticket id: its own
// keys under the run's prefix, hash-tagged per ticket like ticketd's.
func baselineKey(prefix, id string) string { return prefix + "-baseline:{" + id + "}:doc" }

// fiberRedisApp is the bare handler of the GET baseline.
func fiberRedisApp(rdb redis.UniversalClient, prefix string) *fiber.App {
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	app.Get("/healthz", func(c *fiber.Ctx) error { return c.SendString("ok") })
	app.Get("/v1/ticket/:id", func(c *fiber.Ctx) error {
		body, err := rdb.Get(c.UserContext(), baselineKey(prefix, c.Params("id"))).Bytes()
		if err != nil {
			return fiber.NewError(fiber.StatusServiceUnavailable, err.Error())
		}
		c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
		return c.Send(body)
	})
	return app
}

// Environment of the baseline server process.
const (
	envServe  = "TICKETBENCH_SERVE_BASELINE"
	envRedis  = "TICKETBENCH_REDIS_ADDRS"
	envPrefix = "TICKETBENCH_PREFIX"
)

// serveBaseline is the re-executed bench binary serving the Fiber + Redis baseline on
// addr until ctx ends.
func serveBaseline(ctx context.Context, addr string, getenv func(string) string) error {
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(getenv(envRedis), ",")})
	defer rdb.Close()
	app := fiberRedisApp(rdb, getenv(envPrefix))
	go func() {
		<-ctx.Done()
		_ = app.ShutdownWithTimeout(5 * time.Second)
	}()
	return app.Listen(addr)
}

// startBaselineProcess re-executes this binary as the baseline server on a free port
// and waits until it answers.
func (b *bench) startBaselineProcess(ctx context.Context) (stop func(), url string, pid int, err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", 0, err
	}
	port, err := freePort()
	if err != nil {
		return nil, "", 0, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), envServe+"="+addr, envRedis+"="+strings.Join(b.redisAddrs, ","), envPrefix+"="+b.redisPrefix)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, "", 0, err
	}
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	url = "http://" + addr
	for deadline := time.Now().Add(15 * time.Second); ; {
		if code, _, err := b.get(ctx, url+"/healthz"); err == nil && code == 200 {
			return stop, url, cmd.Process.Pid, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return nil, "", 0, fmt.Errorf("baseline server did not start on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventRow is one event row as ticketd stores a created ticket: what the insert
// baseline writes.
func eventRow() (data, md []byte) {
	data, _ = json.Marshal(ticket.Opened{
		Title:       "Printer on the third floor jams on every second page",
		Description: "Since this morning the printer next to the kitchen jams on every second page. Tried another paper tray and restarting it; same result. Reports from three people so far.",
		Email:       "requester@example.com", CreatedBy: "bench",
	})
	md, _ = json.Marshal(eventstore.Metadata{Actor: "bench", RequestID: "0123456789abcdef0123456789abcdef"})
	return data, md
}

// baselineHash fills the scratch table's hash column (NOT NULL, as in events).
var baselineHash = make([]byte, 32)

// pgxInsertBaseline inserts one event row per transaction into a scratch copy of the
// events table (same columns, defaults and indexes, no outbox) from conns goroutines
// on a pool as large as ticketd's. It is the floor of a create.
func (b *bench) pgxInsertBaseline(ctx context.Context, dsn string) (Row, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return Row{}, err
	}
	cfg.MaxConns = int32(b.o.pgConns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return Row{}, err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `DROP TABLE IF EXISTS bench_insert;
		CREATE TABLE bench_insert (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING CONSTRAINTS INCLUDING INDEXES)`); err != nil {
		return Row{}, fmt.Errorf("baseline: scratch table: %w", err)
	}
	defer pool.Exec(context.WithoutCancel(ctx), `DROP TABLE IF EXISTS bench_insert`) //nolint:errcheck // scratch, dropped with the database anyway
	data, md := eventRow()
	m := goLoad(ctx, b.o.conns, b.o.duration, func(ctx context.Context) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			var pos int64
			// hash: a row of the same shape; the chain trigger is not copied (the
			// baseline is the bare insert; ticketd's creates pay for the chain)
			return tx.QueryRow(ctx, `INSERT INTO bench_insert (stream_id, version, type, data, metadata, recorded_at, hash)
				VALUES ($1, 1, $2, $3, $4, $5, $6) RETURNING position`,
				uuid.New(), ticket.TypeOpened, data, md, time.Now(), baselineHash).Scan(&pos)
		})
	})
	r := m.row("baseline-insert", "baseline: pgx insert 1 event/tx", b.o.conns)
	r.Note = fmt.Sprintf("%d goroutines, pool of %d, one INSERT ... RETURNING per transaction", b.o.conns, b.o.pgConns)
	return r, nil
}

// pgxReadBaseline reads every event row in position order on one connection, scanning
// each column, and returns rows/s. It is the floor of a rebuild.
func (b *bench) pgxReadBaseline(ctx context.Context) (Row, error) {
	conn, err := b.pool.Acquire(ctx)
	if err != nil {
		return Row{}, err
	}
	defer conn.Release()
	start := time.Now()
	rows, err := conn.Query(ctx, `SELECT position, stream_id, version, type, data, metadata, recorded_at FROM events ORDER BY position`)
	if err != nil {
		return Row{}, err
	}
	var (
		n        int64
		position int64
		stream   uuid.UUID
		version  int
		typ      string
		data, md []byte
		at       time.Time
	)
	for rows.Next() {
		if err := rows.Scan(&position, &stream, &version, &typ, &data, &md, &at); err != nil {
			rows.Close()
			return Row{}, err
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return Row{}, err
	}
	d := time.Since(start)
	return Row{
		Key: "baseline-read", Scenario: "baseline: pgx read of the events", Requests: uint64(n), Unit: "rows/s",
		Value: float64(n) / d.Seconds(),
		Note:  fmt.Sprintf("%d rows ORDER BY position in %.2fs, every column scanned", n, d.Seconds()),
	}, nil
}
