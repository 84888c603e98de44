//! The PostgreSQL [`EventLog`]: set-based appends (`UNNEST` arrays, one statement per
//! batch), loads and lookups of many streams in one round trip per table.

use async_trait::async_trait;
use ledger_projections::LogPosition;
use sqlx::Row;

use super::PostgresLog;
use crate::store::rows::{
    appended, group_streams, hold_rows, keyed_event, positions_of, snapshot_row, stored_event,
    stored_events,
};
use crate::store::{
    Appended, EventLog, KeyedEvent, LoadedStream, NewEvent, NewSnapshot, StoreError, StoredEvent,
};

/// The batch append: one statement, one row per array element. Public so the benchmark's
/// raw ceiling runs exactly this statement.
pub const INSERT_EVENTS: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload, metadata, idempotency_key, request_hash)
SELECT t, id, seq, et, ev, p::json, m::json, k, h
  FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
              $6::text[], $7::text[], $8::text[], $9::text[])
       AS u(t, id, seq, et, ev, p, m, k, h)
RETURNING aggregate_type, aggregate_id, sequence, position";

/// Events and snapshots in one statement: data-modifying CTEs commit or fail together.
const INSERT_EVENTS_AND_SNAPSHOTS: &str = "
WITH ins AS (
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload, metadata, idempotency_key, request_hash)
SELECT t, id, seq, et, ev, p::json, m::json, k, h
  FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
              $6::text[], $7::text[], $8::text[], $9::text[])
       AS u(t, id, seq, et, ev, p, m, k, h)
RETURNING aggregate_type, aggregate_id, sequence, position),
snap AS (
INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
SELECT st, sid, sseq, 1, sp::json
  FROM UNNEST($10::text[], $11::text[], $12::bigint[], $13::text[]) AS s(st, sid, sseq, sp)
ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
   SET last_sequence = EXCLUDED.last_sequence,
       current_snapshot = snapshots.current_snapshot + 1,
       payload = EXCLUDED.payload)
SELECT * FROM ins";

impl PostgresLog {
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
            .fetch_all(self.pool())
            .await?;
        stored_events(&rows)
    }
}

