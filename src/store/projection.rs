//! What the projector and the replay need from a store: the log in global commit order,
//! the read-model rows and the projector's checkpoint (migration 0003), on PostgreSQL
//! and SQLite.
//!
//! A batch's rows and the checkpoint that covers them are written in one transaction,
//! and the checkpoint moves only from the value the projector read (compare and set):
//! two projectors on one database never both commit the same batch, and a crash
//! between a batch and its checkpoint leaves both as they were.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_projections::{LogPosition, LogRecord};
use sqlx::postgres::PgListener;
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::Notify;

use super::{PostgresLog, SqliteLog, StoreError};

/// The checkpoint of the service's projector (inserted by migration 0003).
pub const READ_MODELS_PROJECTOR: &str = "read_models";
/// The PostgreSQL channel the `events_appended` trigger notifies on every commit.
pub const EVENTS_CHANNEL: &str = "ledger_events";
/// Keys per lookup statement on SQLite (two parameters each).
const SQLITE_KEYS_PER_QUERY_MAX: usize = 500;

/// One stored read-model row: what the models hold about one brand-period stream
/// (`ledger_projections::PeriodModels` as JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRow {
    pub brand_id: String,
    pub period: String,
    /// The last sequence of the stream folded in.
    pub sequence: i64,
    pub models: String,
}

#[async_trait]
pub trait ProjectionStore: Send + Sync + 'static {
    /// Committed events after `after` (and at or before `until`) in global order, at
    /// most `limit`. On PostgreSQL only events below the oldest transaction that may
    /// still commit events are read, so an event committed late is never passed over.
    async fn read_log(
        &self,
        after: LogPosition,
        until: Option<LogPosition>,
        limit: i64,
    ) -> Result<Vec<LogRecord>, StoreError>;

    /// How many events the log holds (for progress reports).
    async fn log_len(&self) -> Result<u64, StoreError>;

    /// Every event of one stream, in sequence order, as log records.
    async fn stream_records(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
    ) -> Result<Vec<LogRecord>, StoreError>;

    /// Where projector `name` stands.
    async fn checkpoint(&self, name: &str) -> Result<LogPosition, StoreError>;

    /// The rows of these `(brand_id, period)` streams that exist.
    async fn load_models(&self, keys: &[(String, String)]) -> Result<Vec<ModelRow>, StoreError>;

    /// Every row of one brand, in period order.
    async fn models_of_brand(&self, brand_id: &str) -> Result<Vec<ModelRow>, StoreError>;

    /// Every row of one period, in brand order.
    async fn models_in_period(&self, period: &str) -> Result<Vec<ModelRow>, StoreError>;

    /// Upsert `rows` and move projector `name` from `from` to `to`, in one transaction.
    /// `false` (and nothing written) when the checkpoint is no longer `from`: another
    /// projector or a rebuild moved it.
    async fn save_models(
        &self,
        name: &str,
        from: LogPosition,
        to: LogPosition,
        rows: &[ModelRow],
    ) -> Result<bool, StoreError>;

    /// The checkpoint of `name` and every row, read from one snapshot of the database.
    async fn snapshot_models(&self, name: &str)
        -> Result<(LogPosition, Vec<ModelRow>), StoreError>;

    /// Replace every row by `rows` and set `name` to `to`, in one transaction.
    async fn replace_models(
        &self,
        name: &str,
        to: LogPosition,
        rows: &[ModelRow],
    ) -> Result<(), StoreError>;

    /// Close every connection. The server rolls back what a connection had open, as
    /// when a process dies; an in-process `Projector::abort` alone leaves a dropped
    /// transaction on its pooled connection until the pool reuses it.
    async fn close(&self);

    /// Notified after events commit: by this process's appends at once, and on
    /// PostgreSQL by every process's commits through LISTEN/NOTIFY.
    async fn watch_commits(&self) -> Result<Arc<Notify>, StoreError>;
}

fn model_row<R: Row>(row: &R) -> Result<ModelRow, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ModelRow {
        brand_id: row.try_get(0)?,
        period: row.try_get(1)?,
        sequence: row.try_get(2)?,
        models: row.try_get(3)?,
    })
}

/// Decode `transaction, position, aggregate_type, aggregate_id, sequence, event_type,
/// event_version, payload, metadata, recorded_at`; the transaction id comes as text
/// (PostgreSQL's xid8 has no binary mapping in sqlx) or as an integer 0 (SQLite).
fn log_record<R: Row>(row: &R, transaction: u64) -> Result<LogRecord, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(LogRecord {
        at: LogPosition::new(transaction, row.try_get(1)?),
        aggregate_type: row.try_get(2)?,
        aggregate_id: row.try_get(3)?,
        sequence: row.try_get(4)?,
        event_type: row.try_get(5)?,
        event_version: row.try_get(6)?,
        payload: row.try_get(7)?,
        metadata: row.try_get(8)?,
        recorded_at: row.try_get(9)?,
    })
}

