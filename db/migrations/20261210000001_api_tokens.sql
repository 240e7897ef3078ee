-- migrate:up

-- API tokens (issue 14): opaque bearer credentials, `tkd_` + 32 random bytes. Only the
-- SHA-256 of a token is stored: the token has 256 bits of entropy, so no dictionary or
-- brute force can invert a fast hash, and a slow password hash (bcrypt, argon2) would
-- only make every request's check expensive. Rows are never deleted: a revoked or
-- expired token stays listed, for the record of who held access when.
CREATE TABLE api_tokens (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL,
    role         text        NOT NULL CHECK (role IN ('admin', 'agent', 'auditor', 'requester')),
    -- binds a requester to its tickets; optional for the other roles
    email        text,
    token_hash   bytea       NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    -- updated at most once a minute per token, off the request path
    last_used_at timestamptz,
    CHECK (role <> 'requester' OR email IS NOT NULL)
);

-- migrate:down
DROP TABLE api_tokens;
