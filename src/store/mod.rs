//! The event log: one trait, two real implementations (PostgreSQL for production,
//! SQLite embedded by default). Rows are stored in the cqrs-es column layout; payloads
//! travel as JSON text so the store never needs to know the event types.

pub mod api_keys;
pub mod postgres;
pub mod projection;
pub mod sqlite;

use async_trait::async_trait;

pub use api_keys::{ApiKeyInfo, ApiKeyStore};
pub use postgres::PostgresLog;
pub use projection::{ModelRow, ProjectionStore, READ_MODELS_PROJECTOR};
pub use sqlite::SqliteLog;

/// One event to append. `payload` and `metadata` are JSON text.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: &'static str,
    pub event_version: &'static str,
    pub payload: String,
    pub metadata: String,
    /// Only on the first event of a command that carried a key.
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
}

/// A snapshot to upsert in the same commit as the events it covers.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub last_sequence: i64,
    pub payload: String,
}

/// A stored event as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: String,
    pub metadata: String,
}

/// A stream as needed to rebuild its aggregate: the newest snapshot, if any, and the
/// events after it, in sequence order.
#[derive(Debug, Clone, Default)]
pub struct LoadedStream {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub snapshot: Option<(i64, String)>,
    pub events: Vec<StoredEvent>,
}

/// The first event of a command whose idempotency key was already recorded.
#[derive(Debug, Clone)]
pub struct KeyedEvent {
    pub aggregate_id: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub sequence: i64,
    pub payload: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to one of the streams first (sequence taken) or recorded
    /// the same idempotency key: reload and decide again.
    #[error("append conflict: {0}")]
    Conflict(String),
    #[error("event store unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error("corrupt event log: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Unique violations mean "someone else wrote first", everything else is a failure.
    pub(crate) fn from_write(e: sqlx::Error) -> Self {
        match e.as_database_error() {
            Some(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_owned()),
            _ => StoreError::Unavailable(e),
        }
    }
}

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Load streams (snapshot + later events) for `(aggregate_type, aggregate_id)` keys.
    /// Streams with no rows come back empty. One round trip per table, whatever the count.
    async fn load_streams(
        &self,
        keys: &[(&'static str, String)],
    ) -> Result<Vec<LoadedStream>, StoreError>;

    /// Which of these streams have at least one event. Exact-key lookups on the primary
    /// key, so the answer does not depend on the database's text collation.
    async fn existing_streams(
        &self,
        aggregate_type: &'static str,
        ids: &[String],
    ) -> Result<Vec<String>, StoreError>;

    /// Events already recorded under these `(aggregate_id, key)` pairs.
    async fn find_keyed(
        &self,
        aggregate_type: &'static str,
        keys: &[(String, String)],
    ) -> Result<Vec<KeyedEvent>, StoreError>;

    /// Append events and upsert snapshots atomically. A sequence or key already taken
    /// fails the whole append with [`StoreError::Conflict`] and writes nothing.
    async fn append(
        &self,
        events: &[NewEvent],
        snapshots: &[NewSnapshot],
    ) -> Result<(), StoreError>;

    /// Every event of one stream after `after_sequence`, at most `limit`.
    async fn read_stream(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
        after_sequence: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Events of one stream before `before_sequence`, newest first, at most `limit`:
    /// the history pages of dashboards.
    async fn read_stream_back(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
        before_sequence: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The highest sequence of a stream (0 when it has none): one primary-key probe.
    async fn stream_version(
        &self,
        aggregate_type: &'static str,
        aggregate_id: &str,
    ) -> Result<u64, StoreError>;

    /// The highest sequence of each of these streams (0 for one without events), in
    /// the order asked. Backends answer in one round trip; this default asks one by one.
    async fn stream_versions(
        &self,
        keys: &[(&'static str, String)],
    ) -> Result<Vec<u64>, StoreError> {
        let mut versions = Vec::with_capacity(keys.len());
        for (t, id) in keys {
            versions.push(self.stream_version(t, id).await?);
        }
        Ok(versions)
    }

    /// The id of every stream of a type (every registered brand, say), in id order.
    async fn stream_ids(&self, aggregate_type: &'static str) -> Result<Vec<String>, StoreError>;

    /// Cheap reachability probe for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Decode a row of `aggregate_type, aggregate_id, sequence, event_type, event_version,
/// payload, metadata` (payload and metadata as text), on either database.
pub(crate) fn stored_event<R: sqlx::Row>(row: &R) -> Result<StoredEvent, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StoredEvent {
        aggregate_type: row.try_get(0)?,
        aggregate_id: row.try_get(1)?,
        sequence: row.try_get(2)?,
        event_type: row.try_get(3)?,
        event_version: row.try_get(4)?,
        payload: row.try_get(5)?,
        metadata: row.try_get(6)?,
    })
}

/// Decode a row of `aggregate_id, idempotency_key, request_hash, sequence, payload`.
pub(crate) fn keyed_event<R: sqlx::Row>(row: &R) -> Result<KeyedEvent, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(KeyedEvent {
        aggregate_id: row.try_get(0)?,
        idempotency_key: row.try_get(1)?,
        request_hash: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
        sequence: row.try_get(3)?,
        payload: row.try_get(4)?,
    })
}

/// Group flat rows (ordered by stream then sequence) into per-stream loads.
pub(crate) fn group_streams(
    keys: &[(&'static str, String)],
    snapshots: Vec<(String, String, i64, String)>,
    events: Vec<StoredEvent>,
) -> Vec<LoadedStream> {
    use std::collections::HashMap;
    let mut by_key: HashMap<(String, String), LoadedStream> = keys
        .iter()
        .map(|(t, id)| {
            let s = LoadedStream {
                aggregate_type: (*t).to_owned(),
                aggregate_id: id.clone(),
                ..Default::default()
            };
            (((*t).to_owned(), id.clone()), s)
        })
        .collect();
    for (t, id, seq, payload) in snapshots {
        if let Some(s) = by_key.get_mut(&(t, id)) {
            s.snapshot = Some((seq, payload));
        }
    }
    for e in events {
        if let Some(s) = by_key.get_mut(&(e.aggregate_type.clone(), e.aggregate_id.clone())) {
            let after = s.snapshot.as_ref().map_or(0, |(seq, _)| *seq);
            if e.sequence > after {
                s.events.push(e);
            }
        }
    }
    by_key.into_values().collect()
}
