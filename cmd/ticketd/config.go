package main

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/ticketd/ticketd/db"
	"github.com/ticketd/ticketd/httpapi/auth"
	"github.com/ticketd/ticketd/httpapi/ratelimit"
	"github.com/ticketd/ticketd/pii"
	"github.com/ticketd/ticketd/projections/redismodel"
	"github.com/ticketd/ticketd/webhooks"
)

// Config is ticketd's configuration, read from the environment. Every variable is
// listed in the README and .env.example.
type Config struct {
	DatabaseDSN string `env:"DATABASE_DSN" envDefault:"postgres://postgres@127.0.0.1:5432/ticketd?sslmode=disable"`
	// RedisHost and RedisPort name one Redis node (the source's variables); RedisAddrs,
	// a comma-separated list of cluster seeds, wins over them when set.
	RedisHost  string   `env:"REDIS_HOST" envDefault:"127.0.0.1"`
	RedisPort  int      `env:"REDIS_PORT" envDefault:"6379"`
	RedisAddrs []string `env:"REDIS_ADDRS" envSeparator:","`
	// RedisTimeout bounds every Redis call: a slow or hung Redis costs a request at most this.
	RedisTimeout time.Duration `env:"REDIS_TIMEOUT" envDefault:"150ms"`
	HTTPAddr     string        `env:"HTTP_ADDR" envDefault:":8000"`
	LogLevel     string        `env:"LOG_LEVEL" envDefault:"info"`
	// CursorSecret signs list cursors; instances behind one load balancer must share it.
	// Empty: a random key generated once and kept in Postgres (table settings), which
	// every instance on the database loads at start.
	CursorSecret string `env:"CURSOR_SECRET"`
	// BodyLimit is the largest request body accepted, in bytes.
	BodyLimit int `env:"BODY_LIMIT" envDefault:"65536"`
	// RequestTimeout bounds one request's work; past it a slow dependency answers 503.
	RequestTimeout time.Duration `env:"REQUEST_TIMEOUT" envDefault:"5s"`
	// IdempotencyTTL is how long a response stored under an Idempotency-Key answers
	// retries; older keys are ignored and purged.
	IdempotencyTTL time.Duration `env:"IDEMPOTENCY_TTL" envDefault:"24h"`
	// PGMaxConns is the size of the Postgres pool.
	PGMaxConns int32 `env:"PG_MAX_CONNS" envDefault:"32"`
	// HousekeepingInterval is how often an instance tries a housekeeping round (purge of
	// expired idempotency keys, pruning of the outbox); one instance at a time does it.
	HousekeepingInterval time.Duration `env:"HOUSEKEEPING_INTERVAL" envDefault:"1m"`
	// AuditAnchorInterval is how often one instance anchors every stream's head hash
	// (audit_anchors, and a log line with the root); 0 writes none.
	AuditAnchorInterval time.Duration `env:"AUDIT_ANCHOR_INTERVAL" envDefault:"1h"`
	// OutboxRetention is how long an outbox row every consumer group has passed is kept;
	// 0 prunes it at once, negative never.
	OutboxRetention time.Duration `env:"OUTBOX_RETENTION" envDefault:"1h"`
	// ShutdownTimeout bounds the drain of in-flight requests on SIGTERM.
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"15s"`
	// RedisPrefix starts every key of the Redis read model ("<prefix>:{<id>}:doc"), so
	// several deployments (or tests) can share one Redis Cluster.
	RedisPrefix string `env:"REDIS_PREFIX" envDefault:"ticketd"`
	// PprofAddr, when set, is a loopback host:port on which net/http/pprof is served,
	// on a listener of its own (never the API's). Empty: no profiling endpoint.
	PprofAddr string `env:"PPROF_ADDR"`
	// AutoMemLimit is read by automemlimit in main, before the configuration, to set
	// the soft memory limit (see memlimit.go): empty (the 90% default), off (no limit)
	// or a ratio in (0, 1] of the container's memory. It is here so that a malformed
	// value stops the start with the other configuration errors instead of leaving the
	// process without a limit.
	AutoMemLimit string `env:"AUTOMEMLIMIT"`
	// AccessLogSample is the fraction (0..1) of successful reads (GET, HEAD) that get an
	// access log line at info level. Errors, slow requests and writes are always logged.
	AccessLogSample float64 `env:"ACCESS_LOG_SAMPLE" envDefault:"0.01"`
	// AccessLogSlow: a request taking at least this long is always logged.
	AccessLogSlow time.Duration `env:"ACCESS_LOG_SLOW" envDefault:"100ms"`
	// MaxConns caps the open client connections; over it a new connection is answered
	// 503 and closed. 0 (unset): derived from the descriptor limit, see limitsFor.
	MaxConns int `env:"MAX_CONNS"`
	// MaxConnsPerIP caps the open connections of one client address (an IPv6 client:
	// its /64); over it a new connection is answered 429 and closed. 0: no cap.
	MaxConnsPerIP int `env:"MAX_CONNS_PER_IP" envDefault:"256"`
	// IdleTimeout closes a keep-alive connection that has not started its next request
	// within it.
	IdleTimeout time.Duration `env:"IDLE_TIMEOUT" envDefault:"30s"`
	// ReplayConcurrency caps the replays of past versions (GET ?version=N) running at
	// once; beyond it 429 with Retry-After. 0 (unset): GOMAXPROCS/2, at least 1 (a
	// worst-case replay takes about a core of ticketd and Postgres together).
	ReplayConcurrency int `env:"REPLAY_CONCURRENCY"`
	// HistoryPageBytes caps a history page in bytes of its events' JSON, besides its
	// limit in events (a page holds at least one event).
	HistoryPageBytes int `env:"HISTORY_PAGE_BYTES" envDefault:"1048576"`
	// PageBytes caps a page of the list or of a ticket's comments in bytes of its JSON,
	// besides its limit (a page holds at least one item).
	PageBytes int `env:"PAGE_BYTES" envDefault:"262144"`
	// Auth is "on" (every /v1 request and /metrics need a bearer token) or "off" (local
	// development only: every request is an admin; a WARN at start, /readyz says so).
	Auth string `env:"AUTH" envDefault:"on"`
	// AuthBootstrapToken, when set, is an admin API token (tkd_ + 43 base64url
	// characters) registered at start, stored hashed like any token, named "bootstrap":
	// the first admin of an automated deployment, and of the tests. Revoking it holds
	// across restarts.
	AuthBootstrapToken string `env:"AUTH_BOOTSTRAP_TOKEN"`
	// DataKey is the master key of personal data (package pii): the base64 of 32
	// random bytes (openssl rand -base64 32). It wraps every data subject's key; the
	// database keeps a check value and refuses another key. DataKeyFile names a file
	// that holds it instead (a secret mounted as a file); one of them is required to
	// serve, rebuild, print a history, erase or rotate. Never logged.
	DataKey     string `env:"DATA_KEY"`
	DataKeyFile string `env:"DATA_KEY_FILE"`
	// NewDataKey is the master key -rotate-data-key moves every data key to (the same
	// form as DATA_KEY); NewDataKeyFile, a file holding it.
	NewDataKey     string `env:"NEW_DATA_KEY"`
	NewDataKeyFile string `env:"NEW_DATA_KEY_FILE"`
	// OIDC turns on JWT bearer tokens from an OIDC provider as a second way in
	// (OIDC_ISSUER and the other OIDC_* variables); off while OIDC_ISSUER is empty.
	OIDC auth.OIDCConfig
	// RateLimit is the per-role request limits and the per-address limit of failed
	// authentications (RATE_LIMIT_*), kept in Redis and shared by every instance.
	RateLimit ratelimit.Config
	// SSE is the live event streams' settings (SSE_*, sse.go).
	SSE sseConfig
	// Webhooks is the webhook delivery settings (WEBHOOK_*).
	Webhooks webhooks.Config

	// benchPlaintext (TICKETD_BENCH_NO_ENCRYPTION=1, read by runTask; not a field of
	// the env-tagged config, and listed in the README as the bench's only) serves
	// without sealing personal data: only for the bench's baseline of the cost of
	// encryption. Never in production: it stores emails and
	// names in clear.
	benchPlaintext bool
}

// benchPlaintextVar is the hidden switch of Config.benchPlaintext.
const benchPlaintextVar = "TICKETD_BENCH_NO_ENCRYPTION"

// loadConfig reads the configuration through getenv and validates it. Every problem
// is reported at once, each naming its environment variable and the form it expects
// (see ConfigError); a variable that does not parse is not also judged by Validate.
func loadConfig(getenv func(string) string) (Config, error) {
	var cfg Config
	params, err := env.GetFieldParams(&cfg)
	if err != nil {
		return cfg, err
	}
	vars := map[string]string{}
	for _, p := range params {
		if v := getenv(p.Key); v != "" {
			vars[p.Key] = v
		}
	}
	var problems []error
	if err := env.ParseWithOptions(&cfg, env.Options{Environment: vars}); err != nil {
		var bad []string
		problems, bad = parseProblems(err, vars)
		// The rest is validated as if the unparsable variables were unset, so each of
		// them is reported once, for what it is.
		for _, k := range bad {
			delete(vars, k)
		}
		cfg = Config{}
		if err := env.ParseWithOptions(&cfg, env.Options{Environment: vars}); err != nil {
			return cfg, fmt.Errorf("config: %w", err) // a default that does not parse: a programmer's mistake
		}
	}
	if err := cfg.Validate(); err != nil {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			problems = append(problems, j.Unwrap()...)
		} else {
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		return cfg, &ConfigError{Problems: problems}
	}
	return cfg, nil
}

// ConfigError lists every problem of the configuration, each naming its variable.
type ConfigError struct {
	Problems []error
}

func (e *ConfigError) Error() string {
	if len(e.Problems) == 1 {
		return "invalid configuration: " + e.Problems[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "invalid configuration (%d problems):", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.Error())
	}
	return b.String()
}

// Unwrap gives errors.Is and errors.As every problem.
func (e *ConfigError) Unwrap() []error { return e.Problems }

// parseProblems turns caarlos0/env's errors, which name Go fields and types, into
// messages naming the variable, its value and the form expected; bad lists the
// variables concerned.
func parseProblems(err error, vars map[string]string) (problems []error, bad []string) {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return []error{err}, nil
	}
	t := reflect.TypeFor[Config]()
	for _, e := range agg.Errors {
		var pe env.ParseError
		if !errors.As(e, &pe) {
			problems = append(problems, e)
			continue
		}
		f, ok := fieldNamed(t, pe.Name)
		if !ok {
			problems = append(problems, e)
			continue
		}
		key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		bad = append(bad, key)
		problems = append(problems, fmt.Errorf("%s: %q %s", key, vars[key], expectedForm(f.Type, pe.Err, f.Tag.Get("envDefault"))))
	}
	return problems, bad
}

// fieldNamed finds the field called name in struct t or in the structs it nests
// (OIDC, RateLimit): caarlos0/env's ParseError names only the field. Field names that
// hold a variable are unique across them (TestEveryVariableHasAnErrorCase).
func fieldNamed(t reflect.Type, name string) (reflect.StructField, bool) {
	if f, ok := t.FieldByName(name); ok {
		return f, true
	}
	for i := range t.NumField() {
		if f := t.Field(i); f.Type.Kind() == reflect.Struct && f.Tag.Get("env") == "" {
			if nf, ok := fieldNamed(f.Type, name); ok {
				return nf, true
			}
		}
	}
	return reflect.StructField{}, false
}

// expectedForm says what a value of type t looks like, for a value that failed to
// parse with err; def is the variable's default, shown as an example.
func expectedForm(t reflect.Type, err error, def string) string {
	example := func(generic string) string {
		if def != "" {
			return generic + "; the default is " + def
		}
		return generic
	}
	switch {
	case t == reflect.TypeFor[time.Duration]():
		return "is not a duration (" + example("a number and a unit: 150ms, 2s, 1m, 24h; units ns, us, ms, s, m, h") + ")"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		if errors.Is(err, strconv.ErrRange) {
			return fmt.Sprintf("is too large (a whole number, at most %d)", int64(1)<<(t.Bits()-1)-1)
		}
		return "is not a whole number (" + example("digits only, e.g. 32") + ")"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "is not a number (" + example("e.g. 0.5") + ")"
	case t.Kind() == reflect.Bool:
		return "is not a boolean (true or false)"
	}
	return fmt.Sprintf("cannot be read: %v", err)
}

// readMasterKey reads a master key given as the variable name=value or in the file
// named by fileName=file (one of them), and says which variable is wrong and how,
// never repeating the key.
func readMasterKey(name, value, fileName, file string) (*pii.MasterKey, error) {
	switch {
	case value != "" && file != "":
		return nil, fmt.Errorf("%s: set it or %s, not both", name, fileName)
	case value == "" && file == "":
		return nil, fmt.Errorf("%s: required: the master key of personal data, the base64 of 32 random bytes "+
			"(make one with: openssl rand -base64 32), or %s naming a file that holds it", name, fileName)
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("%s: %q cannot be read: %v", fileName, file, errors.Unwrap(err))
		}
		m, err := pii.ParseMasterKey(string(b))
		if err != nil {
			return nil, fmt.Errorf("%s: the file %q %w", fileName, file, err)
		}
		return m, nil
	}
	m, err := pii.ParseMasterKey(value)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return m, nil
}

// MasterKey returns the master key of personal data (DATA_KEY or DATA_KEY_FILE); a
// missing or malformed one is a *ConfigError naming the variable.
func (c Config) MasterKey() (*pii.MasterKey, error) {
	m, err := readMasterKey("DATA_KEY", c.DataKey, "DATA_KEY_FILE", c.DataKeyFile)
	if err != nil {
		return nil, &ConfigError{Problems: []error{err}}
	}
	return m, nil
}

// NewMasterKey returns the key -rotate-data-key moves to (NEW_DATA_KEY or
// NEW_DATA_KEY_FILE).
func (c Config) NewMasterKey() (*pii.MasterKey, error) {
	m, err := readMasterKey("NEW_DATA_KEY", c.NewDataKey, "NEW_DATA_KEY_FILE", c.NewDataKeyFile)
	if err != nil {
		return nil, &ConfigError{Problems: []error{err}}
	}
	return m, nil
}

// Validate checks every value and says precisely what is wrong.
func (c Config) Validate() error {
	var errs []error
	if _, err := db.ParseDSN(c.DatabaseDSN); err != nil {
		errs = append(errs, err)
	}
	for _, a := range c.RedisAddrs {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("REDIS_ADDRS: %q must be host:port (comma-separated seeds, e.g. 127.0.0.1:7001,127.0.0.1:7002)", a))
		}
	}
	if strings.TrimSpace(c.RedisHost) == "" || strings.ContainsAny(c.RedisHost, " \t,/") {
		errs = append(errs, fmt.Errorf("REDIS_HOST: %q must be a host name or IP address, e.g. 127.0.0.1", c.RedisHost))
	}
	if c.RedisPort < 1 || c.RedisPort > 65535 {
		errs = append(errs, fmt.Errorf("REDIS_PORT must be 1..65535, not %d", c.RedisPort))
	}
	if c.RedisTimeout <= 0 {
		errs = append(errs, fmt.Errorf("REDIS_TIMEOUT must be a positive duration (e.g. 150ms), not %s", c.RedisTimeout))
	}
	if err := redismodel.ValidPrefix(c.RedisPrefix); err != nil {
		errs = append(errs, fmt.Errorf("REDIS_PREFIX: %w", err))
	}
	if _, port, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		errs = append(errs, fmt.Errorf("HTTP_ADDR %q must be [host]:port", c.HTTPAddr))
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		errs = append(errs, fmt.Errorf("HTTP_ADDR %q: the port must be a number from 1 to 65535", c.HTTPAddr))
	}
	if c.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("MAX_CONNS must be 0 (derived from the descriptor limit) or more, not %d", c.MaxConns))
	}
	if c.MaxConnsPerIP < 0 {
		errs = append(errs, fmt.Errorf("MAX_CONNS_PER_IP must be 0 (no cap) or more, not %d", c.MaxConnsPerIP))
	}
	if c.IdleTimeout <= 0 {
		errs = append(errs, fmt.Errorf("IDLE_TIMEOUT must be positive, not %s", c.IdleTimeout))
	}
	if c.ReplayConcurrency < 0 {
		errs = append(errs, fmt.Errorf("REPLAY_CONCURRENCY must be 0 (GOMAXPROCS/2, at least 1) or more, not %d", c.ReplayConcurrency))
	}
	if c.HistoryPageBytes < 1024 {
		errs = append(errs, fmt.Errorf("HISTORY_PAGE_BYTES must be at least 1024, not %d", c.HistoryPageBytes))
	}
	if c.PageBytes < 1024 {
		errs = append(errs, fmt.Errorf("PAGE_BYTES must be at least 1024, not %d", c.PageBytes))
	}
	if _, err := c.SlogLevel(); err != nil {
		errs = append(errs, err)
	}
	if c.Auth != "on" && c.Auth != "off" {
		errs = append(errs, fmt.Errorf("AUTH must be on or off, not %q", c.Auth))
	}
	for _, k := range []struct{ name, value, fileName, file string }{
		{"DATA_KEY", c.DataKey, "DATA_KEY_FILE", c.DataKeyFile},
		{"NEW_DATA_KEY", c.NewDataKey, "NEW_DATA_KEY_FILE", c.NewDataKeyFile},
	} {
		if k.value != "" || k.file != "" {
			if _, err := readMasterKey(k.name, k.value, k.fileName, k.file); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.AuthBootstrapToken != "" && !auth.WellFormed(c.AuthBootstrapToken) {
		// the value is a secret: never repeated in an error
		errs = append(errs, errors.New("AUTH_BOOTSTRAP_TOKEN must be tkd_ and 43 base64url characters (ticketd -create-token makes such tokens)"))
	}
	// Each message names its variable (OIDC_*, RATE_LIMIT_*): the packages that own
	// these settings write them so.
	if err := c.OIDC.Validate(); err != nil {
		errs = append(errs, unjoin(err)...)
	}
	if err := c.RateLimit.Validate(); err != nil {
		errs = append(errs, unjoin(err)...)
	}
	if err := c.SSE.Validate(); err != nil {
		errs = append(errs, unjoin(err)...)
	}
	if err := c.Webhooks.Validate(); err != nil {
		errs = append(errs, unjoin(err)...)
	}
	if !(c.AccessLogSample >= 0 && c.AccessLogSample <= 1) { // also refuses NaN
		errs = append(errs, fmt.Errorf("ACCESS_LOG_SAMPLE must be a fraction from 0 to 1, not %v", c.AccessLogSample))
	}
	if c.AccessLogSlow <= 0 {
		errs = append(errs, fmt.Errorf("ACCESS_LOG_SLOW must be positive, not %s", c.AccessLogSlow))
	}
	if v := strings.TrimSpace(c.AutoMemLimit); v != "" && v != "off" {
		if r, err := strconv.ParseFloat(v, 64); err != nil || math.IsNaN(r) || r <= 0 || r > 1 {
			errs = append(errs, fmt.Errorf("AUTOMEMLIMIT must be off or a ratio of the container's memory in (0, 1], e.g. 0.8, not %q", c.AutoMemLimit))
		}
	}
	if c.PprofAddr != "" {
		if err := loopbackAddr(c.PprofAddr); err != nil {
			errs = append(errs, fmt.Errorf("PPROF_ADDR %q: %w", c.PprofAddr, err))
		}
		if c.PprofAddr == c.HTTPAddr {
			errs = append(errs, fmt.Errorf("PPROF_ADDR %q must differ from HTTP_ADDR: profiles are never served on the API's port", c.PprofAddr))
		}
	}
	if c.BodyLimit < 1024 {
		errs = append(errs, fmt.Errorf("BODY_LIMIT must be at least 1024 bytes, not %d", c.BodyLimit))
	}
	if c.HousekeepingInterval <= 0 {
		errs = append(errs, fmt.Errorf("HOUSEKEEPING_INTERVAL must be positive, not %s", c.HousekeepingInterval))
	}
	if c.AuditAnchorInterval < 0 {
		errs = append(errs, fmt.Errorf("AUDIT_ANCHOR_INTERVAL must be 0 (no anchors) or positive, not %s", c.AuditAnchorInterval))
	}
	if c.IdempotencyTTL <= 0 {
		errs = append(errs, fmt.Errorf("IDEMPOTENCY_TTL must be positive, not %s", c.IdempotencyTTL))
	}
	if c.RequestTimeout <= 0 {
		errs = append(errs, fmt.Errorf("REQUEST_TIMEOUT must be a positive duration (e.g. 5s), not %s", c.RequestTimeout))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("SHUTDOWN_TIMEOUT must be a positive duration (e.g. 15s), not %s", c.ShutdownTimeout))
	}
	if c.PGMaxConns < 2 {
		errs = append(errs, fmt.Errorf("PG_MAX_CONNS must be at least 2, not %d", c.PGMaxConns))
	}
	return errors.Join(errs...)
}

// unjoin returns the errors joined in err, so each is one problem of ConfigError.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// loopbackAddr accepts host:port whose host is localhost or a loopback IP: the
// profiling endpoint reveals the process's internals and can cost it a lot of CPU,
// so it must not be reachable from the network. An empty host (":6060") means every
// interface and is refused as well.
func loopbackAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return errors.New("must be host:port")
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return errors.New("must be a loopback address (127.0.0.1:port, [::1]:port or localhost:port): the profiling endpoint is not served to the network")
}

// RedisAddresses returns REDIS_ADDRS, or REDIS_HOST:REDIS_PORT when it is empty.
func (c Config) RedisAddresses() []string {
	var out []string
	for _, a := range c.RedisAddrs {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		out = []string{net.JoinHostPort(c.RedisHost, strconv.Itoa(c.RedisPort))}
	}
	return out
}

// SlogLevel parses LOG_LEVEL (debug, info, warn, error).
func (c Config) SlogLevel() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return l, fmt.Errorf("LOG_LEVEL must be debug, info, warn or error, not %q", c.LogLevel)
	}
	return l, nil
}
