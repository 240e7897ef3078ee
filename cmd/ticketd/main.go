// Command ticketd serves the ticket API, keeps the read models, and runs the operator
// tasks (migrate). See the README for the environment and flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/httpapi"
	"github.com/ticketd/ticketd/pii"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/projections/redismodel"
	"github.com/ticketd/ticketd/webhooks"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Here, not in run: tests run the server in their own process with their own heap.
	setMemoryLimit()
	os.Exit(exitCode(run(ctx, os.Args[1:], os.Getenv, os.Stdout), os.Stderr))
}

// exitCode reports err on stderr, once, and returns the process's exit status: 0 for
// success and -h, 2 for a usage mistake (flags, arguments: nothing was done), 1 for
// any other failure.
func exitCode(err error, stderr io.Writer) int {
	var uerr usageError
	var lerr loggedError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &lerr):
		return 1
	case errors.As(err, &uerr):
		fmt.Fprintf(stderr, "ticketd: %v\nRun 'ticketd -h' for the flags.\n", err)
		return 2
	default:
		fmt.Fprintln(stderr, "ticketd:", err)
		return 1
	}
}

const usage = `Usage: ticketd [flags]

Without a task flag, serves the ticket API on HTTP_ADDR (default :8000), applying
migrations first. -migrate, -rebuild-projections, -history, -verify, -healthcheck, -create-token,
-list-tokens, -revoke-token, -erase-subject and -rotate-data-key are tasks:
at most one per invocation. Configuration comes from the environment; see README.md
for every variable (make run and the make task targets add .env and the local services).

Flags:
`

// usageError is a mistake in the command line: nothing was done, the exit status is 2.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// The tasks an invocation may name, at most one; without one ticketd serves.
const (
	taskServe       = ""
	taskMigrate     = "migrate"
	taskRebuild     = "rebuild-projections"
	taskHistory     = "history"
	taskHealthcheck = "healthcheck"
	taskCreateToken = "create-token"
	taskListTokens  = "list-tokens"
	taskRevokeToken = "revoke-token"
	taskVerify      = "verify"
	taskErase       = "erase-subject"
	taskRotateKey   = "rotate-data-key"
)

// options is the parsed command line.
type options struct {
	task        string     // one of the task constants
	historyID   string     // with taskHistory
	historyJSON bool       // with taskHistory
	tokens      *tokenTask // the token tasks' flags
	verifyID    string     // with taskVerify: the one ticket to check ("" for all)
	eraseEmail  string     // with taskErase
	eraseReason string     // with taskErase
}

