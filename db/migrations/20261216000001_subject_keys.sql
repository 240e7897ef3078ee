-- migrate:up

-- Per-subject data keys for personal data in events (package pii): a subject is a
-- requester, named by the keyed hash of their email (never the address). wrapped is
-- the subject's AES-256 data key sealed under the master key (DATA_KEY), NULL once the
-- subject is erased: what the key sealed can then no longer be read, while the events
-- (and their hash chain) stay as they are. The row stays, so an erased subject is told
-- from an unknown one and erasing twice is harmless.
CREATE TABLE subject_keys (
    subject    bytea PRIMARY KEY CHECK (length(subject) = 32),
    wrapped    bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    erased_at  timestamptz,
    CHECK ((wrapped IS NULL) = (erased_at IS NOT NULL))
);

-- migrate:down
DROP TABLE subject_keys;
