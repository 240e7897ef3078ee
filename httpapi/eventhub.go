package httpapi

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/singleflight"

	"github.com/ticketd/ticketd/eventstore"
)

// ChangeSource is what the hub asks the event store: a watermark to start from, and
// which streams grew since one (eventstore.Store has both).
type ChangeSource interface {
	CurrentWatermark(ctx context.Context) (eventstore.Watermark, error)
	Changes(ctx context.Context, from eventstore.Watermark) (map[uuid.UUID]int, eventstore.Watermark, error)
}

// EventHub learns of new events and wakes the live streams (GET /v1/ticket/{id}/events)
// of the tickets they belong to. One per process, shared by every stream: a stream
// waiting for its ticket's next event holds a channel here and no Postgres connection.
//
// It learns of events two ways: Wake (chained to eventstore.Store.OnAppend) polls at
// once after this instance's appends, and a poll every interval finds other
// instances' appends. A poll is one query for all streams (eventstore Changes: the
// streams written since the last poll, with their last versions), borrowing a pool
// connection for its duration; a stream that is woken then reads its new events by
// range (History) itself. A poll that fails is retried at the next interval from the
// same watermark, so nothing is missed, only late.
type EventHub struct {
	src      ChangeSource
	interval time.Duration
	log      *slog.Logger

	kick chan struct{}
	done chan struct{}
	once sync.Once

	// reads shares one read of a ticket's new events among its streams that stand at
	// the same version (a write wakes them all at once)
	reads singleflight.Group

	mu     sync.Mutex
	topics map[uuid.UUID]*topic
	from   eventstore.Watermark // 0: not known yet
}

// topic is the streams following one ticket, and the last version polls have seen.
type topic struct {
	head int
	subs map[*subscription]struct{}
}

// subscription is one stream's place in the hub: wake gets a value (never blocks:
// capacity one) when the ticket may have new events.
type subscription struct {
	id   uuid.UUID
	wake chan struct{}
}

// hubIdleRefresh is how often the hub with no stream to serve moves its watermark on
// (a query that reads no table), so the first poll after a quiet spell reads only
// the events of that spell's last seconds.
const hubIdleRefresh = 5 * time.Second

// hubMinGap spaces the polls that Wake asks for, so a burst of appends costs one.
const hubMinGap = 5 * time.Millisecond

// NewEventHub returns a hub polling src every interval (at least 10ms); Run runs it.
func NewEventHub(src ChangeSource, interval time.Duration, log *slog.Logger) *EventHub {
	if log == nil {
		log = slog.Default()
	}
	return &EventHub{src: src, interval: max(interval, 10*time.Millisecond), log: log,
		kick: make(chan struct{}, 1), done: make(chan struct{}), topics: map[uuid.UUID]*topic{}}
}

// Wake asks for a poll now (this instance appended). It never blocks.
func (h *EventHub) Wake() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// Done is closed when the hub stops (Close): every stream then ends.
func (h *EventHub) Done() <-chan struct{} { return h.done }

// Close stops the hub and ends every stream.
func (h *EventHub) Close() { h.once.Do(func() { close(h.done) }) }

// Run polls until ctx ends or Close, then closes the hub.
func (h *EventHub) Run(ctx context.Context) {
	defer h.Close()
	tick := time.NewTicker(h.interval)
	defer tick.Stop()
	var lastIdle time.Time
	for {
		h.mu.Lock()
		idle := len(h.topics) == 0
		h.mu.Unlock()
		if !idle || time.Since(lastIdle) >= hubIdleRefresh {
			h.poll(ctx, idle)
			if idle {
				lastIdle = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-h.done:
			return
		case <-tick.C:
		case <-h.kick:
			select { // a burst of appends: one poll
			case <-time.After(hubMinGap):
			case <-ctx.Done():
				return
			}
		}
	}
}

// poll runs one query and wakes the streams of the tickets that grew. idle: no stream
// follows anything; only the watermark moves on.
func (h *EventHub) poll(ctx context.Context, idle bool) {
	ctx, cancel := context.WithTimeout(ctx, max(h.interval, 5*time.Second))
	defer cancel()
	h.mu.Lock()
	from := h.from
	h.mu.Unlock()
	if from == 0 || idle {
		w, err := h.src.CurrentWatermark(ctx)
		if err != nil {
			h.log.Warn("event stream hub: poll failed; streams wait", "err", err)
			return
		}
		h.mu.Lock()
		h.from = max(h.from, w)
		if from == 0 {
			// streams that subscribed before the first watermark may have missed a
			// wake: each reads once
			for _, t := range h.topics {
				t.wakeAll()
			}
		}
		h.mu.Unlock()
		return
	}
	heads, next, err := h.src.Changes(ctx, from)
	if err != nil {
		h.log.Warn("event stream hub: poll failed; streams wait", "err", err)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.from = max(h.from, next)
	for id, v := range heads {
		if t, ok := h.topics[id]; ok && v > t.head {
			t.head = v
			t.wakeAll()
		}
	}
}

func (t *topic) wakeAll() {
	for s := range t.subs {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// subscribe starts following ticket id. The stream reads what it must replay after
// subscribing, so an event committed meanwhile wakes it rather than being missed.
func (h *EventHub) subscribe(id uuid.UUID) *subscription {
	s := &subscription{id: id, wake: make(chan struct{}, 1)}
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.topics[id]
	if t == nil {
		t = &topic{subs: map[*subscription]struct{}{}}
		h.topics[id] = t
	}
	t.subs[s] = struct{}{}
	return s
}

// unsubscribe releases s; the ticket's topic goes with its last stream.
func (h *EventHub) unsubscribe(s *subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t := h.topics[s.id]; t != nil {
		delete(t.subs, s)
		if len(t.subs) == 0 {
			delete(h.topics, s.id)
		}
	}
}

// Following returns how many tickets and streams the hub follows now.
func (h *EventHub) Following() (tickets, streams int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, t := range h.topics {
		streams += len(t.subs)
	}
	return len(h.topics), streams
}

// readAfter returns read(), shared with the streams of ticket id that ask for the
// events after the same version at the same time: a write to a ticket followed by
// many streams costs one read, not one per stream. read must not depend on one
// caller's context (a caller that leaves must not fail the others' read).
//
// The key holds the last version the hub's polls saw of the ticket: a stream woken
// for a newer event than a read in flight was started for does not join that read
// (it could miss the event), it starts its own.
func (h *EventHub) readAfter(id uuid.UUID, after int, read func() (any, error)) (any, error) {
	h.mu.Lock()
	seen := 0
	if t := h.topics[id]; t != nil {
		seen = t.head
	}
	h.mu.Unlock()
	v, err, _ := h.reads.Do(id.String()+"/"+strconv.Itoa(after)+"/"+strconv.Itoa(seen), read)
	return v, err
}
