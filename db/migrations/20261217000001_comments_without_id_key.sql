-- migrate:up

-- readmodel.comments loses its primary key on id. No query reads a comment by its id
-- (pages are read by ticket and version, through comments_ticket_version), ids are made
-- by the server, and comments_ticket_version alone makes a redelivered comment a
-- no-op (the projector's ON CONFLICT DO NOTHING). The key cost a B-tree of random
-- UUIDs: a random page touched per comment the projector inserts, and in a rebuild
-- half the time of building the comments' indexes (a sort of every comment's id).
ALTER TABLE readmodel.comments DROP CONSTRAINT comments_pkey;

CREATE OR REPLACE FUNCTION readmodel_create_indexes(target name) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('ALTER TABLE %1$I.tickets ADD CONSTRAINT tickets_pkey PRIMARY KEY (id)', target);
    EXECUTE format('CREATE INDEX tickets_list ON %1$I.tickets (created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_status ON %1$I.tickets (status, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_email ON %1$I.tickets (email, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('CREATE INDEX tickets_by_creator ON %1$I.tickets (created_by, created_at DESC, id DESC) WHERE NOT deleted', target);
    EXECUTE format('ALTER TABLE %1$I.comments ADD CONSTRAINT comments_ticket_version UNIQUE (ticket_id, version)', target);
END;
$fn$;

-- migrate:down

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

ALTER TABLE readmodel.comments ADD CONSTRAINT comments_pkey PRIMARY KEY (id);
