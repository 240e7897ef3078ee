package ratelimit

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the limiter's Prometheus metrics. Labels are bounded: limit is
// "principal" or "auth-failure"; reason is "error", "timeout" or "circuit-open".
//
//	ticketd_rate_limit_failures_total{limit,reason}  requests let through because Redis could not decide
//	ticketd_rate_limit_refused_total{limit}          requests refused (429)
//
// A nil *Metrics counts nothing.
type Metrics struct {
	failures *prometheus.CounterVec
	refusals map[string]prometheus.Counter
}

// NewMetrics creates the limiter's metrics and registers them with reg. It fails if reg
// already holds metrics of the same names.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ticketd_rate_limit_failures_total",
		Help: "Requests let through unlimited because Redis could not decide (fail open), by limit and reason.",
	}, []string{"limit", "reason"})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ticketd_rate_limit_refused_total",
		Help: "Requests refused for being over their rate limit, by limit.",
	}, []string{"limit"})
	for _, c := range []prometheus.Collector{failures, refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m := &Metrics{failures: failures, refusals: map[string]prometheus.Counter{}}
	// Resolved once: a refusal can be hot (a client hammering past its limit). Exposed
	// at zero, so a dashboard's rate() has a series from the start.
	for _, kind := range []string{kindPrincipal, kindAuthFailure} {
		m.refusals[kind] = refused.WithLabelValues(kind)
		for _, reason := range []string{"error", "timeout", "circuit-open"} {
			failures.WithLabelValues(kind, reason)
		}
	}
	return m, nil
}

func (m *Metrics) failure(kind, reason string) {
	if m != nil {
		m.failures.WithLabelValues(kind, reason).Inc()
	}
}

func (m *Metrics) refused(kind string) {
	if m != nil {
		m.refusals[kind].Inc()
	}
}
