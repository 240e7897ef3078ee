package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/caarlos0/env/v11"
)

// Every configuration error names the environment variable, the value given and the
// form expected, never a Go field or type.
func TestConfigErrorsNameTheVariableAndTheForm(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		key, value string
		want       string // the whole problem, or its start when it ends in "…"
	}{
		// values that do not parse
		{"REDIS_TIMEOUT", "abc", `REDIS_TIMEOUT: "abc" is not a duration (a number and a unit: 150ms, 2s, 1m, 24h; units ns, us, ms, s, m, h; the default is 150ms)`},
		{"IDEMPOTENCY_TTL", "1d", `IDEMPOTENCY_TTL: "1d" is not a duration (a number and a unit: 150ms, 2s, 1m, 24h; units ns, us, ms, s, m, h; the default is 24h)`},
		{"SHUTDOWN_TIMEOUT", "15", `SHUTDOWN_TIMEOUT: "15" is not a duration (…`},
		{"REQUEST_TIMEOUT", "5 s", `REQUEST_TIMEOUT: "5 s" is not a duration (…`},
		{"IDLE_TIMEOUT", "x", `IDLE_TIMEOUT: "x" is not a duration (…`},
		{"ACCESS_LOG_SLOW", "fast", `ACCESS_LOG_SLOW: "fast" is not a duration (…`},
		{"HOUSEKEEPING_INTERVAL", "hourly", `HOUSEKEEPING_INTERVAL: "hourly" is not a duration (…`},
		{"AUDIT_ANCHOR_INTERVAL", "hourly", `AUDIT_ANCHOR_INTERVAL: "hourly" is not a duration (…`},
		{"OUTBOX_RETENTION", "forever", `OUTBOX_RETENTION: "forever" is not a duration (…`},
		{"PG_MAX_CONNS", "many", `PG_MAX_CONNS: "many" is not a whole number (digits only, e.g. 32; the default is 32)`},
		{"PG_MAX_CONNS", "3000000000", `PG_MAX_CONNS: "3000000000" is too large (a whole number, at most 2147483647)`},
		{"REDIS_PORT", "redis", `REDIS_PORT: "redis" is not a whole number (digits only, e.g. 32; the default is 6379)`},
		{"REDIS_PORT", "6379.5", `REDIS_PORT: "6379.5" is not a whole number (…`},
		{"BODY_LIMIT", "64k", `BODY_LIMIT: "64k" is not a whole number (…`},
		{"MAX_CONNS", "lots", `MAX_CONNS: "lots" is not a whole number (digits only, e.g. 32)`},
		{"MAX_CONNS_PER_IP", "-", `MAX_CONNS_PER_IP: "-" is not a whole number (…`},
		{"REPLAY_CONCURRENCY", "auto", `REPLAY_CONCURRENCY: "auto" is not a whole number (…`},
		{"HISTORY_PAGE_BYTES", "1MB", `HISTORY_PAGE_BYTES: "1MB" is not a whole number (…`},
		{"ACCESS_LOG_SAMPLE", "1%", `ACCESS_LOG_SAMPLE: "1%" is not a number (e.g. 0.5; the default is 0.01)`},
		// values that parse but are out of bounds
		{"REDIS_TIMEOUT", "0s", `REDIS_TIMEOUT must be a positive duration (e.g. 150ms), not 0s`},
		{"REQUEST_TIMEOUT", "-1s", `REQUEST_TIMEOUT must be a positive duration (e.g. 5s), not -1s`},
		{"SHUTDOWN_TIMEOUT", "0s", `SHUTDOWN_TIMEOUT must be a positive duration (e.g. 15s), not 0s`},
		{"IDEMPOTENCY_TTL", "-1h", `IDEMPOTENCY_TTL must be positive, not -1h0m0s`},
		{"IDLE_TIMEOUT", "0s", `IDLE_TIMEOUT must be positive, not 0s`},
		{"ACCESS_LOG_SLOW", "0s", `ACCESS_LOG_SLOW must be positive, not 0s`},
		{"HOUSEKEEPING_INTERVAL", "0s", `HOUSEKEEPING_INTERVAL must be positive, not 0s`},
		{"AUDIT_ANCHOR_INTERVAL", "-1h", `AUDIT_ANCHOR_INTERVAL must be 0 (no anchors) or positive, not -1h0m0s`},
		{"PG_MAX_CONNS", "1", `PG_MAX_CONNS must be at least 2, not 1`},
		{"REDIS_PORT", "70000", `REDIS_PORT must be 1..65535, not 70000`},
		{"DATA_KEY", "c2hvcnQ=", `DATA_KEY: must be the base64 of 32 random bytes (e.g. openssl rand -base64 32)`},
		{"DATA_KEY_FILE", "/nonexistent/data.key", `DATA_KEY_FILE: "/nonexistent/data.key" cannot be read: no such file or directory`},
		{"NEW_DATA_KEY", "not base64!", `NEW_DATA_KEY: must be the base64 of 32 random bytes (e.g. openssl rand -base64 32)`},
		{"NEW_DATA_KEY_FILE", "/nonexistent/new.key", `NEW_DATA_KEY_FILE: "/nonexistent/new.key" cannot be read: …`},
		{"REDIS_HOST", "a host", `REDIS_HOST: "a host" must be a host name or IP address, e.g. 127.0.0.1`},
		{"REDIS_ADDRS", "127.0.0.1:7001,127.0.0.1", `REDIS_ADDRS: "127.0.0.1" must be host:port (…`},
		{"REDIS_PREFIX", "a b", `REDIS_PREFIX: redis key prefix "a b" must not contain braces, glob characters or spaces`},
		{"BODY_LIMIT", "100", `BODY_LIMIT must be at least 1024 bytes, not 100`},
		{"MAX_CONNS", "-1", `MAX_CONNS must be 0 (…`},
		{"MAX_CONNS_PER_IP", "-1", `MAX_CONNS_PER_IP must be 0 (no cap) or more, not -1`},
		{"REPLAY_CONCURRENCY", "-2", `REPLAY_CONCURRENCY must be 0 (…`},
		{"HISTORY_PAGE_BYTES", "10", `HISTORY_PAGE_BYTES must be at least 1024, not 10`},
		{"ACCESS_LOG_SAMPLE", "2", `ACCESS_LOG_SAMPLE must be a fraction from 0 to 1, not 2`},
		{"ACCESS_LOG_SAMPLE", "NaN", `ACCESS_LOG_SAMPLE must be a fraction from 0 to 1, not NaN`},
		{"LOG_LEVEL", "verbose", `LOG_LEVEL must be debug, info, warn or error, not "verbose"`},
		{"HTTP_ADDR", "8000", `HTTP_ADDR "8000" must be [host]:port`},
		{"HTTP_ADDR", ":99999", `HTTP_ADDR ":99999": the port must be a number from 1 to 65535`},
		{"PPROF_ADDR", ":6060", `PPROF_ADDR ":6060": must be a loopback address (…`},
		{"AUTOMEMLIMIT", "80%", `AUTOMEMLIMIT must be off or a ratio of the container's memory in (0, 1], e.g. 0.8, not "80%"`},
		{"AUTOMEMLIMIT", "1.5", `AUTOMEMLIMIT must be off or a ratio of the container's memory in (0, 1], e.g. 0.8, not "1.5"`},
		{"AUTOMEMLIMIT", "0", `AUTOMEMLIMIT must be off or a ratio …`},
		{"AUTOMEMLIMIT", "NaN", `AUTOMEMLIMIT must be off or a ratio …`},
		{"DATABASE_DSN", "mysql://x/y", `DATABASE_DSN must be a URL like postgres://user@host:5432/dbname?sslmode=disable`},
		{"DATABASE_DSN", "postgres://x", `DATABASE_DSN must name a database (the path of the URL)`},
		{"OIDC_LEEWAY", "30", `OIDC_LEEWAY: "30" is not a duration (a number and a unit: 150ms, 2s, 1m, 24h; units ns, us, ms, s, m, h; the default is 30s)`},
		{"OIDC_JWKS_REFRESH", "hourly", `OIDC_JWKS_REFRESH: "hourly" is not a duration (…`},
		{"OIDC_AUDIENCE", "ticketd", `OIDC_AUDIENCE or OIDC_JWKS_URL is set but OIDC_ISSUER is empty…`},
		{"OIDC_JWKS_URL", "https://idp.example/jwks", `OIDC_AUDIENCE or OIDC_JWKS_URL is set but OIDC_ISSUER is empty…`},
		{"RATE_LIMIT_AGENT", "10/d", `RATE_LIMIT_AGENT: "10/d": unit "d"…`},
		{"RATE_LIMIT_AUTH_FAILURES", "-1/m", `RATE_LIMIT_AUTH_FAILURES: "-1/m": rate…`},
		{"RATE_LIMIT_TIMEOUT", "50", `RATE_LIMIT_TIMEOUT: "50" is not a duration (…`},
		{"RATE_LIMIT_TIMEOUT", "1m", `RATE_LIMIT_TIMEOUT must be from 1ms to 5s, not 1m0s`},
		{"WEBHOOK_ALLOW_PRIVATE", "yes please", `WEBHOOK_ALLOW_PRIVATE: "yes please" is not a boolean (true or false)`},
		{"WEBHOOK_TIMEOUT", "10", `WEBHOOK_TIMEOUT: "10" is not a duration (…`},
		{"WEBHOOK_TIMEOUT", "1h", `WEBHOOK_TIMEOUT must be from 1ms to 5m, not 1h0m0s`},
		{"WEBHOOK_MAX_AGE", "1d", `WEBHOOK_MAX_AGE: "1d" is not a duration (…`},
		{"WEBHOOK_MAX_AGE", "0s", `WEBHOOK_MAX_AGE must be a positive duration, not 0s`},
		{"WEBHOOK_BACKOFF_MIN", "-1s", `WEBHOOK_BACKOFF_MIN must be a positive duration, not -1s`},
		{"WEBHOOK_BACKOFF_MAX", "1s", `WEBHOOK_BACKOFF_MAX (1s) must be at least WEBHOOK_BACKOFF_MIN (5s)`},
		{"WEBHOOK_DISABLE_AFTER", "-1", `WEBHOOK_DISABLE_AFTER must be 0 (never) or more, not -1`},
		{"WEBHOOK_CONCURRENCY", "0", `WEBHOOK_CONCURRENCY must be at least 1, not 0`},
		{"WEBHOOK_ENDPOINT_CONCURRENCY", "0", `WEBHOOK_ENDPOINT_CONCURRENCY must be at least 1, not 0`},
		{"WEBHOOK_POLL_INTERVAL", "0s", `WEBHOOK_POLL_INTERVAL must be a positive duration, not 0s`},
		{"WEBHOOK_RETENTION", "week", `WEBHOOK_RETENTION: "week" is not a duration (…`},
		{"WEBHOOK_ROTATION_GRACE", "-1h", `WEBHOOK_ROTATION_GRACE must be 0 or more, not -1h0m0s`},
	} {
		t.Run(c.key+"="+c.value, func(t *testing.T) {
			_, err := loadConfig(func(k string) string {
				if k == c.key {
					return c.value
				}
				return ""
			})
			var ce *ConfigError
			if !errors.As(err, &ce) || len(ce.Problems) != 1 {
				t.Fatalf("error %v, want one configuration problem", err)
			}
			got := ce.Problems[0].Error()
			if want, ok := strings.CutSuffix(c.want, "…"); ok {
				if !strings.HasPrefix(got, want) {
					t.Errorf("got  %s\nwant %s…", got, want)
				}
			} else if got != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
			if msg := err.Error(); strings.Contains(msg, "field") || strings.Contains(msg, "time.Duration") || strings.Contains(msg, "int32") {
				t.Errorf("the error names a Go field or type: %s", msg)
			}
		})
	}
}

