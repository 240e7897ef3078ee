package projections

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ticketd/ticketd/eventstore"
)

// Metrics is what the projectors report to. Every method is called with the consumer
// group of the projector (PostgresGroup, RedisGroup) and must be safe for concurrent
// use and cheap: Projected, Failed and Poisoned run on the projection path.
type Metrics interface {
	// Projected records that group applied one event, lag after the store recorded it.
	Projected(group string, lag time.Duration)
	// Failed records one failed attempt of group to apply an event (each retry counts).
	Failed(group string)
	// Poisoned records that group gave up on an event and sent it to PoisonTopic.
	Poisoned(group string)
	// Backlog records how many outbox events group has not acknowledged yet: its lag
	// in events behind the head, sampled every Config.BacklogInterval.
	Backlog(group string, events int64)
}

// NopMetrics discards everything; it is what projectors report to when
// Config.Metrics is nil.
type NopMetrics struct{}

// Projected does nothing.
func (NopMetrics) Projected(string, time.Duration) {}

// Failed does nothing.
func (NopMetrics) Failed(string) {}

// Poisoned does nothing.
func (NopMetrics) Poisoned(string) {}

// Backlog does nothing.
func (NopMetrics) Backlog(string, int64) {}

// PrometheusMetrics reports to Prometheus, labelled by consumer group:
//
//	ticketd_projection_events_total{group}    counter: events applied
//	ticketd_projection_failures_total{group}  counter: failed attempts (retries included)
//	ticketd_projection_poisoned_total{group}  counter: events sent to the poison topic
//	ticketd_projection_lag_seconds{group}     histogram: event recorded -> applied
//	ticketd_projection_lag_events{group}      gauge: outbox events not yet acknowledged
//
// The failure and poison counters of a group are exported at zero from the group's first
// report on (the router samples every group's backlog as it starts), not only once they
// first count: an alert on their rate, or a dashboard, sees the series before anything
// fails, and a missing series means a missing group.
type PrometheusMetrics struct {
	events, failures, poisoned *prometheus.CounterVec
	lagSeconds                 *prometheus.HistogramVec
	lagEvents                  *prometheus.GaugeVec
}

// NewPrometheusMetrics creates the projection metrics and registers them with reg. It
// fails if reg already holds metrics of the same names (registering twice).
func NewPrometheusMetrics(reg prometheus.Registerer) (*PrometheusMetrics, error) {
	m := &PrometheusMetrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ticketd_projection_events_total",
			Help: "Events applied to a read model, by projector consumer group.",
		}, []string{"group"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ticketd_projection_failures_total",
			Help: "Failed attempts to apply an event (every retry counts), by consumer group.",
		}, []string{"group"}),
		poisoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ticketd_projection_poisoned_total",
			Help: "Events given up on and sent to the poison topic, by consumer group.",
		}, []string{"group"}),
		lagSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ticketd_projection_lag_seconds",
			Help:    "Time from an event being recorded to a projector applying it, by consumer group.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"group"}),
		lagEvents: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ticketd_projection_lag_events",
			Help: "Outbox events a consumer group has not acknowledged yet (sampled).",
		}, []string{"group"}),
	}
	for _, c := range []prometheus.Collector{m.events, m.failures, m.poisoned, m.lagSeconds, m.lagEvents} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register projection metrics: %w", err)
		}
	}
	return m, nil
}

// Projected counts the event and observes its lag (negative lags, from clock skew
// between instances, count as zero).
func (m *PrometheusMetrics) Projected(group string, lag time.Duration) {
	m.events.WithLabelValues(group).Inc()
	m.lagSeconds.WithLabelValues(group).Observe(max(lag, 0).Seconds())
}

// Failed counts a failed attempt.
func (m *PrometheusMetrics) Failed(group string) {
	m.known(group)
	m.failures.WithLabelValues(group).Inc()
}

// known exports group's failure and poison counters, at zero if they never counted.
func (m *PrometheusMetrics) known(group string) {
	m.failures.WithLabelValues(group)
	m.poisoned.WithLabelValues(group)
}

// Poisoned counts an event sent to the poison topic.
func (m *PrometheusMetrics) Poisoned(group string) { m.poisoned.WithLabelValues(group).Inc() }

// Backlog sets the group's lag in events.
func (m *PrometheusMetrics) Backlog(group string, events int64) {
	m.known(group)
	m.lagEvents.WithLabelValues(group).Set(float64(events))
}

// backlogQuery counts, per consumer group, the outbox rows after the group's
// acknowledged position (watermill-sql orders by (transaction_id, offset)). The primary
// key of the outbox is exactly that pair, so this is an index range scan over the
// backlog only: cheap while projectors keep up. A group with no offsets row yet has
// the whole outbox ahead of it. The count stops at a million.
const backlogQuery = `
SELECT g.name, (
	SELECT count(*) FROM (
		SELECT 1 FROM "watermill_` + eventstore.Topic + `" m
		WHERE (m.transaction_id, m."offset") >
			(coalesce(o.last_processed_transaction_id, '0'::xid8), coalesce(o.offset_acked, 0))
		LIMIT 1000000) behind)
FROM unnest($1::text[]) AS g(name)
LEFT JOIN "watermill_offsets_` + eventstore.Topic + `" o ON o.consumer_group = g.name`

// SampleBacklog reports each group's backlog (events behind the head) to m once.
func SampleBacklog(ctx context.Context, pool *pgxpool.Pool, m Metrics, groups ...string) error {
	rows, err := pool.Query(ctx, backlogQuery, groups)
	if err != nil {
		return fmt.Errorf("sample projection backlog: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var g string
		var n int64
		if err := rows.Scan(&g, &n); err != nil {
			return fmt.Errorf("sample projection backlog: %w", err)
		}
		m.Backlog(g, n)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sample projection backlog: %w", err)
	}
	return nil
}
