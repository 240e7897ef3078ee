package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/db/dbtest"
)

// Connection limits (issue 12 item 1) and binding HTTP_ADDR first (issue 13 item 2).
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
			env := map[string]string{"HTTP_ADDR": c.addr, "LOG_LEVEL": "info", "DATA_KEY": dbtest.DataKey,
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

// limitedProcess is the ticketd binary run with RLIMIT_NOFILE lowered.
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
func (p *limitedProcess) get(path string) (int, error) {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get(p.url + path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func (p *limitedProcess) waitHealthy(t *testing.T) {
	t.Helper()
	eventually(t, 30*time.Second, "ticketd answers /healthz", func() bool {
		if !p.alive() {
			t.Fatalf("ticketd exited during start (%v):\n%s", p.err, p.logs.String())
		}
		code, err := p.get("/healthz")
		return err == nil && code == 200
	})
}

// logLine returns the first JSON log line with msg, or nil.
func (p *limitedProcess) logLine(msg string) map[string]any {
	for _, l := range strings.Split(p.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			return m
		}
	}
	return nil
}

// waitLogLine is logLine once the line is there: the process's output reaches the
// buffer through a pipe, after the process has moved on (and answered /healthz).
func (p *limitedProcess) waitLogLine(msg string, within time.Duration) map[string]any {
	for deadline := time.Now().Add(within); ; time.Sleep(10 * time.Millisecond) {
		if m := p.logLine(msg); m != nil || time.Now().After(deadline) {
			return m
		}
	}
}

// stop sends SIGTERM and expects a clean exit.
func (p *limitedProcess) stop(t *testing.T) {
	t.Helper()
	if !p.alive() {
		t.Fatalf("ticketd is not running (%v):\n%s", p.err, tail(p.logs.String(), 30))
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("ticketd still running 20s after SIGTERM:\n%s", tail(p.logs.String(), 30))
	}
	if p.err != nil {
		t.Fatalf("ticketd exited with %v after SIGTERM:\n%s", p.err, tail(p.logs.String(), 30))
	}
}

// recovers closes conns and measures how long until a new client is served: GET
// /healthz 200, then a create 201.
func (p *limitedProcess) recovers(t *testing.T, conns []net.Conn) time.Duration {
	t.Helper()
	closeAll(conns)
	closedAt := time.Now()
	eventually(t, 15*time.Second, "a new client is served after the connections closed", func() bool {
		if !p.alive() {
			t.Fatalf("ticketd exited (%v):\n%s", p.err, tail(p.logs.String(), 30))
		}
		code, err := p.get("/healthz")
		return err == nil && code == 200
	})
	took := time.Since(closedAt)
	s := &testServer{URL: p.url}
	d := createTicket(t, s, sourceTicket)
	if got := getTicket(t, s, d.ID); got.ID != d.ID {
		t.Fatalf("GET the new ticket: %+v", got)
	}
	return took
}

// TestConnsDescriptorExhaustionLeavesTheProcessServing is issue 12's probe: one client
// opens more idle keep-alive connections than ticketd has file descriptors. ticketd
// runs as its own process under `ulimit -n 256`.

// --- the listener on its own ---------------------------------------------------------

// fakeListener hands out the results queued in errs (nil: a connection), then blocks
// until closed.
type fakeListener struct {
	mu     sync.Mutex
	errs   []error
	closed chan struct{}
}

func (f *fakeListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		f.mu.Unlock()
		if err != nil {
			return nil, err
		}
		c, _ := net.Pipe()
		return c, nil
	}
	f.mu.Unlock()
	<-f.closed
	return nil, net.ErrClosed
}

func (f *fakeListener) Close() error   { close(f.closed); return nil }
func (f *fakeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

func acceptErr(errno syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
}

func TestConnsAcceptRetriesPassingErrorsWithBackoff(t *testing.T) {
	t.Parallel()
	emfile, enfile := acceptErr(syscall.EMFILE), acceptErr(syscall.ENFILE)
	errs := []error{emfile, emfile, emfile, enfile, emfile, emfile, emfile, emfile, emfile, emfile, emfile, nil, emfile, nil}
	fl := &fakeListener{errs: errs, closed: make(chan struct{})}
	logs := &syncBuffer{}
	l := newConnListener(fl, connLimits{MaxConns: 100}, slog.New(slog.NewJSONHandler(logs, nil)))
	var slept []time.Duration
	l.sleep = func(d time.Duration) { slept = append(slept, d) }

	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept returned %v, want the connection after the failures", err)
	}
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if fmt.Sprint(slept) != fmt.Sprint(want) {
		t.Fatalf("waits %v, want %v", slept, want)
	}
	// a success resets the backoff
	slept = nil
	if _, err := l.Accept(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(slept) != "[5ms]" {
		t.Fatalf("after a success the first wait is %v, want [5ms]", slept)
	}
	if l.Open() != 2 {
		t.Fatalf("%d open, want 2", l.Open())
	}
	_ = c.Close()
	_ = c.Close() // counted once
	if l.Open() != 1 {
		t.Fatalf("%d open after closing one (twice), want 1", l.Open())
	}
	out := logs.String()
	for _, w := range []string{`"msg":"accept failed; retrying"`, "too many open files", `"msg":"accept works again"`, `"failures":11`} {
		if !strings.Contains(out, w) {
			t.Errorf("log lacks %s:\n%s", w, out)
		}
	}
	if n := strings.Count(out, "accept failed"); n != 2 { // the first of each streak
		t.Errorf("%d lines about failed accepts, want 2 (one per streak):\n%s", n, out)
	}

	// failures that do not pass end Serve as before; closing ends a wait at once
	for _, err := range []error{acceptErr(syscall.EBADF), acceptErr(syscall.EINVAL), net.ErrClosed} {
		if retryableAccept(err) {
			t.Errorf("%v is retried", err)
		}
	}
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EPROTO} {
		if !retryableAccept(acceptErr(errno)) {
			t.Errorf("%v is not retried", errno)
		}
	}
	fl2 := &fakeListener{errs: []error{emfile, emfile, emfile, emfile, emfile, emfile, emfile, emfile, emfile, emfile}, closed: make(chan struct{})}
	l2 := newConnListener(fl2, connLimits{MaxConns: 100}, slog.New(slog.NewJSONHandler(io.Discard, nil)))
	done := make(chan error, 1)
	go func() { _, err := l2.Accept(); done <- err }()
	time.Sleep(50 * time.Millisecond)
	closed := time.Now()
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l2.Close(); err != nil {
		t.Fatalf("a second Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
		t.Logf("Accept returned %s after Close, in the middle of its backoff", time.Since(closed).Round(time.Microsecond))
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still waiting 5s after Close")
	}
}

func TestConnsLimitsDerivedFromTheDescriptorLimit(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxConns != 0 || cfg.MaxConnsPerIP != 256 || cfg.IdleTimeout != 30*time.Second {
		t.Fatalf("defaults MAX_CONNS=%d MAX_CONNS_PER_IP=%d IDLE_TIMEOUT=%s, want 0 (derived), 256, 30s", cfg.MaxConns, cfg.MaxConnsPerIP, cfg.IdleTimeout)
	}
	reserve := fdReserve(cfg)
	if reserve < fdReserveFiles+int(cfg.PGMaxConns)+projectorConns+20 {
		t.Fatalf("reserve %d does not count the pools", reserve)
	}
	for _, c := range []struct {
		nofile uint64
		want   int
	}{
		{1024, 1024 - reserve},
		{1 << 20, maxConnsCeiling},
		{uint64(maxConnsCeiling + reserve), maxConnsCeiling},
		{uint64(maxConnsCeiling + reserve - 1), maxConnsCeiling - 1},
		{uint64(reserve), maxConnsFloor},
		{10, maxConnsFloor},
		{0, maxConnsCeiling}, // unknown
	} {
		l := limitsFor(cfg, c.nofile)
		if l.MaxConns != c.want || !l.Derived || l.MaxConnsPerIP != 256 {
			t.Errorf("nofile %d: %+v, want MaxConns %d derived", c.nofile, l, c.want)
		}
		if c.want > maxConnsFloor && !l.fitsNoFile() {
			t.Errorf("nofile %d: derived %d does not fit", c.nofile, l.MaxConns)
		}
	}
	cfg.MaxConns = 5000
	if l := limitsFor(cfg, 1024); l.MaxConns != 5000 || l.Derived || l.fitsNoFile() {
		t.Errorf("explicit MAX_CONNS over the descriptor limit: %+v, want it as set and not fitting", l)
	}

	for _, c := range []struct{ v, name string }{
		{"-1", "MAX_CONNS"}, {"-1", "MAX_CONNS_PER_IP"}, {"0s", "IDLE_TIMEOUT"}, {"-5s", "IDLE_TIMEOUT"},
	} {
		env := map[string]string{c.name: c.v}
		if _, err := loadConfig(func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), c.name) {
			t.Errorf("%s=%s: %v, want an error naming %s", c.name, c.v, err, c.name)
		}
	}
	env := map[string]string{"MAX_CONNS": "100", "MAX_CONNS_PER_IP": "0", "IDLE_TIMEOUT": "500ms"}
	if cfg, err := loadConfig(func(k string) string { return env[k] }); err != nil || cfg.MaxConns != 100 || cfg.MaxConnsPerIP != 0 || cfg.IdleTimeout != 500*time.Millisecond {
		t.Errorf("explicit values: %+v %v", cfg, err)
	}
}

// --- one real server: the per-address cap and the idle timeout ------------------------

// loopbackDialer dials from the loopback address from (127.0.0.2, ...: every 127/8
// address is local on Linux), so one test can be several clients.
func loopbackDialer(t *testing.T, from string) *net.Dialer {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", freeAddrListening(t))
	if err != nil {
		t.Skipf("cannot dial from %s on this machine: %v", from, err)
	}
	c.Close()
	return d
}

// freeAddrListening returns the address of a listener that lives until the test ends.
func freeAddrListening(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l.Addr().String()
}

// outcome is what became of one connection that sent GET /healthz.
type outcome string

const (
	outServed     outcome = "200"
	outRefused    outcome = "refused" // answered 429 or 503 and closed
	outClosed     outcome = "closed"  // closed or reset without an answer
	outSilent     outcome = "silent"  // no answer within the wait (not accepted)
	outDialFailed outcome = "dial failed"
)

// keepAliveGet opens a connection with dial, sends GET /healthz (keep-alive) and reads
// the answer until deadline. The connection is returned open when it was served.
func keepAliveGet(dial func() (net.Conn, error), deadline time.Time) (net.Conn, outcome, string) {
	c, err := dial()
	if err != nil {
		return nil, outDialFailed, err.Error()
	}
	_ = c.SetDeadline(deadline)
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: ticketd.test\r\n\r\n"); err != nil {
		c.Close()
		return nil, outClosed, err.Error()
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		c.Close()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, outSilent, err.Error()
		}
		return nil, outClosed, err.Error()
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	resp.Body.Close()
	if resp.StatusCode == 200 {
		_ = c.SetDeadline(time.Time{})
		return c, outServed, ""
	}
	c.Close()
	if resp.StatusCode == 429 || resp.StatusCode == 503 {
		return nil, outRefused, resp.Status + ": " + string(body)
	}
	return nil, outcome(resp.Status), string(body)
}