// parseFlags parses the command line. -h prints the usage on stdout and returns
// flag.ErrHelp; any mistake (an unknown flag, a flag without its value, stray
// arguments, two tasks, -json without -history, -history with an empty id) is a
// usageError, printed by nobody here: main prints it once, on stderr.
func parseFlags(args []string, stdout io.Writer) (options, error) {
	fs := flag.NewFlagSet("ticketd", flag.ContinueOnError)
	// The flag package would print its error and the whole usage; main prints the error
	// once and points to -h instead.
	fs.SetOutput(io.Discard)
	fs.Bool(taskMigrate, false, "apply the database migrations and exit")
	fs.Bool(taskHealthcheck, false, "ask the ticketd on HTTP_ADDR for /healthz; exit 0 if it answers 200, else 1 (the container HEALTHCHECK)")
	historyOf := fs.String(taskHistory, "", "print the event history of the ticket with this id and exit (reads only)")
	historyJSON := fs.Bool("json", false, "with -history: print JSON lines instead of a table")
	fs.Bool(taskRebuild, false,
		"replay the event store into fresh read models (Postgres and Redis), move the projectors to the replayed point and exit; safe while other instances serve")
	tokens := addTokenFlags(fs)
	verify := addVerifyFlag(fs) // audit.go
	eraseOf := fs.String(taskErase, "", "erase the personal data of the data subject with this email (crypto-shredding: README \"Personal data and erasure\") and exit")
	reason := fs.String("reason", "", "with -erase-subject: why (recorded in the erasure events; no personal data)")
	fs.Bool(taskRotateKey, false, "move every data key from DATA_KEY to NEW_DATA_KEY (stop every instance first) and exit")
	tasks := map[string]bool{taskMigrate: true, taskHealthcheck: true, taskHistory: true, taskRebuild: true,
		taskCreateToken: true, taskListTokens: true, taskRevokeToken: true, taskVerify: true, taskErase: true, taskRotateKey: true}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprint(stdout, usage)
			fs.PrintDefaults()
			return options{}, err
		}
		return options{}, usageError{err}
	}
	var o options
	if *verify && fs.NArg() > 0 {
		if err := o.verifyArgs(fs.Args()); err != nil {
			return options{}, err
		}
	} else if fs.NArg() > 0 {
		return options{}, usagef("unexpected arguments %q: flags come first, and -history takes one id", fs.Args())
	}
	var named []string
	fs.Visit(func(f *flag.Flag) {
		if !tasks[f.Name] {
			return
		}
		// A boolean task given as -migrate=false is not asked for.
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() && f.Value.String() != "true" {
			return
		}
		named = append(named, "-"+f.Name)
		o.task = f.Name
	})
	if len(named) > 1 {
		return options{}, usagef("%s: one task per invocation; run them one after the other", strings.Join(named, " and "))
	}
	o.historyID, o.historyJSON = *historyOf, *historyJSON
	o.eraseEmail, o.eraseReason = *eraseOf, *reason
	if o.eraseReason != "" && o.task != taskErase {
		return options{}, usagef("-reason only applies to -erase-subject <email>")
	}
	if o.task == taskHistory && o.historyID == "" {
		return options{}, usagef("-history needs a ticket id: ticketd -history <id> [-json]")
	}
	if o.historyJSON && o.task != taskHistory {
		return options{}, usagef("-json only applies to -history <ticket-id>")
	}
	o.tokens = tokens
	if _, err := tokens.requested(); err != nil {
		return options{}, usageError{err}
	}
	return o, nil
}

// loggedError is a failure of the server already written to its JSON log: main
// prints it no more, and exits 1.
type loggedError struct{ error }

func (e loggedError) Unwrap() error { return e.error }

// run wires everything; main only calls it. It returns when ctx ends (after a graceful
// drain) or on a fatal error. The server's fatal error is also its last JSON log line
// (level ERROR), so that every line the server writes is JSON; the tasks, run by a
// person, leave their error to main.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	opts, err := parseFlags(args, stdout)
	if err != nil {
		return err
	}
	err = runTask(ctx, opts, getenv, stdout)
	if err == nil || opts.task != taskServe {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stdout, nil))
	if ce := (*ConfigError)(nil); errors.As(err, &ce) {
		problems := make([]string, len(ce.Problems))
		for i, p := range ce.Problems {
			problems[i] = p.Error()
		}
		log.Error("invalid configuration", "problems", problems)
	} else {
		log.Error("ticketd failed", "err", err)
	}
	return loggedError{err}
}

