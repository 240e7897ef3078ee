package httpapi

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ticketd/ticketd/eventstore"
	"github.com/ticketd/ticketd/httpapi/auth"
	"github.com/ticketd/ticketd/ticket"
)

// The live event stream of a ticket: GET /v1/ticket/{id}/events, Server-Sent Events.
// Each event goes out as
//
//	id: <version>
//	event: <type>
//	data: <the event as the history shows it, one line of JSON>
//
// What the client saw last (Last-Event-ID, or ?after=N) is replayed after from the
// event store, then the stream follows the ticket live, woken by the EventHub, with a
// comment line every heartbeat. It ends after the deletion event. A waiting stream
// holds its connection's goroutine (blocked in stream.Read), fasthttp's write buffer
// and copy buffer (4 KiB each), a channel in the hub, and no Postgres connection.

// Defaults of StreamConfig.
const (
	DefaultHeartbeat                = 15 * time.Second
	DefaultMaxStreams               = 2048
	DefaultMaxStreamsPerPrincipal   = 64
	DefaultStreamPollInterval       = 250 * time.Millisecond
	streamPage                      = 100 // events read from the store at a time
	minStreamStall                  = 10 * time.Second
	headerLastEventID               = "Last-Event-ID"
	mimeEventStream                 = "text/event-stream"
	streamRetryAfter                = "5"
	streamEndDeleted                = "deleted"
	streamEndClientGone             = "client_gone"
	streamEndServerStopping         = "server_stopping"
	streamEndReadFailed             = "read_failed"
	streamLogKey                    = "ticketd.stream"
	maxStreamLogWaitForObserve      = time.Second
	streamHeartbeatLine             = ": heartbeat\n\n"
	streamStoppingLine              = ": the server is stopping; reconnect with Last-Event-ID\n\n"
	streamReadFailedReasonForClient = ": the event store cannot be read; reconnect with Last-Event-ID\n\n"
)

// StreamConfig configures the live event streams.
type StreamConfig struct {
	// Hub wakes the streams when their ticket has new events; nil: the route answers
	// 503 (no live streams on this server).
	Hub *EventHub
	// Heartbeat is the time between comment lines on a quiet stream
	// (DefaultHeartbeat when 0). A client that went away is noticed at the next one.
	Heartbeat time.Duration
	// MaxStreams caps the streams open at once in this process; beyond it 503 with
	// Retry-After (DefaultMaxStreams when 0).
	MaxStreams int
	// MaxPerPrincipal caps the streams of one principal; beyond it 429 with Retry-After
	// (DefaultMaxStreamsPerPrincipal when 0; negative: no cap per principal).
	MaxPerPrincipal int
}

// streams is the server's accounting of its open streams.
type streams struct {
	cfg         StreamConfig
	mu          sync.Mutex
	open        int
	byPrincipal map[string]int
	gauge       prometheus.Gauge
	sent        prometheus.Counter
}

func newStreams(cfg StreamConfig, reg prometheus.Registerer) *streams {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.MaxPerPrincipal == 0 {
		cfg.MaxPerPrincipal = DefaultMaxStreamsPerPrincipal
	}
	return &streams{cfg: cfg, byPrincipal: map[string]int{},
		gauge: register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sse_streams_open", Help: "Live event streams (GET /v1/ticket/{id}/events) open now.",
		})),
		sent: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sse_events_sent_total", Help: "Events written to live event streams, replayed ones included.",
		})),
	}
}

// acquire takes a place for a stream of principal, or returns the 503 (process) or
// 429 (principal) problem.
func (st *streams) acquire(c *fiber.Ctx, principal string) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.open >= st.cfg.MaxStreams {
		c.Set(fiber.HeaderRetryAfter, streamRetryAfter)
		return problem(fiber.StatusServiceUnavailable, "too-many-streams-on-server",
			"this server has "+strconv.Itoa(st.cfg.MaxStreams)+" live event streams open, its limit (SSE_MAX_STREAMS); retry later, or on another instance")
	}
	if st.cfg.MaxPerPrincipal > 0 && st.byPrincipal[principal] >= st.cfg.MaxPerPrincipal {
		c.Set(fiber.HeaderRetryAfter, streamRetryAfter)
		return problem(fiber.StatusTooManyRequests, "too-many-streams",
			"this principal has "+strconv.Itoa(st.cfg.MaxPerPrincipal)+" live event streams open on this server, its limit (SSE_MAX_STREAMS_PER_PRINCIPAL); close one first")
	}
	st.open++
	st.byPrincipal[principal]++
	st.gauge.Inc()
	return nil
}

