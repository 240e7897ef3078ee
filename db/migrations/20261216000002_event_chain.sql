-- migrate:up

-- The hash chain (issue 16): every event stores the SHA-256 of its content and of its
-- predecessor's hash, so an event edited, removed or inserted in the middle of a stream
-- breaks the chain from there on, whoever did it (`ticketd -verify`; README "Audit: the
-- hash chain" is the auditor's guide and restates the encoding below).
--
-- event_hash is the one definition of an event's hash; eventstore.EventHash computes
-- the same in Go and the tests hold them equal. SHA-256 of, in this order:
--   stream_id    16 bytes, the UUID's bytes
--   version      4 bytes, big-endian
--   type         4-byte big-endian length, then the UTF-8 bytes
--   recorded_at  8 bytes, big-endian microseconds since 2000-01-01T00:00:00Z
--                (Postgres' binary timestamptz)
--   metadata     4-byte big-endian length, then the UTF-8 bytes of metadata::text
--   data         4-byte big-endian length, then the UTF-8 bytes of data::text
--   prev         32 bytes, the previous version's hash; 32 zero bytes for version 1
-- metadata::text and data::text are the JSON exactly as stored and as every reader gets
-- it back (jsonb's normal form), so the hash covers what is read, not what was sent.
-- Declared STABLE, as convert_to is (converting to UTF-8 in a UTF-8 database, ticketd's,
-- is the identity, but Postgres cannot know it): a SQL function may be inlined into
-- the trigger's cached plan only if it calls nothing less stable than it claims to be.
CREATE FUNCTION event_hash(stream_id uuid, version integer, type text, recorded_at timestamptz,
                           metadata jsonb, data jsonb, prev bytea)
RETURNS bytea LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT sha256(uuid_send(stream_id) || int4send(version)
        || int4send(octet_length(convert_to(type, 'UTF8'))) || convert_to(type, 'UTF8')
        || timestamptz_send(recorded_at)
        || int4send(octet_length(convert_to(metadata::text, 'UTF8'))) || convert_to(metadata::text, 'UTF8')
        || int4send(octet_length(convert_to(data::text, 'UTF8'))) || convert_to(data::text, 'UTF8')
        || prev)
$$;

-- event_chain(...) is event_hash folded over a stream: as a window function ordered by
-- version it yields each event's hash, e.g.
--   SELECT version, hash = event_chain(stream_id, version, type, recorded_at, metadata, data)
--       OVER (PARTITION BY stream_id ORDER BY version) FROM events WHERE stream_id = '…';
-- which is how this migration hashes the events stored before it, and one way for an
-- auditor to check a stream in SQL.
CREATE FUNCTION event_chain_step(prev bytea, stream_id uuid, version integer, type text,
                                 recorded_at timestamptz, metadata jsonb, data jsonb)
RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT event_hash(stream_id, version, type, recorded_at, metadata, data, prev)
$$;
CREATE AGGREGATE event_chain(uuid, integer, text, timestamptz, jsonb, jsonb) (
    SFUNC = event_chain_step,
    STYPE = bytea,
    INITCOND = '\x0000000000000000000000000000000000000000000000000000000000000000'
);

ALTER TABLE events ADD COLUMN hash bytea;

-- The events stored so far get their hashes once, in version order per stream. The
-- append-only trigger allows exactly this update: it is off only inside this
-- migration's transaction, which holds the table's exclusive lock throughout.
ALTER TABLE events DISABLE TRIGGER events_append_only;
UPDATE events e SET hash = c.hash
FROM (SELECT position, event_chain(stream_id, version, type, recorded_at, metadata, data)
        OVER (PARTITION BY stream_id ORDER BY version) AS hash
      FROM events) c
WHERE e.position = c.position;
ALTER TABLE events ENABLE TRIGGER events_append_only;

ALTER TABLE events ALTER COLUMN hash SET NOT NULL,
    ADD CONSTRAINT events_hash_length CHECK (octet_length(hash) = 32);

-- Every insert gets its hash here, whoever writes it: no writer can skip or choose it.
-- The trigger reads the predecessor's hash; it is VOLATILE, so it also sees the earlier
-- rows of its own statement (an append of several versions in one INSERT chains them
-- in the order given, which appendStatement keeps per stream). A version whose
-- predecessor is not stored is not inserted (the trigger returns NULL): a gap cannot
-- be written, and to the appender it looks like the clash it is (the stream does not
-- stand where it expected). Concurrent appends are still decided by the (stream_id,
-- version) unique key: a loser's row is skipped or refused there, whatever it hashed.
CREATE FUNCTION events_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prev bytea;
BEGIN
    IF NEW.version = 1 THEN
        prev := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    ELSE
        SELECT e.hash INTO prev FROM events e WHERE e.stream_id = NEW.stream_id AND e.version = NEW.version - 1;
        IF prev IS NULL THEN
            RETURN NULL;
        END IF;
    END IF;
    NEW.hash := event_hash(NEW.stream_id, NEW.version, NEW.type, NEW.recorded_at, NEW.metadata, NEW.data, prev);
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_chain BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_chain();

-- Anchors: every AUDIT_ANCHOR_INTERVAL one instance records the head (last version and
-- its hash) of every stream. A tail cut off or rewritten after an anchor then no longer
-- matches it (`ticketd -verify`). root is the SHA-256 over every stream's (stream_id 16
-- bytes, head version 4 bytes big-endian, head hash 32 bytes) in stream_id order, the
-- same line ticketd logs ("audit anchor"): a copy of the log kept outside the database
-- is what makes the anchors themselves trustworthy.
CREATE TABLE audit_anchors (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    streams    bigint      NOT NULL,
    events     bigint      NOT NULL,
    root       bytea       NOT NULL CHECK (octet_length(root) = 32)
);

-- The heads an anchor recorded, only for the streams whose head moved since the
-- previous anchor: the heads as of anchor N are, per stream, the row with the highest
-- anchor_id <= N. Every row stays, so every head ever anchored can be checked.
CREATE TABLE audit_anchor_heads (
    anchor_id bigint  NOT NULL REFERENCES audit_anchors (id),
    stream_id uuid    NOT NULL,
    version   integer NOT NULL CHECK (version > 0),
    hash      bytea   NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (stream_id, anchor_id)
);

CREATE TRIGGER audit_anchors_append_only BEFORE UPDATE OR DELETE ON audit_anchors
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER audit_anchors_no_truncate BEFORE TRUNCATE ON audit_anchors
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER audit_anchor_heads_append_only BEFORE UPDATE OR DELETE ON audit_anchor_heads
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER audit_anchor_heads_no_truncate BEFORE TRUNCATE ON audit_anchor_heads
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- migrate:down
DROP TABLE audit_anchor_heads;
DROP TABLE audit_anchors;
DROP TRIGGER events_chain ON events;
DROP FUNCTION events_chain();
ALTER TABLE events DROP COLUMN hash;
DROP AGGREGATE event_chain(uuid, integer, text, timestamptz, jsonb, jsonb);
DROP FUNCTION event_chain_step(bytea, uuid, integer, text, timestamptz, jsonb, jsonb);
DROP FUNCTION event_hash(uuid, integer, text, timestamptz, jsonb, jsonb, bytea);
