package ratelimit

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ticketd/ticketd/projections/redismodel"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/ticketd/ticketd/httpapi/auth"
)

// closedAddr is an address nothing listens on: connections are refused at once.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// silentRedis accepts connections and never answers: a Redis that hangs. It reports
// how many connections it accepted.
func silentRedis(t *testing.T) (addr string, accepted *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = new(atomic.Int32)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String(), accepted
}

// records counts log records, keeping the last one's attributes.
type records struct {
	mu    sync.Mutex
	n     int
	attrs map[string]slog.Value
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	r.attrs = map[string]slog.Value{}
	rec.Attrs(func(a slog.Attr) bool { r.attrs[a.Key] = a.Value; return true })
	return nil
}

func (r *records) count() (int, map[string]slog.Value) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n, r.attrs
}

func metrics(t *testing.T) *Metrics {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func failures(m *Metrics, kind, reason string) int {
	return int(testutil.ToFloat64(m.failures.WithLabelValues(kind, reason)))
}

const outageTimeout = 50 * time.Millisecond

// latencyBound is what a call may take at most when Redis is down: the timeout and a
// margin for a loaded machine and the race detector. The clients' own timeouts are
// seconds: a call bounded by this one did not wait for them.
const latencyBound = outageTimeout + 150*time.Millisecond

func TestRedisRefusingFailsOpenQuickly(t *testing.T) {
	t.Parallel()
	for name, rdb := range map[string]redis.UniversalClient{
		"client":  redis.NewClient(&redis.Options{Addr: closedAddr(t)}),
		"cluster": redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{closedAddr(t), closedAddr(t)}}),
	} {
		t.Run(name, func(t *testing.T) {
			t.Cleanup(func() { _ = rdb.Close() })
			m := metrics(t)
			l := limits(map[auth.Role]string{auth.RoleAgent: "10/s"}, "10/m")
			l.Timeout = outageTimeout
			lim := newLimiter(t, rdb, l, Options{Metrics: m, Logger: slog.New(&records{})})
			start := time.Now()
			d := lim.Allow(context.Background(), principal(auth.RoleAgent))
			if took := time.Since(start); took > latencyBound {
				t.Errorf("Allow took %s with Redis refusing connections; want under %s", took, latencyBound)
			}
			if !d.Allowed || d.Enforced {
				t.Errorf("Allow with Redis down: want allowed and not enforced (fail open), got %+v", d)
			}
			if d := lim.AllowAuthFailure(context.Background(), "192.0.2.1"); !d.Allowed || d.Enforced {
				t.Errorf("AllowAuthFailure with Redis down: want allowed and not enforced, got %+v", d)
			}
			got := failures(m, kindPrincipal, "error") + failures(m, kindPrincipal, "timeout")
			if got != 1 || failures(m, kindAuthFailure, "error")+failures(m, kindAuthFailure, "timeout") != 1 {
				t.Errorf("failures counted: want 1 per limit, got %d for principals", got)
			}
		})
	}
}

func TestRedisHangingFailsOpenWithinTheTimeoutThenCostsNoRoundTrip(t *testing.T) {
	t.Parallel()
	addr, accepted := silentRedis(t)
	// the client's own read timeout is the default 3 s: only the Limiter bounds the call
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}})
	t.Cleanup(func() { _ = rdb.Close() })
	m := metrics(t)
	logs := &records{}
	l := limits(map[auth.Role]string{auth.RoleAdmin: "100/s"}, "")
	l.Timeout = outageTimeout
	lim := newLimiter(t, rdb, l, Options{Metrics: m, Logger: slog.New(logs), LogEvery: time.Hour})
	ctx := context.Background()
	p := principal(auth.RoleAdmin)

	for i := range redismodel.BreakerThreshold {
		start := time.Now()
		d := lim.Allow(ctx, p)
		took := time.Since(start)
		if took < outageTimeout || took > latencyBound {
			t.Errorf("call %d to a hanging Redis took %s; want the timeout, %s to %s", i+1, took, outageTimeout, latencyBound)
		}
		if !d.Allowed || d.Enforced {
			t.Errorf("call %d: want allowed, not enforced, got %+v", i+1, d)
		}
	}
	if accepted.Load() == 0 {
		t.Fatal("the silent Redis accepted no connection: the calls did not reach it")
	}
	if got := failures(m, kindPrincipal, "timeout"); got != redismodel.BreakerThreshold {
		t.Errorf("timeouts counted: want %d, got %d", redismodel.BreakerThreshold, got)
	}
	// the breaker is open: a request costs no round trip
	const n = 200
	start := time.Now()
	for i := range n {
		if d := lim.Allow(ctx, p); !d.Allowed {
			t.Fatalf("call %d with the breaker open: refused %+v", i, d)
		}
	}
	// A call that went to Redis would wait for the whole timeout; a tighter bound only
	// measures how busy the machine is.
	if took := time.Since(start); took > outageTimeout {
		t.Errorf("%d calls with the breaker open took %s; want no waiting at all", n, took)
	}
	if got := failures(m, kindPrincipal, "circuit-open"); got != n {
		t.Errorf("circuit-open failures counted: want %d, got %d", n, got)
	}
	// logged once, not per request, with the failures counted in it
	if got, attrs := logs.count(); got != 1 || attrs["reason"].String() != "timeout" {
		t.Errorf("warnings: want 1 (for the first timeout), got %d, last %v", got, attrs)
	}
}

