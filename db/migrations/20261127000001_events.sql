-- migrate:up

-- The event store: the source of truth. One row per event; rows are never updated or
-- deleted (enforced by the trigger below, so a bug cannot rewrite history either).
CREATE TABLE events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id      uuid        NOT NULL,
    version        integer     NOT NULL CHECK (version > 0),
    type           text        NOT NULL,
    data           jsonb       NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}',
    recorded_at    timestamptz NOT NULL,
    -- the writing transaction, as watermill-sql's outbox rows carry it: lets a rebuild
    -- replay exactly the events committed before a snapshot's xmin.
    transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT events_stream_version UNIQUE (stream_id, version)
);

CREATE INDEX events_transaction ON events (transaction_id, position);

CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event store is append-only: % on events refused', TG_OP;
END;
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- The transactional outbox and the consumer offsets, exactly as watermill-sql's
-- DefaultPostgreSQLSchema and DefaultPostgreSQLOffsetsAdapter create them for the topic
-- "ticket_events" (xid8 + pg_snapshot_xmin ordering). Created here so the app never runs
-- DDL outside migrations.
CREATE TABLE "watermill_ticket_events" (
    "offset"         BIGSERIAL,
    "uuid"           VARCHAR(36) NOT NULL,
    "created_at"     TIMESTAMP   NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "payload"        JSON        DEFAULT NULL,
    "metadata"       JSON        DEFAULT NULL,
    "transaction_id" xid8        NOT NULL,
    PRIMARY KEY ("transaction_id", "offset")
);

CREATE TABLE "watermill_offsets_ticket_events" (
    consumer_group                VARCHAR(255) NOT NULL,
    offset_acked                  BIGINT,
    last_processed_transaction_id xid8         NOT NULL,
    PRIMARY KEY (consumer_group)
);

-- Events a projector could not handle after its retries (poison), for an operator to
-- inspect; same shape as the outbox so watermill-sql can publish into it.
CREATE TABLE "watermill_ticket_events_poison" (
    "offset"         BIGSERIAL,
    "uuid"           VARCHAR(36) NOT NULL,
    "created_at"     TIMESTAMP   NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "payload"        JSON        DEFAULT NULL,
    "metadata"       JSON        DEFAULT NULL,
    "transaction_id" xid8        NOT NULL,
    PRIMARY KEY ("transaction_id", "offset")
);

-- migrate:down
DROP TABLE "watermill_ticket_events_poison";
DROP TABLE "watermill_offsets_ticket_events";
DROP TABLE "watermill_ticket_events";
DROP TABLE events;
DROP FUNCTION events_refuse_change();
