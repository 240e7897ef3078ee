package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"time"
)

// The SSE scenario: 1,000 idle live event streams (GET /v1/ticket/{id}/events, over
// seeded tickets, each on a connection of its own) against the bench's ticketd. Its
// RSS is read before they open and once they have all sent their first line and
// idled a second: the difference over the streams is the memory one idle stream
// costs. The hot GET runs without and then with the streams open.

// sseStreams is how many streams the scenario opens.
const sseStreams = 1000

// sseTargetKB is the target memory of one idle stream.
const sseTargetKB = 64

func (b *bench) runSSE(ctx context.Context) error {
	const key, scenario = "sse-memory", "memory of 1,000 idle SSE streams (RSS per stream)"
	if b.proc == nil {
		b.add(Row{Key: key, Scenario: scenario, Unit: "KB", Target: fmt.Sprintf("<%d KB per stream", sseTargetKB), NA: true,
			Note: "n/a (-url: not our process)"})
		return nil
	}
	without, err := b.load(ctx, b.spec("get-without-streams", kindGet, b.o.conns, b.ids))
	if err != nil {
		return err
	}
	runtime.GC()
	time.Sleep(time.Second)
	before, err := procStatusKB(b.proc.pid(), "VmRSS")
	if err != nil {
		return err
	}
	client := &http.Client{Transport: bearer{token: b.token, next: &http.Transport{DisableKeepAlives: true, MaxConnsPerHost: 0}}}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t0 := time.Now()
	opened := 0
	var failure string
	for i := range sseStreams {
		url := b.ticketURL(b.ids[i%len(b.ids)]) + "/events"
		req, err := http.NewRequestWithContext(sctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			failure = err.Error()
			break
		}
		if resp.StatusCode != http.StatusOK {
			failure = fmt.Sprintf("stream %d: status %d", i, resp.StatusCode)
			resp.Body.Close()
			break
		}
		// the replay (one event) and the opening comment
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				failure = err.Error()
				break
			}
			if strings.HasPrefix(line, ": stream of ticket") {
				break
			}
		}
		if failure != "" {
			break
		}
		defer resp.Body.Close()
		opened++
	}
	openedIn := time.Since(t0)
	time.Sleep(2 * time.Second)
	after, err := procStatusKB(b.proc.pid(), "VmRSS")
	if err != nil {
		return err
	}
	with, err := b.load(ctx, b.spec("get-with-streams", kindGet, b.o.conns, b.ids))
	if err != nil {
		return err
	}
	perStream := 0.0
	if opened > 0 {
		perStream = float64(after-before) / float64(opened)
	}
	r := Row{Key: key, Scenario: scenario, Unit: "KB", Value: perStream, Requests: uint64(opened),
		Target: fmt.Sprintf("<%d KB per stream", sseTargetKB)}
	r.judge(opened == sseStreams && perStream < sseTargetKB)
	r.Note = fmt.Sprintf("%d streams opened in %.1fs; ticketd RSS %.1f MB before, %.1f MB with them open and idle",
		opened, openedIn.Seconds(), float64(before)/1024, float64(after)/1024)
	if failure != "" {
		r.Errors = 1
		r.Note += "; stopped at: " + failure
	}
	b.add(r)
	// the streams close (the client leaves; ticketd notices at their next heartbeat,
	// or at once when its write fails), then the GET runs again without them: the
	// baseline is the better of the two runs around the one with streams, so a
	// machine that got busier or quieter meanwhile favours neither side
	cancel()
	client.CloseIdleConnections()
	time.Sleep(time.Second)
	again, err := b.load(ctx, b.spec("get-without-streams-again", kindGet, b.o.conns, b.ids))
	if err != nil {
		return err
	}
	base := without.row("sse-get-without", "the same GET without streams (the better of a run before and one after)", b.o.conns)
	if again.throughput > without.throughput {
		base = again.row("sse-get-without", base.Scenario, b.o.conns)
	}
	base.Note = fmt.Sprintf("%.0f req/s before the streams opened, %.0f after they closed", without.throughput, again.throughput)
	b.add(base)
	g := with.row("sse-get", fmt.Sprintf("GET /v1/ticket/{id} (hot) with %d idle streams open", opened), b.o.conns)
	g.vs(base, "≥0.9 of without")
	g.judge(g.Ratio >= 0.9)
	b.add(g)
	return nil
}
