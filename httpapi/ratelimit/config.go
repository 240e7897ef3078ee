package ratelimit

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ticketd/ticketd/httpapi/auth"
)

// Config is the rate limits as the environment gives them. Each limit is a Rate's text
// (see ParseRate): "100/s", "600/m,burst=50", or "off" (or "0") for no limit. Parse it
// with caarlos0/env, then call Limits, which says which variable is wrong.
type Config struct {
	Admin     string `env:"RATE_LIMIT_ADMIN" envDefault:"100/s,burst=200"`
	Agent     string `env:"RATE_LIMIT_AGENT" envDefault:"50/s,burst=100"`
	Auditor   string `env:"RATE_LIMIT_AUDITOR" envDefault:"20/s,burst=40"`
	Requester string `env:"RATE_LIMIT_REQUESTER" envDefault:"5/s,burst=20"`
	// AuthFailures limits failed authentications per client address (an IPv6 address
	// counts by its /64, which one client usually holds whole).
	AuthFailures string `env:"RATE_LIMIT_AUTH_FAILURES" envDefault:"20/m,burst=10"`
	// Timeout bounds every call to Redis; past it the request is let through.
	Timeout time.Duration `env:"RATE_LIMIT_TIMEOUT" envDefault:"50ms"`
}

// Rate is one limit: Rate requests per Period, up to Burst at once (GCRA: a client that
// has been quiet for Period*Burst/Rate may send Burst requests back to back, then one
// every Period/Rate). The zero Rate is no limit.
type Rate struct {
	Rate   int
	Period time.Duration
	Burst  int
}

// Off reports whether r limits nothing.
func (r Rate) Off() bool { return r.Rate == 0 }

// String gives r back in the form ParseRate reads.
func (r Rate) String() string {
	if r.Off() {
		return "off"
	}
	unit := map[time.Duration]string{time.Second: "s", time.Minute: "m", time.Hour: "h"}[r.Period]
	s := strconv.Itoa(r.Rate) + "/" + unit
	if r.Burst != r.Rate {
		s += ",burst=" + strconv.Itoa(r.Burst)
	}
	return s
}

// maxRate bounds N and the burst: a limit beyond it is a typo, and GCRA's arithmetic in
// the Lua script (doubles) stays exact well within it.
const maxRate = 1_000_000

// ParseRate reads "N/s", "N/m" or "N/h", optionally followed by ",burst=B": N requests
// per second, minute or hour, B at once (B defaults to N). "off" and "0" mean no limit.
// N and B are whole numbers from 1 to 1,000,000. The error says what is wrong, not
// which variable held it (Config.Limits adds that).
func ParseRate(s string) (Rate, error) {
	s = strings.TrimSpace(s)
	if s == "off" || s == "0" {
		return Rate{}, nil
	}
	const form = `want "N/s", "N/m" or "N/h", optionally with ",burst=B", or "off"`
	spec, burst, hasBurst := strings.Cut(s, ",")
	n, unit, ok := strings.Cut(spec, "/")
	if !ok {
		return Rate{}, fmt.Errorf("%q: %s", s, form)
	}
	var r Rate
	switch strings.TrimSpace(unit) {
	case "s":
		r.Period = time.Second
	case "m":
		r.Period = time.Minute
	case "h":
		r.Period = time.Hour
	default:
		return Rate{}, fmt.Errorf("%q: unit %q: %s", s, unit, form)
	}
	var err error
	if r.Rate, err = count(n); err != nil {
		return Rate{}, fmt.Errorf("%q: rate: %w", s, err)
	}
	r.Burst = r.Rate
	if hasBurst {
		b, ok := strings.CutPrefix(strings.TrimSpace(burst), "burst=")
		if !ok {
			return Rate{}, fmt.Errorf("%q: after the comma: %s", s, form)
		}
		if r.Burst, err = count(b); err != nil {
			return Rate{}, fmt.Errorf("%q: burst: %w", s, err)
		}
	}
	return r, nil
}

func count(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > maxRate {
		return 0, fmt.Errorf("%q must be a whole number from 1 to %d", s, maxRate)
	}
	return n, nil
}

// Limits is Config parsed: a Rate per role and one for failed authentications.
type Limits struct {
	Roles        map[auth.Role]Rate
	AuthFailures Rate
	Timeout      time.Duration
}

// Limits parses every limit of c. The error names each variable that is wrong (all of
// them, joined), e.g. `RATE_LIMIT_AGENT: "10/d": unit "d": want ...`.
func (c Config) Limits() (Limits, error) {
	l := Limits{Roles: map[auth.Role]Rate{}, Timeout: c.Timeout}
	var errs []error
	parse := func(name, v string) Rate {
		r, err := ParseRate(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		return r
	}
	l.Roles[auth.RoleAdmin] = parse("RATE_LIMIT_ADMIN", c.Admin)
	l.Roles[auth.RoleAgent] = parse("RATE_LIMIT_AGENT", c.Agent)
	l.Roles[auth.RoleAuditor] = parse("RATE_LIMIT_AUDITOR", c.Auditor)
	l.Roles[auth.RoleRequester] = parse("RATE_LIMIT_REQUESTER", c.Requester)
	l.AuthFailures = parse("RATE_LIMIT_AUTH_FAILURES", c.AuthFailures)
	if c.Timeout < time.Millisecond || c.Timeout > 5*time.Second {
		errs = append(errs, fmt.Errorf("RATE_LIMIT_TIMEOUT must be from 1ms to 5s, not %s", c.Timeout))
	}
	return l, errors.Join(errs...)
}

// Validate reports what Limits would: nil when every variable is well formed.
func (c Config) Validate() error {
	_, err := c.Limits()
	return err
}
