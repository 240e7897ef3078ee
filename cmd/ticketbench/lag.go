package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	vegeta "github.com/tsenart/vegeta/v12/lib"
)

// Projection lag sampling: while the POST load runs, a prober writes a probe ticket
// every probeEvery (created_by "lag-<run>", shared by all probes) and takes the time
// of each 2xx; one poller reads the list filtered on that created_by every
// listPollInterval and records, for each probe it sees for the first time, the time
// since its 2xx; each probe's Redis document is polled directly every redisPollEvery.
// Probes still unseen when the load ends are followed up to lagGiveUp: they were
// written under the load. The list poll goes through the API, so its samples include
// the GET's own latency under the load; each probe's Postgres read model row is polled
// directly too (every rowPollEvery, as Redis is), which is the projection's own lag.
const (
	probeEvery       = 25 * time.Millisecond
	listPollInterval = 5 * time.Millisecond
	redisPollEvery   = time.Millisecond
	rowPollEvery     = time.Millisecond
	lagGiveUp        = 15 * time.Second
)

// lagResult is what the lag scenario measured.
type lagResult struct {
	load             measured
	loadErr          error
	list, row, redis measured
	probes           int
	drainedIn        time.Duration
	drainErr         error
}

// lagScenario runs the POST load, samples the projection lag under it, then checks
// that the backlog drains once the load stops.
func (b *bench) lagScenario(ctx context.Context) lagResult {
	var res lagResult
	var listC, rowC, redisC collector
	creator := "lag-" + b.runID
	var mu sync.Mutex
	pending := map[uuid.UUID]time.Time{} // probe -> its 2xx, until the list shows it
	var probes, redisWG sync.WaitGroup

	loadCtx, stopProbes := context.WithCancel(ctx)
	probes.Add(1)
	go func() { // the prober
		defer probes.Done()
		tick := time.NewTicker(probeEvery)
		defer tick.Stop()
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
			}
			probes.Add(1)
			go func() {
				defer probes.Done()
				id, err := b.createTicket(loadCtx, []byte(`{"title":"lag probe","email":"probe@example.com","created_by":"`+creator+`"}`))
				if err != nil {
					return // the load run counts errors; a failed probe measures nothing
				}
				acked := time.Now()
				mu.Lock()
				pending[id] = acked
				res.probes++
				mu.Unlock()
				if b.pool != nil {
					redisWG.Add(1)
					go func() {
						defer redisWG.Done()
						rowC.add(b.pollRow(ctx, id, acked))
					}()
				}
				if b.redisKey != nil {
					redisWG.Add(1)
					go func() {
						defer redisWG.Done()
						redisC.add(b.pollRedis(ctx, id, acked))
					}()
				}
			}()
		}
	}()
	probesDone, polled := make(chan struct{}), make(chan struct{})
	go func() { // the list poller
		defer close(polled)
		b.pollProbes(ctx, probesDone, creator, &mu, pending, &listC)
	}()

	res.load, res.loadErr = b.load(ctx, b.spec("lag", kindCreate, b.o.conns, nil))
	// The drain is timed from the end of the load: a marker written now shows in the
	// list once the projector has worked off everything written before it.
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		res.drainedIn, res.drainErr = b.waitDrained(ctx, 30*time.Second)
	}()
	stopProbes()
	probes.Wait()
	close(probesDone)
	<-polled
	redisWG.Wait()
	<-drained
	res.list, res.row, res.redis = listC.close(), rowC.close(), redisC.close()
	return res
}

// pollProbes reads the probes' list page every listPollInterval and records each newly
// visible probe's lag, until probesDone is closed and every pending probe was seen (or
// waited for lagGiveUp after its 2xx).
func (b *bench) pollProbes(ctx context.Context, probesDone <-chan struct{}, creator string, mu *sync.Mutex, pending map[uuid.UUID]time.Time, c *collector) {
	u := b.base + "/v1/ticket/?limit=100&created_by=" + creator
	for {
		code, body, err := b.get(ctx, u)
		now := time.Now()
		var page []struct {
			ID uuid.UUID `json:"id"`
		}
		if err == nil && code == http.StatusOK {
			_ = json.Unmarshal(body, &page)
		}
		mu.Lock()
		for _, p := range page {
			if acked, ok := pending[p.ID]; ok {
				c.add(&vegeta.Result{Timestamp: acked, Latency: now.Sub(acked), Code: http.StatusOK})
				delete(pending, p.ID)
			}
		}
		for id, acked := range pending {
			if now.Sub(acked) > lagGiveUp {
				c.add(&vegeta.Result{Timestamp: acked, Latency: now.Sub(acked), Error: "not in the list after " + lagGiveUp.String()})
				delete(pending, id)
			}
		}
		left := len(pending)
		mu.Unlock()
		select {
		case <-probesDone:
			if left == 0 {
				return
			}
		default:
		}
		if ctx.Err() != nil {
			return
		}
		time.Sleep(listPollInterval)
	}
}

// pollRedis polls the ticket's Redis document until it exists.
func (b *bench) pollRedis(ctx context.Context, id uuid.UUID, acked time.Time) *vegeta.Result {
	key := b.redisKey(id)
	return pollUntil(ctx, acked, redisPollEvery, "in Redis", func(ctx context.Context) (bool, error) {
		n, err := b.rdb.Exists(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			err = nil
		}
		return n == 1, err
	})
}

// pollRow polls the ticket's row in the Postgres read model until it is there.
func (b *bench) pollRow(ctx context.Context, id uuid.UUID, acked time.Time) *vegeta.Result {
	return pollUntil(ctx, acked, rowPollEvery, "in the read model", func(ctx context.Context) (bool, error) {
		var n int
		err := b.pool.QueryRow(ctx, `SELECT count(*) FROM readmodel.tickets WHERE id = $1 AND NOT deleted`, id).Scan(&n)
		return n == 1, err
	})
}

// pollUntil calls seen every interval until it reports the probe written at acked as
// visible, fails, or lagGiveUp passes, and returns the sample: the time from acked.
func pollUntil(ctx context.Context, acked time.Time, every time.Duration, where string, seen func(context.Context) (bool, error)) *vegeta.Result {
	ctx = context.WithoutCancel(ctx) // finish the probe even when the load has ended
	for {
		ok, err := seen(ctx)
		if err != nil {
			return &vegeta.Result{Timestamp: acked, Latency: time.Since(acked), Error: err.Error()}
		}
		if ok {
			return &vegeta.Result{Timestamp: acked, Latency: time.Since(acked), Code: http.StatusOK}
		}
		if time.Since(acked) > lagGiveUp {
			return &vegeta.Result{Timestamp: acked, Latency: time.Since(acked), Error: "not " + where + " after " + lagGiveUp.String()}
		}
		time.Sleep(every)
	}
}
