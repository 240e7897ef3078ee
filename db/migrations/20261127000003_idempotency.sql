-- migrate:up

-- Responses stored under a client's Idempotency-Key, written in the same transaction as
-- the events they acknowledge: an event never exists without its stored response, nor a
-- stored response without its events. A key is scoped by route (and ticket for
-- comments); the primary key makes concurrent retries with one key race for one row.
-- Rows live IDEMPOTENCY_TTL (default 24 h): expired rows are ignored, replaced by a
-- new request with the same key, and purged.
CREATE TABLE idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    -- sha256 of the route and the canonical request body: a retry must match it
    request_hash bytea       NOT NULL,
    stream_id    uuid        NOT NULL,
    status       smallint    NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    body         bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- migrate:down
DROP TABLE idempotency_keys;
