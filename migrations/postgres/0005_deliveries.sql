-- The outbox of notices: one row per notice and endpoint, written by the notices
-- consumer in the same transaction as its checkpoint, then attempted by the
-- dispatcher until delivered or dead-lettered. Every attempt is kept.
CREATE TABLE deliveries
(
    id              text PRIMARY KEY, -- stable across attempts: receivers deduplicate on it
    notice_id       text        NOT NULL,
    brand_id        text        NOT NULL,
    endpoint        text        NOT NULL,
    kind            text        NOT NULL,
    notice          json        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The dispatcher's query: pending deliveries that are due.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
-- The listing of a brand's deliveries, newest first.
CREATE INDEX deliveries_brand ON deliveries (brand_id, created_at);

CREATE TABLE delivery_attempts
(
    delivery_id text        NOT NULL REFERENCES deliveries (id),
    number      integer     NOT NULL,
    at          timestamptz NOT NULL,
    status_code integer,
    error       text,
    duration_ms bigint      NOT NULL,
    PRIMARY KEY (delivery_id, number)
);

-- Webhook signing secrets, by brand and endpoint: credentials, like API keys, kept out
-- of the log (its events name them by fingerprint).
CREATE TABLE webhook_secrets
(
    brand_id   text        NOT NULL,
    endpoint   text        NOT NULL,
    secrets    json        NOT NULL, -- ["whsec_…", …]: the current one first
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (brand_id, endpoint)
);

-- The notices consumer starts where the log ends when it is installed: a ledger with
-- history does not notify it again.
INSERT INTO projector_checkpoints (name, transaction_id, position)
SELECT 'notices', COALESCE((SELECT transaction_id FROM events ORDER BY transaction_id DESC, position DESC LIMIT 1), '0'),
       COALESCE((SELECT position FROM events ORDER BY transaction_id DESC, position DESC LIMIT 1), 0);
