-- migrate:up

-- Tickets whose Redis document may be behind the event store: the Redis projector and
-- the write-through add a ticket here when a Redis call failed (Redis down, slow or
-- hung), instead of waiting or retrying inside a transaction. A repairer in every
-- instance rebuilds those documents from the events, outside any long transaction, and
-- deletes the rows. It lives outside the readmodel schema, which a rebuild replaces.
--
-- gen grows whenever the ticket is added again, so a repairer that loaded the ticket
-- before a newer failure deletes only the row it saw (ticket_id, gen), never the newer
-- one. lease_until is when another repairer may take the row over (SKIP LOCKED claims,
-- leases instead of long row locks).
CREATE TABLE redis_backlog (
    ticket_id   uuid        PRIMARY KEY,
    gen         bigint      NOT NULL DEFAULT 1,
    queued_at   timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL DEFAULT '-infinity',
    attempts    integer     NOT NULL DEFAULT 0
);

CREATE INDEX redis_backlog_due ON redis_backlog (lease_until);

-- migrate:down
DROP TABLE redis_backlog;
