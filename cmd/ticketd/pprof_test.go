package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

func TestPprofServedOnItsOwnLoopbackListenerOnlyWhenSet(t *testing.T) {
	t.Parallel()
	pp := freeAddr(t)
	s := startServer(t, map[string]string{"PPROF_ADDR": pp, "LOG_LEVEL": "info"})

	get := func(url string) (int, string) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("http://" + pp + "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("/debug/pprof/ on PPROF_ADDR: %d %.200s", code, body)
	}
	if code, body := get("http://" + pp + "/debug/pprof/goroutine?debug=1"); code != 200 || !strings.Contains(body, "goroutine profile:") {
		t.Fatalf("goroutine profile: %d %.200s", code, body)
	}
	// a CPU profile, as ticketbench fetches it: a gzipped protobuf
	if code, body := get("http://" + pp + "/debug/pprof/profile?seconds=1"); code != 200 || !strings.HasPrefix(body, "\x1f\x8b") {
		t.Fatalf("CPU profile: %d, %d bytes", code, len(body))
	}
	// never on the API's port
	if r := s.do(t, "GET", "/debug/pprof/", nil); r.Status != 404 {
		t.Fatalf("/debug/pprof/ on the API port answered %d", r.Status)
	}

	if !strings.Contains(s.logs.String(), `"msg":"pprof listening"`) {
		t.Errorf("the start of the profiler is not logged:\n%s", s.logs.String())
	}

	// off by default
	if cfg, err := loadConfig(func(string) string { return "" }); err != nil || cfg.PprofAddr != "" {
		t.Fatalf("default PPROF_ADDR %q (%v), want empty", cfg.PprofAddr, err)
	}
	quiet := startServer(t, map[string]string{"LOG_LEVEL": "info"})
	if strings.Contains(quiet.logs.String(), "pprof") {
		t.Errorf("a server without PPROF_ADDR mentions pprof:\n%s", quiet.logs.String())
	}
}

func TestPprofAddrMustBeLoopback(t *testing.T) {
	t.Parallel()
	base := map[string]string{"HTTP_ADDR": "127.0.0.1:8000"}
	for _, addr := range []string{"0.0.0.0:6060", ":6060", "[::]:6060", "192.0.2.10:6060", "example.com:6060", "127.0.0.1", "127.0.0.1:8000"} {
		env := map[string]string{"PPROF_ADDR": addr}
		for k, v := range base {
			env[k] = v
		}
		_, err := loadConfig(func(k string) string { return env[k] })
		if err == nil || !strings.Contains(err.Error(), "PPROF_ADDR") {
			t.Errorf("PPROF_ADDR=%q: error %v, want one naming PPROF_ADDR", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:6060", "[::1]:6060", "localhost:6060", "127.0.0.2:6060"} {
		env := map[string]string{"PPROF_ADDR": addr}
		if _, err := loadConfig(func(k string) string { return env[k] }); err != nil {
			t.Errorf("PPROF_ADDR=%q refused: %v", addr, err)
		}
	}
	// ticketd refuses to start on it, before touching anything
	env := map[string]string{"PPROF_ADDR": "0.0.0.0:6060", "DATABASE_DSN": "postgres://nobody@127.0.0.1:1/none"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := run(ctx, nil, func(k string) string { return env[k] }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "PPROF_ADDR") || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("run with PPROF_ADDR=0.0.0.0:6060: %v, want a loopback error naming PPROF_ADDR", err)
	}
}
