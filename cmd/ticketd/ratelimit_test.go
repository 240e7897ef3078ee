package main

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ticketd/ticketd/httpapi/auth"
)

// slowStart is the limiter's timeout in the tests that count a budget exactly: a
// fresh cluster client's first call loads the slot map and dials, which under -race
// on a busy host can pass the default 50ms and fail open (as it may in production:
// one unlimited request), and the count would be off by one.
const slowStart = "2s"

// TestRateLimitSharedByInstances: two ticketd on one database and one Redis spend one
// budget per principal: the RateLimit headers count down across both, then either
// answers 429 rate-limited with Retry-After.
func TestRateLimitSharedByInstances(t *testing.T) {
	t.Parallel()
	a := startServer(t, map[string]string{"RATE_LIMIT_AGENT": "1/m,burst=4", "RATE_LIMIT_TIMEOUT": slowStart})
	b := startServer(t, map[string]string{"RATE_LIMIT_AGENT": "1/m,burst=4", "RATE_LIMIT_TIMEOUT": slowStart,
		"DATABASE_DSN": a.DSN, "REDIS_PREFIX": a.Env["REDIS_PREFIX"]})
	agent, _ := tokenFor(t, a, auth.RoleAgent, "", time.Hour)

	for i, s := range []*testServer{a, b, a, b} {
		r := s.do(t, "GET", "/v1/ticket/", nil, bearerOf(agent)...).expect(t, 200)
		if got, want := r.Header.Get("RateLimit-Limit"), "4"; got != want {
			t.Errorf("request %d: RateLimit-Limit %q, want %q", i+1, got, want)
		}
		if got, want := r.Header.Get("RateLimit-Remaining"), strconv.Itoa(3-i); got != want {
			t.Errorf("request %d: RateLimit-Remaining %q, want %q (one budget across both instances)", i+1, got, want)
		}
		if reset, err := strconv.Atoi(r.Header.Get("RateLimit-Reset")); err != nil || reset < 1 {
			t.Errorf("request %d: RateLimit-Reset %q, want whole seconds", i+1, r.Header.Get("RateLimit-Reset"))
		}
	}
	for _, s := range []*testServer{a, b} {
		r := s.do(t, "GET", "/v1/ticket/", nil, bearerOf(agent)...).expect(t, 429)
		if p := r.problem(t); p["code"] != "rate-limited" {
			t.Errorf("over the limit: problem %v, want rate-limited", p)
		}
		if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
			t.Errorf("over the limit: Retry-After %q, want 1..60 s", r.Header.Get("Retry-After"))
		}
		if r.Header.Get("RateLimit-Remaining") != "0" || r.Header.Get("RateLimit-Limit") != "4" {
			t.Errorf("over the limit: RateLimit-Limit %q Remaining %q, want 4 and 0",
				r.Header.Get("RateLimit-Limit"), r.Header.Get("RateLimit-Remaining"))
		}
	}
	// another principal has a budget of its own (the admin's limit is off here)
	r := a.do(t, "GET", "/v1/ticket/", nil).expect(t, 200)
	if h := r.Header.Get("RateLimit-Limit"); h != "" {
		t.Errorf("admin with RATE_LIMIT_ADMIN=off: RateLimit-Limit %q, want none", h)
	}
}

// TestFailedAuthenticationLimitedPerAddress: past its budget of failed
// authentications an address gets 429 instead of 401; good credentials from it are
// still served.
func TestFailedAuthenticationLimitedPerAddress(t *testing.T) {
	t.Parallel()
	s := startServer(t, map[string]string{"RATE_LIMIT_AUTH_FAILURES": "1/m,burst=3", "RATE_LIMIT_TIMEOUT": slowStart})
	bad := bearerOf("tkd_A123456789012345678901234567890123456789012")
	for i := range 3 {
		r := s.do(t, "GET", "/v1/ticket/", nil, bad...).expect(t, 401)
		if got, want := r.Header.Get("RateLimit-Remaining"), strconv.Itoa(2-i); got != want {
			t.Errorf("failure %d: RateLimit-Remaining %q, want %q", i+1, got, want)
		}
	}
	for _, h := range [][]string{bad, {"Authorization", ""}, {"Authorization", "Basic YTpi"}} {
		r := s.do(t, "GET", "/v1/ticket/", nil, h...).expect(t, 429)
		if p := r.problem(t); p["code"] != "rate-limited" || !strings.Contains(p["detail"].(string), "failed authentications") {
			t.Errorf("%v over the limit: problem %v, want rate-limited naming failed authentications", h, p)
		}
		if r.Header.Get("Retry-After") == "" {
			t.Errorf("%v over the limit: no Retry-After", h)
		}
	}
	s.do(t, "GET", "/v1/ticket/", nil).expect(t, 200)
}

