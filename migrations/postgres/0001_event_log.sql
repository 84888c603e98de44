-- The event log. The first seven columns are exactly those of postgres-es, so that
-- postgres_es::PostgresEventRepository can load any stream the ledger wrote.
CREATE TABLE events
(
    aggregate_type  text                         NOT NULL, -- 'usage_period' or 'brand'
    aggregate_id    text                         NOT NULL, -- 'brand_x:2026-11' or 'brand_x'
    sequence        bigint CHECK (sequence >= 0) NOT NULL, -- 1, 2, … within one stream
    event_type      text                         NOT NULL, -- 'UsageRecorded', …
    event_version   text                         NOT NULL, -- payload schema version
    payload         json                         NOT NULL, -- the event (json, not jsonb: cheaper to write, kept byte for byte)
    metadata        json                         NOT NULL, -- free-form string map, '{}' by default
    -- Global order for projections. `position` alone can commit out of order (a
    -- transaction holding a lower value may commit late), so readers order by
    -- (transaction_id, position) and only read below the oldest running writer
    -- (pg_snapshot_xmin): an event committed late is never skipped.
    position        bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- Set on the first event of a command that carried an idempotency key; unique per
    -- stream, i.e. per brand and period, recorded in the same statement as the events.
    idempotency_key text,
    -- SHA-256 of the command's payload: the same key with another payload is refused.
    request_hash    text,
    recorded_at     timestamptz NOT NULL DEFAULT now(), -- commit-side wall clock, for auditors
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- The key leads: on a table without statistics the planner otherwise ties this index
-- with events_pkey (same leading columns) and scans the whole stream for every key.
CREATE UNIQUE INDEX events_idempotency_key
    ON events (idempotency_key, aggregate_id, aggregate_type)
    WHERE idempotency_key IS NOT NULL;

CREATE INDEX events_global_order ON events (transaction_id, position);

-- Aggregate snapshots, postgres-es shape, one row per stream (the ledger upserts).
CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL, -- events folded into payload
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL, -- how many times it was rewritten
    payload          json                                 NOT NULL, -- the serialized aggregate
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence),
    UNIQUE (aggregate_type, aggregate_id)
);
