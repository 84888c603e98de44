-- Read-model rows hold the service's own serialization of `PeriodModels`, decoded (and
-- so checked) on every read. As `json`, every upsert also parsed each row's few KiB
-- again in the server, most of the upsert's cost (docs/performance.md, "Read-model rows
-- as text"); as `text` they are stored as written. SQLite keeps them as text already.
ALTER TABLE read_models ALTER COLUMN models TYPE text;