// flood opens n keep-alive connections at once, each with a GET /healthz answered
// within wait. It returns the served connections (open) and the count per outcome.
func flood(n int, dial func() (net.Conn, error), wait time.Duration) ([]net.Conn, map[outcome]int, map[outcome]string) {
	var mu sync.Mutex
	var open []net.Conn
	counts, sample := map[outcome]int{}, map[outcome]string{}
	deadline := time.Now().Add(wait)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, o, detail := keepAliveGet(dial, deadline)
			mu.Lock()
			defer mu.Unlock()
			counts[o]++
			if _, ok := sample[o]; !ok && detail != "" {
				sample[o] = detail
			}
			if c != nil {
				open = append(open, c)
			}
		}()
	}
	wg.Wait()
	return open, counts, sample
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

func TestConnsPerAddressCapRefusesTheExcessAndServesOthers(t *testing.T) {
	t.Parallel()
	const perIP = 8
	s := startServer(t, map[string]string{"MAX_CONNS_PER_IP": strconv.Itoa(perIP), "LOG_LEVEL": "info"})
	addr := strings.TrimPrefix(s.URL, "http://")
	// The capped client is 127.0.0.3: the harness's own client (127.0.0.1) keeps idle
	// connections to the server, the other client is 127.0.0.2.
	capped, other := loopbackDialer(t, "127.0.0.3"), loopbackDialer(t, "127.0.0.2")
	dialCapped := func() (net.Conn, error) { return capped.Dial("tcp", addr) }

	held, counts, sample := flood(3*perIP, dialCapped, 10*time.Second)
	t.Cleanup(func() { closeAll(held) })
	t.Logf("%d connections from 127.0.0.3 with MAX_CONNS_PER_IP=%d: %v %v", 3*perIP, perIP, counts, sample)
	if counts[outServed] != perIP || counts[outRefused]+counts[outClosed] != 2*perIP {
		t.Fatalf("outcomes %v (%v), want %d served and %d refused or closed", counts, sample, perIP, 2*perIP)
	}

	// one more is refused at once
	began := time.Now()
	c, o, detail := keepAliveGet(dialCapped, time.Now().Add(10*time.Second))
	took := time.Since(began)
	if c != nil {
		c.Close()
	}
	if o != outRefused && o != outClosed {
		t.Fatalf("connection %d from 127.0.0.3: %s %s, want it refused", perIP+1, o, detail)
	}
	if took > 2*time.Second {
		t.Fatalf("refusing connection %d took %s", perIP+1, took)
	}
	t.Logf("connection %d from 127.0.0.3: %s (%s) in %s", perIP+1, o, detail, took.Round(time.Microsecond))

	// another address is served meanwhile, reads and writes
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: other.DialContext}}
	t.Cleanup(hc.CloseIdleConnections)
	resp, err := hc.Get(s.URL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /healthz from 127.0.0.2 while 127.0.0.3 is at its cap: %v %v", resp, err)
	}
	resp.Body.Close()
	body, _ := json.Marshal(sourceTicket)
	req, _ := http.NewRequest("POST", s.URL+"/v1/ticket/", strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	resp, err = hc.Do(authorize(req))
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("create from 127.0.0.2: %v %v", resp, err)
	}
	resp.Body.Close()

	// a closed connection frees its place
	held[0].Close()
	var freed time.Duration
	closedAt := time.Now()
	eventually(t, 10*time.Second, "a new connection from 127.0.0.3 served after one of its connections closed", func() bool {
		c, o, _ := keepAliveGet(dialCapped, time.Now().Add(5*time.Second))
		if c != nil {
			held[0] = c
		}
		freed = time.Since(closedAt)
		return o == outServed
	})
	t.Logf("after closing one of its connections 127.0.0.3 was served again %s later", freed.Round(time.Millisecond))
	if !strings.Contains(s.logs.String(), `"msg":"connections refused: too many from one address"`) {
		t.Errorf("the refusals are not logged:\n%s", s.logs.String())
	}
}

