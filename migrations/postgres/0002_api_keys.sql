-- API keys: long-lived, revocable credentials for API callers, one brand each. The key
-- is shown once at creation; only its SHA-256 is kept, so a copy of this table
-- authenticates no one.
CREATE TABLE api_keys
(
    id            uuid        PRIMARY KEY, -- the key's public handle: in URLs and in the subject `api-key:<id>`
    brand_id      text        NOT NULL,    -- the one brand the key records usage for
    label         text        NOT NULL,    -- the admin's name for it, e.g. 'checkout service'
    secret_sha256 text        NOT NULL,    -- hex SHA-256 of the whole key (prefix included); never the key
    created_at    timestamptz NOT NULL,    -- when it was created
    created_by    text        NOT NULL,    -- subject of the admin who created it, for the audit trail
    revoked_at    timestamptz,             -- set once by a revocation; a revoked key never authenticates again
    UNIQUE (secret_sha256)                 -- also the index of the per-request lookup
);

-- Listing a brand's keys, newest first.
CREATE INDEX api_keys_brand ON api_keys (brand_id, created_at);
