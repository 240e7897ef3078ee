package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// rebuildStream is the length of the streams appended to top the store up.
const rebuildStream = 100

// runRebuild tops the event store up to -rebuild-events, reads it all with a bare pgx
// loop (the baseline), then times `ticketd -rebuild-projections` on it. ticketd is
// stopped by then. Without the flag (not built yet) the row says so, and the baseline
// is still measured.
func (b *bench) runRebuild(ctx context.Context) error {
	r := Row{Key: "rebuild", Scenario: fmt.Sprintf("rebuild projections (%dk events)", b.o.rebuildEvents/1000), Unit: "events/s",
		Target: "≥50000 ev/s and ≥0.3 of baseline"}
	if !b.ownServer {
		r.NA, r.Note = true, "n/a (-url: no access to the database)"
		b.add(r)
		return nil
	}

	if _, err := b.topUpEvents(ctx); err != nil {
		return err
	}
	var events int64
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&events); err != nil {
		return err
	}
	// The store holds at least -rebuild-events: in a full run, the earlier scenarios'
	// events too (long streams of comments, many one-event tickets). The row says how
	// many the rebuild and its baseline read.
	r.Scenario = fmt.Sprintf("rebuild projections (%dk events)", (events+500)/1000)
	if _, err := b.pool.Exec(ctx, `VACUUM ANALYZE events`); err != nil {
		b.logf("vacuum events: %v", err)
	}

	base, err := b.pgxReadBaseline(ctx)
	if err != nil {
		return err
	}
	b.add(base)
	if !hasFlag(ctx, b.bin, "rebuild-projections") {
		r.NA, r.Note = true, "n/a (flag missing: ticketd has no -rebuild-projections yet)"
		b.add(r)
		return nil
	}

	out, wall, maxRSS, cpu, err := b.rebuild(ctx)
	if err != nil {
		r.Errors = 1
		r.Note = err.Error()
		r.judge(false)
		b.add(r)
		return nil
	}
	wallRate := float64(events) / wall.Seconds()
	r.Requests = uint64(events)
	if rate, ok := parseRebuildRate(out); ok {
		r.Value = rate
		r.Note = fmt.Sprintf("rate from ticketd's summary line; wall %.2fs for %d events = %.0f ev/s incl. start-up", wall.Seconds(), events, wallRate)
	} else {
		r.Value = wallRate
		r.Note = fmt.Sprintf("no rate in ticketd's output: %d events / wall %.2fs incl. start-up", events, wall.Seconds())
	}
	r.Note += fmt.Sprintf("; peak RSS of the rebuild %.0f MB; ticketd CPU %.2fs (user+system)", float64(maxRSS)/1024, cpu.Seconds())
	r.vs(base, r.Target)
	r.judge(r.Value >= 50000 && r.Ratio >= 0.3)
	b.add(r)
	b.report.RebuildRSSMB = float64(maxRSS) / 1024
	b.report.RebuildCPUSeconds = cpu.Seconds()
	// The rebuild is a ticketd process too: its peak counts in the peak RSS row.
	b.rssPeaks = append(b.rssPeaks, rssPeak{what: "ticketd -rebuild-projections", kb: maxRSS})
	return nil
}

// rebuild runs `ticketd -rebuild-projections` and returns its output, wall time, peak
// RSS in kB and the CPU time it took (user and system).
func (b *bench) rebuild(ctx context.Context) (string, time.Duration, int64, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, b.o.rebuildLimit)
	defer cancel()
	cmd, out := b.task(ctx, "-rebuild-projections")
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return "", 0, 0, 0, fmt.Errorf("start ticketd -rebuild-projections: %w", err)
	}
	stopProfile := b.maybeProfile(ctx, "rebuild", 11*time.Second)
	err := cmd.Wait()
	wall := time.Since(t0)
	stopProfile()
	logPath := filepath.Join(b.tmp, "rebuild.log")
	_ = os.WriteFile(logPath, out.Bytes(), 0o644)
	var maxRSS int64
	var cpu time.Duration
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			maxRSS = ru.Maxrss
		}
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if ctx.Err() != nil {
		return out.String(), wall, maxRSS, cpu, fmt.Errorf("ticketd -rebuild-projections did not finish within -rebuild-timeout %v (so < %.0f events/s); last lines: %s",
			b.o.rebuildLimit, float64(b.o.rebuildEvents)/b.o.rebuildLimit.Seconds(), lastLines(out.String(), 2))
	}
	if err != nil {
		return out.String(), wall, maxRSS, cpu, fmt.Errorf("ticketd -rebuild-projections: %v; last lines: %s", err, lastLines(out.String(), 3))
	}
	b.logf("rebuild finished in %.2fs: %s", wall.Seconds(), lastLines(out.String(), 1))
	return out.String(), wall, maxRSS, cpu, nil
}

var (
	rateText = regexp.MustCompile(`([0-9][0-9,_]*(?:\.[0-9]+)?)\s*(?:events|ev)/s`)
	rateJSON = regexp.MustCompile(`"(?:events_per_s(?:ec(?:ond)?)?|rate|events_per_sec)"\s*:\s*([0-9]+(?:\.[0-9]+)?)`)
)

// parseRebuildRate finds the events/s of the rebuild's summary: the last line that
// states one, either as text ("123456 events/s") or as a JSON log field
// (events_per_second, events_per_sec or rate).
func parseRebuildRate(out string) (float64, bool) {
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		for _, re := range []*regexp.Regexp{rateJSON, rateText} {
			if m := re.FindStringSubmatch(lines[i]); m != nil {
				v, err := strconv.ParseFloat(strings.NewReplacer(",", "", "_", "").Replace(m[1]), 64)
				if err == nil && v > 0 {
					return v, true
				}
			}
		}
	}
	return 0, false
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// topUpEvents copies streams of rebuildStream events into the store until it holds
// -rebuild-events (the rebuild and verify rows read the same store), and returns how
// many it holds then.
func (b *bench) topUpEvents(ctx context.Context) (int64, error) {
	var have int64
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&have); err != nil {
		return 0, err
	}
	need := int64(b.o.rebuildEvents) - have
	if need <= 0 {
		return have, nil
	}
	t0 := time.Now()
	streams := int((need + rebuildStream - 1) / rebuildStream)
	if _, err := b.copyStreams(ctx, streams, rebuildStream); err != nil {
		return 0, fmt.Errorf("top up the event store: %w", err)
	}
	b.logf("copied %d streams of %d events in %.1fs", streams, rebuildStream, time.Since(t0).Seconds())
	if _, err := b.pool.Exec(ctx, `VACUUM ANALYZE events`); err != nil {
		b.logf("vacuum events: %v", err)
	}
	return have + int64(streams*rebuildStream), nil
}

// task returns ticketd run with args in the bench's environment, its output (stdout
// and stderr) collected in the buffer; ctx's end stops it with SIGTERM.
func (b *bench) task(ctx context.Context, args ...string) (*exec.Cmd, *bytes.Buffer) {
	cmd := exec.CommandContext(ctx, b.bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Env = ticketdEnv(b.env)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	return cmd, out
}
