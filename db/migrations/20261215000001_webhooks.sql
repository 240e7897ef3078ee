-- migrate:up

-- Webhooks (issue 15): endpoints that subscribe to ticket events, and the log of their
-- deliveries. Package webhooks is the only one that queries these tables. A delivery
-- row is written by the webhooks consumer group of the outbox in the transaction that
-- moves that group's position, so an event gives exactly one row per endpoint that
-- wanted it (the unique key makes a replayed batch insert nothing); the dispatcher
-- then sends it, at least once.
CREATE TABLE webhook_endpoints (
    id                   uuid        PRIMARY KEY,
    url                  text        NOT NULL,
    -- the event types sent ('ticket.opened', ...), or '{*}' for all
    events               text[]      NOT NULL,
    description          text        NOT NULL DEFAULT '',
    -- whsec_ + base64 of 32 random bytes: the HMAC key must be kept as is to sign, so
    -- it is stored as it was shown (once) to the admin
    secret               text        NOT NULL,
    -- the secret before the last rotation, still signing until previous_expires_at
    previous_secret      text,
    previous_expires_at  timestamptz,
    enabled              boolean     NOT NULL DEFAULT true,
    disabled_reason      text,
    disabled_at          timestamptz,
    -- failed attempts since the last success; at WEBHOOK_DISABLE_AFTER the endpoint is
    -- disabled
    consecutive_failures integer     NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    -- the webhook-id header and the payload's id: stable across retries and redeliveries
    id               uuid        PRIMARY KEY,
    endpoint_id      uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_type       text        NOT NULL,
    -- the event's ticket and version; NULL for a ping
    ticket_id        uuid,
    version          integer,
    -- the exact body sent (and signed) at every attempt
    payload          text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    -- when the dispatcher may take it next; while an attempt is in flight, the end of
    -- that attempt's lease (a crashed sender's delivery is taken again after it)
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- when the event was recorded by the event store (the delivery lag starts there)
    event_recorded_at timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- failed attempts are retried until then (WEBHOOK_MAX_AGE after the delivery was
    -- recorded, or after a redelivery was asked for), then the delivery is failed
    retry_until      timestamptz NOT NULL,
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    last_latency_ms  integer,
    last_response    text,
    -- when it was delivered or given up on; the log is pruned by it
    finished_at      timestamptz,
    UNIQUE (endpoint_id, ticket_id, version)
);

-- what the dispatcher looks for: an endpoint's pending deliveries by due time, and the
-- oldest pending one of an (endpoint, ticket) pair
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_pair ON webhook_deliveries (endpoint_id, ticket_id, version) WHERE status = 'pending';
-- the delivery log of an endpoint, newest first
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
-- pruning
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE finished_at IS NOT NULL;

-- migrate:down
DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoints;
