package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/term"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/ticket"
)

// The audit tasks and jobs of issue 16, item 1: `ticketd -verify [ticket-id]` and the
// anchors a serving instance writes (see eventstore/verify.go and anchor.go).

func addVerifyFlag(fs *flag.FlagSet) *bool {
	return fs.Bool(taskVerify, false, "check the hash chain of every ticket, or of the one whose id follows (ticketd -verify [id]), "+
		"and the latest audit anchor; exit 0 if intact, 1 naming the first broken version of each broken ticket (reads only)")
}

// verifyArgs takes the arguments after -verify: at most one, a ticket id.
func (o *options) verifyArgs(args []string) error {
	if len(args) > 1 {
		return usagef("unexpected arguments %q: -verify takes at most one ticket id", args[1:])
	}
	if _, err := uuid.Parse(args[0]); err != nil || len(args[0]) != 36 {
		return usagef("-verify: %q is not a ticket id (a UUID like 01936f1e-7c4a-7000-8000-000000000000)", args[0])
	}
	o.verifyID = args[0]
	return nil
}

// brokenChain is -verify's failure: the chain does not hold. main prints it on stderr
// and exits 1.
type brokenChain struct {
	first  eventstore.Break
	broken int64
}

func (e brokenChain) Error() string {
	if e.broken == 1 {
		return "the hash chain is broken: " + e.first.String()
	}
	return fmt.Sprintf("the hash chain is broken in %d places; the first: %s", e.broken, e.first)
}

// verifyChains runs `ticketd -verify [id]`: it checks the chain of every stream (or
// of id) and the anchors through eventstore.Verify, showing a progress bar on a
// terminal, then prints each break and one summary line. It only reads: no
// migrations, a pool of two connections. A broken chain is a brokenChain error.
func verifyChains(ctx context.Context, cfg Config, id string, stdout io.Writer) error {
	var opts eventstore.VerifyOptions
	if id != "" {
		opts.Stream = uuid.MustParse(id)
	}
	pool, err := db.Open(ctx, cfg.DatabaseDSN, db.PoolConfig{MaxConns: 2})
	if err != nil {
		return err
	}
	defer pool.Close()
	// The chain covers the events as stored (personal data sealed): verifying needs no
	// DATA_KEY, so an auditor can check a database without being able to read it.
	store := eventstore.New(pool, nil)
	var bar *progressBar
	if f, ok := stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar = newProgressBar(stdout)
		bar.bar.Describe("verify")
		opts.Progress = bar.set
	}
	v, err := store.Verify(ctx, opts)
	if bar != nil {
		bar.finish(err)
	}
	switch {
	case errors.Is(err, ticket.ErrNotFound):
		return fmt.Errorf("-verify: no ticket %s: it has no events in this database", id)
	case err != nil:
		return fmt.Errorf("-verify: %w (is the database migrated? ticketd -migrate)", err)
	}
	for _, b := range v.Breaks {
		fmt.Fprintln(stdout, "BROKEN", b)
	}
	if v.Broken > int64(len(v.Breaks)) {
		fmt.Fprintf(stdout, "BROKEN … and %d more\n", v.Broken-int64(len(v.Breaks)))
	}
	state := "intact"
	if !v.Intact() {
		state = fmt.Sprintf("BROKEN (%d)", v.Broken)
	}
	anchor := "no anchor yet (a truncated tail cannot be told)"
	if a := v.Anchor; a != nil {
		anchor = fmt.Sprintf("latest anchor %d of %s root %s (%d streams, %d events), %d anchored heads checked",
			a.ID, a.CreatedAt.Format(time.RFC3339), hex.EncodeToString(a.Root), a.Streams, a.Events, v.AnchoredHeads)
	}
	fmt.Fprintf(stdout, "verify: %s: %d events in %d tickets checked in %s (%.0f events/s); %s\n", state, v.Events, v.Streams,
		v.Took.Round(time.Millisecond), float64(v.Events)/max(v.Took.Seconds(), 1e-9), anchor)
	if !v.Intact() {
		return brokenChain{first: v.Breaks[0], broken: v.Broken}
	}
	return nil
}

// runAnchors starts the anchorer (AUDIT_ANCHOR_INTERVAL; 0: none) until ctx ends; the
// channel closes when it has stopped.
func runAnchors(ctx context.Context, cfg Config, pool *pgxpool.Pool, log *slog.Logger) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&eventstore.Anchorer{Pool: pool, Interval: cfg.AuditAnchorInterval, Log: log}).Run(ctx)
	}()
	return done
}
