package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ticketd/ticketd/eventstore"
)

// PoisonTopic receives events a projector could not handle after its retries. Its
// table is created by the migrations; rows there are for an operator to inspect.
const PoisonTopic = eventstore.Topic + "_poison"

// permanentError marks a failure that retrying cannot fix (an undecodable event): it
// goes to the poison topic. Everything else (Postgres unreachable) is retried.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

func permanent(err error) error { return permanentError{err} }

// Config tunes the projectors' subscribers.
type Config struct {
	// PollInterval is how long a consumer waits before asking again when it found no
	// new event. Short, so projection lag stays in milliseconds.
	PollInterval time.Duration
	// BatchSize is how many events one subscriber transaction takes at most. Smaller
	// keeps each consumer's transaction (which holds back every consumer's view of new
	// events) short.
	BatchSize int
	// Retries is how often a failing event is retried before it goes to the poison topic.
	Retries int
	// AckDeadline bounds the handling of one event, retries included: the handler's
	// context ends then, and an event not acknowledged by then is redelivered. It keeps
	// a slow or hung handler from holding its subscriber transaction (which holds back
	// every consumer) open for long.
	AckDeadline time.Duration
	// Metrics receives what the projectors do; nil reports nowhere.
	Metrics Metrics
	// BacklogInterval is how often each group's backlog (events behind the head) is
	// sampled for Metrics.
	BacklogInterval time.Duration
}

func (c Config) withDefaults() Config {
	if c.PollInterval <= 0 {
		c.PollInterval = 20 * time.Millisecond
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 50
	}
	if c.Retries <= 0 {
		c.Retries = 5
	}
	if c.AckDeadline <= 0 {
		c.AckDeadline = 15 * time.Second
	}
	if c.Metrics == nil {
		c.Metrics = NopMetrics{}
	}
	if c.BacklogInterval <= 0 {
		c.BacklogInterval = 5 * time.Second
	}
	return c
}

// Handler is a projector: a consumer group and the function applying one event message.
type Handler struct {
	Group string
	Func  message.NoPublishHandlerFunc
}

// NewRouter returns a Watermill router with one subscriber (its own consumer group)
// per handler on the outbox topic. Run it with router.Run(ctx); it stops when ctx ends,
// after the handlers finish their current message.
func NewRouter(pool *pgxpool.Pool, cfg Config, log *slog.Logger, handlers ...Handler) (*message.Router, error) {
	cfg = cfg.withDefaults()
	wlog := watermill.NewSlogLoggerWithLevelMapping(log, map[slog.Level]slog.Level{
		slog.LevelInfo: slog.LevelDebug, // Watermill's info lines are chatter at our level
	})
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, wlog)
	if err != nil {
		return nil, fmt.Errorf("projection router: %w", err)
	}
	poison, err := middleware.PoisonQueueWithFilter(txPublisher{metrics: cfg.Metrics, log: log}, PoisonTopic, func(err error) bool {
		return errors.As(err, new(permanentError))
	})
	if err != nil {
		return nil, fmt.Errorf("poison queue: %w", err)
	}
	router.AddMiddleware(guardTx, poison, middleware.Retry{
		MaxRetries:      cfg.Retries,
		InitialInterval: 10 * time.Millisecond,
		MaxInterval:     500 * time.Millisecond,
		Multiplier:      2,
		Logger:          wlog,
	}.Middleware)
	var groups []string
	for _, h := range handlers {
		sub, err := wsql.NewSubscriber(guardedBeginner{wsql.BeginnerFromPgx(pool)}, wsql.SubscriberConfig{
			ConsumerGroup:  h.Group,
			AckDeadline:    &cfg.AckDeadline,
			PollInterval:   cfg.PollInterval,
			ResendInterval: 100 * time.Millisecond,
			RetryInterval:  time.Second,
			SchemaAdapter:  wsql.DefaultPostgreSQLSchema{SubscribeBatchSize: cfg.BatchSize},
			OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		}, wlog)
		if err != nil {
			return nil, fmt.Errorf("subscriber %s: %w", h.Group, err)
		}
		router.AddNoPublisherHandler(h.Group, eventstore.Topic, sub, instrument(h.Group, cfg.Metrics, time.Now, h.Func))
		groups = append(groups, h.Group)
	}
	if _, nop := cfg.Metrics.(NopMetrics); !nop && len(groups) > 0 {
		router.AddPlugin(sampleBacklogPlugin(pool, cfg.Metrics, cfg.BacklogInterval, log, groups))
	}
	return router, nil
}

