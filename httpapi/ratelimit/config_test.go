package ratelimit

import (
	"strings"
	"testing"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/ticketd/ticketd/httpapi/auth"
)

func TestParseRate(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Rate{
		"off":               {},
		"0":                 {},
		" 10/s ":            {Rate: 10, Period: time.Second, Burst: 10},
		"600/m":             {Rate: 600, Period: time.Minute, Burst: 600},
		"5/s,burst=20":      {Rate: 5, Period: time.Second, Burst: 20},
		"1/h, burst=3":      {Rate: 1, Period: time.Hour, Burst: 3},
		"100/s,burst=1":     {Rate: 100, Period: time.Second, Burst: 1},
		"1000000/s":         {Rate: 1000000, Period: time.Second, Burst: 1000000},
		"20/m,burst=10":     {Rate: 20, Period: time.Minute, Burst: 10},
		"7/m,burst=1000000": {Rate: 7, Period: time.Minute, Burst: 1000000},
	} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if err == nil && !got.Off() {
			if back, err := ParseRate(got.String()); err != nil || back != got {
				t.Errorf("ParseRate(%q.String() = %q) = %+v, %v", in, got.String(), back, err)
			}
		}
	}
	for in, why := range map[string]string{
		"":               "want",
		"10":             "want",
		"10/d":           `unit "d"`,
		"10/sec":         `unit "sec"`,
		"-1/s":           "rate",
		"1.5/s":          "rate",
		"1000001/s":      "rate",
		"10/s,burst=0":   "burst",
		"10/s,burst=":    "burst",
		"10/s,20":        "after the comma",
		"10/s,burst=2x":  "burst",
		"OFF":            "want",
		"x/s":            "rate",
		"10/s,burst=1,2": "burst",
	} {
		if got, err := ParseRate(in); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("ParseRate(%q) = %+v, %v; want an error about %s", in, got, err, why)
		}
	}
}

func TestConfigFromTheEnvironment(t *testing.T) {
	t.Parallel()
	parse := func(vars map[string]string) (Limits, error) {
		var c Config
		if err := env.ParseWithOptions(&c, env.Options{Environment: vars}); err != nil {
			t.Fatal(err)
		}
		return c.Limits()
	}
	l, err := parse(nil)
	if err != nil {
		t.Fatalf("the defaults: %v", err)
	}
	for _, role := range auth.Roles() {
		if l.Roles[role].Off() {
			t.Errorf("default limit of %s is off", role)
		}
	}
	if l.AuthFailures.Off() || l.Timeout != 50*time.Millisecond {
		t.Errorf("defaults: auth failures %v, timeout %s", l.AuthFailures, l.Timeout)
	}

	l, err = parse(map[string]string{"RATE_LIMIT_AUDITOR": "off", "RATE_LIMIT_AGENT": "3/m,burst=9", "RATE_LIMIT_TIMEOUT": "20ms"})
	if err != nil {
		t.Fatal(err)
	}
	if !l.Roles[auth.RoleAuditor].Off() || l.Roles[auth.RoleAgent] != (Rate{Rate: 3, Period: time.Minute, Burst: 9}) || l.Timeout != 20*time.Millisecond {
		t.Errorf("set from the environment: %+v", l)
	}

	_, err = parse(map[string]string{"RATE_LIMIT_ADMIN": "10/d", "RATE_LIMIT_AUTH_FAILURES": "lots", "RATE_LIMIT_TIMEOUT": "0s"})
	for _, want := range []string{`RATE_LIMIT_ADMIN: "10/d"`, `RATE_LIMIT_AUTH_FAILURES: "lots"`, "RATE_LIMIT_TIMEOUT must be"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad variables: want an error containing %q, got %v", want, err)
		}
	}
	if err != nil && strings.Contains(err.Error(), "RATE_LIMIT_AGENT") {
		t.Errorf("bad variables: a good variable is named: %v", err)
	}
}
