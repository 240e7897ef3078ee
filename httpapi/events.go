package httpapi

import (
	"bufio"
	"context"
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
// holds a goroutine pair and buffers in fasthttp, a channel in the hub, and no Postgres
// connection.

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
	c.Context().SetBodyStreamWriter(st.run)
	return nil
}

// stream is one open event stream. Nothing of the request's fiber.Ctx is used once
// the handler returned: what the stream needs is copied here.
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
}

// run is the body writer: fasthttp runs it in a goroutine of its own, and what it
// writes to w goes to the client chunk by chunk as it flushes.
func (st *stream) run(w *bufio.Writer) {
	start := time.Now()
	reason := ""
	sub := st.hub.subscribe(st.id)
	defer func() {
		st.hub.unsubscribe(sub)
		st.s.streams.release(st.viewer)
		st.log.end(st, start, reason)
	}()
	heartbeat := st.s.streams.cfg.Heartbeat
	stall := max(2*heartbeat, minStreamStall)
	flush := func() error {
		if st.conn != nil {
			// fasthttp set the connection's write deadline once, for the whole
			// response (WriteTimeout): a stream moves it on with every write, so a
			// client that stops reading is cut off after stall, and one that reads is not
			_ = st.conn.SetWriteDeadline(time.Now().Add(stall))
		}
		return w.Flush()
	}
	// the replay, subscribed first: an event committed while it reads wakes the stream
	reason = st.sendNew(w, flush)
	if reason == "" {
		// headers and a first line at once, so the client knows the stream is open
		if _, err := w.WriteString(": stream of ticket " + st.id.String() + " after version " + strconv.Itoa(st.after) + "\n\n"); err != nil || flush() != nil {
			reason = streamEndClientGone
		}
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	retry := false
	for reason == "" {
		select {
		case <-sub.wake:
			reason = st.sendNew(w, flush)
		case <-tick.C:
			if st.raw != nil && peerClosed(st.raw) {
				reason = streamEndClientGone
				break
			}
			if retry {
				if reason = st.sendNew(w, flush); reason != "" {
					break
				}
			}
			st.bytes += len(streamHeartbeatLine)
			if _, err := w.WriteString(streamHeartbeatLine); err != nil || flush() != nil {
				reason = streamEndClientGone
			}
		case <-st.serverDone:
			reason = streamEndServerStopping
		case <-st.hub.Done():
			reason = streamEndServerStopping
		}
		retry = reason == streamEndReadFailed
		if retry {
			// the store cannot be read now: the stream stays, and tries again at the
			// next heartbeat (or wake)
			reason = ""
		}
	}
	if reason == streamEndServerStopping {
		_, _ = w.WriteString(streamStoppingLine)
		_ = flush()
	}
}

// sendNew writes the ticket's events after st.after, page by page, and returns why
// the stream ends ("" if it goes on; streamEndReadFailed if the store cannot be read
// now, after a comment line saying so).
func (st *stream) sendNew(w *bufio.Writer, flush func() error) string {
	if st.ended {
		return streamEndDeleted
	}
	for {
		page, err := st.hub.readAfter(st.id, st.after, func() (any, error) {
			ctx, cancel := context.WithTimeout(st.ctx, st.s.cfg.RequestTimeout)
			defer cancel()
			recs, more, err := st.s.cfg.Store.HistoryPage(ctx, st.id, st.after, streamPage, st.s.cfg.HistoryPageBytes)
			return historyPage{recs, more}, err
		})
		if err != nil {
			st.s.cfg.Log.Warn("event stream: read failed; retried at the next heartbeat", "ticket", st.id, "after", st.after, "err", err,
				"request_id", RequestID(st.ctx))
			if _, err := w.WriteString(streamReadFailedReasonForClient); err != nil || flush() != nil {
				return streamEndClientGone
			}
			return streamEndReadFailed
		}
		recs, more := page.(historyPage).recs, page.(historyPage).more
		for _, r := range recs {
			n, err := st.writeEvent(w, r)
			if err != nil {
				return streamEndClientGone
			}
			st.after, st.bytes, st.events = r.Version, st.bytes+n, st.events+1
			st.s.streams.sent.Inc()
			if r.Type() == ticket.TypeDeleted {
				st.ended = true
				break
			}
		}
		if len(recs) > 0 {
			if err := flush(); err != nil {
				return streamEndClientGone
			}
		}
		if st.ended {
			return streamEndDeleted
		}
		if !more {
			return ""
		}
	}
}

// historyPage is a page of events read for the streams of a ticket (shared: read only).
type historyPage struct {
	recs []eventstore.Record
	more bool
}

// writeEvent writes one event in the SSE form and returns the bytes written.
func (st *stream) writeEvent(w *bufio.Writer, r eventstore.Record) (int, error) {
	e := NewHistoryEntry(r)
	if !showsKeyOf(st.principal, r.Metadata.Principal) {
		e.Metadata.IdempotencyKey = ""
	}
	data, err := eventstore.EncodeJSON(e)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, part := range [][]byte{[]byte("id: "), strconv.AppendInt(nil, int64(r.Version), 10),
		[]byte("\nevent: "), []byte(r.Type()), []byte("\ndata: "), data, []byte("\n\n")} {
		m, err := w.Write(part)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
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
