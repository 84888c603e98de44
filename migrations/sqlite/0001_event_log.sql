-- The event log of the embedded store. The seven sqlite-es columns come first, so that
-- sqlite_es::SqliteEventRepository can load any stream the ledger wrote.
CREATE TABLE events
(
    -- Global order. SQLite serializes writers, so an autoincrement key is commit order.
    position        integer PRIMARY KEY AUTOINCREMENT,
    aggregate_type  text                          NOT NULL, -- 'usage_period' or 'brand'
    aggregate_id    text                          NOT NULL, -- 'brand_x:2026-11' or 'brand_x'
    sequence        integer CHECK (sequence >= 0) NOT NULL, -- 1, 2, … within one stream
    event_type      text                          NOT NULL, -- 'UsageRecorded', …
    event_version   text                          NOT NULL, -- payload schema version
    payload         text                          NOT NULL, -- the event as JSON text
    metadata        text                          NOT NULL, -- JSON string map, '{}' by default
    idempotency_key text,                                   -- see the PostgreSQL migration
    request_hash    text,                                   -- SHA-256 of the command payload
    recorded_at     text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (aggregate_type, aggregate_id, sequence)
) STRICT;

CREATE UNIQUE INDEX events_idempotency_key
    ON events (aggregate_type, aggregate_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE snapshots
(
    aggregate_type   text                                  NOT NULL,
    aggregate_id     text                                  NOT NULL,
    last_sequence    integer CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot integer CHECK (current_snapshot >= 0) NOT NULL,
    payload          text                                  NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
) STRICT;
