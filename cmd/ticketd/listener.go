package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"
)

// Connection limits. One client must not be able to take the server down by opening
// connections: without limits, a client holding more idle keep-alive connections than
// the process has file descriptors made accept fail with EMFILE, which fasthttp treats
// as fatal. Three guards, from the inside out:
//
//   - accept errors that pass (EMFILE, ENFILE, ENOBUFS, a connection aborted while
//     queued, ...) are retried with a backoff (5 ms doubling to 1 s) and never reach
//     fasthttp; the connections wait in the kernel's backlog meanwhile;
//   - MAX_CONNS caps the open connections of the whole server: by default what the
//     descriptor limit leaves once the pools and the process's own files are counted
//     (limitsFor), so the cap is reached before the descriptors run out;
//   - MAX_CONNS_PER_IP caps the connections of one client address, so one client
//     cannot take all of MAX_CONNS.
//
// A connection over either cap is refused at once: a short plain-text answer (503 or
// 429) and closed, before its request is read. IDLE_TIMEOUT closes keep-alive
// connections that wait for a next request.

const (
	// maxConnsCeiling bounds the derived MAX_CONNS however many descriptors there
	// are (a container commonly has 1,048,576): an idle keep-alive connection costs
	// about 22 KiB (a goroutine and fasthttp's buffers, 16 KiB of them for reading;
	// measured: 5,000 took RSS from 22 MB to 130 MB), so 4,096 of them are ~90 MB.
	maxConnsCeiling = 4096
	// maxConnsFloor is the derived MAX_CONNS when the descriptor limit leaves less.
	maxConnsFloor = 16
	// fdReserveFiles counts the descriptors of the process itself: stdio, the
	// listeners (API, pprof), epoll, files, and the short-lived connections of
	// migrations and start-up probes.
	fdReserveFiles = 64
	// acceptBackoffMin and acceptBackoffMax bound the wait between retries of a failing
	// accept: short enough to take connections again soon after descriptors free up,
	// long enough not to spin while they do not.
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// connLimits are the effective connection limits of the server.
type connLimits struct {
	MaxConns      int    // cap on open client connections (fasthttp's Concurrency)
	MaxConnsPerIP int    // cap per client address (IPv4) or /64 (IPv6); 0: none
	NoFile        uint64 // RLIMIT_NOFILE (soft) as the process runs; 0 if unknown
	Reserve       int    // descriptors kept for everything but client connections
	Derived       bool   // MaxConns is derived from NoFile (MAX_CONNS unset)
}

// fdReserve is the number of descriptors ticketd may use for things other than client
// connections, its pools at their largest: the request pool (PG_MAX_CONNS), the
// projectors' pool, the housekeeping round's own connection, the Redis pools (go-redis opens at most 10 × GOMAXPROCS
// connections per node, plus 10 for pipelines; a node per address of REDIS_ADDRS is
// counted) and fdReserveFiles.
func fdReserve(cfg Config) int {
	redisPerNode := 10*runtime.GOMAXPROCS(0) + 10
	return fdReserveFiles + int(cfg.PGMaxConns) + projectorConns + 1 + redisPerNode*len(cfg.RedisAddresses())
}

// openFileLimit returns the soft RLIMIT_NOFILE of the process (which the Go runtime
// has already raised to the hard limit at start), or 0 if it cannot be read.
func openFileLimit() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	return r.Cur
}

// limitsFor returns the connection limits for cfg, with nofile the descriptor limit
// (openFileLimit; 0: unknown). Unset MAX_CONNS is derived:
//
//	min(4096, nofile − reserve), at least 16
//
// where reserve is fdReserve. An explicit MAX_CONNS is taken as is, even above that:
// descriptors that run out then only pause accepting (see connListener).
func limitsFor(cfg Config, nofile uint64) connLimits {
	l := connLimits{MaxConns: cfg.MaxConns, MaxConnsPerIP: cfg.MaxConnsPerIP, NoFile: nofile, Reserve: fdReserve(cfg)}
	if l.MaxConns > 0 {
		return l
	}
	l.Derived = true
	l.MaxConns = maxConnsCeiling
	if nofile > 0 && nofile < uint64(maxConnsCeiling+l.Reserve) {
		l.MaxConns = max(int(nofile)-l.Reserve, maxConnsFloor)
	}
	return l
}

