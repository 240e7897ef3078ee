-- migrate:up

-- The event store keeps an idempotent command's answer as bytes the HTTP layer renders
-- and reads back (answer), not as HTTP's status, headers and body: it has no business
-- knowing what a response is. Stored answers are kept, in the HTTP layer's form: the
-- JSON {"status":S,"header":{...},"body":B}, the body's bytes as they were sent (every
-- stored body is a JSON document).
ALTER TABLE idempotency_keys ADD COLUMN answer bytea;
UPDATE idempotency_keys SET answer =
    convert_to('{"status":' || status || ',"header":' || headers::text || ',"body":', 'UTF8') ||
    body || convert_to('}', 'UTF8');
ALTER TABLE idempotency_keys
    ALTER COLUMN answer SET NOT NULL,
    DROP COLUMN status,
    DROP COLUMN headers,
    DROP COLUMN body;

-- migrate:down
ALTER TABLE idempotency_keys
    ADD COLUMN status smallint,
    ADD COLUMN headers jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN body bytea;
UPDATE idempotency_keys SET
    status = (convert_from(answer, 'UTF8')::jsonb ->> 'status')::smallint,
    headers = coalesce(convert_from(answer, 'UTF8')::jsonb -> 'header', '{}'),
    body = convert_to((convert_from(answer, 'UTF8')::jsonb -> 'body')::text, 'UTF8');
ALTER TABLE idempotency_keys
    ALTER COLUMN status SET NOT NULL,
    ALTER COLUMN body SET NOT NULL,
    DROP COLUMN answer;
