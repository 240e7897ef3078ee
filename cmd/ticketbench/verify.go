package main

import (
	"context"
	"fmt"
	"time"
)

// runVerify times `ticketd -verify` over the whole event store, topped up to
// -rebuild-events first (200,000 by default; the rebuild, which runs before, has
// usually done it), against the target of 100,000 events/s. ticketd is stopped
// by then; the verifier only reads.
func (b *bench) runVerify(ctx context.Context) error {
	r := Row{Key: "verify", Scenario: fmt.Sprintf("ticketd -verify: the hash chain (%dk events)", b.o.rebuildEvents/1000),
		Unit: "events/s", Target: "≥100000 ev/s"}
	if !b.ownServer {
		r.NA, r.Note = true, "n/a (-url: no access to the database)"
		b.add(r)
		return nil
	}
	events, err := b.topUpEvents(ctx)
	if err != nil {
		return err
	}
	r.Scenario = fmt.Sprintf("ticketd -verify: the hash chain (%dk events)", (events+500)/1000)
	if !hasFlag(ctx, b.bin, "verify") {
		r.NA, r.Note = true, "n/a (flag missing: ticketd has no -verify yet)"
		b.add(r)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.o.rebuildLimit)
	defer cancel()
	cmd, out := b.task(ctx, "-verify")
	t0 := time.Now()
	err = cmd.Run()
	wall := time.Since(t0)
	if err != nil {
		r.Errors = 1
		r.Note = fmt.Sprintf("ticketd -verify: %v; last lines: %s", err, lastLines(out.String(), 3))
		r.judge(false)
		b.add(r)
		return nil
	}
	rate, ok := parseRebuildRate(out.String())
	if !ok {
		rate = float64(b.o.rebuildEvents) / wall.Seconds()
	}
	r.Value = rate
	r.Note = fmt.Sprintf("rate from ticketd's summary line; wall %.2fs incl. start-up: %s", wall.Seconds(), lastLines(out.String(), 1))
	r.judge(rate >= 100000)
	b.add(r)
	return nil
}