fn xid(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("transaction id {text:?} is not an xid8")))
}

// --- PostgreSQL -------------------------------------------------------------------------

/// The oldest transaction that may still commit events: events of transactions below
/// it are all committed or never will be. It is the lowest transaction in progress,
/// except those of sessions on other databases of the cluster (transaction ids are
/// cluster-wide, but a session can only write its own database's `events`), so a
/// long transaction elsewhere on the server does not stall projection. A transaction
/// that cannot be placed (it just ended, or its session is hidden) is kept: the
/// horizon only ever errs low, which delays an event and never skips one. With no
/// transaction in progress it is the next transaction id.
const PG_HORIZON: &str = "
WITH snapshot AS (SELECT pg_current_snapshot() AS s),
horizon AS (
    SELECT coalesce(
        (SELECT min(x) FROM snapshot, pg_snapshot_xip(snapshot.s) AS x
          WHERE NOT EXISTS (
                SELECT 1 FROM pg_stat_activity a
                 WHERE a.backend_xid = x::xid
                   AND a.datname IS DISTINCT FROM current_database())),
        (SELECT pg_snapshot_xmax(s) FROM snapshot)) AS xid)";

/// The columns of a log record. The first is named `transaction_id` too, but as text:
/// an `ORDER BY` must name `events.transaction_id`, or it sorts by that text ("10"
/// before "9") and pages the log out of order.
const PG_RECORD_COLUMNS: &str = "transaction_id::text, position, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload::text, metadata::text, recorded_at";

/// The rows `model_row` decodes.
const PG_MODEL_ROWS: &str = "SELECT brand_id, period, sequence, models::text FROM read_models";

fn pg_records(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<LogRecord>, StoreError> {
    rows.iter()
        .map(|row| {
            let transaction = xid(&row.try_get::<String, _>(0)?)?;
            Ok(log_record(row, transaction)?)
        })
        .collect()
}

async fn pg_upsert_models(
    tx: &mut sqlx::PgConnection,
    rows: &[ModelRow],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&ModelRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    sqlx::query(
        "INSERT INTO read_models (brand_id, period, sequence, models)
         SELECT b, p, s, m::json FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[])
                AS u(b, p, s, m)
         ON CONFLICT (brand_id, period) DO UPDATE
            SET sequence = EXCLUDED.sequence, models = EXCLUDED.models, updated_at = now()",
    )
    .bind(col(|r| &r.brand_id))
    .bind(col(|r| &r.period))
    .bind(rows.iter().map(|r| r.sequence).collect::<Vec<_>>())
    .bind(col(|r| &r.models))
    .execute(tx)
    .await?;
    Ok(())
}

#[async_trait]
impl ProjectionStore for PostgresLog {
    async fn read_log(
        &self,
        after: LogPosition,
        until: Option<LogPosition>,
        limit: i64,
    ) -> Result<Vec<LogRecord>, StoreError> {
        // Row comparison on (transaction_id, position) walks events_global_order.
        let upper = match until {
            Some(_) => "AND (transaction_id, position) <= ($4::text::xid8, $5)",
            None => "",
        };
        let sql = format!(
            "{PG_HORIZON}
             SELECT {PG_RECORD_COLUMNS} FROM events, horizon
              WHERE (transaction_id, position) > ($1::text::xid8, $2)
                AND transaction_id < horizon.xid
                {upper}
              ORDER BY events.transaction_id, events.position
              LIMIT $3"
        );
        let mut q = sqlx::query(&sql)
            .bind(after.transaction.to_string())
            .bind(after.position)
            .bind(limit);
        if let Some(until) = until {
            q = q.bind(until.transaction.to_string()).bind(until.position);
        }
        // Without statistics (a young table, a bulk load not yet analyzed) the planner
        // underestimates the rows after the checkpoint and picks a bitmap scan that
        // sorts everything left of the log for each page (177 ms a page of 10,000 on
        // 100,000 events, against 7 ms walking the index). Sorting is never needed
        // here: the index is the order.
        let mut tx = self.pool().begin().await?;
        sqlx::query("SET LOCAL enable_sort = off")
            .execute(&mut *tx)
            .await?;
        let rows = q.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        pg_records(&rows)
    }

    async fn log_len(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(self.pool())
            .await?;
        Ok(n as u64)
    }