func TestConnsIdleKeepAliveClosedAfterIdleTimeout(t *testing.T) {
	t.Parallel()
	const idle = time.Second
	s := startServer(t, map[string]string{"IDLE_TIMEOUT": idle.String()})
	addr := strings.TrimPrefix(s.URL, "http://")
	dial := func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }

	// an idle one is closed after IDLE_TIMEOUT
	c, o, detail := keepAliveGet(dial, time.Now().Add(10*time.Second))
	if o != outServed {
		t.Fatalf("GET /healthz: %s %s", o, detail)
	}
	defer c.Close()
	answered := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	n, err := c.Read(make([]byte, 1))
	idleFor := time.Since(answered)
	if n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an idle connection: read %d bytes, %v after %s, want it closed", n, err, idleFor)
	}
	if idleFor < idle-100*time.Millisecond || idleFor > idle+5*time.Second {
		t.Fatalf("an idle connection was closed after %s, want about IDLE_TIMEOUT=%s", idleFor, idle)
	}
	t.Logf("idle keep-alive connection closed %s after its last answer (IDLE_TIMEOUT=%s): %v", idleFor.Round(time.Millisecond), idle, err)

	// one that keeps asking within IDLE_TIMEOUT stays open
	c2, o, detail := keepAliveGet(dial, time.Now().Add(10*time.Second))
	if o != outServed {
		t.Fatalf("GET /healthz: %s %s", o, detail)
	}
	defer c2.Close()
	br := bufio.NewReader(c2)
	began := time.Now()
	for i := 0; time.Since(began) < 3*idle; i++ {
		time.Sleep(idle / 3)
		_ = c2.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c2, "GET /healthz HTTP/1.1\r\nHost: ticketd.test\r\n\r\n"); err != nil {
			t.Fatalf("request %d on a busy connection: %v", i+2, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on a busy connection, %s after the first: %v", i+2, time.Since(began), err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %s", i+2, resp.Status)
		}
	}
}

