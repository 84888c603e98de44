//! The SQLite [`EventLog`]: multi-row inserts in one transaction; the keys of a load or a
//! lookup travel as one JSON array parameter.

use async_trait::async_trait;
use ledger_projections::LogPosition;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::SqliteLog;
use crate::store::rows::{
    appended, group_streams, hold_rows, keyed_event, positions_of, snapshot_row, stored_event,
    stored_events,
};
use crate::store::{
    Appended, EventLog, KeyedEvent, LoadedStream, NewEvent, NewSnapshot, StoreError, StoredEvent,
};

/// Rows per INSERT statement: 9 parameters a row stays far below SQLite's 32,766
/// parameter limit, and larger statements stop paying off.
pub const SQLITE_INSERT_ROWS_MAX: usize = 500;

impl SqliteLog {
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
        stored_events(&rows)
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
        .map(snapshot_row)
        .collect::<Result<Vec<_>, _>>()?;
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
        Ok(rows.iter().map(keyed_event).collect::<Result<_, _>>()?)
    }

    async fn append(
        &self,
        events: &[NewEvent],
        snapshots: &[NewSnapshot],
    ) -> Result<Vec<i64>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut returned = Vec::with_capacity(events.len());
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
            qb.push(" RETURNING aggregate_type, aggregate_id, sequence, position");
            returned.extend(
                qb.build_query_as::<(String, String, i64, i64)>()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(StoreError::from_write)?,
            );
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
        let positions = positions_of(events, returned)?;
        tx.commit().await.map_err(StoreError::from_write)?;
        self.commits.notify();
        self.appended(events.len());
        Ok(positions)
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

    async fn stream_versions(
        &self,
        keys: &[(&'static str, String)],
    ) -> Result<Vec<u64>, StoreError> {
        // One index probe per key, the keys' order kept by their place in the array.
        let pairs = json_pairs(keys.iter().map(|(t, id)| (*t, id.as_str())));
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(e.sequence), 0) FROM events e
                      WHERE e.aggregate_type = k.value ->> 0 AND e.aggregate_id = k.value ->> 1)
               FROM json_each(?1) k
              ORDER BY k.key",
        )
        .bind(pairs)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(v,)| v as u64).collect())
    }

    async fn appended_after(
        &self,
        after: LogPosition,
        limit: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        // One writer at a time: positions are in commit order, and none is ever late.
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence FROM events
              WHERE position > ?1 LIMIT ?2",
        )
        .bind(after.position)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(appended(rows))
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

    async fn recent_holds(
        &self,
        window: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // `recorded_at` is ISO 8601 text in UTC, so text order is time order.
        let rows = sqlx::query(
            "SELECT aggregate_id, payload FROM events
              WHERE event_type = 'QuotaReserved'
                AND recorded_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)
              ORDER BY recorded_at DESC
              LIMIT ?2",
        )
        .bind(format!("-{} seconds", window.as_secs()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        hold_rows(&rows)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
