package main

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// runAuth measures what authentication costs the hot GET. The same GET (same
// generator, ids, connections and Authorization header) goes to three ticketd started
// for this row on the same database and Redis, each loaded alone while the others idle,
// so that nothing but their settings differs (the bench's own ticketd has seeded and
// served every earlier row):
//   - one with AUTH=off, the baseline;
//   - one that verifies the token (cached in process for a second) with rate limits
//     off, as the bench's own ticketd runs every other row;
//   - one that also keeps the principal's rate limit in the Redis Cluster, at a limit
//     the load never reaches, so every request goes through the limiter.
//
// The runs go off, token, limited, token, off, off, token, and the off and token rows
// are the medians of their three runs: on a shared two-core machine one 6-second run
// can be 20% off, and a drift favours neither side.
func (b *bench) runAuth(ctx context.Context) error {
	const key = "auth"
	if !b.ownServer {
		b.add(Row{Key: key, Scenario: "GET /v1/ticket/{id} with a token", Unit: "req/s", Target: "≥0.95 of AUTH=off", NA: true,
			Note: "n/a (-url: the bench cannot start a ticketd with AUTH=off)"})
		return nil
	}
	procs := map[string]map[string]string{
		"auth-off":     {"AUTH": "off", "AUTH_BOOTSTRAP_TOKEN": ""},
		"auth":         {},
		"auth-limited": {"RATE_LIMIT_ADMIN": "1000000/s,burst=1000000"},
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
	runs := map[string][]measured{}
	order := []string{"auth-off", "auth", "auth-limited", "auth", "auth-off", "auth-off", "auth"}
	for i, name := range order {
		m, err := b.load(ctx, sib[name].spec(name+"-"+strconv.Itoa(i+1), b))
		if err != nil {
			return err
		}
		runs[name] = append(runs[name], m)
	}
	// median: the row of the median run by throughput, with every run's count in the note
	median := func(name, scenario string) Row {
		ms := slices.Clone(runs[name])
		slices.SortFunc(ms, func(a, b measured) int { return cmp.Compare(a.throughput, b.throughput) })
		r := ms[len(ms)/2].row(name, scenario, b.o.conns)
		if len(ms) > 1 {
			each := make([]string, len(runs[name]))
			for i, m := range runs[name] {
				each[i] = fmt.Sprintf("%.0f", m.throughput)
			}
			r.Note = fmt.Sprintf("the median of %d runs (%s req/s, in order)", len(ms), strings.Join(each, ", "))
		}
		return r
	}
	base := median("auth-off", "baseline: the same GET, AUTH=off")
	base.Note = "a fresh ticketd on the same database and Redis; " + base.Note
	b.add(base)
	r := median(key, "GET /v1/ticket/{id} with a token (rate limits off)")
	r.vs(base, "≥0.95 of AUTH=off")
	r.judge(r.Ratio >= 0.95)
	r.Note = "the token verified once a second per instance, as in every other row; " + r.Note
	b.add(r)
	l := median("auth-limited", "GET /v1/ticket/{id} with a token and its rate limit")
	l.vs(base, "informational")
	l.Note = "GCRA in the Redis Cluster (go-redis/redis_rate); the principal's concurrent requests share script calls"
	b.add(l)
	return nil
}

// siblingProc is another ticketd the bench starts on its database and Redis prefix.
type siblingProc struct {
	*ticketdProc
	base string
}

// sibling starts a ticketd like the bench's own, with env overriding its environment
// (an empty value removes a variable), on a free port, without profiling.
func (b *bench) sibling(ctx context.Context, name string, env map[string]string) (*siblingProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	vars := maps.Clone(b.env)
	delete(vars, "PPROF_ADDR")
	vars["HTTP_ADDR"] = "127.0.0.1:" + strconv.Itoa(port)
	for k, v := range env {
		if v == "" {
			delete(vars, k)
		} else {
			vars[k] = v
		}
	}
	base := "http://" + vars["HTTP_ADDR"]
	p, err := startTicketd(ctx, b.bin, ticketdEnv(vars), base, filepath.Join(b.tmp, "ticketd-"+name+".log"))
	if err != nil {
		return nil, fmt.Errorf("start the %s ticketd: %w", name, err)
	}
	return &siblingProc{ticketdProc: p, base: base}, nil
}

// spec is a hot-GET run against the sibling.
func (s *siblingProc) spec(name string, b *bench) loadSpec {
	return loadSpec{name: name, kind: kindGet, base: s.base, conns: b.o.conns, ids: b.ids, serverPID: s.pid()}
}

// warm sends a fresh ticketd a second of hot GETs from 16 clients, so that its pools
// hold their connections and its runtime has settled before it is measured.
func (b *bench) warm(ctx context.Context, base string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	for w := range 16 {
		g.Go(func() error {
			for i := w; gctx.Err() == nil; i += 16 {
				code, _, err := b.get(gctx, ticketURL(base, b.ids[i%len(b.ids)]))
				if err != nil && gctx.Err() == nil {
					return err
				}
				if err == nil && code != http.StatusOK {
					return fmt.Errorf("GET answered %d", code)
				}
			}
			return nil
		})
	}
	return g.Wait()
}