// runTask runs the task of opts: the server, or one operator task.
func runTask(ctx context.Context, opts options, getenv func(string) string, stdout io.Writer) error {
	migrateOnly, rebuild := opts.task == taskMigrate, opts.task == taskRebuild
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	cfg.benchPlaintext = opts.task == taskServe && getenv(benchPlaintextVar) == "1"
	switch opts.task {
	case taskHealthcheck:
		return healthcheck(ctx, cfg, stdout)
	case taskHistory:
		return printHistory(ctx, cfg, opts.historyID, opts.historyJSON, stdout)
	case taskCreateToken, taskListTokens, taskRevokeToken:
		return opts.tokens.run(ctx, cfg, stdout)
	case taskVerify:
		return verifyChains(ctx, cfg, opts.verifyID, stdout)
	case taskErase:
		return eraseSubject(ctx, cfg, opts.eraseEmail, opts.eraseReason, stdout)
	case taskRotateKey:
		return withPool(ctx, cfg, func(pool *pgxpool.Pool) error { return rotateDataKey(ctx, cfg, pool, stdout) })
	}
	if !migrateOnly && !cfg.benchPlaintext {
		// Serving and rebuilding need DATA_KEY: a missing or malformed one stops the
		// start here, before anything is bound or migrated (a wrong one is told once
		// the database's check value is read).
		if _, err := cfg.MasterKey(); err != nil {
			return err
		}
	}
	level, _ := cfg.SlogLevel()
	log := slog.New(slog.NewJSONHandler(stdout, &slog.HandlerOptions{Level: level}))
	// go-redis writes its own plain-text lines to stderr; they go through the JSON log.
	redis.SetLogger(redisLogger{log})
	var ln *connListener
	if !migrateOnly && !rebuild {
		// Bind before anything else: a taken or unusable HTTP_ADDR fails the start at
		// once, with the reason, before migrations and dependencies are waited for.
		// Connections made meanwhile wait in the backlog until the server serves.
		limits := limitsFor(cfg, openFileLimit())
		if !limits.fitsNoFile() {
			log.Warn("MAX_CONNS leaves too few file descriptors for the pools and files: accepting pauses when they run out",
				"max_conns", limits.MaxConns, "nofile", limits.NoFile, "reserve", limits.Reserve)
		}
		if ln, err = listenHTTP(cfg.HTTPAddr, limits, log); err != nil {
			return err
		}
		defer ln.Close()
	}
	if cfg.PprofAddr != "" {
		stopPprof, err := servePprof(cfg.PprofAddr, log)
		switch {
		case err == nil:
			defer stopPprof()
		case rebuild || migrateOnly:
			// An operator task run beside a serving instance, with its environment, finds
			// the port taken by that instance's profiler: it does its work unprofiled.
			log.Warn("pprof not served", "addr", cfg.PprofAddr, "err", err)
		default:
			return err
		}
	}

	migrateCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := db.Migrate(migrateCtx, cfg.DatabaseDSN, logWriter{log}); err != nil {
		return err
	}
	if migrateOnly {
		log.Info("migrations applied")
		return nil
	}

	pool, err := db.Open(ctx, cfg.DatabaseDSN, db.PoolConfig{MaxConns: cfg.PGMaxConns})
	if err != nil {
		return err
	}
	defer pool.Close()
	if rebuild {
		return rebuildProjections(ctx, cfg, pool, log, stdout)
	}
	return serve(ctx, cfg, pool, log, ln)
}

// projectorConns is the size of the projectors' own pool: one connection per consumer
// group (Postgres, Redis, webhooks), one for the backlog sampler.
const projectorConns = 4

// webhookConns is the size of the webhook dispatcher's pool (claims and results).
const webhookConns = 2

