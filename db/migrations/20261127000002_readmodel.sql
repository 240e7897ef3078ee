-- migrate:up

-- The Postgres read model, kept by the "pg-readmodel" projector. Derived data: it can be
-- dropped and rebuilt from the events at any time. It lives in its own schema so that a
-- rebuild can build a fresh copy beside it and swap the two in one transaction.
CREATE SCHEMA readmodel;

CREATE TABLE readmodel.tickets (
    id            uuid        PRIMARY KEY,
    title         text        NOT NULL,
    description   text        NOT NULL,
    email         text        NOT NULL,
    created_by    text        NOT NULL,
    updated_by    text        NOT NULL,
    status        text        NOT NULL,
    version       integer     NOT NULL,
    comment_count integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    -- a deleted ticket stays as a tombstone so a redelivered older event cannot bring it back
    deleted       boolean     NOT NULL DEFAULT false
);

-- The list is newest first with keyset pages on (created_at, id); one index per filter.
CREATE INDEX tickets_list ON readmodel.tickets (created_at DESC, id DESC) WHERE NOT deleted;
CREATE INDEX tickets_by_status ON readmodel.tickets (status, created_at DESC, id DESC) WHERE NOT deleted;
CREATE INDEX tickets_by_email ON readmodel.tickets (email, created_at DESC, id DESC) WHERE NOT deleted;
CREATE INDEX tickets_by_creator ON readmodel.tickets (created_by, created_at DESC, id DESC) WHERE NOT deleted;

CREATE TABLE readmodel.comments (
    id         uuid        PRIMARY KEY,
    ticket_id  uuid        NOT NULL,
    version    integer     NOT NULL,
    body       text        NOT NULL,
    email      text        NOT NULL DEFAULT '',
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL,
    CONSTRAINT comments_ticket_version UNIQUE (ticket_id, version)
);

-- migrate:down
DROP SCHEMA readmodel CASCADE;
