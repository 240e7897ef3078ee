package webhooks

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ticketd/ticketd/db/dbtest"
	"github.com/ticketd/ticketd/ticket"
)

// A new event kind of the domain cannot reach receivers unnamed: each has a type.
func TestEveryEventKindHasAWebhookType(t *testing.T) {
	for _, k := range ticket.EventKinds() {
		if _, ok := eventTypes[k.EventType()]; !ok {
			t.Errorf("event kind %s has no webhook type in eventTypes", k.EventType())
		}
	}
}

// The signature of the Standard Webhooks reference test vector.
func TestSignMatchesTheStandardWebhooksVector(t *testing.T) {
	got := Sign("msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`),
		"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Errorf("signature %s, want %s", got, want)
	}
	two := Sign("id", time.Unix(1, 0), []byte("{}"), NewSecret(), NewSecret())
	if parts := strings.Split(two, " "); len(parts) != 2 || !strings.HasPrefix(parts[1], "v1,") {
		t.Errorf("two secrets: %q, want two space-separated v1 signatures", two)
	}
}

// The dial-time check refuses an internal address whatever name led to it: here
// "localhost", which resolves to loopback (a name the create-time check never saw
// resolve so, as after DNS rebinding).
func TestDialRefusesInternalAddresses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	c := newClient(Config{AttemptTimeout: 2 * time.Second}.withDefaults())
	for _, u := range []string{"http://localhost:" + port + "/", srv.URL} {
		resp, err := c.Get(u)
		if err == nil {
			resp.Body.Close()
			t.Errorf("GET %s: answered %d, want refused at dial", u, resp.StatusCode)
		} else if !errors.Is(err, ErrForbiddenAddress) {
			t.Errorf("GET %s: %v, want ErrForbiddenAddress", u, err)
		}
	}
	allowed := newClient(Config{AllowPrivate: true}.withDefaults())
	resp, err := allowed.Get(srv.URL)
	if err != nil {
		t.Fatalf("with AllowPrivate: %v", err)
	}
	resp.Body.Close()
}

// A delivery that keeps failing is given up after MaxAge and marked failed; finished
// deliveries are pruned after Retention.
func TestMaxAgeGivesUpAndPruneDeletesFinished(t *testing.T) {
	pool := dbtest.NewPool(t)
	ctx := dbtest.Context(t)
	var hits atomic.Int32
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(500)
	}))
	defer recv.Close()
	s, err := New(pool, nil, Config{AllowPrivate: true, MaxAge: 700 * time.Millisecond, BackoffMin: 50 * time.Millisecond,
		BackoffMax: 100 * time.Millisecond, DispatchPoll: 20 * time.Millisecond, Retention: time.Hour}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	e, _, err := s.Create(ctx, NewEndpoint{URL: recv.URL, Events: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Ping(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); s.Run(rctx) }()
	defer func() { stop(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		log, _, err := s.Deliveries(ctx, e.ID, LogQuery{Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if log[0].Status == StatusFailed {
			if log[0].ID != d.ID || log[0].Attempts < 3 || log[0].LastStatusCode == nil || *log[0].LastStatusCode != 500 || log[0].FinishedAt == nil {
				t.Errorf("failed delivery %+v: want several attempts, the last answered 500", log[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivery not failed within 10s: %+v", log[0])
		}
		time.Sleep(50 * time.Millisecond)
	}
	n := hits.Load()
	time.Sleep(300 * time.Millisecond)
	if hits.Load() != n {
		t.Errorf("a failed delivery was tried again")
	}
	if pruned, err := s.Prune(ctx); err != nil || pruned != 0 {
		t.Errorf("prune within the retention: %d %v, want 0", pruned, err)
	}
	s.Now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if pruned, err := s.Prune(ctx); err != nil || pruned != 1 {
		t.Errorf("prune after the retention: %d %v, want 1", pruned, err)
	}
	if log, _, _ := s.Deliveries(ctx, e.ID, LogQuery{Limit: 10}); len(log) != 0 {
		t.Errorf("log after pruning: %+v", log)
	}
}
