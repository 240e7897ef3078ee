// Package ratelimit limits requests per principal, and failed authentications per client
// address, with budgets kept in Redis (Cluster) so that every ticketd instance spends
// the same ones. The arithmetic is GCRA in one Lua script on one key per budget
// (github.com/go-redis/redis_rate), so it is atomic on the node that owns the key and
// needs no cross-slot access.
//
// Limiting fails open: when Redis errs or is slow, a request is let through, the failure
// is counted and logged (once per interval), and no call waits longer than the timeout.
package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ticketd/ticketd/projections/redismodel"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/ticketd/ticketd/httpapi/auth"
)

// Decision is what a limiter says about one request.
type Decision struct {
	// Allowed is false only when Redis (or this instance's memory of a recent refusal)
	// says the budget is spent: a limit that is off and a Redis failure both allow.
	Allowed bool
	// Enforced is true when the decision comes from the budget, so Limit, Remaining,
	// Reset and RetryAfter mean something and the RateLimit headers are sent; false
	// when the limit is off or Redis could not be asked (fail open).
	Enforced bool
	// Limit is the burst: how many requests a rested budget allows at once.
	Limit int
	// Remaining is how many more requests are allowed right now.
	Remaining int
	// Reset is how long until the budget is whole again (Remaining == Limit).
	Reset time.Duration
	// RetryAfter is how long until the next request is allowed; 0 when Allowed.
	RetryAfter time.Duration
}

// Options are a Limiter's wiring.
type Options struct {
	// Prefix starts every key (ticketd's REDIS_PREFIX): a budget's key is
	// "rate:<Prefix>:rl:{<kind>:<digest>}". It must not contain '{' or '}'.
	Prefix string
	// Logger receives the fail-open warnings; nil means slog.Default().
	Logger *slog.Logger
	// LogEvery is the least time between two fail-open warnings (the failures between
	// them are counted in the next one); 0 means a minute.
	LogEvery time.Duration
	// Metrics counts failures and refusals; nil counts nothing.
	Metrics *Metrics
}

// Limiter decides whether a request is within its principal's budget (Allow), or a
// failed authentication within its client address's (AllowAuthFailure). It is safe for
// concurrent use; any number of Limiters on any number of instances sharing one Redis
// and Prefix share the budgets.
type Limiter struct {
	rl       *redis_rate.Limiter
	limits   Limits
	prefix   string
	br       redismodel.Breaker // as the Redis read model's
	refusals refusals
	batches  sync.Map // budget key -> *batcher, while its call is out (batch.go)
	metrics  *Metrics
	log      *slog.Logger
	logEvery time.Duration
	lastLog  atomic.Int64 // unix nanoseconds of the last warning
	unlogged atomic.Int64 // failures since the last warning
}

