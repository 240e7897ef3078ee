package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// Projection lag sampling: while the POST load runs, lagSamplers goroutines each create
// a ticket with a unique created_by, take the time of its 2xx, and poll until the
// ticket shows in the list (?created_by=) and its document is in Redis.
const (
	lagSamplers      = 4
	listPollInterval = 5 * time.Millisecond
	redisPollEvery   = time.Millisecond
	lagGiveUp        = 10 * time.Second
)

// lagResult is what the lag scenario measured.
type lagResult struct {
	load        measured
	list, redis measured
	redisNA     string
	drainedIn   time.Duration
	drainErr    error
}

// lagScenario runs the POST load and samples the projection lag under it, then checks
// that the backlog drains once the load stops.
func (b *bench) lagScenario(ctx context.Context) lagResult {
	var res lagResult
	var listC, redisC collector
	var n atomic.Int64
	loadCtx, stopSamplers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range lagSamplers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for loadCtx.Err() == nil {
				creator := "lag-" + b.runID + "-" + strconv.FormatInt(n.Add(1), 10)
				b.sampleLag(loadCtx, creator, &listC, &redisC)
			}
		}()
	}
	res.load = b.attack(ctx, "lag", b.o.conns, b.o.duration, b.createTarget())
	stopSamplers()
	wg.Wait()
	res.list, res.redis = listC.close(), redisC.close()
	if b.redisKey == nil {
		res.redisNA = b.redisNA
	}
	res.drainedIn, res.drainErr = b.waitDrained(ctx, 30*time.Second)
	return res
}

// sampleLag creates one ticket and measures how long after its 2xx it shows in the
// list and in Redis.
func (b *bench) sampleLag(ctx context.Context, creator string, listC, redisC *collector) {
	body := []byte(`{"title":"lag probe","email":"probe@example.com","created_by":"` + creator + `"}`)
	id, err := b.createTicket(ctx, body)
	if err != nil {
		return // the load run counts errors; a probe that could not write measures nothing
	}
	acked := time.Now()
	var wg sync.WaitGroup
	if b.redisKey != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			redisC.add(b.pollRedis(ctx, id, acked))
		}()
	}
	seen, err := b.pollList(ctx, creator, lagGiveUp, listPollInterval)
	r := &vegeta.Result{Timestamp: acked, Latency: time.Since(acked), Code: http.StatusOK}
	switch {
	case errors.Is(err, context.Canceled):
		// the load ended while this probe waited: measured by the drain check instead
		wg.Wait()
		return
	case err != nil:
		r.Code, r.Error = 0, err.Error()
	case !seen:
		r.Code, r.Error = 0, fmt.Sprintf("not in the list after %v", lagGiveUp)
	}
	listC.add(r)
	wg.Wait()
}

// pollRedis polls the ticket's Redis document until it exists.
func (b *bench) pollRedis(ctx context.Context, id uuid.UUID, acked time.Time) *vegeta.Result {
	key := b.redisKey(id)
	ctx = context.WithoutCancel(ctx) // finish the probe even when the load has ended
	for {
		n, err := b.rdb.Exists(ctx, key).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return &vegeta.Result{Timestamp: acked, Latency: time.Since(acked), Error: err.Error()}
		}
		if n == 1 {
			return &vegeta.Result{Timestamp: acked, Latency: time.Since(acked), Code: http.StatusOK}
		}
		if time.Since(acked) > lagGiveUp {
			return &vegeta.Result{Timestamp: acked, Latency: time.Since(acked), Error: "not in Redis after " + lagGiveUp.String()}
		}
		time.Sleep(redisPollEvery)
	}
}