// serve runs the HTTP server on ln (bound by run) and the projectors until ctx ends,
// then drains.
func serve(ctx context.Context, cfg Config, pool *pgxpool.Pool, log *slog.Logger, ln *connListener) error {
	rdb, isCluster, err := connectRedis(ctx, cfg.RedisAddresses(), cfg.RedisTimeout, redisBufferBytes)
	defer rdb.Close()
	if err != nil {
		// Not fatal: reads fall back to Postgres and the Redis documents are repaired once
		// it answers. Said once here; go-redis's own lines about it are at debug level.
		log.Warn("redis unreachable at start; reads fall back to Postgres until it answers",
			"addrs", cfg.RedisAddresses(), "cluster", isCluster, "err", err)
	} else {
		log.Info("redis", "addrs", cfg.RedisAddresses(), "cluster", isCluster)
	}

	var ring *pii.Keyring
	if cfg.benchPlaintext {
		log.Warn(benchPlaintextVar + "=1: personal data is stored IN CLEAR (the bench's baseline only)")
	} else if ring, err = openKeyring(ctx, cfg, pool); err != nil {
		return err
	}
	store := eventstore.New(pool, ring)
	// Appends of this instance wake its projectors at once; other instances' events
	// are found by polling.
	wake := projections.NewSignal()
	store.OnAppend = wake.Notify
	reads := pgmodel.NewReadModel(pool, store)
	// The Redis read model: documents, the reader that serves GET from them (falling
	// back to Postgres), its projector, and the repairer of documents Redis missed.
	docs := redismodel.NewDocs(rdb, cfg.RedisPrefix, cfg.RedisTimeout)
	reader := redismodel.NewReader(docs, reads, pool, log)
	// What an earlier process (or another instance) acknowledged but Redis may lack is
	// served from Postgres until Redis has it: this process does not have their marks.
	if n, err := reader.DistrustUnprojected(ctx); err != nil {
		return err
	} else if n > 0 {
		log.Info("tickets read past redis until it catches up", "tickets", n)
	}
	redisProj := &redismodel.Projector{Docs: docs, Events: store, Log: log}
	repairer := &redismodel.Repairer{Pool: pool, Events: store, Docs: docs, Log: log, Reader: reader}
	// One registry for /metrics: Go runtime, process, HTTP and projection metrics.
	reg := httpapi.NewRegistry()
	projMetrics, err := projections.NewPrometheusMetrics(reg)
	if err != nil {
		return err
	}
	// The projectors get connections of their own: in the request pool they would queue
	// behind every request under load, and the list's lag with them.
	projPool, err := db.Open(ctx, cfg.DatabaseDSN, db.PoolConfig{MaxConns: projectorConns})
	if err != nil {
		return err
	}
	defer projPool.Close()
	hooks, err := webhooks.New(pool, store, cfg.Webhooks, log, reg)
	if err != nil {
		return err
	}
	// the webhook dispatcher's short transactions get connections of their own too
	hooksPool, err := db.Open(ctx, cfg.DatabaseDSN, db.PoolConfig{MaxConns: webhookConns})
	if err != nil {
		return err
	}
	defer hooksPool.Close()
	hooks.DispatchPool = hooksPool
	router, err := projections.NewRouter(projPool, projections.Config{Metrics: projMetrics, Wake: wake, Reveal: store.Reveal}, log,
		pgmodel.Projector{Events: store, Cache: projections.NewViewCache(pgmodel.RowCacheBytes)}.Handler(), redisProj.Handler(),
		hooks.Handler())
	if err != nil {
		return err
	}
	cursorKey, err := cursorSecret(ctx, cfg, pool)
	if err != nil {
		return err
	}
	tokens, verifier, err := setupAuth(ctx, cfg, pool, log)
	if err != nil {
		return err
	}
	jwtVerifier, err := setupJWT(ctx, cfg, log)
	if err != nil {
		return err
	}
	limiter, err := setupRateLimit(cfg, rdb, reg, log)
	if err != nil {
		return err
	}
	// live event streams: a hub woken by this instance's appends, polling for others'
	streamCfg, stopStreams := setupStreams(ctx, cfg.SSE, store, log)
	defer stopStreams()
	erase := eraser(store, pool)
	if ring == nil {
		erase = nil // nothing is sealed: nothing to shred (the bench's baseline)
	}
	httpCfg := httpapi.Config{
		Store: store, Reader: reader, Log: log,
		OnCommitted:    reader.Committed,
		Erase:          erase,
		CursorKey:      cursorKey,
		BodyLimit:      cfg.BodyLimit,
		RequestTimeout: cfg.RequestTimeout,
		IdempotencyTTL: cfg.IdempotencyTTL,
		Postgres:       func(ctx context.Context) error { return pool.Ping(ctx) },
		Redis:          func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		RedisMode:      redisMode(isCluster),
		Metrics:        reg,
		// sampled: a line per 2xx read costs microseconds on the hottest path
		AccessLogSample: cfg.AccessLogSample,
		SlowRequest:     cfg.AccessLogSlow,
		// replays of past versions: bounded in number, cached; history pages in bytes
		ReplayConcurrency: cfg.ReplayConcurrency,
		HistoryPageBytes:  cfg.HistoryPageBytes,
		PageBytes:         cfg.PageBytes,
		Auth:              verifier,
		Tokens:            tokens,
		Limiter:           limiter,
		Streams:           streamCfg,
		Webhooks:          hooks,
	}
	if jwtVerifier != nil { // a nil *JWTVerifier in the interface would not be nil
		httpCfg.JWT = jwtVerifier
	}
	app := httpapi.New(httpCfg)

	projCtx, stopProj := context.WithCancel(context.WithoutCancel(ctx))
	defer stopProj()
	projDone := make(chan error, 1)
	go func() { projDone <- router.Run(projCtx) }()
	repairDone := make(chan error, 1)
	go func() { repairDone <- repairer.Run(projCtx) }()
	hooksDone := make(chan struct{})
	go func() { defer close(hooksDone); hooks.Run(projCtx) }() // webhook deliveries (webhooks/dispatch.go)
	// Expired idempotency keys and outbox rows every projector has passed are deleted
	// in the background, one instance at a time (eventstore/housekeeping.go).
	housekeeper := &eventstore.Housekeeper{
		Pool:            pool,
		IdempotencyTTL:  cfg.IdempotencyTTL,
		OutboxRetention: cfg.OutboxRetention,
		Groups:          []string{pgmodel.Group, redismodel.Group, webhooks.Group},
		Interval:        cfg.HousekeepingInterval,
		Log:             log,
	}
	go tokens.Run(projCtx)                             // last_used_at, off the request path
	anchorsDone := runAnchors(projCtx, cfg, pool, log) // audit.go
	housekeepingDone := make(chan struct{})
	go func() { defer close(housekeepingDone); housekeeper.Run(projCtx) }()

	applyConnLimits(app, ln.limits, cfg.IdleTimeout)
	// Logged before serving (the socket is bound already): a client answered has seen
	// the line written.
	log.Info("listening", append([]any{"addr", ln.Addr().String(), "idle_timeout", cfg.IdleTimeout.String(), "memory_limit", memoryLimitAttr()}, ln.limits.logAttrs()...)...)
	httpDone := make(chan error, 1)
	go func() { httpDone <- app.Listener(ln) }()

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-httpDone:
		runErr = fmt.Errorf("http server: %w", err)
	case err := <-projDone:
		runErr = fmt.Errorf("projections stopped: %w", err)
	}
	log.Info("shutting down")
	if err := app.ShutdownWithTimeout(cfg.ShutdownTimeout); err != nil {
		log.Warn("http drain", "err", err)
	}
	stopProj()
	select {
	case <-projDone:
	case <-time.After(cfg.ShutdownTimeout):
		log.Warn("projectors did not stop in time")
	}
	select {
	case <-repairDone:
	case <-time.After(cfg.ShutdownTimeout):
		log.Warn("redis repairer did not stop in time")
	}
	select {
	case <-hooksDone:
	case <-time.After(cfg.ShutdownTimeout):
		log.Warn("webhook dispatcher did not stop in time")
	}
	select {
	case <-housekeepingDone:
	case <-time.After(cfg.ShutdownTimeout):
		log.Warn("housekeeping did not stop in time")
	}
	<-anchorsDone
	log.Info("stopped")
	return runErr
}

