package ratelimit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"

	"github.com/ticketd/ticketd/httpapi/auth"
	"github.com/ticketd/ticketd/projections/projectionstest"
)

// cluster returns a new client of the test Redis Cluster: each is what one ticketd
// instance would hold.
func cluster(t testing.TB) *redis.ClusterClient { return projectionstest.Redis(t) }

// prefix is a key prefix of the test's own. The budgets' keys expire by themselves
// (GCRA sets each key's TTL to when its budget is whole again).
func prefix(t testing.TB) string { return projectionstest.Prefix(t) }

// limits are all off but those given: tests read more plainly with slow rates (per
// minute), which do not refill during a test.
func limits(roles map[auth.Role]string, authFailures string) Limits {
	l := Limits{Roles: map[auth.Role]Rate{}, Timeout: 200 * time.Millisecond}
	for role, s := range roles {
		l.Roles[role] = mustRate(s)
	}
	if authFailures != "" {
		l.AuthFailures = mustRate(authFailures)
	}
	return l
}

func mustRate(s string) Rate {
	r, err := ParseRate(s)
	if err != nil {
		panic(err)
	}
	return r
}

func newLimiter(t *testing.T, rdb redis.UniversalClient, l Limits, o Options) *Limiter {
	t.Helper()
	if o.Prefix == "" {
		o.Prefix = prefix(t)
	}
	lim, err := New(rdb, l, o)
	if err != nil {
		t.Fatal(err)
	}
	return lim
}

func principal(role auth.Role) auth.Principal {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return auth.Principal{ID: "tok_" + hex.EncodeToString(b[:]), Name: "test", Role: role}
}

// app is the HTTP layer as it will be wired: the principal (here from a test header)
// is limited, Enforce sets the headers, and the error handler answers *Error with 429
// problem+json as httpapi's problem table does.
func app(lim *Limiter) *fiber.App {
	a := fiber.New(fiber.Config{ErrorHandler: func(c *fiber.Ctx, err error) error {
		var rl *Error
		if !errors.As(err, &rl) {
			return fiber.DefaultErrorHandler(c, err)
		}
		c.Set(fiber.HeaderContentType, "application/problem+json")
		return c.Status(fiber.StatusTooManyRequests).JSON(map[string]any{
			"type": "urn:ticketd:problem:" + ProblemCode, "status": 429, "code": ProblemCode, "detail": rl.Detail()},
			"application/problem+json")
	}})
	a.Use(func(c *fiber.Ctx) error {
		p := auth.Principal{ID: c.Get("X-Test-Principal"), Role: auth.Role(c.Get("X-Test-Role"))}
		if err := Enforce(c, lim.Allow(c.UserContext(), p), false); err != nil {
			return err
		}
		return c.Next()
	})
	a.Get("/", func(c *fiber.Ctx) error { return c.SendString("ok") })
	return a
}

type answer struct {
	status                          int
	limit, remaining, reset, retry  string
	contentType, code, detail, body string
}

func get(t *testing.T, a *fiber.App, p auth.Principal) answer {
	t.Helper()
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("X-Test-Principal", p.ID)
	req.Header.Set("X-Test-Role", string(p.Role))
	res, err := a.Test(req, 5000)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(res.Body)
	an := answer{status: res.StatusCode, limit: res.Header.Get(HeaderLimit), remaining: res.Header.Get(HeaderRemaining),
		reset: res.Header.Get(HeaderReset), retry: res.Header.Get(fiber.HeaderRetryAfter),
		contentType: res.Header.Get(fiber.HeaderContentType), body: buf.String()}
	if res.StatusCode == fiber.StatusTooManyRequests {
		var pb struct{ Code, Detail string }
		if err := json.Unmarshal(buf.Bytes(), &pb); err != nil {
			t.Fatalf("429 body %q: %v", buf.String(), err)
		}
		an.code, an.detail = pb.Code, pb.Detail
	}
	return an
}