// New returns a Limiter keeping its budgets in rdb (a *redis.ClusterClient in
// production). limits comes from Config.Limits; an error is returned for a limit, a
// timeout or a prefix that cannot work.
//
// The timeout is enforced by the Limiter itself, whatever rdb's own timeouts are: a call
// that has not answered in time is abandoned (its goroutine ends with rdb's read
// timeout) and the request goes on.
func New(rdb redis.UniversalClient, limits Limits, o Options) (*Limiter, error) {
	if rdb == nil {
		return nil, errors.New("ratelimit: no Redis client")
	}
	if o.Prefix == "" || strings.ContainsAny(o.Prefix, "{}") {
		return nil, fmt.Errorf("ratelimit: key prefix %q must be non-empty and without braces", o.Prefix)
	}
	if limits.Timeout <= 0 {
		return nil, errors.New("ratelimit: the timeout must be positive")
	}
	for role, r := range limits.Roles {
		if err := r.valid(); err != nil {
			return nil, fmt.Errorf("ratelimit: role %s: %w", role, err)
		}
	}
	if err := limits.AuthFailures.valid(); err != nil {
		return nil, fmt.Errorf("ratelimit: auth failures: %w", err)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.LogEvery <= 0 {
		o.LogEvery = time.Minute
	}
	return &Limiter{
		rl:       redis_rate.NewLimiter(rdb),
		limits:   limits,
		prefix:   o.Prefix,
		metrics:  o.Metrics,
		log:      o.Logger,
		logEvery: o.LogEvery,
	}, nil
}

func (r Rate) valid() error {
	if r.Off() {
		return nil
	}
	if r.Rate < 1 || r.Rate > maxRate || r.Burst < 1 || r.Burst > maxRate || r.Period <= 0 {
		return fmt.Errorf("rate %+v: rate and burst must be 1..%d and the period positive", r, maxRate)
	}
	return nil
}

// The kinds of budget, as keys and metric labels name them.
const (
	kindPrincipal   = "principal"
	kindAuthFailure = "auth-failure"
)

// Allow spends one request of p's budget, whose rate is its role's (an unknown role
// gets the requester's, the tightest by default). It never fails: a Redis error or
// timeout allows the request (Enforced false), and it returns within the timeout.
func (l *Limiter) Allow(ctx context.Context, p auth.Principal) Decision {
	r, ok := l.limits.Roles[p.Role]
	if !ok {
		r = l.limits.Roles[auth.RoleRequester]
	}
	if r.Off() {
		return Decision{Allowed: true}
	}
	return l.decide(ctx, kindPrincipal, l.key("p", p.ID), r)
}

// AllowAuthFailure spends one failed authentication of clientAddr's budget (an IP
// address, with or without a port; an IPv6 address counts by its /64). Call it after a
// credential failed to authenticate: refused, the answer is 429 rather than 401. It
// never fails and returns within the timeout, like Allow.
func (l *Limiter) AllowAuthFailure(ctx context.Context, clientAddr string) Decision {
	if l.limits.AuthFailures.Off() {
		return Decision{Allowed: true}
	}
	return l.decide(ctx, kindAuthFailure, l.key("a", addrKey(clientAddr)), l.limits.AuthFailures)
}

// addrKey is the budget's name of a client address: the address without a port or
// zone, IPv4-mapped IPv6 as IPv4, and IPv6 masked to its /64. What does not parse is
// used as given.
func addrKey(a string) string {
	ip, err := netip.ParseAddr(a)
	if err != nil {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return a
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// key names a budget. The id is hashed: a principal's id may be long or hold braces
// (a JWT's issuer and subject), which would make a hash tag of their own; the digest
// is the key's hash tag, so budgets spread over the slots.
func (l *Limiter) key(kind, id string) string {
	sum := sha256.Sum256([]byte(id))
	return l.prefix + ":rl:{" + kind + ":" + hex.EncodeToString(sum[:16]) + "}"
}

// errCircuitOpen is the failure of a call not made because the breaker is open.
var errCircuitOpen = errors.New("circuit open: redis failed repeatedly, not asked")

func (l *Limiter) decide(ctx context.Context, kind, key string, r Rate) Decision {
	now := time.Now()
	if d, ok := l.refusals.get(key, now, r.Burst); ok {
		l.metrics.refused(kind)
		return d
	}
	if !l.br.Allow() {
		l.failed(kind, "circuit-open", errCircuitOpen)
		return Decision{Allowed: true}
	}
	res, err := l.spend(ctx, key, r)
	took := time.Since(now)
	switch {
	case err == nil && took > l.limits.Timeout/2:
		l.br.Failure() // answered, but slowly: a few more and the breaker opens
	case err == nil:
		l.br.Success()
	case ctx.Err() != nil:
		return Decision{Allowed: true} // the request went away: no news about Redis
	case errors.Is(err, context.DeadlineExceeded):
		l.br.Failure()
		l.failed(kind, "timeout", err)
		return Decision{Allowed: true}
	default:
		l.br.Failure()
		l.failed(kind, "error", err)
		return Decision{Allowed: true}
	}
	d := Decision{
		Allowed:   res.Allowed > 0,
		Enforced:  true,
		Limit:     r.Burst,
		Remaining: max(res.Remaining, 0),
		Reset:     max(res.ResetAfter, 0),
	}
	if !d.Allowed {
		d.RetryAfter = max(res.RetryAfter, 0)
		l.refusals.put(key, now, d)
		l.metrics.refused(kind)
	}
	return d
}

// call runs the GCRA script for n requests (at most n allowed), bounded by the timeout
// even when rdb does not honour contexts (go-redis does not, unless
// ContextTimeoutEnabled): the script runs in its own goroutine, which is abandoned at
// the deadline.
func (l *Limiter) call(ctx context.Context, key string, r Rate, n int) (*redis_rate.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, l.limits.Timeout)
	defer cancel()
	type answer struct {
		res *redis_rate.Result
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		limit := redis_rate.Limit{Rate: r.Rate, Period: r.Period, Burst: r.Burst}
		var res *redis_rate.Result
		var err error
		if n == 1 {
			res, err = l.rl.Allow(ctx, key, limit)
		} else {
			res, err = l.rl.AllowAtMost(ctx, key, limit, n)
		}
		ch <- answer{res, err}
	}()
	select {
	case a := <-ch:
		return a.res, a.err
	case <-ctx.Done():
		return nil, fmt.Errorf("redis rate limit: %w", ctx.Err())
	}
}

// failed counts a failure and logs it, at most once per LogEvery, with the number of
// failures since the last warning.
func (l *Limiter) failed(kind, reason string, err error) {
	l.metrics.failure(kind, reason)
	l.unlogged.Add(1)
	now := time.Now().UnixNano()
	last := l.lastLog.Load()
	if now-last < int64(l.logEvery) || !l.lastLog.CompareAndSwap(last, now) {
		return
	}
	l.log.Warn("rate limiting fails open: redis unavailable, requests go unlimited",
		"err", err, "reason", reason, "failures", l.unlogged.Swap(0), "log_every", l.logEvery)
}

// refusals remembers this instance's refusals until their RetryAfter: GCRA's state
// moves only forward (other instances can only spend more), so a budget refused until
// T is refused until T everywhere, and asking Redis again before then is waste. A
// client hammering past its limit costs this instance a map lookup, not a round trip.
type refusals struct {
	m sync.Map // key -> refusal
	n atomic.Int64
}

type refusal struct {
	until, resetAt int64 // unix nanoseconds
}

// maxRefusals bounds the memory: past it, refusals are not remembered (after a sweep
// of the expired ones), and Redis is asked as usual.
const maxRefusals = 10_000

func (f *refusals) get(key string, now time.Time, burst int) (Decision, bool) {
	v, ok := f.m.Load(key)
	if !ok {
		return Decision{}, false
	}
	r := v.(refusal)
	t := now.UnixNano()
	if t >= r.until {
		if f.m.CompareAndDelete(key, v) {
			f.n.Add(-1)
		}
		return Decision{}, false
	}
	return Decision{Enforced: true, Limit: burst, RetryAfter: time.Duration(r.until - t), Reset: time.Duration(max(r.resetAt-t, 0))}, true
}

func (f *refusals) put(key string, now time.Time, d Decision) {
	if d.RetryAfter <= 0 {
		return
	}
	if f.n.Load() >= maxRefusals {
		t := now.UnixNano()
		f.m.Range(func(k, v any) bool {
			if t >= v.(refusal).until && f.m.CompareAndDelete(k, v) {
				f.n.Add(-1)
			}
			return true
		})
		if f.n.Load() >= maxRefusals {
			return
		}
	}
	r := refusal{until: now.Add(d.RetryAfter).UnixNano(), resetAt: now.Add(d.Reset).UnixNano()}
	if _, loaded := f.m.Swap(key, r); !loaded {
		f.n.Add(1)
	}
}
