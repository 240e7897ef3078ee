package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/projections"
	"github.com/ticketd/ticketd/projections/pgmodel"
	"github.com/ticketd/ticketd/projections/redismodel"
)

// rebuildProjections runs `ticketd -rebuild-projections`: it replays the event store
// into fresh read models (the Postgres read model and the Redis documents under
// REDIS_PREFIX) and moves the projectors' consumer groups to the replayed point, while
// other instances keep serving (see projections.Rebuild). On a terminal it shows a
// progress bar (events done and total, rate, time left); otherwise it prints one
// summary line when done.
// rebuildMemoryLimit is the rebuild's soft memory limit when GOMEMLIMIT is unset (or the
// container's share, when lower; see setMemoryLimit): some three times its live heap.
const rebuildMemoryLimit = 128 << 20

func rebuildProjections(ctx context.Context, cfg Config, pool *pgxpool.Pool, log *slog.Logger, stdout io.Writer) error {
	// The rebuild allocates a decoded event, a view and a document per ticket and drops
	// them at once; collecting less often saves a tenth to a quarter of its CPU. Its
	// live heap is a few batches (30-40 MB for 200,000 events), so GOGC=400 alone let
	// RSS reach 227 MB; a soft memory limit caps that: the collector runs rarely until
	// the process nears rebuildMemoryLimit, then as often as it must. GOGC and
	// GOMEMLIMIT in the environment win.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(min(rebuildMemoryLimit, debug.SetMemoryLimit(-1)))
	}
	// A rebuild writes documents in bulk; it may wait longer for Redis than a request.
	timeout := max(cfg.RedisTimeout, 2*time.Second)
	rdb, isCluster, err := connectRedis(ctx, cfg.RedisAddresses(), timeout, 0)
	defer rdb.Close()
	if err != nil {
		return fmt.Errorf("rebuild: redis %v does not answer: %w", cfg.RedisAddresses(), err)
	}
	docs := redismodel.NewDocs(rdb, cfg.RedisPrefix, timeout)
	ring, err := openKeyring(ctx, cfg, pool)
	if err != nil {
		return err
	}
	store := eventstore.New(pool, ring)
	log.Info("rebuilding projections", "redis_addrs", cfg.RedisAddresses(), "cluster", isCluster, "redis_prefix", cfg.RedisPrefix)

	opt := projections.RebuildOptions{Log: log, Store: store, Targets: []projections.Target{
		pgmodel.Target{Pool: pool, Events: store},
		&redismodel.Target{Docs: docs, Events: store},
	}}
	var bar *progressBar
	if f, ok := stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar = newProgressBar(stdout)
		opt.Progress = bar.set
	}
	res, err := projections.Rebuild(ctx, pool, opt)
	if bar != nil {
		bar.finish(err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "rebuilt read models: %d events, %d tickets in %s (%.0f events/s); projectors resume after outbox position %s/%d\n",
		res.Events, res.Tickets, res.Duration.Round(time.Millisecond), float64(res.Events)/max(res.Duration.Seconds(), 1e-9),
		res.Position.TransactionID, res.Position.Offset)
	return nil
}

// progressBar shows a rebuild's progress: events done of the total known so far (it
// grows when the rebuild catches up with new events), the rate and the time left.
type progressBar struct {
	mu  sync.Mutex
	bar *progressbar.ProgressBar
	max int64
}

func newProgressBar(w io.Writer) *progressBar {
	return &progressBar{bar: progressbar.NewOptions64(1,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("rebuild"),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("events"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionFullWidth(),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
	), max: 1}
}

// set is the rebuild's Progress callback; the rebuild may call it from several
// goroutines.
func (p *progressBar) set(done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if total != p.max && total > 0 {
		p.max = total
		p.bar.ChangeMax64(total)
	}
	// The bar completes only in finish: the total may still grow.
	_ = p.bar.Set64(min(done, p.max-1))
}

// finish fills the bar when the rebuild succeeded and leaves it as it stands if not.
func (p *progressBar) finish(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		_ = p.bar.Exit()
		return
	}
	_ = p.bar.Set64(p.max)
}
