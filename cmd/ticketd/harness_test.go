package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/httpapi/auth"
)

// testServer is a ticketd started through run, as main starts it, on a free port
// against a fresh database and the test Redis Cluster.
type testServer struct {
	URL  string
	DSN  string
	Env  map[string]string
	stop func() error
	logs *syncBuffer
}

// redisAddrs returns the test Redis Cluster's seeds (scripts/test-env.sh sets them).
func redisAddrs() string {
	if v := os.Getenv("TEST_REDIS_ADDRS"); v != "" {
		return v
	}
	return "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startServer runs ticketd with env layered over the test defaults. The server stops
// (gracefully, as on SIGTERM) when the test ends.
func startServer(t testing.TB, env map[string]string) *testServer {
	t.Helper()
	full := processEnv(t, dbtest.NewDatabase(t))
	for k, v := range env {
		full[k] = v
	}
	s := &testServer{URL: "http://" + full["HTTP_ADDR"], DSN: full["DATABASE_DSN"], Env: full, logs: &syncBuffer{}}
	s.start(t)
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("server stopped with error: %v\nlogs:\n%s", err, s.logs.String())
		}
	})
	return s
}

func (s *testServer) start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return s.Env[k] }, s.logs) }()
	var once sync.Once
	var stopErr error
	s.stop = func() error {
		once.Do(func() { cancel(); stopErr = <-done })
		return stopErr
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case err := <-done:
			t.Fatalf("ticketd exited during start: %v\nlogs:\n%s", err, s.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ticketd did not answer /healthz in 30s\nlogs:\n%s", s.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop shuts the server down as SIGTERM would and returns run's error.
func (s *testServer) Stop() error { return s.stop() }

// Restart stops the server and starts it again on the same database and port.
func (s *testServer) Restart(t testing.TB) {
	t.Helper()
	if err := s.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	s.start(t)
}

// response is a finished HTTP exchange.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into v, failing the test if it cannot.
func (r response) JSON(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %q: %v", r.Body, err)
	}
}

// problem decodes a problem+json body, checking the content type.
func (r response) problem(t testing.TB) map[string]any {
	t.Helper()
	if ct := r.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q, want application/problem+json; body %s", ct, r.Body)
	}
	var p map[string]any
	r.JSON(t, &p)
	return p
}

var client = &http.Client{Timeout: 30 * time.Second}

// do sends a request; body may be nil, a string/[]byte (sent as is) or a value (sent
// as JSON). Headers are "Name", "value" pairs; JSON bodies get a JSON content type
// unless one is given.
func (s *testServer) do(t testing.TB, method, path string, body any, headers ...string) response {
	t.Helper()
	r, err := s.tryDo(method, path, body, headers...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// tryDo is do returning the transport's error instead of failing the test.
func (s *testServer) tryDo(method, path string, body any, headers ...string) (response, error) {
	var rd io.Reader
	isJSON := false
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
		isJSON = true
	case []byte:
		rd = bytes.NewReader(b)
		isJSON = true
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return response{}, fmt.Errorf("encode body: %w", err)
		}
		rd = bytes.NewReader(raw)
		isJSON = true
	}
	req, err := http.NewRequest(method, s.URL+path, rd)
	if err != nil {
		return response{}, err
	}
	if isJSON {
		req.Header.Set("Content-Type", "application/json")
	}
	authorize(req)
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" && strings.EqualFold(headers[i], "Authorization") {
			req.Header.Del("Authorization") // an explicit "no token"
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		// a live event stream does not end: its status and headers only
		return response{Status: resp.StatusCode, Header: resp.Header}, nil
	}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("read body: %w", err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: raw}, nil
}

// expect fails the test unless the response has the wanted status.
func (r response) expect(t testing.TB, status int) response {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d; body %s", r.Status, status, r.Body)
	}
	return r
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer collects the server's log lines safely across goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testAdminToken is the admin token every test server accepts (processEnv registers
// it as AUTH_BOOTSTRAP_TOKEN) and the harness sends by default: tests that need
// another role or none say so (asRole, an empty Authorization header).
var testAdminToken = func() string {
	tok, err := auth.GenerateToken()
	if err != nil {
		panic(err)
	}
	return tok
}()

// authorize gives req the test admin token unless it carries credentials already.
func authorize(req *http.Request) *http.Request {
	if req.Header.Get("Authorization") == "" {
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
	}
	return req
}

// adminGet and adminPost are http.Get and http.Post with the test admin token.
func adminGet(url string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	return http.DefaultClient.Do(authorize(req))
}

func adminPost(url, contentType string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, url, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", contentType)
	return http.DefaultClient.Do(authorize(req))
}

// processEnv is the environment of a test's ticketd on database dsn: the test Redis
// Cluster, a free port, warn-level logs, a small pool (many test servers share one
// Postgres of max_connections 100) and Redis keys of its own (parallel tests never see
// each other's documents).
func processEnv(t testing.TB, dsn string) map[string]string {
	env := map[string]string{
		"DATABASE_DSN": dsn,
		"REDIS_ADDRS":  redisAddrs(),
		"HTTP_ADDR":    freeAddr(t),
		"LOG_LEVEL":    "warn",
		"PG_MAX_CONNS": "6",
		"REDIS_PREFIX": "test-" + strings.ReplaceAll(uuid.NewString(), "-", ""),
		// auth is on, as in production; the harness sends this admin token by default
		"AUTH_BOOTSTRAP_TOKEN": testAdminToken,
	}
	maps.Copy(env, noRateLimits)
	maps.Copy(env, testDataKey)
	return env
}

// testDataKey gives a test's ticketd its master key of personal data (DATA_KEY): the
// tests' fixed one, so a test's processes and its direct stores share it.
var testDataKey = map[string]string{"DATA_KEY": dbtest.DataKey}

// noRateLimits turns the rate limits off for a test's ticketd: every test comes from
// 127.0.0.1 with a handful of tokens, and load, hostile-corpus and 401 tests would be
// throttled by the production defaults (10 failed authentications per address, 200
// admin requests at once). The limits' own tests set theirs.
var noRateLimits = map[string]string{
	"RATE_LIMIT_ADMIN": "off", "RATE_LIMIT_AGENT": "off", "RATE_LIMIT_AUDITOR": "off",
	"RATE_LIMIT_REQUESTER": "off", "RATE_LIMIT_AUTH_FAILURES": "off",
}