// logAttrs describes the limits for the "listening" line.
func (l connLimits) logAttrs() []any {
	return []any{"max_conns", l.MaxConns, "max_conns_per_ip", l.MaxConnsPerIP, "nofile", l.NoFile}
}

// fitsNoFile reports whether MaxConns leaves the reserve free under the descriptor
// limit (true when the limit is unknown).
func (l connLimits) fitsNoFile() bool {
	return l.NoFile == 0 || uint64(l.MaxConns+l.Reserve) <= l.NoFile
}

// listenHTTP binds HTTP_ADDR now, so that a taken or unusable address is an error at
// start (and "listening" is never logged for it), and wraps the listener with the
// accept backoff and the per-address cap.
func listenHTTP(addr string, limits connLimits, log *slog.Logger) (*connListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("HTTP_ADDR %s: %w", addr, err)
	}
	return newConnListener(ln, limits, log), nil
}

// applyConnLimits sets the limits fasthttp enforces itself on app's server. They are
// set on app.Server() because httpapi.New does not know them; this must run before
// the server starts serving.
//
// The overall cap is fasthttp's Concurrency: it counts the connections being served
// (one worker each, idle keep-alive ones included) and answers one over it with a 503
// and closes it at once, which is what MAX_CONNS asks. The per-address cap is not
// fasthttp's MaxConnsPerIP, which counts IPv4 clients only (every IPv6 client, ::1
// included, would be unlimited): connListener counts both.
func applyConnLimits(app *fiber.App, limits connLimits, idle time.Duration) {
	srv := app.Server()
	srv.Concurrency = limits.MaxConns
	srv.IdleTimeout = idle
	srv.MaxConnsPerIP = 0
}

// connListener wraps the API's listener: it retries failing accepts with a backoff
// instead of returning the error (fasthttp ends Serve on any accept error but a
// timeout), refuses connections over the per-address cap, and counts the open
// connections to log when MAX_CONNS is reached.
type connListener struct {
	net.Listener
	limits connLimits
	log    *slog.Logger

	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}

	open   atomic.Int64
	mu     sync.Mutex
	perKey map[netip.Addr]int // open connections per client key (clientKey)

	// accept and refuse are only touched by Accept, which fasthttp calls from one
	// goroutine.
	failStreak    int       // consecutive failed accepts
	failSince     time.Time // first failure of the streak
	failLogged    time.Time // last log line about the streak
	refusedPerIP  int       // refused since refusedLogged
	refusedLogged time.Time
	fullLogged    time.Time
	// sleep waits d or until the listener is closed (a test seam).
	sleep func(d time.Duration)
}

func newConnListener(ln net.Listener, limits connLimits, log *slog.Logger) *connListener {
	l := &connListener{Listener: ln, limits: limits, log: log, closed: make(chan struct{}), perKey: map[netip.Addr]int{}}
	l.sleep = func(d time.Duration) {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-l.closed:
		}
	}
	return l
}

// Accept returns the next connection within the caps. It returns an error only when
// the listener is closed or fails for good.
func (l *connListener) Accept() (net.Conn, error) {
	delay := time.Duration(0)
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !retryableAccept(err) {
				return nil, err
			}
			delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
			l.acceptFailed(err, delay)
			l.sleep(delay)
			continue
		}
		delay = 0
		l.acceptRecovered()
		key := clientKey(c.RemoteAddr())
		if !l.admit(key) {
			l.refuse(c, key)
			continue
		}
		if n := l.open.Add(1); n > int64(l.limits.MaxConns) && time.Since(l.fullLogged) > time.Minute {
			// fasthttp refuses this one (Concurrency): say so, once a minute.
			l.fullLogged = time.Now()
			l.log.Warn("connection limit reached: new connections are refused (503) until others close",
				"max_conns", l.limits.MaxConns, "max_conns_per_ip", l.limits.MaxConnsPerIP)
		}
		return &trackedConn{Conn: c, l: l, key: key}, nil
	}
}

