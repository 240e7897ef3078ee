package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/ticketd/ticketd/db/dbtest"
)

// TestMemoryUnderMaximumSizeCreates: a stream of creates at every text field's byte
// limit, each then read back, keeps ticketd's peak RSS under 200 MB (issue 12: the
// caches are bounded in bytes, or hold fixed-size entries).
func TestMemoryUnderMaximumSizeCreates(t *testing.T) {
	t.Parallel()
	bin := buildTicketd(t)
	env := processEnv(t, dbtest.NewDatabase(t))
	p := startProcess(t, bin, env)
	base := "http://" + env["HTTP_ADDR"]

	// 600 bytes of title and name, 20,000 of description: the byte limits, in
	// characters that take 3 and 2 bytes.
	body, err := json.Marshal(map[string]string{
		"title":       strings.Repeat("€", 200),
		"description": strings.Repeat("é", 10000),
		"email":       "big@example.com",
		"created_by":  strings.Repeat("€", 200),
	})
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 300
	var created atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				resp, err := adminPost(base+"/v1/ticket/", "application/json", bytes.NewReader(body))
				if err != nil {
					t.Error(err)
					return
				}
				var doc struct {
					ID string `json:"id"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&doc)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					t.Errorf("create: %d", resp.StatusCode)
					return
				}
				created.Add(1)
				get, err := adminGet(base + "/v1/ticket/" + doc.ID)
				if err != nil {
					t.Error(err)
					return
				}
				get.Body.Close()
			}
		})
	}
	wg.Wait()
	hwm := vmHWM(t, p.cmd.Process.Pid)
	t.Logf("%d creates of %d bytes each, read back: peak RSS %.1f MB", created.Load(), len(body), float64(hwm)/1024)
	if hwm >= 200*1024 {
		t.Fatalf("peak RSS %.1f MB, want under 200 MB", float64(hwm)/1024)
	}
}

// vmHWM returns a process's peak resident set size in KiB.
func vmHWM(t *testing.T, pid int) int {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return kb
		}
	}
	t.Fatal("no VmHWM in " + string(status))
	return 0
}

// TestMemoryLimitDefault: without GOMEMLIMIT, ticketd gives the Go runtime a soft
// memory limit (90% of the container's limit, or of 200 MiB without one), and says so
// in its "listening" line; GOMEMLIMIT wins, AUTOMEMLIMIT=off leaves none, and an
// empty AUTOMEMLIMIT counts as unset.
func TestMemoryLimitDefault(t *testing.T) {
	t.Parallel()
	bin := buildTicketd(t)
	dsn := dbtest.NewDatabase(t)
	want := int64(memoryLimitRatio * fallbackMemoryLimit)
	if l, err := memlimit.FromCgroup(); err == nil {
		want = int64(memoryLimitRatio * float64(l))
	}
	for _, c := range []struct {
		name string
		env  map[string]string
		want any
	}{
		{"unset", nil, float64(want)},
		{"GOMEMLIMIT", map[string]string{"GOMEMLIMIT": "300MiB"}, float64(300 << 20)},
		{"AUTOMEMLIMIT_off", map[string]string{"AUTOMEMLIMIT": "off"}, "none"},
		{"AUTOMEMLIMIT_empty", map[string]string{"AUTOMEMLIMIT": ""}, float64(want)}, // as if unset
	} {
		env := processEnv(t, dsn)
		env["LOG_LEVEL"] = "info"
		maps.Copy(env, c.env)
		p := startLimited(t, bin, 4096, env)
		p.waitHealthy(t)
		listening := p.waitLogLine("listening", 5*time.Second)
		if listening == nil {
			t.Fatalf("%s: no listening line:\n%s", c.name, p.logs.String())
		}
		if got := listening["memory_limit"]; got != c.want {
			t.Errorf("%s: memory_limit %v (%T), want %v", c.name, got, got, c.want)
		}
		p.stop(t)
	}
}