// cursorSecret returns the key that signs list cursors: CURSOR_SECRET when set, else
// the one kept in Postgres, generated by the first instance to start on the database.
// Either way every instance of a deployment signs with the same key, so a cursor from
// one is good on another, and after a restart.
func cursorSecret(ctx context.Context, cfg Config, pool *pgxpool.Pool) ([]byte, error) {
	if cfg.CursorSecret != "" {
		return []byte(cfg.CursorSecret), nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	key, err := db.Setting(ctx, pool, db.CursorSecretSetting, 32)
	if err != nil {
		return nil, fmt.Errorf("CURSOR_SECRET is unset and the shared one could not be loaded: %w", err)
	}
	return key, nil
}

// servePprof serves net/http/pprof's handlers under /debug/pprof/ on addr (a loopback
// address: see Config.Validate), on a listener and server of their own, so profiles
// never share the API's port, middleware or timeouts. The listener is bound before it
// returns: a taken port is an error now, not a log line later. stop closes it.
func servePprof(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("PPROF_ADDR: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // also heap, goroutine, allocs, block, mutex, ...
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// No WriteTimeout: a CPU profile or trace answers after ?seconds=N.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("pprof server stopped", "err", err)
		}
	}()
	log.Info("pprof listening", "addr", ln.Addr().String())
	return func() { _ = srv.Close() }, nil
}

// redisMode names the Redis deployment for /readyz.
func redisMode(cluster bool) string {
	if cluster {
		return "cluster"
	}
	return "single"
}

// logWriter adapts line output (dbmate's progress) to the structured log.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Info("migrate", "line", string(trimNL(p)))
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}