func (st *streams) release(principal string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.open--
	if st.byPrincipal[principal]--; st.byPrincipal[principal] <= 0 {
		delete(st.byPrincipal, principal)
	}
	st.gauge.Dec()
}

// streamAfter returns the version the stream starts after: Last-Event-ID when sent
// (a reconnecting EventSource sends it, with the URL of its first connection: what it
// saw last must win over that URL's ?after), else ?after, else 0. Each must be a whole
// number of at least 0, or a 422 names it.
func streamAfter(c *fiber.Ctx) (after int, field string, err error) {
	parse := func(field, raw string) (int, string, error) {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 || len(raw) > 10 || raw[0] == '+' {
			return 0, field, invalidField(field, "must be a whole number of at least 0 (the version of the last event seen; 0 replays the whole stream)")
		}
		return n, field, nil
	}
	if raw := c.Get(headerLastEventID); raw != "" {
		return parse(headerLastEventID, raw)
	}
	if c.Context().QueryArgs().Has("after") {
		return parse("after", c.Query("after"))
	}
	return 0, "", nil
}

// events answers GET /v1/ticket/{id}/events: see the top of this file. Before the
// stream starts, an unknown ticket (or another requester's) is a 404, a bad after or
// Last-Event-ID, or one beyond the ticket's last event, a 422, and a full server or
// principal a 503 or 429 (StreamConfig).
func (s *Server) events(c *fiber.Ctx) error {
	id, err := ticketID(c)
	if err != nil {
		return err
	}
	after, field, err := streamAfter(c)
	if err != nil {
		return err
	}
	if err := s.ownTicket(c, id); err != nil {
		return err
	}
	head, headType, err := s.cfg.Store.Head(c.UserContext(), id)
	if err != nil {
		return err
	}
	if after > head {
		return invalidField(field, "is beyond the ticket's last event, version "+strconv.Itoa(head))
	}
	hub := s.streams.cfg.Hub
	if hub == nil {
		return problem(fiber.StatusServiceUnavailable, "streams-off", "this server does not serve live event streams")
	}
	viewer := principal(c)
	if err := s.streams.acquire(c, viewer.ID); err != nil {
		return err
	}
	c.Set(fiber.HeaderContentType, mimeEventStream)
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set("X-Accel-Buffering", "no") // a proxy must pass each event at once
	c.Status(fiber.StatusOK)
	if c.Method() == fiber.MethodHead {
		s.streams.release(viewer.ID)
		return nil
	}
	st := &stream{
		s: s, hub: hub, id: id, after: after, viewer: viewer.ID, principal: viewer,
		ended:      headType == ticket.TypeDeleted && after >= head,
		serverDone: c.Context().Done(),
		conn:       c.Context().Conn(),
		raw:        rawConn(c.Context().Conn()),
		ctx:        context.WithValue(context.Background(), requestIDKey, RequestID(c.UserContext())),
		log:        &streamLog{ready: make(chan struct{})},
	}
	c.Locals(streamLogKey, st.log)
	c.Response().ImmediateHeaderFlush = true
	// The stream is the response body, read by fasthttp on the connection's own
	// goroutine and sent chunk by chunk (SetBodyStreamWriter would add a goroutine, a
	// pipe and a 4 KiB writer per stream); fasthttp closes it at the end, or when
	// writing to the client failed.
	c.Context().SetBodyStream(st, -1)
	return nil
}

// stream is one open event stream, and the body of its response: fasthttp calls Read
// for the next bytes to send (each Read's bytes go out as one chunk, flushed) and Close
// once the response is over. Read blocks while there is nothing to say: the stream then
// holds no buffer of its own. Nothing of the request's fiber.Ctx is used once the
// handler returned: what the stream needs is copied here.
type stream struct {
	s          *Server
	hub        *EventHub
	id         uuid.UUID
	after      int // the last version sent
	viewer     string
	principal  auth.Principal // the viewer, for showsKeyOf
	ended      bool           // the deletion was sent (or seen before the stream began)
	serverDone <-chan struct{}
	conn       net.Conn
	raw        syscall.RawConn
	ctx        context.Context
	log        *streamLog
	events     int
	bytes      int

	// state of the body, owned by the goroutine that calls Read and Close
	sub     *subscription
	tick    *time.Ticker
	started time.Time
	out     *[]byte // what is yet to be sent (nil when nothing is: back in streamBuffers)
	more    bool    // the last page read was not the store's last: read the next at once
	retry   bool    // the store could not be read: try again at the next heartbeat or wake
	live    bool    // the replay is over (the line saying so was queued)
	reason  string  // why the stream ends, once it does ("" while it goes on)
}

