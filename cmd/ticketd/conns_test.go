package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Binding HTTP_ADDR first (issue 13 item 2).
// The tests named TestConns* are all of them: `go test -run TestConns ./cmd/ticketd/`.

// --- HTTP_ADDR: bound first ----------------------------------------------------------

// TestConnsHTTPAddrTakenOrInvalidFailsAtOnce: an address that cannot be served is an
// error at once, naming HTTP_ADDR and the reason, and "listening" is never logged.
func TestConnsHTTPAddrTakenOrInvalidFailsAtOnce(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{":99999", ":0", ":-1", "127.0.0.1:65536", ":http", "127.0.0.1", "[::1]"} {
		env := map[string]string{"HTTP_ADDR": addr}
		if _, err := loadConfig(func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "HTTP_ADDR") {
			t.Errorf("HTTP_ADDR=%q: %v, want an error naming HTTP_ADDR", addr, err)
		}
	}
	for _, addr := range []string{":8000", "127.0.0.1:8000", "[::1]:8000", "localhost:65535", "0.0.0.0:1"} {
		env := map[string]string{"HTTP_ADDR": addr}
		if _, err := loadConfig(func(k string) string { return env[k] }); err != nil {
			t.Errorf("HTTP_ADDR=%q refused: %v", addr, err)
		}
	}

	bin := buildTicketd(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := taken.Addr().(*net.TCPAddr).Port
	for _, c := range []struct{ name, addr, want string }{
		{"taken", taken.Addr().String(), "address already in use"},
		{"not_local", fmt.Sprintf("192.0.2.1:%d", port), "cannot assign requested address"},
		{"invalid", ":99999", "the port must be a number from 1 to 65535"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if nonlocal, _ := os.ReadFile("/proc/sys/net/ipv4/ip_nonlocal_bind"); c.name == "not_local" && strings.TrimSpace(string(nonlocal)) == "1" {
				t.Skip("net.ipv4.ip_nonlocal_bind is set: any address can be bound")
			}
			// nothing is waited for first: not even an unreachable Postgres or Redis
			env := map[string]string{"HTTP_ADDR": c.addr, "LOG_LEVEL": "info",
				"DATABASE_DSN": "postgres://nobody@127.0.0.1:1/none?sslmode=disable", "REDIS_ADDRS": "127.0.0.1:1"}
			began := time.Now()
			p := startLimited(t, bin, 1024, env)
			select {
			case <-p.exited:
			case <-time.After(10 * time.Second):
				t.Fatalf("ticketd still running 10s after start with HTTP_ADDR=%s:\n%s", c.addr, p.logs.String())
			}
			took := time.Since(began)
			out := p.logs.String()
			var ee *exec.ExitError
			if !errors.As(p.err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("exit %v, want non-zero:\n%s", p.err, out)
			}
			if !strings.Contains(out, "HTTP_ADDR") || !strings.Contains(out, c.addr) || !strings.Contains(out, c.want) {
				t.Errorf("the error does not name HTTP_ADDR, %s and %q:\n%s", c.addr, c.want, out)
			}
			if strings.Contains(out, `"listening"`) {
				t.Errorf("listening logged for an address it could not bind:\n%s", out)
			}
			if took > 2*time.Second {
				t.Errorf("exited %s after start, want within 2s", took)
			}
			t.Logf("HTTP_ADDR=%s: exit %d after %s: %s", c.addr, ee.ExitCode(), took.Round(time.Millisecond), strings.TrimSpace(out))
		})
	}
}

// --- ticketd as a process of its own ----------------------------------------------------

// limitedProcess is the ticketd binary run with RLIMIT_NOFILE set.
type limitedProcess struct {
	cmd    *exec.Cmd
	url    string
	logs   *syncBuffer // stdout and stderr
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

// startLimited runs bin with env (nothing else from the test's environment) under
// `ulimit -n nofile` (soft and hard) and returns at once.
func startLimited(t *testing.T, bin string, nofile int, env map[string]string) *limitedProcess {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", `ulimit -n "$1" && exec "$0"`, bin, strconv.Itoa(nofile))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &limitedProcess{cmd: cmd, url: "http://" + env["HTTP_ADDR"], logs: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ticketd: %v", err)
	}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	return p
}

func (p *limitedProcess) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// get asks path on a connection of its own (no connection is left behind to count).
