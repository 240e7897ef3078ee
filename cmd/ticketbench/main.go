// Command ticketbench is ticketd's load benchmark (`make bench`). It starts ticketd on a
// fresh database (or targets a running one with -url), seeds data, runs each scenario
// for a bounded time at a fixed number of connections with wrk (a Lua script per run,
// generated here; vegeta in this process with -generator vegeta), measures the floor
// cost of ticketd's own stack in the same run (a bare Fiber + Redis Cluster handler
// under the same generator as ticketd, a bare pgx insert loop, a bare pgx read of the
// event table), and prints one table of requests/s, p50, p99, errors, the CPU the
// generator and the server took, baseline and ratio against the targets of issue 7. The
// table is also written as JSON under bench/out (git-ignored) so runs can be compared;
// README.md's copy of the table changes only on request (-update-readme, or
// make bench-table, which is -table-from bench/out/latest.json).
//
// Only ratios measured side by side mean much on a small, shared machine: absolute
// numbers move with whatever else runs there.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "ticketbench:", err)
		os.Exit(1)
	}
}

// options are the command-line flags.
type options struct {
	url           string
	token         string
	duration      time.Duration
	conns         int
	overloadConns int
	tickets       int
	longTickets   int
	longEvents    int
	rebuildEvents int
	backlogEvents int
	pgConns       int
	timeout       time.Duration
	seedTimeout   time.Duration
	rebuildLimit  time.Duration
	backlogLimit  time.Duration
	outDir        string
	updateReadme  bool
	tableFrom     string
	ticketdBin    string
	logLevel      string
	keep          bool
	// generator makes the throughput rows' load: genWrk or genVegeta.
	generator  string
	wrkThreads int
	// baselineInProcess runs the Fiber + Redis baseline inside the bench process.
	baselineInProcess bool
	only              map[string]bool
	pprofScenarios    map[string]bool
	pprofURL          string
	pprofDir          string
}

// scenarios in the order they run; -only picks some of them.
var scenarioNames = []string{
	"get", "auth", "list", "create", "lag", "webhook", "put", "comment", "mixed", "overload", "replay", "sse", "rebuild", "verify", "backlog", "pii",
}

const usage = `Usage: ticketbench [flags]

Starts ticketd (built from ./cmd/ticketd) on a fresh database on TEST_DATABASE_DSN's
server and the Redis Cluster at TEST_REDIS_ADDRS (scripts/test-env.sh sets both), seeds
it, runs every scenario for -duration at -c connections, and prints the table. The
HTTP load comes from wrk (install it with scripts/tools.sh; make bench does), with a Lua
script per run; the CPU wrk and the server took is in the table. With -url it targets a
running ticketd instead (no rebuild, backlog, RSS or direct seeding then).

Results go to -out (bench/out, git-ignored). README.md's table changes only with
-update-readme, or -table-from bench/out/latest.json (make bench-table), which runs nothing.

Flags:
`