// streamBuffers holds the streams' output buffers between uses: a waiting stream
// holds none.
var streamBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// write appends p to what is yet to be sent.
func (st *stream) write(p []byte) {
	if st.out == nil {
		st.out = streamBuffers.Get().(*[]byte)
	}
	*st.out = append(*st.out, p...)
	st.bytes += len(p)
}

// Read implements io.Reader for fasthttp: it returns what is pending, else waits for
// the next thing to send (events, a heartbeat, the stopping line), and io.EOF once the
// stream has ended and everything is sent.
func (st *stream) Read(p []byte) (int, error) {
	if st.sub == nil && st.reason == "" {
		st.begin()
	}
	for st.out == nil || len(*st.out) == 0 {
		if st.reason != "" {
			return 0, io.EOF
		}
		st.next()
	}
	n := copy(p, *st.out)
	rest := copy(*st.out, (*st.out)[n:])
	*st.out = (*st.out)[:rest]
	if rest == 0 {
		if cap(*st.out) <= 64<<10 { // a long page's buffer is left to the collector
			*st.out = (*st.out)[:0]
			streamBuffers.Put(st.out)
		}
		st.out = nil
	}
	if st.conn != nil {
		// fasthttp set the connection's write deadline once, for the whole response
		// (WriteTimeout): a stream moves it on with every write, so a client that stops
		// reading is cut off after a stall, and one that reads is not
		_ = st.conn.SetWriteDeadline(time.Now().Add(st.stall()))
	}
	return n, nil
}

// stall is how long one write to the client may take.
func (st *stream) stall() time.Duration {
	return max(2*st.s.streams.cfg.Heartbeat, minStreamStall)
}

// begin subscribes to the ticket (first, so an event committed during the replay
// wakes the stream), then queues the replay and the line that says the stream is open.
func (st *stream) begin() {
	st.started = time.Now()
	st.sub = st.hub.subscribe(st.id)
	st.tick = time.NewTicker(st.s.streams.cfg.Heartbeat)
	st.page()
}

// next waits for the next thing to send and queues it, or sets why the stream ends.
func (st *stream) next() {
	if st.more {
		st.page()
		return
	}
	select {
	case <-st.sub.wake:
		st.page()
	case <-st.tick.C:
		if st.raw != nil && peerClosed(st.raw) {
			st.reason = streamEndClientGone
			return
		}
		if st.retry {
			if st.page(); st.reason != "" || (st.out != nil && len(*st.out) > 0) {
				return
			}
		}
		st.write([]byte(streamHeartbeatLine))
	case <-st.serverDone:
		st.stopping()
	case <-st.hub.Done():
		st.stopping()
	}
}

// stopping queues the line that tells the client to reconnect, and ends the stream.
func (st *stream) stopping() {
	st.write([]byte(streamStoppingLine))
	st.reason = streamEndServerStopping
}

// Close implements io.Closer: fasthttp calls it once the response is over, after the
// stream's end was sent or when the client could not be written to.
func (st *stream) Close() error {
	reason := st.reason
	if reason == "" {
		reason = streamEndClientGone // fasthttp stopped reading: a write failed
	}
	if st.sub != nil {
		st.tick.Stop()
		st.hub.unsubscribe(st.sub)
	}
	if st.out != nil {
		*st.out = (*st.out)[:0]
		streamBuffers.Put(st.out)
		st.out = nil
	}
	st.s.streams.release(st.viewer)
	if st.started.IsZero() {
		st.started = time.Now()
	}
	st.log.end(st, st.started, reason)
	return nil
}