func TestLimitEnforcedWithHeaders(t *testing.T) {
	t.Parallel()
	lim := newLimiter(t, cluster(t), limits(map[auth.Role]string{auth.RoleAgent: "1/m,burst=3"}, ""), Options{})
	a := app(lim)
	p := principal(auth.RoleAgent)
	// 1/m with a burst of 3: three at once, then one a minute. After the k-th request
	// the budget is whole again in k minutes.
	for k := 1; k <= 3; k++ {
		got := get(t, a, p)
		want := answer{status: 200, limit: "3", remaining: strconv.Itoa(3 - k), reset: strconv.Itoa(60 * k), body: "ok",
			contentType: got.contentType}
		if got != want {
			t.Fatalf("request %d: got %+v, want %+v", k, got, want)
		}
	}
	got := get(t, a, p)
	if got.status != fiber.StatusTooManyRequests || got.code != ProblemCode || got.contentType != "application/problem+json" {
		t.Fatalf("4th request: want 429 problem+json %s, got %+v", ProblemCode, got)
	}
	if got.limit != "3" || got.remaining != "0" || got.reset != "180" {
		t.Errorf("4th request: want RateLimit 3/0/180, got %s/%s/%s", got.limit, got.remaining, got.reset)
	}
	// the next request is allowed when one more emission interval (60 s) has passed
	if got.retry != "60" || !strings.Contains(got.detail, "retry after 60 s") {
		t.Errorf("4th request: want Retry-After 60 and a detail saying so, got %q, %q", got.retry, got.detail)
	}
	// another principal of the same role has a budget of its own
	if got := get(t, a, principal(auth.RoleAgent)); got.status != 200 || got.remaining != "2" {
		t.Errorf("another principal: want 200 with 2 remaining, got %+v", got)
	}
}

func TestTwoInstancesShareOneBudget(t *testing.T) {
	t.Parallel()
	// two clients, two limiters: two ticketd instances on one cluster and REDIS_PREFIX
	pre := prefix(t)
	l := limits(map[auth.Role]string{auth.RoleAdmin: "1/m,burst=5"}, "")
	one := newLimiter(t, cluster(t), l, Options{Prefix: pre})
	two := newLimiter(t, cluster(t), l, Options{Prefix: pre})
	p := principal(auth.RoleAdmin)
	ctx := context.Background()
	for i, lim := range []*Limiter{one, two, one, two, two} {
		d := lim.Allow(ctx, p)
		if !d.Allowed || !d.Enforced || d.Remaining != 4-i {
			t.Fatalf("request %d: want allowed with %d remaining, got %+v", i+1, 4-i, d)
		}
	}
	for i, lim := range []*Limiter{one, two} {
		if d := lim.Allow(ctx, p); d.Allowed || !d.Enforced || d.RetryAfter < 55*time.Second {
			t.Errorf("instance %d after the shared burst: want refused for about a minute, got %+v", i+1, d)
		}
	}
	// budgets are per prefix: another deployment on the same cluster does not share it
	if d := newLimiter(t, cluster(t), l, Options{}).Allow(ctx, p); !d.Allowed {
		t.Errorf("other prefix: want allowed, got %+v", d)
	}
}

func TestTwoInstancesConcurrentlyAllowExactlyTheBurst(t *testing.T) {
	t.Parallel()
	pre := prefix(t)
	l := limits(map[auth.Role]string{auth.RoleAgent: "1/h,burst=20"}, "")
	lims := []*Limiter{newLimiter(t, cluster(t), l, Options{Prefix: pre}), newLimiter(t, cluster(t), l, Options{Prefix: pre})}
	p := principal(auth.RoleAgent)
	var allowed, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Go(func() {
			d := lims[i%2].Allow(context.Background(), p)
			switch {
			case !d.Enforced:
				t.Errorf("not enforced (Redis failed?): %+v", d)
			case d.Allowed:
				allowed.Add(1)
			default:
				refused.Add(1)
			}
		})
	}
	wg.Wait()
	if allowed.Load() != 20 || refused.Load() != 40 {
		t.Errorf("60 concurrent requests over two instances, burst 20: got %d allowed and %d refused", allowed.Load(), refused.Load())
	}
}

