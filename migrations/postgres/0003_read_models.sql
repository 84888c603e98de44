-- Read models, kept by the projector: one row per brand-period stream holding what
-- every model knows of it (ledger_projections::PeriodModels, as JSON), and the
-- projector's checkpoint, both written in one transaction per batch.
CREATE TABLE read_models
(
    brand_id   text        NOT NULL,
    period     text        NOT NULL, -- 'YYYY-MM'
    sequence   bigint      NOT NULL CHECK (sequence >= 1), -- last event of the stream folded in
    models     json        NOT NULL, -- PeriodModels
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (brand_id, period)
);

-- Finance reads a whole period, across brands.
CREATE INDEX read_models_period ON read_models (period, brand_id);

-- Where each projector stands in the global order (transaction_id, position) of the
-- log: every event at or before it is folded into the models.
CREATE TABLE projector_checkpoints
(
    name           text PRIMARY KEY,
    transaction_id xid8        NOT NULL,
    position       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

INSERT INTO projector_checkpoints (name, transaction_id, position)
VALUES ('read_models', '0', 0);

-- Wake projectors (of any process) when events commit. Statement-level, so a batch
-- append sends one notification, delivered at commit and only if it commits.
CREATE FUNCTION ledger_events_appended() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('ledger_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_appended
    AFTER INSERT ON events
    FOR EACH STATEMENT
EXECUTE FUNCTION ledger_events_appended();