// TestRateLimitFailsOpenWithoutRedis: with Redis unreachable the limits cannot be
// kept; requests are served anyway, quickly, and the failures are counted.
func TestRateLimitFailsOpenWithoutRedis(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	_ = ln.Close()
	s := startServer(t, map[string]string{"REDIS_ADDRS": closed,
		"RATE_LIMIT_ADMIN": "1/m,burst=1", "RATE_LIMIT_AUTH_FAILURES": "1/m,burst=1"})
	for i := range 5 {
		start := time.Now()
		r := s.do(t, "GET", "/v1/ticket/", nil).expect(t, 200)
		if d := time.Since(start); d > time.Second {
			t.Errorf("request %d took %s with Redis down", i+1, d)
		}
		if h := r.Header.Get("RateLimit-Limit"); h != "" {
			t.Errorf("request %d: RateLimit-Limit %q while the budget cannot be read, want none", i+1, h)
		}
		s.do(t, "GET", "/v1/ticket/", nil, bearerOf("tkd_A123456789012345678901234567890123456789012")...).expect(t, 401)
	}
	s.do(t, "POST", "/v1/ticket/", map[string]any{"title": "t", "email": "e@example.com", "created_by": "c"}).expect(t, 201)
	metrics := string(s.do(t, "GET", "/metrics", nil).expect(t, 200).Body)
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, `ticketd_rate_limit_failures_total{limit="principal"`) && !strings.HasSuffix(l, " 0") {
			return
		}
	}
	t.Errorf("no principal rate limit failure counted in /metrics:\n%s", metrics)
}

// TestRevocationAcrossInstances: a token revoked over HTTP on one instance stops
// working on the other, which had it cached: no request sent a second or more after
// the revocation is accepted (the cache keeps a verified token one second), and once
// refused it stays refused.
func TestRevocationAcrossInstances(t *testing.T) {
	t.Parallel()
	a := startServer(t, nil)
	b := startServer(t, map[string]string{"DATABASE_DSN": a.DSN, "REDIS_PREFIX": a.Env["REDIS_PREFIX"]})
	agent, rec := tokenFor(t, a, auth.RoleAgent, "", time.Hour)
	for _, s := range []*testServer{a, b} {
		s.do(t, "GET", "/v1/ticket/", nil, bearerOf(agent)...).expect(t, 200) // verified, now cached
	}
	a.do(t, "DELETE", "/v1/tokens/"+rec.ID.String(), nil).expect(t, 204)
	revoked := time.Now()
	var lastAccepted time.Duration // when the last request that got a 200 was sent
	for {
		sent := time.Since(revoked)
		r := b.do(t, "GET", "/v1/ticket/", nil, bearerOf(agent)...)
		if r.Status == 401 {
			break
		}
		if r.Status != 200 {
			t.Fatalf("while revoking: %d %s", r.Status, r.Body)
		}
		lastAccepted = sent
		if sent > 3*time.Second {
			t.Fatalf("the other instance still accepts the token %s after its revocation", sent)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("the other instance last accepted the revoked token in a request sent %s after the revocation", lastAccepted)
	if lastAccepted >= time.Second {
		t.Fatalf("a request sent %s after the revocation was accepted, want under 1s", lastAccepted)
	}
	for _, s := range []*testServer{a, b, a, b} {
		s.do(t, "GET", "/v1/ticket/", nil, bearerOf(agent)...).expect(t, 401)
	}
}