func TestPerRoleLimitsDiffer(t *testing.T) {
	t.Parallel()
	lim := newLimiter(t, cluster(t), limits(map[auth.Role]string{
		auth.RoleAdmin: "1/m,burst=4", auth.RoleRequester: "1/m,burst=2", auth.RoleAuditor: "off",
	}, ""), Options{})
	ctx := context.Background()
	count := func(p auth.Principal) (n int) {
		for range 6 {
			if lim.Allow(ctx, p).Allowed {
				n++
			}
		}
		return n
	}
	if n := count(principal(auth.RoleAdmin)); n != 4 {
		t.Errorf("admin, burst 4: %d of 6 allowed", n)
	}
	if n := count(principal(auth.RoleRequester)); n != 2 {
		t.Errorf("requester, burst 2: %d of 6 allowed", n)
	}
	if n := count(principal(auth.RoleAuditor)); n != 6 {
		t.Errorf("auditor, off: %d of 6 allowed", n)
	}
	// a role the limits do not know gets the requester's
	if n := count(principal("superuser")); n != 2 {
		t.Errorf("unknown role, the requester's burst 2: %d of 6 allowed", n)
	}
}

func TestAuthFailuresLimitedPerAddress(t *testing.T) {
	t.Parallel()
	lim := newLimiter(t, cluster(t), limits(nil, "1/m,burst=3"), Options{})
	ctx := context.Background()
	for i, addr := range []string{"192.0.2.7", "192.0.2.7:51000", "::ffff:192.0.2.7"} {
		if d := lim.AllowAuthFailure(ctx, addr); !d.Allowed || d.Remaining != 2-i {
			t.Fatalf("failure %d from %s: want allowed, %d remaining, got %+v", i+1, addr, 2-i, d)
		}
	}
	d := lim.AllowAuthFailure(ctx, "192.0.2.7")
	if d.Allowed || !d.Enforced {
		t.Fatalf("4th failure from 192.0.2.7: want refused, got %+v", d)
	}
	fa := fiber.New()
	c := fa.AcquireCtx(&fasthttp.RequestCtx{})
	defer fa.ReleaseCtx(c)
	var rl *Error
	if err := Enforce(c, d, true); !errors.As(err, &rl) || !strings.Contains(rl.Detail(), "failed authentications from this address") {
		t.Errorf("Enforce of the refusal: want an *Error about failed authentications, got %v", err)
	}
	if got := string(c.Response().Header.Peek(fiber.HeaderRetryAfter)); got != "60" {
		t.Errorf("Retry-After of the refused failure: want 60, got %q", got)
	}
	if d := lim.AllowAuthFailure(ctx, "192.0.2.8"); !d.Allowed || d.Remaining != 2 {
		t.Errorf("another address: want its own budget, got %+v", d)
	}
	// IPv6: one client holds a /64, so the /64 is the budget
	for i, addr := range []string{"2001:db8:1:2::1", "[2001:db8:1:2::ffff]:443", "2001:db8:1:2:aaaa::9"} {
		if d := lim.AllowAuthFailure(ctx, addr); !d.Allowed || d.Remaining != 2-i {
			t.Fatalf("IPv6 failure %d from %s: want allowed, %d remaining, got %+v", i+1, addr, 2-i, d)
		}
	}
	if d := lim.AllowAuthFailure(ctx, "2001:db8:1:2::77"); d.Allowed {
		t.Errorf("4th failure in 2001:db8:1:2::/64: want refused, got %+v", d)
	}
	if d := lim.AllowAuthFailure(ctx, "2001:db8:1:3::1"); !d.Allowed {
		t.Errorf("another /64: want allowed, got %+v", d)
	}
	// the request limits are separate budgets: off here, so nothing is limited
	if d := lim.Allow(ctx, principal(auth.RoleAdmin)); !d.Allowed || d.Enforced {
		t.Errorf("Allow with request limits off: want allowed, not enforced, got %+v", d)
	}
}