    async fn stream_records(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let sql = format!(
            "SELECT {PG_RECORD_COLUMNS} FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY events.sequence"
        );
        let rows = sqlx::query(&sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_all(self.pool())
            .await?;
        pg_records(&rows)
    }

    async fn checkpoint(&self, name: &str) -> Result<LogPosition, StoreError> {
        let row = sqlx::query(
            "SELECT transaction_id::text, position FROM projector_checkpoints WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(row) => Ok(LogPosition::new(
                xid(&row.try_get::<String, _>(0)?)?,
                row.try_get(1)?,
            )),
            None => Ok(LogPosition::START),
        }
    }

    async fn load_models(&self, keys: &[(String, String)]) -> Result<Vec<ModelRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.brand_id, r.period, r.sequence, r.models::text
               FROM UNNEST($1::text[], $2::text[]) AS k(b, p)
               JOIN read_models r ON r.brand_id = k.b AND r.period = k.p",
        )
        .bind(keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(model_row).collect::<Result<_, _>>()?)
    }

    async fn models_of_brand(&self, brand_id: &str) -> Result<Vec<ModelRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{PG_MODEL_ROWS}
              WHERE brand_id = $1 ORDER BY period"
        ))
        .bind(brand_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(model_row).collect::<Result<_, _>>()?)
    }

    async fn models_in_period(&self, period: &str) -> Result<Vec<ModelRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{PG_MODEL_ROWS}
              WHERE period = $1 ORDER BY brand_id"
        ))
        .bind(period)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(model_row).collect::<Result<_, _>>()?)
    }

    async fn save_models(
        &self,
        name: &str,
        from: LogPosition,
        to: LogPosition,
        rows: &[ModelRow],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let moved = sqlx::query(
            "UPDATE projector_checkpoints
                SET transaction_id = $2::text::xid8, position = $3, updated_at = now()
              WHERE name = $1 AND transaction_id = $4::text::xid8 AND position = $5",
        )
        .bind(name)
        .bind(to.transaction.to_string())
        .bind(to.position)
        .bind(from.transaction.to_string())
        .bind(from.position)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        pg_upsert_models(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn snapshot_models(
        &self,
        name: &str,
    ) -> Result<(LogPosition, Vec<ModelRow>), StoreError> {
        // One snapshot for the checkpoint and every row.
        let mut tx = self
            .pool()
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let at = sqlx::query(
            "SELECT transaction_id::text, position FROM projector_checkpoints WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let at = match at {
            Some(row) => LogPosition::new(xid(&row.try_get::<String, _>(0)?)?, row.try_get(1)?),
            None => LogPosition::START,
        };
        let rows = sqlx::query(&format!(
            "{PG_MODEL_ROWS}
              ORDER BY brand_id, period"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let rows = rows.iter().map(model_row).collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok((at, rows))
    }

    async fn replace_models(
        &self,
        name: &str,
        to: LogPosition,
        rows: &[ModelRow],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM read_models")
            .execute(&mut *tx)
            .await?;
        pg_upsert_models(&mut tx, rows).await?;
        sqlx::query(
            "INSERT INTO projector_checkpoints (name, transaction_id, position)
             VALUES ($1, $2::text::xid8, $3)
             ON CONFLICT (name) DO UPDATE
                SET transaction_id = EXCLUDED.transaction_id, position = EXCLUDED.position,
                    updated_at = now()",
        )
        .bind(name)
        .bind(to.transaction.to_string())
        .bind(to.position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool().close().await;
    }

    async fn watch_commits(&self) -> Result<Arc<Notify>, StoreError> {
        let signal = self.commit_signal();
        let mut listener = PgListener::connect_with(self.pool()).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        let forward = Arc::clone(&signal);
        tokio::spawn(async move {
            // `recv` reconnects by itself after a lost connection (and then wakes the
            // projector, which re-reads from its checkpoint: nothing is missed).
            loop {
                match listener.recv().await {
                    Ok(_) => forward.notify_one(),
                    // The store was closed: let the listener's connection go with it.
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "commit listener: reconnecting");
                        forward.notify_one();
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(signal)
    }
}

// --- SQLite -----------------------------------------------------------------------------

/// The rows `model_row` decodes.
const SQLITE_MODEL_ROWS: &str = "SELECT brand_id, period, sequence, models FROM read_models";

const SQLITE_RECORD_COLUMNS: &str = "0, position, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata, recorded_at";

fn sqlite_records(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<LogRecord>, StoreError> {
    Ok(rows
        .iter()
        .map(|row| log_record(row, 0))
        .collect::<Result<_, _>>()?)
}

async fn sqlite_upsert_models(
    tx: &mut sqlx::SqliteConnection,
    rows: &[ModelRow],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(SQLITE_KEYS_PER_QUERY_MAX) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO read_models (brand_id, period, sequence, models) ");
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(&r.brand_id)
                .push_bind(&r.period)
                .push_bind(r.sequence)
                .push_bind(&r.models);
        });
        qb.push(
            " ON CONFLICT (brand_id, period) DO UPDATE
                 SET sequence = excluded.sequence, models = excluded.models,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        );
        qb.build().execute(&mut *tx).await?;
    }
    Ok(())
}

#[async_trait]
impl ProjectionStore for SqliteLog {
    async fn read_log(
        &self,
        after: LogPosition,
        until: Option<LogPosition>,
        limit: i64,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let sql = format!(
            "SELECT {SQLITE_RECORD_COLUMNS} FROM events
              WHERE position > ?1 AND position <= ?2 ORDER BY position LIMIT ?3"
        );
        let rows = sqlx::query(&sql)
            .bind(after.position)
            .bind(until.map_or(i64::MAX, |u| u.position))
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        sqlite_records(&rows)
    }

    async fn log_len(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(self.pool())
            .await?;
        Ok(n as u64)
    }

    async fn stream_records(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let sql = format!(
            "SELECT {SQLITE_RECORD_COLUMNS} FROM events
              WHERE aggregate_type = ?1 AND aggregate_id = ?2 ORDER BY sequence"
        );
        let rows = sqlx::query(&sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_all(self.pool())
            .await?;
        sqlite_records(&rows)
    }

    async fn checkpoint(&self, name: &str) -> Result<LogPosition, StoreError> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM projector_checkpoints WHERE name = ?1")
                .bind(name)
                .fetch_optional(self.pool())
                .await?;
        Ok(LogPosition::new(0, position.unwrap_or(0)))
    }

    async fn load_models(&self, keys: &[(String, String)]) -> Result<Vec<ModelRow>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SQLITE_KEYS_PER_QUERY_MAX) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("{SQLITE_MODEL_ROWS} WHERE (brand_id, period) IN ("));
            let mut keys = qb.separated(", ");
            for (brand, period) in chunk {
                keys.push("(")
                    .push_bind_unseparated(brand)
                    .push_unseparated(", ")
                    .push_bind_unseparated(period)
                    .push_unseparated(")");
            }
            qb.push(")");
            let rows = qb.build().fetch_all(self.pool()).await?;
            for row in &rows {
                out.push(model_row(row)?);
            }
        }
        Ok(out)
    }

    async fn models_of_brand(&self, brand_id: &str) -> Result<Vec<ModelRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SQLITE_MODEL_ROWS}
              WHERE brand_id = ?1 ORDER BY period"
        ))
        .bind(brand_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(model_row).collect::<Result<_, _>>()?)
    }

    async fn models_in_period(&self, period: &str) -> Result<Vec<ModelRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SQLITE_MODEL_ROWS}
              WHERE period = ?1 ORDER BY brand_id"
        ))
        .bind(period)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(model_row).collect::<Result<_, _>>()?)
    }

    async fn save_models(
        &self,
        name: &str,
        from: LogPosition,
        to: LogPosition,
        rows: &[ModelRow],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let moved = sqlx::query(
            "UPDATE projector_checkpoints
                SET position = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
              WHERE name = ?1 AND position = ?3",
        )
        .bind(name)
        .bind(to.position)
        .bind(from.position)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        sqlite_upsert_models(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn snapshot_models(
        &self,
        name: &str,
    ) -> Result<(LogPosition, Vec<ModelRow>), StoreError> {
        // In WAL mode a read transaction sees one snapshot from its first read on.
        let mut tx = self.pool().begin().await?;
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM projector_checkpoints WHERE name = ?1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let rows = sqlx::query(&format!(
            "{SQLITE_MODEL_ROWS}
              ORDER BY brand_id, period"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let rows = rows.iter().map(model_row).collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok((LogPosition::new(0, position.unwrap_or(0)), rows))
    }

    async fn replace_models(
        &self,
        name: &str,
        to: LogPosition,
        rows: &[ModelRow],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM read_models")
            .execute(&mut *tx)
            .await?;
        sqlite_upsert_models(&mut tx, rows).await?;
        sqlx::query(
            "INSERT INTO projector_checkpoints (name, position) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE
                SET position = excluded.position,
                    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        )
        .bind(name)
        .bind(to.position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool().close().await;
    }

    async fn watch_commits(&self) -> Result<Arc<Notify>, StoreError> {
        // SQLite has no notifications: this process's appends signal at once; another
        // process's are found by the projector's poll.
        Ok(self.commit_signal())
    }
}