#[async_trait]
impl EventLog for PostgresLog {
    async fn load_streams(
        &self,
        keys: &[(&'static str, String)],
    ) -> Result<Vec<LoadedStream>, StoreError> {
        let types: Vec<&str> = keys.iter().map(|(t, _)| *t).collect();
        let ids: Vec<&str> = keys.iter().map(|(_, id)| id.as_str()).collect();
        let snaps = sqlx::query(
            "SELECT s.aggregate_type, s.aggregate_id, s.last_sequence, s.payload::text
               FROM snapshots s
               JOIN UNNEST($1::text[], $2::text[]) AS k(t, id)
                 ON s.aggregate_type = k.t AND s.aggregate_id = k.id",
        )
        .bind(&types)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(snapshot_row)
        .collect::<Result<Vec<_>, _>>()?;
        let events = sqlx::query(
            "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version,
                    e.payload::text, e.metadata::text
               FROM UNNEST($1::text[], $2::text[]) AS k(t, id)
               JOIN events e ON e.aggregate_type = k.t AND e.aggregate_id = k.id
               LEFT JOIN snapshots s ON s.aggregate_type = k.t AND s.aggregate_id = k.id
              WHERE e.sequence > COALESCE(s.last_sequence, 0)
              ORDER BY e.aggregate_type, e.aggregate_id, e.sequence",
        )
        .bind(&types)
        .bind(&ids)
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
            "SELECT k.id FROM UNNEST($2::text[]) AS k(id)
              WHERE EXISTS (SELECT 1 FROM events e
                             WHERE e.aggregate_type = $1 AND e.aggregate_id = k.id)",
        )
        .bind(aggregate_type)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn find_keyed(
        &self,
        aggregate_type: &'static str,
        keys: &[(String, String)],
    ) -> Result<Vec<KeyedEvent>, StoreError> {
        let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
        let ks: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
        let rows = sqlx::query(
            // One probe of the unique key index per key, whatever the table statistics:
            // a plain join lets the planner scan the stream (or every stream) per batch
            // on a table autovacuum has not analyzed yet. Not a prepared statement (see
            // below), so each batch is planned for the table as it is now.
            "SELECT e.aggregate_id, e.idempotency_key, e.request_hash, e.sequence, e.payload::text
               FROM UNNEST($2::text[], $3::text[]) AS k(id, key)
               CROSS JOIN LATERAL (
                     SELECT aggregate_id, idempotency_key, request_hash, sequence, payload
                       FROM events
                      WHERE aggregate_type = $1 AND aggregate_id = k.id
                        AND idempotency_key = k.key AND idempotency_key IS NOT NULL
                      LIMIT 1) e",
        )
        .bind(aggregate_type)
        .bind(&ids)
        .bind(&ks)
        // A prepared statement's generic plan, once chosen while the table was tiny,
        // is kept as it grows; there the stream's primary key ties with the key index,
        // and a hot stream then scans all its events for every key (50 ms per batch at
        // 100,000 events, measured). Planning afresh costs a fraction of a millisecond.
        .persistent(false)
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
        let col = |f: fn(&NewEvent) -> &str| events.iter().map(f).collect::<Vec<&str>>();
        let opt =
            |f: fn(&NewEvent) -> Option<&str>| events.iter().map(f).collect::<Vec<Option<&str>>>();
        let seqs: Vec<i64> = events.iter().map(|e| e.sequence).collect();
        let sql = if snapshots.is_empty() {
            INSERT_EVENTS
        } else {
            INSERT_EVENTS_AND_SNAPSHOTS
        };
        let mut q = sqlx::query_as::<_, (String, String, i64, i64)>(sql)
            .bind(col(|e| e.aggregate_type))
            .bind(col(|e| &e.aggregate_id))
            .bind(seqs)
            .bind(col(|e| e.event_type))
            .bind(col(|e| e.event_version))
            .bind(col(|e| &e.payload))
            .bind(col(|e| &e.metadata))
            .bind(opt(|e| e.idempotency_key.as_deref()))
            .bind(opt(|e| e.request_hash.as_deref()));
        if !snapshots.is_empty() {
            q = q
                .bind(
                    snapshots
                        .iter()
                        .map(|s| s.aggregate_type)
                        .collect::<Vec<_>>(),
                )
                .bind(
                    snapshots
                        .iter()
                        .map(|s| s.aggregate_id.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    snapshots
                        .iter()
                        .map(|s| s.last_sequence)
                        .collect::<Vec<_>>(),
                )
                .bind(
                    snapshots
                        .iter()
                        .map(|s| s.payload.as_str())
                        .collect::<Vec<_>>(),
                );
        }
        // A single statement outside an explicit transaction is atomic and saves the
        // BEGIN/COMMIT round trips: the commit happens when the statement returns.
        let mut conn = self.appender().await?;
        let done = q.fetch_all(&mut conn).await.map_err(StoreError::from_write);
        // A conflict (a unique violation) leaves the connection as good as a success does.
        // Any other failure may come from the connection itself (closed by the server, an
        // I/O error mid-exchange): it is dropped, and the next append takes a fresh one.
        if matches!(done, Ok(_) | Err(StoreError::Conflict(_))) {
            self.keep_appender(conn);
        }
        // Any failure but a conflict may still have committed, and the listener skips
        // this process's own notifications: the consumers look either way.
        if !matches!(done, Err(StoreError::Conflict(_))) {
            self.commits.notify();
        }
        let positions = positions_of(events, done?)?;
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
        const SQL: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload::text, metadata::text
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2
                AND sequence > $3 ORDER BY sequence LIMIT $4";
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
        const SQL: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload::text, metadata::text
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2
                AND sequence < $3 ORDER BY sequence DESC LIMIT $4";
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
              WHERE aggregate_type = $1 AND aggregate_id = $2",
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
        // One index probe per key, the keys' order kept by their ordinal. On a kept
        // connection, as appends are: pure checks wait for this query.
        let mut conn = self.appender().await?;
        let rows: Result<Vec<(i64,)>, sqlx::Error> = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(e.sequence), 0) FROM events e
                      WHERE e.aggregate_type = k.t AND e.aggregate_id = k.id)
               FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS k(t, id, n)
              ORDER BY k.n",
        )
        .bind(keys.iter().map(|(t, _)| *t).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut conn)
        .await;
        if rows.is_ok() {
            self.keep_appender(conn);
        }
        Ok(rows?.into_iter().map(|(v,)| v as u64).collect())
    }

    async fn appended_after(
        &self,
        after: LogPosition,
        limit: i64,
    ) -> Result<Vec<Appended>, StoreError> {
        // In the index's order, on a log-read connection (sorting off): the generic
        // plan of the prepared statement otherwise scans the whole log.
        let mut conn = self.log_reader().await?;
        let rows: Result<Vec<(String, String, i64)>, sqlx::Error> = sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence FROM events
              WHERE (transaction_id, position) > ($1::text::xid8, $2)
              ORDER BY transaction_id, position
              LIMIT $3",
        )
        .bind(after.transaction.to_string())
        .bind(after.position)
        .bind(limit)
        .fetch_all(&mut conn)
        .await;
        if rows.is_ok() {
            self.keep_log_reader(conn);
        }
        Ok(appended(rows?))
    }

    async fn stream_ids(&self, aggregate_type: &'static str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT aggregate_id FROM events
              WHERE aggregate_type = $1 AND sequence = 1
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
        let rows = sqlx::query(
            "SELECT aggregate_id, payload::text FROM events
              WHERE event_type = 'QuotaReserved'
                AND recorded_at >= now() - make_interval(secs => $1)
              ORDER BY recorded_at DESC
              LIMIT $2",
        )
        .bind(window.as_secs_f64())
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