func TestRefusalIsRememberedWithoutAskingRedis(t *testing.T) {
	t.Parallel()
	rdb := cluster(t)
	pre := prefix(t)
	lim := newLimiter(t, rdb, limits(map[auth.Role]string{auth.RoleAgent: "1/m,burst=1"}, ""), Options{Prefix: pre})
	ctx := context.Background()
	p := principal(auth.RoleAgent)
	if d := lim.Allow(ctx, p); !d.Allowed {
		t.Fatalf("first: want allowed, got %+v", d)
	}
	first := lim.Allow(ctx, p)
	if first.Allowed {
		t.Fatalf("second: want refused, got %+v", first)
	}
	// Emptying the budget in Redis would make Redis allow the next request; this
	// instance knows that no request can be allowed before RetryAfter, and does not ask.
	if n, err := rdb.Del(ctx, "rate:"+lim.key("p", p.ID)).Result(); err != nil || n != 1 {
		t.Fatalf("delete the budget's key: %d, %v", n, err)
	}
	d := lim.Allow(ctx, p)
	if d.Allowed || !d.Enforced || d.RetryAfter <= 0 || d.RetryAfter > first.RetryAfter || d.Limit != 1 {
		t.Errorf("third: want refused from memory with a shorter RetryAfter than %s, got %+v", first.RetryAfter, d)
	}
	// another instance asks Redis, which was emptied
	if d := newLimiter(t, cluster(t), lim.limits, Options{Prefix: pre}).Allow(ctx, p); !d.Allowed {
		t.Errorf("other instance after the key was deleted: want allowed, got %+v", d)
	}
}

// scriptCalls counts the rate limit scripts a client runs.
type scriptCalls struct{ n atomic.Int32 }

func (h *scriptCalls) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scriptCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := strings.ToLower(cmd.Name()); n == "evalsha" || n == "eval" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *scriptCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestConcurrentRequestsShareScriptCalls: a principal's concurrent requests go to Redis
// together, in fewer calls than requests, and still each spend exactly one request of
// the budget: every Remaining from burst-1 down is seen once.
func TestConcurrentRequestsShareScriptCalls(t *testing.T) {
	t.Parallel()
	rdb := cluster(t)
	calls := &scriptCalls{}
	rdb.AddHook(calls)
	const burst, n = 1000, 64
	lim := newLimiter(t, rdb, limits(map[auth.Role]string{auth.RoleAgent: "1/h,burst=" + strconv.Itoa(burst)}, ""), Options{})
	p := principal(auth.RoleAgent)
	lim.Allow(context.Background(), p) // loads the slot map and the script
	calls.n.Store(0)
	remaining := make(chan int, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range n {
		wg.Go(func() {
			<-start
			d := lim.Allow(context.Background(), p)
			if !d.Enforced || !d.Allowed {
				t.Errorf("refused or not enforced: %+v", d)
			}
			remaining <- d.Remaining
		})
	}
	close(start)
	wg.Wait()
	close(remaining)
	seen := map[int]bool{}
	for r := range remaining {
		if seen[r] {
			t.Errorf("Remaining %d seen twice", r)
		}
		seen[r] = true
	}
	for r := burst - 1 - n; r < burst-1; r++ {
		if !seen[r] {
			t.Errorf("Remaining %d never seen: each request must spend exactly one", r)
		}
	}
	got := calls.n.Load()
	t.Logf("%d concurrent requests, %d script calls", n, got)
	if got >= n {
		t.Errorf("%d concurrent requests made %d script calls, want fewer", n, got)
	}
	// and the budget in Redis agrees: the next request sees burst-2-n remaining
	if d := lim.Allow(context.Background(), p); d.Remaining != burst-2-n {
		t.Errorf("after %d+1 requests Remaining %d, want %d", n, d.Remaining, burst-2-n)
	}
}