// page queues the ticket's next page of events after st.after, and sets st.more if
// the store has more, st.reason if the stream ends (the deletion was sent), or
// st.retry if the store cannot be read now (after a comment line saying so).
func (st *stream) page() {
	st.retry, st.more = false, false
	if st.ended {
		st.reason = streamEndDeleted
		return
	}
	got, err := st.hub.readAfter(st.id, st.after, func() (any, error) {
		ctx, cancel := context.WithTimeout(st.ctx, st.s.cfg.RequestTimeout)
		defer cancel()
		recs, more, err := st.s.cfg.Store.HistoryPage(ctx, st.id, st.after, streamPage, st.s.cfg.HistoryPageBytes)
		return historyPage{recs, more}, err
	})
	if err != nil {
		st.s.cfg.Log.Warn("event stream: read failed; retried at the next heartbeat", "ticket", st.id, "after", st.after, "err", err,
			"request_id", RequestID(st.ctx))
		st.write([]byte(streamReadFailedReasonForClient))
		st.retry = true
		return
	}
	pg := got.(historyPage)
	for _, r := range pg.recs {
		if err := st.writeEvent(r); err != nil {
			st.s.cfg.Log.Error("event stream: an event could not be encoded", "ticket", st.id, "version", r.Version, "err", err,
				"request_id", RequestID(st.ctx))
			st.reason = streamEndReadFailed
			return
		}
		st.after, st.events = r.Version, st.events+1
		st.s.streams.sent.Inc()
		if r.Type() == ticket.TypeDeleted {
			st.ended = true
			break
		}
	}
	if st.ended {
		st.reason = streamEndDeleted
		return
	}
	st.more = pg.more
	if !st.more && !st.live {
		// the replay is over: a first line says the stream is open and live (the
		// headers went out at once, before the replay)
		st.live = true
		st.write([]byte(": stream of ticket " + st.id.String() + " after version " + strconv.Itoa(st.after) + "\n\n"))
	}
}

// historyPage is a page of events read for the streams of a ticket (shared: read only).
type historyPage struct {
	recs []eventstore.Record
	more bool
}

// writeEvent queues one event in the SSE form.
func (st *stream) writeEvent(r eventstore.Record) error {
	e := NewHistoryEntry(r)
	if !showsKeyOf(st.principal, r.Metadata.Principal) {
		e.Metadata.IdempotencyKey = ""
	}
	data, err := eventstore.EncodeJSON(e)
	if err != nil {
		return err
	}
	var line []byte
	line = append(line, "id: "...)
	line = strconv.AppendInt(line, int64(r.Version), 10)
	line = append(line, "\nevent: "...)
	line = append(line, r.Type()...)
	line = append(line, "\ndata: "...)
	line = append(line, data...)
	line = append(line, "\n\n"...)
	st.write(line)
	return nil
}

// streamLog is a stream's access log line and request metrics, written once, at its
// end: observe hands it what it knows of the request (begin) instead of logging when
// the handler returns.
type streamLog struct {
	ready chan struct{}
	// filled by begin
	rm                         *routeMetrics
	method, route, path, ip    string
	requestID, clientRequestID string
	begun                      time.Time
}

// begin is called by observe for a request whose handler started a stream.
func (l *streamLog) begin(s *Server, c *fiber.Ctx, r *fiber.Route, route string, start time.Time) {
	l.method = methodLabel(c.Method())
	l.rm = s.metrics.forRoute(r, l.method, route)
	l.route, l.path, l.ip = route, string([]byte(c.Path())), string([]byte(c.IP()))
	l.requestID, l.clientRequestID = RequestID(c.UserContext()), ClientRequestID(c.UserContext())
	l.begun = start
	close(l.ready)
}

// end counts the stream as a request and writes its one log line.
func (l *streamLog) end(st *stream, started time.Time, reason string) {
	select {
	case <-l.ready:
	case <-time.After(maxStreamLogWaitForObserve):
		return // observe never ran (not reached in the server's chain)
	}
	elapsed := time.Since(l.begun)
	l.rm.requests(fiber.StatusOK).Inc()
	l.rm.duration.Observe(elapsed.Seconds())
	attrs := []slog.Attr{
		slog.String("method", l.method), slog.String("route", l.route), slog.String("path", l.path),
		slog.Int("status", fiber.StatusOK), slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000),
		slog.String("request_id", l.requestID), slog.String("remote_ip", l.ip), slog.Int("bytes", st.bytes),
		slog.Int("events", st.events), slog.Int("last_event_id", st.after), slog.String("end", reason),
	}
	if l.clientRequestID != "" {
		attrs = append(attrs, slog.String("client_request_id", l.clientRequestID))
	}
	st.s.cfg.Log.LogAttrs(context.Background(), slog.LevelInfo, "stream", attrs...)
}
