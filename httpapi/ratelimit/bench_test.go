package ratelimit

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"testing"

	"github.com/ticketd/ticketd/httpapi/auth"
)

// BenchmarkAllow is the cost a limited request adds: one script round trip to the
// cluster (EVALSHA), from parallel goroutines as a server's requests would make it.
// failopen is how many calls timed out (or met the open breaker) and were let through.
func BenchmarkAllow(b *testing.B) {
	rdb := cluster(b)
	m := metricsB(b)
	lim, err := New(rdb, Limits{Roles: map[auth.Role]Rate{auth.RoleAdmin: mustRate("1000000/s")}, Timeout: outageTimeout},
		Options{Prefix: prefix(b), Metrics: m})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		p := principal(auth.RoleAdmin)
		for pb.Next() {
			lim.Allow(context.Background(), p)
		}
	})
}

func metricsB(b *testing.B) *Metrics {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		n := 0
		for _, r := range []string{"error", "timeout", "circuit-open"} {
			n += failures(m, kindPrincipal, r)
		}
		b.ReportMetric(float64(n), "failopen")
	})
	return m
}

// BenchmarkAllowRefusedFromMemory is a client hammering past its limit: answered from
// this instance's memory of the refusal, without a round trip.
func BenchmarkAllowRefusedFromMemory(b *testing.B) {
	lim, err := New(cluster(b), Limits{Roles: map[auth.Role]Rate{auth.RoleAdmin: mustRate("1/h")}, Timeout: outageTimeout},
		Options{Prefix: prefix(b)})
	if err != nil {
		b.Fatal(err)
	}
	p := principal(auth.RoleAdmin)
	lim.Allow(context.Background(), p)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if d := lim.Allow(context.Background(), p); d.Allowed {
			b.Fatal("allowed")
		}
	}
}