// txPublisher publishes into the transaction of the message being handled, so a
// poisoned event is recorded together with the offset that skips it. Only the poison
// middleware uses it: every message it publishes is a poisoned one, logged and counted.
type txPublisher struct {
	metrics Metrics
	log     *slog.Logger
}

func (p txPublisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	tx, ok := wsql.TxFromContext(msgs[0].Context())
	if !ok {
		return errors.New("poison publish: no transaction in message context")
	}
	pub, err := wsql.NewPublisher(tx, wsql.PublisherConfig{SchemaAdapter: wsql.DefaultPostgreSQLSchema{}}, nil)
	if err != nil {
		return err
	}
	if err := pub.Publish(topic, msgs...); err != nil {
		return err
	}
	for _, m := range msgs {
		group := message.HandlerNameFromCtx(m.Context())
		p.metrics.Poisoned(group)
		p.log.Error("projection: event sent to the poison topic", "group", group, "topic", topic,
			"message_uuid", m.UUID, "reason", m.Metadata.Get(middleware.ReasonForPoisonedKey))
	}
	return nil
}

func (txPublisher) Close() error { return nil }

// Run runs router until ctx ends and returns once every handler has stopped.
func Run(ctx context.Context, router *message.Router) error {
	err := router.Run(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// The subscriber's transaction is shared by two goroutines: the subscriber, which
// selects the messages, acknowledges them and commits, and the router's handler
// goroutine, which projects through it. watermill-sql gives up waiting for a handler
// when the ack deadline passes or the subscriber closes, and then acknowledges the
// rows before it and commits or rolls back at once, while the handler may still be
// using the transaction (a data race on the pgx connection; pgx may panic). The guard
// below makes the subscriber's own use of the transaction wait until the handler chain
// (poison publishing included) has returned. The handler's context ends at the same
// moment, so the wait is short unless a handler ignores its context.

// guardedBeginner begins subscriber transactions whose pgx transaction is a guardedPgxTx.
type guardedBeginner struct{ wsql.Beginner }

func (b guardedBeginner) BeginTx(ctx context.Context, opts *sql.TxOptions) (wsql.Tx, error) {
	tx, err := b.Beginner.BeginTx(ctx, opts)
	if err != nil {
		return tx, err
	}
	if p, ok := tx.(*wsql.PgxTx); ok && p.Tx != nil {
		p.Tx = &guardedPgxTx{Tx: p.Tx}
	}
	return tx, nil
}

// guardedPgxTx is a pgx transaction whose use by the subscriber waits for the guard,
// which guardTx holds while a handler chain runs. Calls made by a handler (their
// context carries the transaction, as every message context does) pass straight
// through; the subscriber's own calls (its context does not) take the guard.
type guardedPgxTx struct {
	pgx.Tx
	mu sync.Mutex
}

// wait takes the guard for a call made outside a handler and returns its release.
func (t *guardedPgxTx) wait(ctx context.Context) func() {
	if _, inHandler := wsql.TxFromContext(ctx); inHandler {
		return func() {}
	}
	t.mu.Lock()
	return t.mu.Unlock
}

func (t *guardedPgxTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	defer t.wait(ctx)()
	return t.Tx.Exec(ctx, sql, args...)
}

func (t *guardedPgxTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	defer t.wait(ctx)()
	return t.Tx.Query(ctx, sql, args...)
}

func (t *guardedPgxTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	defer t.wait(ctx)()
	return t.Tx.QueryRow(ctx, sql, args...)
}

func (t *guardedPgxTx) Commit(ctx context.Context) error {
	defer t.wait(ctx)()
	return t.Tx.Commit(ctx)
}

func (t *guardedPgxTx) Rollback(ctx context.Context) error {
	defer t.wait(ctx)()
	return t.Tx.Rollback(ctx)
}

// guardTx is the outermost router middleware: it holds the guard of the message's
// transaction while the rest of the chain runs.
func guardTx(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if tx, ok := wsql.TxFromContext(msg.Context()); ok {
			if p, ok := tx.(*wsql.PgxTx); ok {
				if g, ok := p.Tx.(*guardedPgxTx); ok {
					g.mu.Lock()
					defer g.mu.Unlock()
				}
			}
		}
		return h(msg)
	}
}
