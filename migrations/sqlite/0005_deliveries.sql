-- The outbox of notices and webhook secrets; see the PostgreSQL migration.
CREATE TABLE deliveries
(
    id              text PRIMARY KEY,
    notice_id       text    NOT NULL,
    brand_id        text    NOT NULL,
    endpoint        text    NOT NULL,
    kind            text    NOT NULL,
    notice          text    NOT NULL,
    status          text    NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at text    NOT NULL, -- RFC 3339 UTC with a fixed width, so text order is time order
    created_at      text    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      text    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_brand ON deliveries (brand_id, created_at);

CREATE TABLE delivery_attempts
(
    delivery_id text    NOT NULL REFERENCES deliveries (id),
    number      integer NOT NULL,
    at          text    NOT NULL,
    status_code integer,
    error       text,
    duration_ms integer NOT NULL,
    PRIMARY KEY (delivery_id, number)
) STRICT;

CREATE TABLE webhook_secrets
(
    brand_id   text NOT NULL,
    endpoint   text NOT NULL,
    secrets    text NOT NULL,
    updated_at text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (brand_id, endpoint)
) STRICT;

INSERT INTO projector_checkpoints (name, position)
SELECT 'notices', COALESCE(max(position), 0) FROM events;