// Close closes the listener once; later calls return nil (fasthttp's shutdown and
// run's deferred close both close it).
func (l *connListener) Close() error {
	l.closeOnce.Do(func() {
		close(l.closed)
		l.closeErr = l.Listener.Close()
	})
	return l.closeErr
}

// Open returns the number of accepted connections not yet closed.
func (l *connListener) Open() int { return int(l.open.Load()) }

func (l *connListener) acceptFailed(err error, delay time.Duration) {
	now := time.Now()
	if l.failStreak == 0 {
		l.failSince = now
	}
	l.failStreak++
	if l.failStreak == 1 || now.Sub(l.failLogged) >= 10*time.Second {
		l.failLogged = now
		l.log.Warn("accept failed; retrying", "err", err, "failures", l.failStreak,
			"since", l.failSince.UTC(), "retry_in", delay.String(), "open_conns", l.Open())
	}
}

func (l *connListener) acceptRecovered() {
	if l.failStreak == 0 {
		return
	}
	l.log.Warn("accept works again", "failures", l.failStreak,
		"for", time.Since(l.failSince).Round(time.Millisecond).String(), "open_conns", l.Open())
	l.failStreak = 0
}

// admit counts a connection of key, unless its address is at the cap.
func (l *connListener) admit(key netip.Addr) bool {
	if l.limits.MaxConnsPerIP <= 0 || !key.IsValid() {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perKey[key] >= l.limits.MaxConnsPerIP {
		return false
	}
	l.perKey[key]++
	return true
}

func (l *connListener) release(key netip.Addr) {
	l.open.Add(-1)
	if l.limits.MaxConnsPerIP <= 0 || !key.IsValid() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perKey[key]--; l.perKey[key] <= 0 {
		delete(l.perKey, key)
	}
}

// tooManyFromAddr is the whole answer to a connection over MAX_CONNS_PER_IP, in the
// manner of fasthttp's own 503 for one over MAX_CONNS.
var tooManyFromAddr = func() []byte {
	const body = "too many connections from your address; retry later"
	return []byte("HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		"Connection: close\r\nRetry-After: 1\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}()

func (l *connListener) refuse(c net.Conn, key netip.Addr) {
	// a fresh socket's send buffer is empty: the write does not wait; the deadline is
	// there so that Accept never can
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Write(tooManyFromAddr)
	_ = c.Close()
	l.refusedPerIP++
	if now := time.Now(); now.Sub(l.refusedLogged) >= 10*time.Second {
		l.log.Warn("connections refused: too many from one address",
			"addr", key.String(), "max_conns_per_ip", l.limits.MaxConnsPerIP, "refused", l.refusedPerIP)
		l.refusedLogged, l.refusedPerIP = now, 0
	}
}

// clientKey is what MAX_CONNS_PER_IP counts: the IPv4 address, or the /64 of an IPv6
// one (a single host commonly has a whole /64 to pick addresses from). Not an IP
// address (a Unix socket): the zero Addr, never capped.
func clientKey(a net.Addr) netip.Addr {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return netip.Addr{}
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// retryableAccept reports whether an accept error passes: the listener still works
// and a later accept can succeed. Descriptors or memory running out, and errors of
// one queued connection (accept(2): "treat them like EAGAIN by retrying").
func retryableAccept(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
			syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN,
			syscall.EPERM, syscall.ETIMEDOUT, syscall.EPROTO, syscall.ENOPROTOOPT,
			syscall.ENETDOWN, syscall.ENETUNREACH, syscall.EHOSTDOWN, syscall.EHOSTUNREACH,
			syscall.EOPNOTSUPP:
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// trackedConn is an accepted connection; closing it releases its place in the counts.
type trackedConn struct {
	net.Conn
	l      *connListener
	key    netip.Addr
	closed atomic.Bool
}

// NetConn returns the connection c wraps (the socket), as crypto/tls's Conn does: the
// replay of a past version peeks at it to notice a client that hung up.
func (c *trackedConn) NetConn() net.Conn { return c.Conn }

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	if c.closed.CompareAndSwap(false, true) {
		c.l.release(c.key)
	}
	return err
}
