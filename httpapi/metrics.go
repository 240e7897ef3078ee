package httpapi

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry is where the service's Prometheus metrics are registered and what /metrics
// serves. *prometheus.Registry is one.
type Registry interface {
	prometheus.Registerer
	prometheus.Gatherer
}

// NewRegistry returns a registry holding the standard Go runtime and process collectors,
// ready for the HTTP and projection metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// httpMetrics are the HTTP layer's metrics. Labels are bounded: route is the route
// template (/v1/ticket/:id), never the raw path, and "unmatched" for requests no route
// took; method is one of the methods Fiber accepts; status is a status code.
//
// The children of the vectors are resolved once per route and method (and status code)
// and kept in routes: a request costs a lookup keyed by its route's pointer, not
// WithLabelValues (which hashes the label values and takes a lock, on every request).
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inFlight prometheus.Gauge
	// replays counts the replays of past versions running (ReplayConcurrency slots taken).
	replays prometheus.Gauge
	routes  sync.Map // *fiber.Route -> *routeMetrics
	nroutes atomic.Int32
}

// maxRouteEntries bounds routes. Fiber registers a route once per method, so a route
// table has a few dozen; the bound only matters if some Fiber path ever handed out a
// fresh *Route per request (its Ctx.Route does when a ctx has no route): such requests
// are still counted correctly, by the slow path.
const maxRouteEntries = 1024

// routeMetrics are one route's (method, route label) metric children. The counters by
// status code are made on first use: the codes a route answers are few but not known in
// advance, and series that were never counted are not exposed.
type routeMetrics struct {
	method, route string
	// quiet: a probe or scrape, whose successes are logged at debug level
	quiet    bool
	duration prometheus.Observer
	vec      *prometheus.CounterVec
	mu       sync.Mutex                                 // serialises additions to codes
	codes    atomic.Pointer[map[int]prometheus.Counter] // copied on write
}

// forRoute returns the metrics of requests that ended on route r with the given method
// label (a constant from methodLabel), route being r's label (its template, or
// unmatchedRoute). r's pointer is the key: Fiber registers a route once per method, so
// one pointer is one (method, route) pair; a mismatch (never seen) takes the slow path
// rather than mislabel.
func (m *httpMetrics) forRoute(r *fiber.Route, method, route string) *routeMetrics {
	if v, ok := m.routes.Load(r); ok {
		if rm := v.(*routeMetrics); rm.method == method && rm.route == route {
			return rm
		}
		return m.newRouteMetrics(method, route)
	}
	rm := m.newRouteMetrics(method, route)
	if m.nroutes.Load() >= maxRouteEntries {
		return rm
	}
	v, loaded := m.routes.LoadOrStore(r, rm)
	if !loaded {
		m.nroutes.Add(1)
	}
	return v.(*routeMetrics)
}

func (m *httpMetrics) newRouteMetrics(method, route string) *routeMetrics {
	return &routeMetrics{method: method, route: route, quiet: quietRoutes[route],
		duration: m.duration.WithLabelValues(method, route), vec: m.requests}
}

// requests returns the counter of this route's answers with status code.
func (rm *routeMetrics) requests(code int) prometheus.Counter {
	if codes := rm.codes.Load(); codes != nil {
		if c, ok := (*codes)[code]; ok {
			return c
		}
	}
	rm.mu.Lock()
	defer rm.mu.Unlock()
	old := rm.codes.Load()
	if old != nil {
		if c, ok := (*old)[code]; ok {
			return c
		}
	}
	codes := make(map[int]prometheus.Counter, 4)
	if old != nil {
		for k, v := range *old {
			codes[k] = v
		}
	}
	c := rm.vec.WithLabelValues(rm.method, rm.route, strconv.Itoa(code))
	codes[code] = c
	rm.codes.Store(&codes)
	return c
}

// unmatchedRoute labels requests that matched no route (404, 405).
const unmatchedRoute = "unmatched"

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "http_requests_total",
			Help: "HTTP requests answered, by method, route template and status code.",
		}, []string{"method", "route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "http_request_duration_seconds",
			Help:    "Time from the request reaching the router to its answer being ready, by method and route template.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method", "route"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "http_requests_in_flight",
			Help: "HTTP requests being handled now.",
		}),
		replays: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ticketd_replays_running",
			Help: "Replays of past versions (GET ?version=N) running now, each in one of the REPLAY_CONCURRENCY slots.",
		}),
	}
	m.requests = register(reg, m.requests)
	m.duration = register(reg, m.duration)
	m.inFlight = register(reg, m.inFlight)
	m.replays = register(reg, m.replays)
	return m
}

// register registers c, or returns the equal collector already registered (a second
// server on the same registry shares the metrics rather than failing).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic("httpapi: register metric: " + err.Error())
	}
	return c
}

// metricsHandler serves reg in the Prometheus exposition format.
func metricsHandler(reg Registry) fiber.Handler {
	return adaptor.HTTPHandler(promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		Registry:          reg, // counts its own scrape errors
		EnableOpenMetrics: false,
	}))
}
