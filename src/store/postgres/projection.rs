//! The PostgreSQL [`ProjectionStore`]: the log in commit order, read only below the
//! oldest transaction that may still commit events; the read models and their checkpoint,
//! moved by compare and set; commits of every process heard through LISTEN/NOTIFY.

use std::sync::Arc;

use async_trait::async_trait;
use ledger_projections::{LogPosition, LogRecord};
use sqlx::{PgConnection, Row};
use tokio::sync::Notify;

use super::PostgresLog;
use crate::store::rows::{log_record, model_rows};
use crate::store::{ModelRow, ProjectionStore, StoreError};

/// The channel the `events_appended` trigger notifies on every commit.
pub const EVENTS_CHANNEL: &str = "ledger_events";

fn xid(text: &str) -> Result<u64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("transaction id {text:?} is not an xid8")))
}

/// The `application_name` a read-model write takes for its transaction (`SET LOCAL`,
/// before it writes anything): [`HORIZON`] passes such transactions over.
macro_rules! read_model_writer {
    () => {
        "usage-ledger read-model writer"
    };
}
pub const READ_MODEL_WRITER: &str = read_model_writer!();

/// The oldest transaction that may still commit events: events of transactions below
/// it are all committed or never will be. It is the lowest transaction in progress,
/// except those of sessions on other databases of the cluster (transaction ids are
/// cluster-wide, but a session can only write its own database's `events`), so a
/// long transaction elsewhere on the server does not stall projection. A transaction
/// that cannot be placed (it just ended, or its session is hidden) is kept: the
/// horizon only ever errs low, which delays an event and never skips one. With no
/// transaction in progress it is the next transaction id. Transactions that write read
/// models are named [`READ_MODEL_WRITER`] and never write events, so they are passed
/// over too: a write of a thousand rows must not hold every consumer back while it runs.
const HORIZON: &str = concat!(
    "
WITH snapshot AS (SELECT pg_current_snapshot() AS s),
horizon AS (
    SELECT coalesce(
        (SELECT min(x) FROM snapshot, pg_snapshot_xip(snapshot.s) AS x
          WHERE NOT EXISTS (
                SELECT 1 FROM pg_stat_activity a
                 WHERE a.backend_xid = x::xid
                   AND (a.datname IS DISTINCT FROM current_database()
                        OR a.application_name = '",
    read_model_writer!(),
    "'))),
        (SELECT pg_snapshot_xmax(s) FROM snapshot)) AS xid)"
);

/// Move consumer `name`'s checkpoint from `from` to `to` inside `tx`: `false` when it
/// no longer stands at `from` (another consumer or a rebuild moved it).
pub(crate) async fn move_checkpoint(
    tx: &mut sqlx::PgConnection,
    name: &str,
    from: LogPosition,
    to: LogPosition,
) -> Result<bool, StoreError> {
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
    .execute(tx)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

/// Name the transaction a read-model writer's, before its first write.
pub(crate) async fn as_read_model_writer(tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "SET LOCAL application_name = '{READ_MODEL_WRITER}'"
    ))
    .execute(tx)
    .await?;
    Ok(())
}

/// The columns of a log record. The first is named `transaction_id` too, but as text:
/// an `ORDER BY` must name `events.transaction_id`, or it sorts by that text ("10"
/// before "9") and pages the log out of order.
const RECORD_COLUMNS: &str = "transaction_id::text, position, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload::text, metadata::text, recorded_at";

/// The rows `model_row` decodes.
const MODEL_ROWS: &str = "SELECT brand_id, period, sequence, models FROM read_models";

fn records(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<LogRecord>, StoreError> {
    rows.iter()
        .map(|row| {
            let transaction = xid(&row.try_get::<String, _>(0)?)?;
            Ok(log_record(row, transaction)?)
        })
        .collect()
}

/// Where projector `name` stands, read on `conn` (inside a transaction's snapshot, say).
async fn checkpoint_of(conn: &mut PgConnection, name: &str) -> Result<LogPosition, StoreError> {
    let row = sqlx::query(
        "SELECT transaction_id::text, position FROM projector_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => Ok(LogPosition::new(
            xid(&row.try_get::<String, _>(0)?)?,
            row.try_get(1)?,
        )),
        None => Ok(LogPosition::START),
    }
}

async fn upsert_models(tx: &mut PgConnection, rows: &[ModelRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&ModelRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    sqlx::query(
        "INSERT INTO read_models (brand_id, period, sequence, models)
         SELECT b, p, s, m FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[])
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
            "{HORIZON}
             SELECT {RECORD_COLUMNS} FROM events, horizon
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
        // The log-read connections have sorting off for their session.
        let mut conn = self.log_reader().await?;
        let rows = q.fetch_all(&mut conn).await?;
        self.keep_log_reader(conn);
        records(&rows)
    }

    async fn log_end(&self) -> Result<LogPosition, StoreError> {
        let sql = format!(
            "{HORIZON}
             SELECT events.transaction_id::text, events.position FROM events, horizon
              WHERE events.transaction_id < horizon.xid
              ORDER BY events.transaction_id DESC, events.position DESC
              LIMIT 1"
        );
        let row = sqlx::query(&sql).fetch_optional(self.pool()).await?;
        match row {
            Some(row) => Ok(LogPosition::new(
                xid(&row.try_get::<String, _>(0)?)?,
                row.try_get(1)?,
            )),
            None => Ok(LogPosition::START),
        }
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
            "SELECT {RECORD_COLUMNS} FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY events.sequence"
        );
        let rows = sqlx::query(&sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_all(self.pool())
            .await?;
        records(&rows)
    }

    async fn checkpoint(&self, name: &str) -> Result<LogPosition, StoreError> {
        checkpoint_of(&mut *self.pool().acquire().await?, name).await
    }

    async fn load_models(&self, keys: &[(String, String)]) -> Result<Vec<ModelRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.brand_id, r.period, r.sequence, r.models
               FROM UNNEST($1::text[], $2::text[]) AS k(b, p)
               JOIN read_models r ON r.brand_id = k.b AND r.period = k.p",
        )
        .bind(keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
        .fetch_all(self.pool())
        .await?;
        model_rows(&rows)
    }

    async fn models_of_brand(&self, brand_id: &str) -> Result<Vec<ModelRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{MODEL_ROWS}
              WHERE brand_id = $1 ORDER BY period"
        ))
        .bind(brand_id)
        .fetch_all(self.pool())
        .await?;
        model_rows(&rows)
    }

    async fn models_in_period(&self, period: &str) -> Result<Vec<ModelRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{MODEL_ROWS}
              WHERE period = $1 ORDER BY brand_id"
        ))
        .bind(period)
        .fetch_all(self.pool())
        .await?;
        model_rows(&rows)
    }

    async fn save_models(
        &self,
        name: &str,
        from: LogPosition,
        to: LogPosition,
        rows: &[ModelRow],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        as_read_model_writer(&mut tx).await?;
        if !move_checkpoint(&mut tx, name, from, to).await? {
            return Ok(false);
        }
        upsert_models(&mut tx, rows).await?;
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
        let at = checkpoint_of(&mut tx, name).await?;
        let rows = sqlx::query(&format!(
            "{MODEL_ROWS}
              ORDER BY brand_id, period"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let rows = model_rows(&rows)?;
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
        as_read_model_writer(&mut tx).await?;
        sqlx::query("DELETE FROM read_models")
            .execute(&mut *tx)
            .await?;
        upsert_models(&mut tx, rows).await?;
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
        // One listener per process, which wakes every watcher: the consumers a
        // notification wakes then ask for the log together and share one read of it.
        self.listening
            .get_or_try_init(|| async {
                // A reconnection wakes the consumers too; they re-read from where they
                // stand, so nothing is missed.
                let commits = Arc::clone(&self.commits);
                let own = Some(self.origin.clone());
                super::listen(self.pool(), EVENTS_CHANNEL, own, move || commits.notify()).await
            })
            .await?;
        Ok(self.commit_signal())
    }

    fn shared_reads(&self) -> &crate::store::SharedReads {
        &self.reads
    }
}
