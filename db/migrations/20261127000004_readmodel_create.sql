-- migrate:up

-- readmodel_create(target) creates the Postgres read model's schema, tables and indexes
-- under the schema name target. It is the one definition of that DDL from here on:
-- `ticketd -rebuild-projections` builds a fresh copy with it (schema readmodel_new) and
-- swaps it in, and a test checks that it creates exactly what
-- 20261127000002_readmodel.sql created as "readmodel". A later change to the read model
-- alters "readmodel" and replaces this function in the same migration.
CREATE FUNCTION readmodel_create(target name) RETURNS void LANGUAGE plpgsql AS $fn$
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

-- migrate:down
DROP FUNCTION readmodel_create(name);
