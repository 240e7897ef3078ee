package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// runPII measures what encrypting personal data and hashing the event chain cost a
// create. The same POST load goes to two ticketd started for this row on the bench's
// database and Redis, each loaded alone while the other idles:
//   - the baseline: TICKETD_BENCH_NO_ENCRYPTION=1 (a hidden switch of ticketd for this
//     row only: personal fields stored in clear, no keys read) and the chain's
//     trigger disabled for its runs (ALTER TABLE events DISABLE TRIGGER events_chain),
//     that is ticketd as it was before issue 16;
//   - ticketd as it runs: fields sealed under the requester's key (checked FOR SHARE
//     in the append's statement), the chain's trigger hashing every event.
//
// The runs go off, on, on, off, off, on; each row is the median of its three. The
// baseline's events have no hash (the trigger was off), so this row runs last: the
// verify row, which checks the bench database's chain, must not follow it.
func (b *bench) runPII(ctx context.Context) error {
	const key = "pii"
	if !b.ownServer {
		b.add(Row{Key: key, Scenario: "POST /v1/ticket/ with encryption and hashing", Unit: "req/s", Target: "≥0.9 of without", NA: true,
			Note: "n/a (-url: the bench cannot start a ticketd without encryption)"})
		return nil
	}
	procs := map[string]map[string]string{
		"plain":     {"TICKETD_BENCH_NO_ENCRYPTION": "1"},
		"encrypted": {},
	}
	sib := map[string]*siblingProc{}
	defer func() {
		for _, p := range sib {
			p.stop()
		}
	}()
	for name, env := range procs {
		p, err := b.sibling(ctx, name, env)
		if err != nil {
			return err
		}
		sib[name] = p
		if err := b.warm(ctx, p.base); err != nil {
			return fmt.Errorf("warm the %s ticketd: %w", name, err)
		}
	}
	chain := func(on bool) error {
		verb := "DISABLE"
		if on {
			verb = "ENABLE"
		}
		_, err := b.pool.Exec(ctx, `ALTER TABLE events `+verb+` TRIGGER events_chain`)
		return err
	}
	defer chain(true) //nolint:errcheck // best effort: the database is the bench's own
	runs := map[string][]measured{}
	for i, name := range []string{"plain", "encrypted", "encrypted", "plain", "plain", "encrypted"} {
		if err := chain(name == "encrypted"); err != nil {
			return fmt.Errorf("toggle the chain trigger: %w", err)
		}
		p := sib[name]
		m, err := b.load(ctx, loadSpec{name: name + "-" + strconv.Itoa(i+1), kind: kindCreate, base: p.base, conns: b.o.conns, serverPID: p.pid()})
		if err != nil {
			return err
		}
		runs[name] = append(runs[name], m)
		b.settle(ctx, key)
	}
	median := func(name, scenario string) Row {
		ms := slices.Clone(runs[name])
		slices.SortFunc(ms, func(a, b measured) int { return cmp.Compare(a.throughput, b.throughput) })
		r := ms[len(ms)/2].row(name, scenario, b.o.conns)
		each := make([]string, len(runs[name]))
		for i, m := range runs[name] {
			each[i] = fmt.Sprintf("%.0f", m.throughput)
		}
		r.Note = fmt.Sprintf("the median of %d runs (%s req/s, in order)", len(ms), strings.Join(each, ", "))
		return r
	}
	base := median("plain", "baseline: the same POST without encryption and hashing")
	base.Note = "a fresh ticketd with TICKETD_BENCH_NO_ENCRYPTION=1, the chain trigger disabled; " + base.Note
	b.add(base)
	r := median("encrypted", "POST /v1/ticket/ with encryption and hashing")
	r.Key = key
	r.vs(base, "≥0.9 of without")
	r.judge(r.Ratio >= 0.9)
	r.Note = "one requester (the bench's create body): the key cached, checked FOR SHARE per append; " + r.Note
	b.add(r)
	return nil
}
