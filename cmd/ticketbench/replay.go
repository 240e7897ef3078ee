package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ticketd/ticketd/ticket"
)

// The replay scenario (issue 12): a client's hot GET rate while 4 other clients replay
// past versions of a worst-case stream (?version=N, a different N each time so the
// cache of replayed versions never answers), against its rate alone in the same run.
const (
	replayers = 4
	// worstReplayEvents status changes by 200-character (400-byte) names: every event's
	// data is read and folded by a replay (comment bodies past those a document embeds
	// are not), ~15 MB of event data.
	worstReplayEvents = 30_000
)

// worstReplayStream returns the events of a ticket opened and then moved between
// answered and wait_answer n times.
func worstReplayStream(id uuid.UUID, n int, start time.Time) ([]ticket.Event, error) {
	t := ticket.New(id)
	at := func(i int) time.Time { return start.Add(time.Duration(i) * time.Microsecond) }
	if err := t.Open(ticket.OpenTicket{
		Title: "A ticket moved back and forth", Description: "Seeded by ticketbench.",
		Email: "replay@example.com", CreatedBy: "bench-seed",
	}, at(0)); err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 1; i <= n; i++ {
		to := "answered"
		if t.Status() == ticket.StatusAnswered {
			to = "wait_answer"
		}
		var name strings.Builder
		for range 200 {
			name.WriteRune(rune('а' + r.IntN(32)))
		}
		if err := t.ChangeStatus(ticket.ChangeStatus{Status: to, UpdatedBy: name.String()}, at(i)); err != nil {
			return nil, err
		}
	}
	return t.Pending(), nil
}

func (b *bench) runReplay(ctx context.Context) error {
	const key, scenario = "replay", "GET /v1/ticket/{id} under 4 clients replaying ?version=N"
	if !b.ownServer {
		b.add(Row{Key: key, Scenario: scenario, Unit: "req/s", Target: "≥0.5 of GET alone", NA: true,
			Note: "n/a (-url: no access to ticketd's database to seed the stream)"})
		return nil
	}
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	events, err := worstReplayStream(id, worstReplayEvents, time.Now().UTC().Truncate(time.Microsecond))
	if err != nil {
		return err
	}
	rows := make([][]any, 0, len(events))
	for _, e := range events {
		row, err := eventCopyRow(e, "ticketbench-seed")
		if err != nil {
			return err
		}
		rows = append(rows, row)
	}
	if _, err := b.pool.CopyFrom(ctx, pgx.Identifier{"events"}, eventColumns, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("copy the replayed stream: %w", err)
	}

	alone, err := b.load(ctx, b.spec("replay-alone", kindGet, b.o.conns, b.ids))
	if err != nil {
		return err
	}
	base := alone.row("baseline-replay", "GET /v1/ticket/{id} alone (same run)", b.o.conns)
	b.add(base)

	rctx, cancel := context.WithCancel(ctx)
	var served, refused, failed atomic.Int64
	var wg sync.WaitGroup
	for i := range replayers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 3))
			for rctx.Err() == nil {
				v := 2 + r.IntN(worstReplayEvents)
				req, err := http.NewRequestWithContext(rctx, http.MethodGet, b.ticketURL(id)+"?version="+strconv.Itoa(v), nil)
				if err != nil {
					return
				}
				code, _, err := b.do(req)
				switch {
				case err != nil:
					if rctx.Err() == nil {
						failed.Add(1)
					}
				case code == http.StatusOK:
					served.Add(1)
				case code == http.StatusTooManyRequests:
					refused.Add(1)
					select { // a well-behaved client waits as told (Retry-After: 1)
					case <-time.After(time.Second):
					case <-rctx.Done():
					}
				default:
					failed.Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // the replays under way
	t0 := time.Now()
	under, err := b.load(ctx, b.spec("replay", kindGet, b.o.conns, b.ids))
	elapsed := time.Since(t0)
	cancel()
	wg.Wait()
	if err != nil {
		return err
	}
	r := under.row(key, scenario, b.o.conns)
	r.vs(base, "≥0.5 of GET alone")
	r.judge(r.Ratio >= 0.5 && failed.Load() == 0)
	r.Note = fmt.Sprintf("a %d-event stream (status changes, ~15 MB of data; ticketd keeps replayed states every 1,000 events, so only its first replays fold all of it); %d replays served (%.1f/s), %d refused 429 and retried after Retry-After, %d failed",
		worstReplayEvents+1, served.Load(), float64(served.Load())/elapsed.Seconds(), refused.Load(), failed.Load())
	b.add(r)
	return nil
}
