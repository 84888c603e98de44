-- Read models and the projector's checkpoint; see the PostgreSQL migration. SQLite
-- serializes writers, so `position` alone is commit order.
CREATE TABLE read_models
(
    brand_id   text    NOT NULL,
    period     text    NOT NULL,
    sequence   integer NOT NULL CHECK (sequence >= 1),
    models     text    NOT NULL,
    updated_at text    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (brand_id, period)
) STRICT;

CREATE INDEX read_models_period ON read_models (period, brand_id);

CREATE TABLE projector_checkpoints
(
    name       text PRIMARY KEY,
    position   integer NOT NULL,
    updated_at text    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

INSERT INTO projector_checkpoints (name, position) VALUES ('read_models', 0);
