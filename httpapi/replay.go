package httpapi

import (
	"container/list"
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
)

// The bounds of GET /v1/ticket/{id}?version=N, a replay of the stream from the event
// store: at most ReplayConcurrency at once (429 beyond), a replay's work ends at the
// request's deadline or when its client hangs up, and replayed versions are cached.

// Defaults of the replay bounds.
const (
	// DefaultReplayCacheBytes is the budget of the cache of replayed versions.
	DefaultReplayCacheBytes = 64 << 20
	// DefaultHistoryPageBytes caps a history page's events' stored JSON.
	DefaultHistoryPageBytes = 1 << 20
	// clientProbeEvery is how often a running replay checks that its client is still
	// connected.
	clientProbeEvery = 10 * time.Millisecond
	// checkpointEvery is how many events apart a replay keeps the states it passes in
	// the version cache, for later replays of the stream to start from.
	checkpointEvery = 1000
)

// replaySlots limits the replays running at once; a replay that finds no free slot is
// refused at once (429), never queued.
type replaySlots chan struct{}

func (s replaySlots) tryAcquire() bool {
	select {
	case s <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s replaySlots) release() { <-s }

// tooManyReplays is the answer when every replay slot is taken.
func tooManyReplays(c *fiber.Ctx) error {
	c.Set(fiber.HeaderRetryAfter, "1")
	return problem(fiber.StatusTooManyRequests, "too-many-replays",
		"too many past versions are being replayed at once; retry after a second (the current state, GET without ?version, is not limited)")
}

// versionKey names one version of one stream: its replay never changes.
type versionKey struct {
	id      uuid.UUID
	version int
}

// replayed is the answer for one version: the view's JSON, or the deletion.
type replayed struct {
	key     versionKey
	body    []byte
	deleted bool
	// at is when it was replayed: a version's personal data changes once, when its
	// subject is erased, so an entry is kept at most replayMaxAge (an erasure on this
	// instance drops its stream's entries at once: forgetStream).
	at time.Time
}

// replayMaxAge bounds how long a replayed version is served from the cache: another
// instance's erasure of a subject shows in this instance's replays after at most this.
const replayMaxAge = 30 * time.Second

func (r *replayed) size() int { return len(r.body) + 64 }

// versionCache is an LRU of replayed versions bounded by the bytes of their JSON; an
// answer larger than a quarter of the budget is not kept. Besides answering a repeated
// version, a kept version is where a replay of a later version of the same stream
// starts (nearest), so a long stream is folded from its start once, not per version
// asked. Safe for concurrent use.
type versionCache struct {
	mu       sync.Mutex
	max      int
	size     int
	order    *list.List // front: most recently used
	entries  map[versionKey]*list.Element
	byStream map[uuid.UUID][]int // the kept versions of each stream, ascending
}

func newVersionCache(maxBytes int) *versionCache {
	return &versionCache{max: maxBytes, order: list.New(), entries: map[versionKey]*list.Element{}, byStream: map[uuid.UUID][]int{}}
}

func (c *versionCache) get(k versionKey) (*replayed, bool) {
	if c.max <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok {
		return nil, false
	}
	if time.Since(e.Value.(*replayed).at) > replayMaxAge {
		c.remove(e)
		return nil, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*replayed), true
}

// forgetStream drops every kept version of stream id (its subject was erased).
func (c *versionCache) forgetStream(id uuid.UUID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range c.byStream[id] {
		k := versionKey{id: id, version: v}
		if e, ok := c.entries[k]; ok {
			c.size -= e.Value.(*replayed).size()
			c.order.Remove(e)
			delete(c.entries, k)
		}
	}
	delete(c.byStream, id)
}

// nearest returns the kept version of stream id closest below or at version that shows
// a ticket (not a deletion), to start a replay from.
func (c *versionCache) nearest(id uuid.UUID, version int) (*replayed, bool) {
	if c.max <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	vs := c.byStream[id]
	for i, _ := slices.BinarySearch(vs, version+1); i > 0; i-- {
		e := c.entries[versionKey{id: id, version: vs[i-1]}]
		if r := e.Value.(*replayed); !r.deleted && time.Since(r.at) <= replayMaxAge {
			c.order.MoveToFront(e)
			return r, true
		}
	}
	return nil, false
}

func (c *versionCache) put(r *replayed) {
	if r.size() > c.max/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.at.IsZero() {
		r.at = time.Now()
	}
	if e, ok := c.entries[r.key]; ok {
		if old := e.Value.(*replayed); time.Since(old.at) > replayMaxAge {
			c.size += r.size() - old.size()
			e.Value = r
			c.order.MoveToFront(e)
		}
		return
	}
	c.entries[r.key] = c.order.PushFront(r)
	vs := c.byStream[r.key.id]
	i, _ := slices.BinarySearch(vs, r.key.version)
	c.byStream[r.key.id] = slices.Insert(vs, i, r.key.version)
	c.size += r.size()
	for c.size > c.max {
		c.remove(c.order.Back())
	}
	// Entries past replayMaxAge are never served again: the least recently used end
	// goes while it is stale, so the cache does not hold its budget of dead answers
	// after the replays stop (a stale entry behind a fresh one goes when it gets there,
	// or when get meets it).
	for last := c.order.Back(); last != nil && time.Since(last.Value.(*replayed).at) > replayMaxAge; last = c.order.Back() {
		c.remove(last)
	}
}

// remove drops entry e; c.mu is held.
func (c *versionCache) remove(e *list.Element) {
	old := e.Value.(*replayed)
	c.order.Remove(e)
	delete(c.entries, old.key)
	vs := c.byStream[old.key.id]
	if i, ok := slices.BinarySearch(vs, old.key.version); ok {
		vs = slices.Delete(vs, i, i+1)
	}
	if len(vs) == 0 {
		delete(c.byStream, old.key.id)
	} else {
		c.byStream[old.key.id] = vs
	}
	c.size -= old.size()
}

// errClientGone ends a replay whose client closed its connection.
var errClientGone = errors.New("the client closed the connection")

// whileConnected returns a context derived from ctx that also ends (with cause
// errClientGone) when the request's client closes its connection, and a function the
// handler must call before it returns.
//
// fasthttp does not end a handler's context when its client leaves, and its connection
// must not be read while the handler runs. What is detected: every poll
// (clientProbeEvery) peeks at the socket without consuming or waiting (recv with
// MSG_PEEK|MSG_DONTWAIT, Linux); an orderly close (FIN: the client closed or shut down
// its side, or its process ended) or a reset ends the context. What is not: a client
// whose host or network vanished without a FIN or RST (only the request's deadline ends
// that work), a client that half-closes but still waits for the answer (it is taken as
// gone), and a connection that already holds the next pipelined request (data waiting
// reads as alive). On other systems, or a connection that is not a socket, only the
// deadline applies.
func whileConnected(ctx context.Context, c *fiber.Ctx) (context.Context, func()) {
	raw := rawConn(c.Context().Conn())
	if raw == nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(clientProbeEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if peerClosed(raw) {
					cancel(errClientGone)
					return
				}
			}
		}
	}()
	return ctx, func() {
		close(done)
		<-stopped // the connection is never touched after the handler returns
		cancel(nil)
	}
}

// rawConn digs the socket out of the listener's wrappers, each of which hands over
// the connection it wraps by a NetConn method (as crypto/tls's does, and
// cmd/ticketd's connection-counting one).
func rawConn(c net.Conn) syscall.RawConn {
	for range 4 {
		if c == nil {
			return nil
		}
		if sc, ok := c.(syscall.Conn); ok {
			rc, err := sc.SyscallConn()
			if err != nil {
				return nil
			}
			return rc
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}
