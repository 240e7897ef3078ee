package webhooks

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the webhooks' Prometheus metrics:
//
//	ticketd_webhook_deliveries_total{outcome}  counter: deliveries finished, delivered or failed (given up)
//	ticketd_webhook_attempts_total{result}     counter: attempts, by result: success, http_error (non-2xx),
//	                                           network_error (connect, timeout, TLS), refused (SSRF rule)
//	ticketd_webhook_endpoints_disabled_total   counter: endpoints disabled after consecutive failures
//	ticketd_webhook_endpoints_disabled         gauge: endpoints disabled now (sampled)
//	ticketd_webhook_delivery_lag_seconds       histogram: event recorded -> the endpoint answered 2xx
type metrics struct {
	deliveries, attempts *prometheus.CounterVec
	autoDisabled         prometheus.Counter
	disabled             prometheus.Gauge
	lag                  prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ticketd_webhook_deliveries_total",
			Help: "Webhook deliveries finished, by outcome: delivered (2xx) or failed (given up after WEBHOOK_MAX_AGE).",
		}, []string{"outcome"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ticketd_webhook_attempts_total",
			Help: "Webhook delivery attempts, by result: success, http_error, network_error, refused.",
		}, []string{"result"}),
		autoDisabled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ticketd_webhook_endpoints_disabled_total",
			Help: "Webhook endpoints disabled after WEBHOOK_DISABLE_AFTER consecutive failed attempts.",
		}),
		disabled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ticketd_webhook_endpoints_disabled",
			Help: "Webhook endpoints disabled now (sampled).",
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ticketd_webhook_delivery_lag_seconds",
			Help:    "Time from an event's recording to its delivery's 2xx answer.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 3600},
		}),
	}
	for _, o := range []string{"delivered", "failed"} {
		m.deliveries.WithLabelValues(o)
	}
	for _, r := range []string{"success", "http_error", "network_error", "refused"} {
		m.attempts.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.deliveries, m.attempts, m.autoDisabled, m.disabled, m.lag} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) delivered(lag time.Duration) {
	m.deliveries.WithLabelValues("delivered").Inc()
	m.lag.Observe(lag.Seconds())
}