// Every variable of Config is covered by the table above, so a new variable cannot
// slip in with caarlos0/env's own messages.
func TestEveryVariableHasAnErrorCase(t *testing.T) {
	t.Parallel()
	params, err := env.GetFieldParams(&Config{})
	if err != nil {
		t.Fatal(err)
	}
	// Variables whose every value is accepted: free text.
	free := map[string]bool{"CURSOR_SECRET": true}
	// The OIDC_* variables are judged only when JWT login is on: each is tried in an
	// otherwise good OIDC configuration.
	oidc := map[string]string{"OIDC_ISSUER": "https://idp.example", "OIDC_AUDIENCE": "ticketd", "OIDC_JWKS_URL": "https://idp.example/jwks"}
	for _, p := range params {
		if free[p.Key] {
			continue
		}
		_, err := loadConfig(func(k string) string {
			if k == p.Key {
				return "\x01not valid\x01"
			}
			if strings.HasPrefix(p.Key, "OIDC_") {
				return oidc[k]
			}
			return ""
		})
		if err == nil || !strings.HasPrefix(err.Error(), "invalid configuration: "+p.Key) {
			t.Errorf("%s with a nonsense value: error %v, want one naming %s first", p.Key, err, p.Key)
		}
	}
}

// All bad variables are reported at once, each once: one that does not parse is not
// judged again by Validate as if it were zero.
func TestConfigReportsEveryBadVariableOnce(t *testing.T) {
	t.Parallel()
	vars := map[string]string{
		"REDIS_TIMEOUT": "abc", "PG_MAX_CONNS": "x", "IDEMPOTENCY_TTL": "1d",
		"SHUTDOWN_TIMEOUT": "soon", "REDIS_PORT": "port", "LOG_LEVEL": "loud", "BODY_LIMIT": "1",
	}
	_, err := loadConfig(func(k string) string { return vars[k] })
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v, want a ConfigError", err)
	}
	if len(ce.Problems) != len(vars) {
		t.Errorf("%d problems, want %d (one per variable):\n%v", len(ce.Problems), len(vars), err)
	}
	for k := range vars {
		if n := strings.Count(err.Error(), "\n  "+k+" ") + strings.Count(err.Error(), "\n  "+k+":"); n != 1 {
			t.Errorf("%s reported %d times:\n%v", k, n, err)
		}
	}
	if !strings.HasPrefix(err.Error(), "invalid configuration (7 problems):\n  ") {
		t.Errorf("error %q: want a count, then one problem a line", err)
	}
}

// AUTOMEMLIMIT takes what automemlimit takes: empty (the default share), off, or a
// ratio in (0, 1].
func TestAutoMemLimitValues(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"", "off", "0.8", "1", "0.05"} {
		if _, err := loadConfig(func(k string) string {
			if k == "AUTOMEMLIMIT" {
				return v
			}
			return ""
		}); err != nil {
			t.Errorf("AUTOMEMLIMIT=%q: %v", v, err)
		}
	}
}
