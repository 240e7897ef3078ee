package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ticketdProc is a ticketd started as a subprocess.
type ticketdProc struct {
	cmd     *exec.Cmd
	logPath string
	logFile *os.File
	exited  chan struct{}
	err     error
}

// repoRoot returns the directory of the go.mod above the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run ticketbench from the repository")
		}
		dir = parent
	}
}

// goTool returns the go command: the one on PATH, else the toolchain that built us.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// buildTicketd builds ./cmd/ticketd of the repository into dir.
func buildTicketd(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "ticketd")
	cmd := exec.CommandContext(ctx, goTool(), "build", "-o", bin, "./cmd/ticketd")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build ticketd: %w\n%s", err, out)
	}
	return bin, nil
}

// hasFlag reports whether ticketd's usage lists -name.
func hasFlag(ctx context.Context, bin, name string) bool {
	out, _ := exec.CommandContext(ctx, bin, "-h").CombinedOutput()
	return strings.Contains(string(out), "-"+name)
}

// freePort returns a TCP port that was free a moment ago on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// benchDataKey is the master key of personal data (DATA_KEY) of every ticketd the bench
// starts, and of its own seeding store: fixed, so the processes of one run (and the
// runs on one database) share it.
const benchDataKey = "dGlja2V0YmVuY2gtZGF0YS1rZXktb2YtMzItYnl0ZXM="

// ticketdEnv is the environment of a ticketd subprocess: ours without any of ticketd's
// configuration variables, plus DATA_KEY (benchDataKey) and vars.
func ticketdEnv(vars map[string]string) []string {
	own := map[string]bool{"DATA_KEY": true, "DATA_KEY_FILE": true, "NEW_DATA_KEY": true, "NEW_DATA_KEY_FILE": true}
	for _, k := range []string{"DATABASE_DSN", "REDIS_HOST", "REDIS_PORT", "REDIS_ADDRS", "REDIS_PREFIX",
		"HTTP_ADDR", "LOG_LEVEL", "PG_MAX_CONNS", "PPROF_ADDR", "CURSOR_SECRET",
		"RATE_LIMIT_ADMIN", "RATE_LIMIT_AGENT", "RATE_LIMIT_AUDITOR", "RATE_LIMIT_REQUESTER", "RATE_LIMIT_AUTH_FAILURES"} {
		own[k] = true
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !own[k] {
			env = append(env, kv)
		}
	}
	if _, ok := vars["DATA_KEY"]; !ok {
		env = append(env, "DATA_KEY="+benchDataKey)
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

// startTicketd runs bin serving on addr with env, its output going to logPath, and
// waits until /readyz answers 200.
func startTicketd(ctx context.Context, bin string, env []string, base, logPath string) (*ticketdProc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start ticketd: %w", err)
	}
	p := &ticketdProc{cmd: cmd, logPath: logPath, logFile: f, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(90 * time.Second)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("ticketd exited during start (%v); its log: %s\n%s", p.err, logPath, tail(logPath, 20))
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := client.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("ticketd not ready after 90s; its log: %s\n%s", logPath, tail(logPath, 20))
		}
	}
}

// pid returns the process id.
func (p *ticketdProc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM, waits for the drain, and kills the process if it hangs.
func (p *ticketdProc) stop() {
	if p == nil {
		return
	}
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(20 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
	p.logFile.Close()
}

// procStatusKB reads a "Vm…" line of /proc/<pid>/status, in kB.
func procStatusKB(pid int, field string) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == field {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// withDatabase returns dsn pointing at database name.
func withDatabase(dsn, name string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("TEST_DATABASE_DSN must be a postgres:// URL: %q", dsn)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// createDatabase creates database name on the server of serverDSN.
func createDatabase(ctx context.Context, serverDSN, name string) error {
	c, err := pgx.Connect(ctx, serverDSN)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", redactDSN(serverDSN), err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	_, err = c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	return err
}

// dropDatabase drops database name (only ever one this process created).
func dropDatabase(ctx context.Context, serverDSN, name string) error {
	c, err := pgx.Connect(ctx, serverDSN)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	_, err = c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	return u.Redacted()
}
