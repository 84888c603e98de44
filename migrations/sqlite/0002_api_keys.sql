-- API keys of the embedded store; see the PostgreSQL migration for the design.
CREATE TABLE api_keys
(
    id            text PRIMARY KEY, -- UUID text: the key's public handle, in URLs and in `api-key:<id>`
    brand_id      text NOT NULL,    -- the one brand the key records usage for
    label         text NOT NULL,    -- the admin's name for it, e.g. 'checkout service'
    secret_sha256 text NOT NULL,    -- hex SHA-256 of the whole key (prefix included); never the key
    created_at    text NOT NULL,    -- RFC 3339 UTC, when it was created
    created_by    text NOT NULL,    -- subject of the admin who created it, for the audit trail
    revoked_at    text,             -- RFC 3339 UTC, set once; a revoked key never authenticates again
    UNIQUE (secret_sha256)          -- also the index of the per-request lookup
) STRICT;

-- Listing a brand's keys, newest first.
CREATE INDEX api_keys_brand ON api_keys (brand_id, created_at);
