package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// maybeProfile takes a CPU profile of ticketd during the load run named name when
// -pprof selects its scenario (-pprof comment covers comment-fresh and comment-long). ticketd must serve net/http/pprof at -pprof-url, or
// at PPROF_ADDR, which the bench sets for a ticketd it starts; a ticketd that does not
// serve it yields a note instead of a profile. The returned func waits for the profile.
func (b *bench) maybeProfile(ctx context.Context, name string, d time.Duration) func() {
	scenario, _, _ := strings.Cut(name, "-") // comment-long is part of comment
	if b.pprofURL == "" || !b.o.pprofScenarios[scenario] || strings.HasPrefix(name, "baseline-") {
		return func() {}
	}
	secs := max(1, int(d.Seconds())-1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var path string
		var err error
		// A process that is just starting (the rebuild) may not listen yet: retry briefly.
		for try := 0; try < 20; try++ {
			path, err = fetchProfile(ctx, b.pprofURL, secs, filepath.Join(b.o.pprofDir, "ticketd-"+name+"-"+b.runID+".pprof"))
			if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			msg := fmt.Sprintf("pprof of %s: %v (ticketd needs to serve net/http/pprof on PPROF_ADDR)", name, err)
			b.logf("%s", msg)
			b.report.Notes = append(b.report.Notes, msg)
			return
		}
		b.logf("CPU profile of ticketd during %s: %s (go tool pprof -top %s)", name, path, path)
		b.report.Notes = append(b.report.Notes, "CPU profile of ticketd during "+name+": "+path)
	}()
	return func() {
		select {
		case <-done:
		case <-time.After(time.Duration(secs+10) * time.Second):
		}
	}
}

// fetchProfile GETs /debug/pprof/profile?seconds=secs from base into path.
func fetchProfile(ctx context.Context, base string, secs int, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs+10)*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", strings.TrimRight(base, "/"), secs), nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s", resp.Status)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil {
		return "", err
	}
	return path, f.Close()
}
