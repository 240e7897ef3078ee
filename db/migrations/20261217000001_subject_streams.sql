-- migrate:up

-- Which streams hold personal data of which subject (package pii, eventstore's
-- personal.go): the append statement adds (subject, stream) for every subject whose key
-- sealed a field of the stream, in the transaction of the events, so an erasure finds
-- every ticket it must reach without reading every event. Only keyed ids, never an
-- email. Streams written before encryption are not listed (their fields are not sealed).
CREATE TABLE subject_streams (
    subject   bytea NOT NULL CHECK (length(subject) = 32),
    stream_id uuid  NOT NULL,
    PRIMARY KEY (subject, stream_id)
);

-- migrate:down
DROP TABLE subject_streams;