func parseOptions(args []string, stdout io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("ticketbench", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.StringVar(&o.url, "url", "", "target a running ticketd at this base URL instead of starting one")
	fs.StringVar(&o.token, "token", "", "with -url: the API token to send (default $TICKETD_TOKEN); a started ticketd gets a bootstrap admin token of the bench's own")
	fs.DurationVar(&o.duration, "duration", 6*time.Second, "how long each scenario runs")
	fs.IntVar(&o.conns, "c", 64, "connections (concurrent requests) per scenario")
	fs.IntVar(&o.overloadConns, "overload-c", 256, "connections of the overload scenario")
	fs.IntVar(&o.tickets, "tickets", 10000, "tickets to seed")
	fs.IntVar(&o.longTickets, "long-tickets", 0, "tickets with -long-events events each for the long-comment scenario (0: four per connection when seeding directly, 1 through the API)")
	fs.IntVar(&o.longEvents, "long-events", 1000, "events in each long ticket")
	fs.IntVar(&o.rebuildEvents, "rebuild-events", 200000, "events at least in the store when the rebuild and -verify run (topped up directly; a full run holds more, and the rows say how many)")
	fs.IntVar(&o.backlogEvents, "backlog-events", 200000, "events appended (with their outbox rows) for the projectors to work off in the backlog scenario")
	fs.IntVar(&o.pgConns, "pg-conns", 16, "PG_MAX_CONNS for ticketd and the pool size of the pgx baselines")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "per-request timeout of the load generator")
	fs.DurationVar(&o.seedTimeout, "seed-timeout", 90*time.Second, "bound on seeding")
	fs.DurationVar(&o.rebuildLimit, "rebuild-timeout", 60*time.Second, "bound on ticketd -rebuild-projections (killed after it)")
	fs.DurationVar(&o.backlogLimit, "backlog-timeout", 5*time.Minute, "bound on the projectors working off the backlog (the row fails after it)")
	fs.StringVar(&o.outDir, "out", filepath.Join("bench", "out"), "directory for results-<time>.json, latest.json and README-table.md (empty: none); git ignores bench/out")
	fs.BoolVar(&o.updateReadme, "update-readme", false, "also rewrite the benchmark table in README.md (between its bench-table markers) with this run's")
	fs.StringVar(&o.tableFrom, "table-from", "", "run nothing: rewrite README.md's benchmark table from this results file (make bench-table: bench/out/latest.json)")
	fs.StringVar(&o.ticketdBin, "ticketd-bin", "", "use this ticketd binary instead of building ./cmd/ticketd")
	fs.StringVar(&o.logLevel, "log-level", "info", "LOG_LEVEL of the started ticketd")
	fs.StringVar(&o.generator, "generator", genWrk, "load generator of the throughput rows: wrk (scripts/tools.sh installs it) or vegeta (in this process: its CPU competes with the server's; every row says so)")
	fs.IntVar(&o.wrkThreads, "wrk-threads", 2, "wrk threads (fewer when a run's connections do not divide evenly)")
	fs.BoolVar(&o.baselineInProcess, "baseline-in-process", false, "serve the Fiber + Redis baseline from the bench process instead of a process of its own")
	fs.BoolVar(&o.keep, "keep", false, "keep the bench database and Redis keys at the end")
	only := fs.String("only", "", "comma-separated scenarios to run (default all): "+strings.Join(scenarioNames, ","))
	pprof := fs.String("pprof", "", "comma-separated scenarios during which to take a CPU profile of ticketd")
	fs.StringVar(&o.pprofURL, "pprof-url", "", "base URL of ticketd's net/http/pprof (default: PPROF_ADDR given to the started ticketd)")
	fs.StringVar(&o.pprofDir, "pprof-dir", os.TempDir(), "directory for CPU profiles")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	var errs []error
	if o.duration < time.Second {
		errs = append(errs, errors.New("-duration must be at least 1s"))
	}
	if o.conns < 1 || o.overloadConns < 1 {
		errs = append(errs, errors.New("-c and -overload-c must be positive"))
	}
	if o.tickets < 100 {
		errs = append(errs, errors.New("-tickets must be at least 100"))
	}
	if o.longEvents < 2 || o.longTickets < 0 {
		errs = append(errs, errors.New("-long-events must be at least 2 and -long-tickets not negative"))
	}
	if o.backlogEvents < 1 || o.backlogLimit <= 0 {
		errs = append(errs, errors.New("-backlog-events and -backlog-timeout must be positive"))
	}
	if o.generator != genWrk && o.generator != genVegeta {
		errs = append(errs, fmt.Errorf("-generator must be %s or %s, not %q", genWrk, genVegeta, o.generator))
	}
	if o.wrkThreads < 1 || o.wrkThreads > 32 {
		errs = append(errs, errors.New("-wrk-threads must be between 1 and 32"))
	}
	if o.pgConns < 2 {
		errs = append(errs, errors.New("-pg-conns must be at least 2"))
	}
	var err error
	if o.only, err = scenarioSet("-only", *only); err != nil {
		errs = append(errs, err)
	}
	if o.pprofScenarios, err = scenarioSet("-pprof", *pprof); err != nil {
		errs = append(errs, err)
	}
	return o, errors.Join(errs...)
}

// scenarioSet parses a comma-separated list of scenario names; empty gives nil.
func scenarioSet(flagName, list string) (map[string]bool, error) {
	if list == "" {
		return nil, nil
	}
	set := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if !slices.Contains(scenarioNames, n) {
			return nil, fmt.Errorf("%s: unknown scenario %q (known: %s)", flagName, n, strings.Join(scenarioNames, ","))
		}
		set[n] = true
	}
	return set, nil
}

// runs reports whether scenario name is selected.
func (o options) runs(name string) bool { return o.only == nil || o.only[name] }

// run parses the flags, runs the benchmark and writes the report.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if addr := getenv(envServe); addr != "" {
		return serveBaseline(ctx, addr, getenv)
	}
	o, err := parseOptions(args, stdout)
	if err != nil {
		return err
	}
	if o.tableFrom != "" {
		return tableFromResults(o.tableFrom, stdout)
	}
	wrk := ""
	if o.generator == genWrk {
		// Before anything is built or seeded.
		if wrk, err = lookWrk(); err != nil {
			return err
		}
	}
	started := time.Now()
	b, err := newBench(ctx, o, getenv, stdout)
	if err != nil {
		return err
	}
	defer b.close()
	b.wrkPath = wrk
	if err := b.runAll(ctx); err != nil {
		return err
	}
	b.report.TotalSeconds = time.Since(started).Seconds()
	b.report.Machine.LoadEnd = loadAvg()
	return b.writeReport(stdout)
}