func TestFailOpenWarningRepeatsOncePerInterval(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: closedAddr(t)})
	t.Cleanup(func() { _ = rdb.Close() })
	logs := &records{}
	const every = 300 * time.Millisecond
	l := limits(map[auth.Role]string{auth.RoleAgent: "10/s"}, "")
	l.Timeout = outageTimeout
	lim := newLimiter(t, rdb, l, Options{Logger: slog.New(logs), LogEvery: every})
	ctx := context.Background()
	start := time.Now()
	calls := 0
	for time.Since(start) < every+100*time.Millisecond {
		lim.Allow(ctx, principal(auth.RoleAgent))
		calls++
		time.Sleep(5 * time.Millisecond)
	}
	n, attrs := logs.count()
	if n != 2 {
		t.Fatalf("%d failing calls over %s with LogEvery %s: want 2 warnings, got %d", calls, time.Since(start), every, n)
	}
	// the second warning counts every failure since the first
	if f := attrs["failures"].Int64(); f < 2 || int(f) >= calls {
		t.Errorf("second warning: want the failures since the first (about %d), got %d", calls-1, f)
	}
}

func TestOffNeverTouchesRedis(t *testing.T) {
	t.Parallel()
	addr, accepted := silentRedis(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}})
	t.Cleanup(func() { _ = rdb.Close() })
	m := metrics(t)
	cfg := Config{Admin: "off", Agent: "0", Auditor: "off", Requester: "off", AuthFailures: "0", Timeout: time.Second}
	l, err := cfg.Limits()
	if err != nil {
		t.Fatal(err)
	}
	lim := newLimiter(t, rdb, l, Options{Metrics: m})
	ctx := context.Background()
	start := time.Now()
	for _, role := range append(auth.Roles(), "unknown") {
		for range 5 {
			if d := lim.Allow(ctx, principal(role)); !d.Allowed || d.Enforced {
				t.Errorf("%s with its limit off: want allowed, not enforced, got %+v", role, d)
			}
		}
	}
	if d := lim.AllowAuthFailure(ctx, "192.0.2.1"); !d.Allowed || d.Enforced {
		t.Errorf("auth failure with its limit off: want allowed, not enforced, got %+v", d)
	}
	// One call that went to the silent Redis would wait for the whole timeout (1 s); a
	// bound much tighter than that only measures how busy the machine is (20 ms seen
	// under the race detector with other packages' tests beside it).
	if took := time.Since(start); took > cfg.Timeout/2 {
		t.Errorf("26 calls with every limit off took %s: one waited for Redis", took)
	}
	time.Sleep(20 * time.Millisecond) // a connection would have been accepted by now
	if n := accepted.Load(); n != 0 {
		t.Errorf("Redis got %d connections with every limit off; want none", n)
	}
	for _, kind := range []string{kindPrincipal, kindAuthFailure} {
		for _, reason := range []string{"error", "timeout", "circuit-open"} {
			if n := failures(m, kind, reason); n != 0 {
				t.Errorf("failures{%s,%s} = %d with every limit off", kind, reason, n)
			}
		}
	}
}
