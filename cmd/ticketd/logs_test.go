package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/db/dbtest"
)

// logRecord is one line ticketd wrote, decoded; raw is the line itself.
type logRecord struct {
	raw string
	m   map[string]any
}

// runAndStop starts the ticketd binary with env, sends it a create and a read, stops
// it with SIGTERM and returns every line it wrote on stdout and stderr. It fails the
// test unless the process exits 0.
func runAndStop(t *testing.T, bin string, env []string) (lines []string, stderr string) {
	t.Helper()
	addr := freeAddr(t)
	cmd := exec.Command(bin)
	cmd.Env = append(env, "HTTP_ADDR="+addr)
	stdout, errOut := &syncBuffer{}, &syncBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	s := &testServer{URL: "http://" + addr}
	eventually(t, 30*time.Second, "ticketd answers /healthz", func() bool {
		resp, err := http.Get(s.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})
	var created ticketDoc
	s.do(t, "POST", "/v1/ticket/", sourceTicket).expect(t, 201).JSON(t, &created)
	s.do(t, "GET", "/v1/ticket/"+created.ID, nil).expect(t, 200)
	s.do(t, "GET", "/readyz", nil).expect(t, 200)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("exit %d after SIGTERM\nstdout:\n%s\nstderr:\n%s", ee.ExitCode(), tail(stdout.String(), 30), errOut.String())
		} else if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("still running 30s after SIGTERM\n%s", tail(stdout.String(), 30))
	}
	for _, out := range []string{stdout.String(), errOut.String()} {
		for _, l := range strings.Split(out, "\n") {
			if l != "" {
				lines = append(lines, l)
			}
		}
	}
	return lines, errOut.String()
}

// Every line the server writes is a JSON log record, an unreachable Redis is said once
// as a structured warning (not in go-redis's plain text), and a normal stop logs no
// error: with Redis down and with the Redis Cluster up.
func TestServerLogsAreJSONAndANormalStopLogsNoError(t *testing.T) {
	t.Parallel()
	bin := buildTicketd(t)
	for _, c := range []struct {
		name        string
		redis       string
		unreachable bool
	}{
		{"redis_unreachable", "127.0.0.1:1", true},
		{"redis_cluster", redisAddrs(), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			env := []string{"DATABASE_DSN=" + dbtest.NewDatabase(t), "REDIS_ADDRS=" + c.redis, "LOG_LEVEL=info",
				"PG_MAX_CONNS=6", "SHUTDOWN_TIMEOUT=10s", "REDIS_PREFIX=test-logs-" + strings.ReplaceAll(uuid.NewString(), "-", ""),
				// a request's line for every read, so the test sees the access log too
				"ACCESS_LOG_SAMPLE=1", "AUTH_BOOTSTRAP_TOKEN=" + testAdminToken, "DATA_KEY=" + dbtest.DataKey}
			lines, stderr := runAndStop(t, bin, env)
			var recs []logRecord
			for _, l := range lines {
				var m map[string]any
				if err := json.Unmarshal([]byte(l), &m); err != nil {
					t.Errorf("a line is not JSON: %q", l)
					continue
				}
				recs = append(recs, logRecord{l, m})
			}
			if stderr != "" {
				t.Errorf("stderr is not empty (logs go to stdout): %q", stderr)
			}
			var msgs []string
			warnings := 0
			for _, r := range recs {
				msg, _ := r.m["msg"].(string)
				msgs = append(msgs, msg)
				if r.m["time"] == nil || r.m["level"] == nil || msg == "" {
					t.Errorf("not a slog record (time, level, msg): %s", r.raw)
				}
				if r.m["level"] == "ERROR" {
					t.Errorf("a normal run and stop logged an error: %s", r.raw)
				}
				if strings.Contains(msg, "redis unreachable") {
					warnings++
					if r.m["level"] != "WARN" || r.m["err"] == nil || r.m["addrs"] == nil {
						t.Errorf("the warning of an unreachable Redis is not a WARN with addrs and err: %s", r.raw)
					}
				}
				if msg == "go-redis" {
					t.Errorf("go-redis's internal line at level %v (want debug only): %s", r.m["level"], r.raw)
				}
			}
			if want := map[bool]int{true: 1, false: 0}[c.unreachable]; warnings != want {
				t.Errorf("%d warnings of an unreachable Redis, want %d:\n%s", warnings, want, strings.Join(lines, "\n"))
			}
			// background work (a housekeeping round) may still log while the server drains
			got := strings.Join(msgs, ",")
			listening, stopping := slices.Index(msgs, "listening"), slices.Index(msgs, "shutting down")
			if listening < 0 || stopping < listening || !strings.HasSuffix(got, ",stopped") {
				t.Errorf("log messages %s: want listening, then shutting down, and stopped last", got)
			}
		})
	}
}

// A server that cannot start says why in a JSON record too, and exits 1.
func TestServerFatalErrorIsAJSONRecord(t *testing.T) {
	t.Parallel()
	bin := buildTicketd(t)
	r := runBinary(t, bin, []string{"REDIS_TIMEOUT=abc", "PG_MAX_CONNS=1", "HTTP_ADDR=" + freeAddr(t)})
	if r.code != 1 || r.stderr != "" {
		t.Errorf("exit %d, stderr %q; want 1 and nothing on stderr", r.code, r.stderr)
	}
	var m struct {
		Level, Msg string
		Problems   []string
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &m); err != nil {
		t.Fatalf("stdout %q: want one JSON record: %v", r.stdout, err)
	}
	if m.Level != "ERROR" || m.Msg != "invalid configuration" || len(m.Problems) != 2 ||
		!strings.HasPrefix(m.Problems[0], `REDIS_TIMEOUT: "abc" is not a duration`) || !strings.HasPrefix(m.Problems[1], "PG_MAX_CONNS must be at least 2") {
		t.Errorf("record %s: want an ERROR \"invalid configuration\" listing REDIS_TIMEOUT and PG_MAX_CONNS", r.stdout)
	}
}
