package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// runPII measures what encrypting personal data and hashing the event chain cost a
// create. The same POST load goes to two ticketd started for this row on the bench's
// database and Redis, each loaded alone while the other idles:
//   - the baseline: TICKETD_BENCH_NO_ENCRYPTION=1 (a hidden switch of ticketd for this
//     row only: personal fields stored in clear, no keys read) and the chain's
//     trigger disabled for its runs (a stand-in trigger stores 32 zero bytes as the
//     hash, which the column requires), that is ticketd as it was before issue 16;
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
	// Without the chain, an event still needs a hash (the column is NOT NULL): a
	// stand-in trigger stores 32 zero bytes, the least an insert can do.
	if _, err := b.pool.Exec(ctx, `CREATE OR REPLACE FUNCTION bench_no_chain() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN NEW.hash := decode(repeat('00', 32), 'hex'); RETURN NEW; END $$;
		DROP TRIGGER IF EXISTS bench_no_chain ON events;
		CREATE TRIGGER bench_no_chain BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION bench_no_chain();
		ALTER TABLE events DISABLE TRIGGER bench_no_chain`); err != nil {
		return fmt.Errorf("the stand-in trigger: %w", err)
	}
	chain := func(on bool) error {
		sql := `ALTER TABLE events DISABLE TRIGGER events_chain, ENABLE TRIGGER bench_no_chain`
		if on {
			sql = `ALTER TABLE events ENABLE TRIGGER events_chain, DISABLE TRIGGER bench_no_chain`
		}
		_, err := b.pool.Exec(ctx, sql)
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
		time.Sleep(2 * time.Second) // the projectors of the run drain before the next one
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
	base.Note = "a fresh ticketd with TICKETD_BENCH_NO_ENCRYPTION=1, the chain trigger replaced by one storing a zero hash; " + base.Note
	b.add(base)
	r := median("encrypted", "POST /v1/ticket/ with encryption and hashing")
	r.Key = key
	r.vs(base, "≥0.9 of without")
	r.judge(r.Ratio >= 0.9)
	r.Note = "one requester (the bench's create body): the key cached, checked FOR SHARE per append; " + r.Note
	b.add(r)
	return nil
}
