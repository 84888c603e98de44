//! The SQLite [`ProjectionStore`]: the log in `position` order (SQLite has one writer, so
//! that is commit order), the read models and their checkpoint, moved by compare and set.
//! Another process's commits are found by the projector's poll: SQLite has no
//! notifications.

use std::sync::Arc;

use async_trait::async_trait;
use ledger_projections::{LogPosition, LogRecord};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::Notify;

use super::SqliteLog;
use crate::store::rows::{log_record, model_row, model_rows};
use crate::store::{ModelRow, ProjectionStore, StoreError};

/// Keys per lookup statement (two parameters each).
const KEYS_PER_QUERY_MAX: usize = 500;

/// The rows `model_row` decodes.
const MODEL_ROWS: &str = "SELECT brand_id, period, sequence, models FROM read_models";

/// The columns `log_record` decodes. SQLite has no transaction ids: all are 0, and the
/// position alone orders the log.
const RECORD_COLUMNS: &str = "0, position, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata, recorded_at";

fn records(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<LogRecord>, StoreError> {
    Ok(rows
        .iter()
        .map(|row| log_record(row, 0))
        .collect::<Result<_, _>>()?)
}

/// Where projector `name` stands, read on `conn` (inside a transaction's snapshot, say).
async fn checkpoint_of(conn: &mut SqliteConnection, name: &str) -> Result<LogPosition, StoreError> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM projector_checkpoints WHERE name = ?1")
            .bind(name)
            .fetch_optional(conn)
            .await?;
    Ok(LogPosition::new(0, position.unwrap_or(0)))
}

/// Move consumer `name`'s checkpoint from `from` to `to` inside `tx`: `false` when it
/// no longer stands at `from`.
pub(crate) async fn move_checkpoint(
    tx: &mut SqliteConnection,
    name: &str,
    from: LogPosition,
    to: LogPosition,
) -> Result<bool, StoreError> {
    let moved = sqlx::query(
        "UPDATE projector_checkpoints
            SET position = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
          WHERE name = ?1 AND position = ?3",
    )
    .bind(name)
    .bind(to.position)
    .bind(from.position)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(moved == 1)
}

async fn upsert_models(tx: &mut SqliteConnection, rows: &[ModelRow]) -> Result<(), StoreError> {
    for chunk in rows.chunks(KEYS_PER_QUERY_MAX) {
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
            "SELECT {RECORD_COLUMNS} FROM events
              WHERE position > ?1 AND position <= ?2 ORDER BY position LIMIT ?3"
        );
        let rows = sqlx::query(&sql)
            .bind(after.position)
            .bind(until.map_or(i64::MAX, |u| u.position))
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        records(&rows)
    }

    async fn log_end(&self) -> Result<LogPosition, StoreError> {
        let last: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
            .fetch_one(self.pool())
            .await?;
        Ok(LogPosition::new(0, last.unwrap_or(0)))
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
              WHERE aggregate_type = ?1 AND aggregate_id = ?2 ORDER BY sequence"
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
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_QUERY_MAX) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("{MODEL_ROWS} WHERE (brand_id, period) IN ("));
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
            "{MODEL_ROWS}
              WHERE brand_id = ?1 ORDER BY period"
        ))
        .bind(brand_id)
        .fetch_all(self.pool())
        .await?;
        model_rows(&rows)
    }

    async fn models_in_period(&self, period: &str) -> Result<Vec<ModelRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "{MODEL_ROWS}
              WHERE period = ?1 ORDER BY brand_id"
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
        // In WAL mode a read transaction sees one snapshot from its first read on.
        let mut tx = self.pool().begin().await?;
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
        sqlx::query("DELETE FROM read_models")
            .execute(&mut *tx)
            .await?;
        upsert_models(&mut tx, rows).await?;
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

    fn shared_reads(&self) -> &crate::store::SharedReads {
        &self.reads
    }
}
