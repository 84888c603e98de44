//! SQLite event log: the embedded default store, one file under the data directory.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::{
    group_streams, keyed_event, stored_event, EventLog, KeyedEvent, LoadedStream, NewEvent,
    NewSnapshot, StoreError, StoredEvent,
};

/// Readers share the file through WAL; SQLite has one writer whatever the pool size.
pub const SQLITE_POOL_CONNECTIONS_MAX: u32 = 8;
/// How long a statement waits for SQLite's write lock before failing.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Rows per INSERT statement: 9 parameters a row stays far below SQLite's 32,766
/// parameter limit, and larger statements stop paying off.
pub const SQLITE_INSERT_ROWS_MAX: usize = 500;

pub struct SqliteLog {
    pool: SqlitePool,
    /// Notified after each append of this process commits (see `ProjectionStore`).
    commits: std::sync::Arc<tokio::sync::Notify>,
}

impl SqliteLog {
    /// Open (creating if needed) `<dir>/ledger.db` and run `migrations/sqlite`.
    pub async fn open_in(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
        Self::open(&dir.join("ledger.db").to_string_lossy()).await
    }

    pub async fn open(path: &str) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged, even on power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_POOL_CONNECTIONS_MAX)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(e.into()))?;
        Ok(Self {
            pool,
            commits: Default::default(),
        })
    }

    /// The signal this process's committed appends notify.
    pub fn commit_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::clone(&self.commits)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// One page of a stream with `sql` (which binds type, id, a sequence bound, limit).
    async fn stream_page(
        &self,
        sql: &'static str,
        aggregate_type: &str,
        aggregate_id: &str,
        bound: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(sql)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(bound)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(stored_event)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }
}

/// Keys travel as one JSON array parameter, unpacked with `json_each`.
fn json_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    serde_json::to_string(&pairs.collect::<Vec<_>>()).expect("strings always serialize")
}

#[async_trait]
impl EventLog for SqliteLog {
    async fn load_streams(
        &self,
        keys: &[(&'static str, String)],
    ) -> Result<Vec<LoadedStream>, StoreError> {
        let pairs = json_pairs(keys.iter().map(|(t, id)| (*t, id.as_str())));
        let snaps = sqlx::query(
            "SELECT s.aggregate_type, s.aggregate_id, s.last_sequence, s.payload
               FROM json_each(?1) k
               JOIN snapshots s ON s.aggregate_type = k.value ->> 0 AND s.aggregate_id = k.value ->> 1",
        )
        .bind(&pairs)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let events = sqlx::query(
            "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version,
                    e.payload, e.metadata
               FROM json_each(?1) k
               JOIN events e ON e.aggregate_type = k.value ->> 0 AND e.aggregate_id = k.value ->> 1
               LEFT JOIN snapshots s ON s.aggregate_type = e.aggregate_type AND s.aggregate_id = e.aggregate_id
              WHERE e.sequence > COALESCE(s.last_sequence, 0)
              ORDER BY e.aggregate_type, e.aggregate_id, e.sequence",
        )
        .bind(&pairs)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(stored_event)
        .collect::<Result<Vec<_>, _>>()?;
        Ok(group_streams(keys, snaps, events))
    }

    async fn existing_streams(
        &self,
        aggregate_type: &'static str,
        ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT k.value FROM json_each(?2) k
              WHERE EXISTS (SELECT 1 FROM events e WHERE e.aggregate_type = ?1 AND e.aggregate_id = k.value)",
        )
        .bind(aggregate_type)
        .bind(serde_json::to_string(ids).expect("strings always serialize"))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn find_keyed(
        &self,
        aggregate_type: &'static str,
        keys: &[(String, String)],
    ) -> Result<Vec<KeyedEvent>, StoreError> {
        let pairs = json_pairs(keys.iter().map(|(id, k)| (id.as_str(), k.as_str())));
        let rows = sqlx::query(
            // CROSS JOIN fixes SQLite's join order: the key list outside, one probe of the
            // unique key index per key, even before ANALYZE has gathered statistics.
            "SELECT e.aggregate_id, e.idempotency_key, e.request_hash, e.sequence, e.payload
               FROM json_each(?2) k
               CROSS JOIN events e ON e.aggregate_type = ?1 AND e.aggregate_id = k.value ->> 0
                            AND e.idempotency_key = k.value ->> 1",
        )
        .bind(aggregate_type)
        .bind(&pairs)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(keyed_event)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    async fn append(
        &self,
        events: &[NewEvent],
        snapshots: &[NewSnapshot],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for chunk in events.chunks(SQLITE_INSERT_ROWS_MAX) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                     payload, metadata, idempotency_key, request_hash) ",
            );
            qb.push_values(chunk, |mut b, e| {
                b.push_bind(e.aggregate_type)
                    .push_bind(&e.aggregate_id)
                    .push_bind(e.sequence)
                    .push_bind(e.event_type)
                    .push_bind(e.event_version)
                    .push_bind(&e.payload)
                    .push_bind(&e.metadata)
                    .push_bind(&e.idempotency_key)
                    .push_bind(&e.request_hash);
            });
            qb.build()
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_write)?;
        }
        for s in snapshots {
            sqlx::query(
                "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
                 VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
                    SET last_sequence = excluded.last_sequence,
                        current_snapshot = snapshots.current_snapshot + 1,
                        payload = excluded.payload",
            )
            .bind(s.aggregate_type)
            .bind(&s.aggregate_id)
            .bind(s.last_sequence)
            .bind(&s.payload)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_write)?;
        }
        tx.commit().await.map_err(StoreError::from_write)?;
        self.commits.notify_one();
        Ok(())
    }

    async fn read_stream(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
        after_sequence: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        const SQL: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
               FROM events
              WHERE aggregate_type = ?1 AND aggregate_id = ?2
                AND sequence > ?3 ORDER BY sequence LIMIT ?4";
        self.stream_page(SQL, aggregate_type, aggregate_id, after_sequence, limit)
            .await
    }

    async fn read_stream_back(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
        before_sequence: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        const SQL: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
               FROM events
              WHERE aggregate_type = ?1 AND aggregate_id = ?2
                AND sequence < ?3 ORDER BY sequence DESC LIMIT ?4";
        self.stream_page(SQL, aggregate_type, aggregate_id, before_sequence, limit)
            .await
    }

    async fn stream_version(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
    ) -> Result<u64, StoreError> {
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(sequence), 0) FROM events
              WHERE aggregate_type = ?1 AND aggregate_id = ?2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(version as u64)
    }

    async fn stream_ids(&self, aggregate_type: &'static str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT aggregate_id FROM events
              WHERE aggregate_type = ?1 AND sequence = 1
              ORDER BY aggregate_id",
        )
        .bind(aggregate_type)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
