-- migrate:up

-- Lookups by email use a keyed hash of it (package pii: the subject id, HMAC-SHA256
-- under the lookup key, never derivable without DATA_KEY), not the address: the list's
-- ?email= filter and a requester's own tickets. email stays, for display (it is
-- derived from the events, and an erasure's fold turns it into "[erased]", with a NULL
-- hash). Rows written before this migration have no hash until the projectors next
-- write them or a rebuild (`ticketd -rebuild-projections`) rewrites them all: run one
-- after upgrading, or a search by email misses the older tickets.
ALTER TABLE readmodel.tickets ADD COLUMN email_hash bytea;
CREATE INDEX tickets_by_email_hash ON readmodel.tickets (email_hash, created_at DESC, id DESC) WHERE NOT deleted;
DROP INDEX readmodel.tickets_by_email;

-- the rebuild's tables get the column and index too
CREATE OR REPLACE FUNCTION readmodel_create_tables(target name) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE SCHEMA %I', target);
    EXECUTE format($ddl$
        CREATE TABLE %1$I.tickets (
            id            uuid        NOT NULL,
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
            deleted       boolean     NOT NULL DEFAULT false,
            email_hash    bytea
        )$ddl$, target);
    EXECUTE format($ddl$
        CREATE TABLE %1$I.comments (
            id         uuid        NOT NULL,
            ticket_id  uuid        NOT NULL,
            version    integer     NOT NULL,
            body       text        NOT NULL,
            email      text        NOT NULL DEFAULT '',
            created_by text        NOT NULL,
            created_at timestamptz NOT NULL
        )$ddl$, target);
END;
$fn$;

CREATE OR REPLACE FUNCTION readmodel_create_indexes(target name) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('ALTER TABLE %1$I.tickets ADD CONSTRAINT tickets_pkey PRIMARY KEY (id)', target);
    EXECUTE format('CREATE INDEX tickets_list ON %1$I.tickets (created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_status ON %1$I.tickets (status, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_email_hash ON %1$I.tickets (email_hash, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_creator ON %1$I.tickets (created_by, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('ALTER TABLE %1$I.comments ADD CONSTRAINT comments_pkey PRIMARY KEY (id)', target);
    EXECUTE format('ALTER TABLE %1$I.comments ADD CONSTRAINT comments_ticket_version UNIQUE (ticket_id, version)', target);
END;
$fn$;

-- migrate:down
CREATE OR REPLACE FUNCTION readmodel_create_tables(target name) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE SCHEMA %I', target);
    EXECUTE format($ddl$
        CREATE TABLE %1$I.tickets (
            id            uuid        NOT NULL,
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
            deleted       boolean     NOT NULL DEFAULT false
        )$ddl$, target);
    EXECUTE format($ddl$
        CREATE TABLE %1$I.comments (
            id         uuid        NOT NULL,
            ticket_id  uuid        NOT NULL,
            version    integer     NOT NULL,
            body       text        NOT NULL,
            email      text        NOT NULL DEFAULT '',
            created_by text        NOT NULL,
            created_at timestamptz NOT NULL
        )$ddl$, target);
END;
$fn$;

CREATE OR REPLACE FUNCTION readmodel_create_indexes(target name) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('ALTER TABLE %1$I.tickets ADD CONSTRAINT tickets_pkey PRIMARY KEY (id)', target);
    EXECUTE format('CREATE INDEX tickets_list ON %1$I.tickets (created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_status ON %1$I.tickets (status, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_email ON %1$I.tickets (email, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_creator ON %1$I.tickets (created_by, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('ALTER TABLE %1$I.comments ADD CONSTRAINT comments_pkey PRIMARY KEY (id)', target);
    EXECUTE format('ALTER TABLE %1$I.comments ADD CONSTRAINT comments_ticket_version UNIQUE (ticket_id, version)', target);
END;
$fn$;

CREATE INDEX tickets_by_email ON readmodel.tickets (email, created_at DESC, id DESC) WHERE NOT deleted;
DROP INDEX readmodel.tickets_by_email_hash;
ALTER TABLE readmodel.tickets DROP COLUMN email_hash;