func TestConnsDescriptorExhaustionLeavesTheProcessServing(t *testing.T) {
	t.Parallel()
	const nofile, clients = 256, 400
	bin := buildTicketd(t)
	env := func(extra ...string) map[string]string {
		e := map[string]string{
			"REDIS_ADDRS":          redisAddrs(),
			"HTTP_ADDR":            freeAddr(t),
			"LOG_LEVEL":            "info",
			"PG_MAX_CONNS":         "6",
			"SHUTDOWN_TIMEOUT":     "5s",
			"REDIS_PREFIX":         "test-" + strings.ReplaceAll(uuid.NewString(), "-", ""),
			"AUTH_BOOTSTRAP_TOKEN": testAdminToken,
		}
		maps.Copy(e, noRateLimits)
		maps.Copy(e, testDataKey)
		for i := 0; i+1 < len(extra); i += 2 {
			e[extra[i]] = extra[i+1]
		}
		if e["DATABASE_DSN"] == "" {
			e["DATABASE_DSN"] = dbtest.NewDatabase(t)
		}
		return e
	}
	dialer := func(p *limitedProcess) func() (net.Conn, error) {
		addr := strings.TrimPrefix(p.url, "http://")
		return func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }
	}

	t.Run("default_limits_refuse_the_excess", func(t *testing.T) {
		// MAX_CONNS is derived from the limit; MAX_CONNS_PER_IP (256) is above it here
		p := startLimited(t, bin, nofile, env())
		p.waitHealthy(t)
		listening := p.waitLogLine("listening", 5*time.Second)
		if listening == nil {
			t.Fatalf("no listening line:\n%s", p.logs.String())
		}
		maxConns := int(listening["max_conns"].(float64))
		if listening["nofile"].(float64) != nofile || maxConns <= 0 || maxConns >= nofile {
			t.Fatalf("listening %v: want nofile %d and max_conns derived below it", listening, nofile)
		}
		began := time.Now()
		held, counts, sample := flood(clients, dialer(p), 10*time.Second)
		t.Logf("nofile %d, derived MAX_CONNS %d: %d connections from one client in %s: %v %v",
			nofile, maxConns, clients, time.Since(began).Round(time.Millisecond), counts, sample)
		if !p.alive() {
			t.Fatalf("ticketd exited (%v):\n%s", p.err, tail(p.logs.String(), 30))
		}
		// all but MAX_CONNS refused at once (a health probe's connection may still be
		// closing on the server's side)
		if counts[outServed] > maxConns || counts[outServed] < maxConns-2 || counts[outServed]+counts[outRefused]+counts[outClosed] != clients {
			t.Errorf("outcomes %v (%v), want %d served and the rest refused", counts, sample, maxConns)
		}
		if c, o, detail := keepAliveGet(dialer(p), time.Now().Add(5*time.Second)); o != outRefused && o != outClosed {
			if c != nil {
				c.Close()
			}
			t.Errorf("a new connection while MAX_CONNS are open: %s %s, want it refused", o, detail)
		}
		time.Sleep(500 * time.Millisecond)
		if !p.alive() {
			t.Fatalf("ticketd exited (%v):\n%s", p.err, tail(p.logs.String(), 30))
		}
		if p.logLine("connection limit reached: new connections are refused (503) until others close") == nil {
			t.Errorf("reaching MAX_CONNS is not logged:\n%s", tail(p.logs.String(), 30))
		}
		if strings.Contains(p.logs.String(), "too many open files") {
			t.Errorf("descriptors ran out under the derived MAX_CONNS:\n%s", tail(p.logs.String(), 30))
		}
		took := p.recovers(t, held)
		t.Logf("after the client closed its %d connections a new client was served in %s (GET /healthz 200, create 201)",
			len(held), took.Round(time.Millisecond))
		p.stop(t)
	})

	t.Run("descriptors_run_out_and_accept_backs_off", func(t *testing.T) {
		// MAX_CONNS set above what the limit allows: accept meets EMFILE
		p := startLimited(t, bin, nofile, env("MAX_CONNS", "2000", "MAX_CONNS_PER_IP", "0"))
		p.waitHealthy(t)
		if p.logLine("MAX_CONNS leaves too few file descriptors for the pools and files: accepting pauses when they run out") == nil {
			t.Errorf("MAX_CONNS over the descriptor limit is not warned about:\n%s", p.logs.String())
		}
		began := time.Now()
		held, counts, sample := flood(clients, dialer(p), 5*time.Second)
		t.Logf("nofile %d, MAX_CONNS 2000: %d connections from one client in %s: %v %v",
			nofile, clients, time.Since(began).Round(time.Millisecond), counts, sample)
		if !p.alive() {
			t.Fatalf("ticketd exited (%v):\n%s", p.err, tail(p.logs.String(), 30))
		}
		if counts[outServed] >= nofile || counts[outSilent] == 0 {
			t.Errorf("outcomes %v: want fewer than %d served and the rest waiting in the backlog", counts, nofile)
		}
		failedLine := p.logLine("accept failed; retrying")
		if failedLine == nil || !strings.Contains(fmt.Sprint(failedLine["err"]), "too many open files") {
			t.Fatalf("no accept failure logged (%v):\n%s", failedLine, tail(p.logs.String(), 30))
		}
		time.Sleep(time.Second) // the backoff at its longest, and still alive
		if !p.alive() {
			t.Fatalf("ticketd exited (%v):\n%s", p.err, tail(p.logs.String(), 30))
		}
		took := p.recovers(t, held)
		t.Logf("after the client closed its %d connections a new client was served in %s (GET /healthz 200, create 201)",
			len(held), took.Round(time.Millisecond))
		if p.logLine("accept works again") == nil {
			t.Errorf("the recovery is not logged:\n%s", tail(p.logs.String(), 30))
		}
		p.stop(t)
	})
}
