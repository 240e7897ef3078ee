-- migrate:up

-- readmodel.comments loses its primary key on id. No query reads a comment by its id
-- (pages are read by ticket and version, through comments_ticket_version), ids are made
-- by the server, and comments_ticket_version alone makes a redelivered comment a
-- no-op (the projector's ON CONFLICT DO NOTHING). The key cost a B-tree of random
-- UUIDs: a random page touched per comment the projector inserts, and in a rebuild
-- half the time of building the comments' indexes (a sort of every comment's id).
ALTER TABLE readmodel.comments DROP CONSTRAINT comments_pkey;

-- readmodel_create_indexes(target) in two parts, one per table, so a rebuild can make
-- the comments' key before it loads them: a rebuild COPYs comments in (ticket_id,
-- version) order, the key's order, so each insert lands on the index's rightmost page,
-- which costs Postgres less than building the index afterwards (and nothing is left
-- to do for them once the load ends). The tickets' five indexes are still built after
-- their load. readmodel_create_indexes(target) still makes both, as before.
CREATE FUNCTION readmodel_create_ticket_indexes(target name) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('ALTER TABLE %1$I.tickets ADD CONSTRAINT tickets_pkey PRIMARY KEY (id)', target);
    EXECUTE format('CREATE INDEX tickets_list ON %1$I.tickets (created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_status ON %1$I.tickets (status, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_email_hash ON %1$I.tickets (email_hash, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_creator ON %1$I.tickets (created_by, created_at DESC, id DESC) WHERE NOT deleted', target);
END;
$fn$;

CREATE FUNCTION readmodel_create_comment_indexes(target name) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('ALTER TABLE %1$I.comments ADD CONSTRAINT comments_ticket_version UNIQUE (ticket_id, version)', target);
END;
$fn$;

CREATE OR REPLACE FUNCTION readmodel_create_indexes(target name) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM readmodel_create_ticket_indexes(target);
    PERFORM readmodel_create_comment_indexes(target);
END;
$fn$;

-- migrate:down

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

DROP FUNCTION readmodel_create_comment_indexes(name);
DROP FUNCTION readmodel_create_ticket_indexes(name);

ALTER TABLE readmodel.comments ADD CONSTRAINT comments_pkey PRIMARY KEY (id);
