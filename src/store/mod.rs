//! The stores: the event log, the read models with their checkpoint, and the API key
//! rows, each behind one trait with two real implementations (PostgreSQL for production,
//! SQLite embedded by default). Rows are stored in the cqrs-es column layout; payloads
//! travel as JSON text so the store never needs to know the event types.
//!
//! # Layout
//! - this file: the traits ([`EventLog`], [`ProjectionStore`], [`ApiKeyStore`]), the values
//!   they exchange, [`StoreError`] and the constants both backends share.
//! - [`rows`]: how both backends decode a row into those values, group a stream's rows and
//!   fill in a new key's id and time.
//! - [`postgres`]: [`PostgresLog`]: connection, pool and migrations, then one file per trait.
//! - [`sqlite`]: [`SqliteLog`]: the same for the embedded file.
//! - [`stats`]: when a backend refreshes its tables' statistics (`ANALYZE`) by itself.
//!
//! One folder per backend, because a backend's statements, its connections and its SQL
//! dialect change together. What both must agree on is written once, here and in
//! [`rows`], which stays apart from this file so that this file reads as the contract.
//! The rules of API keys (the secret, its hash, how many a brand may hold) belong to
//! [`crate::auth::api_keys`]: the store persists and queries hashed rows only.

pub mod postgres;
pub(crate) mod rows;
pub mod sqlite;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_aggregates::BrandId;
use ledger_projections::{LogPosition, LogRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

pub use postgres::PostgresLog;
pub use sqlite::SqliteLog;

// --- The event log ----------------------------------------------------------------------

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

/// One event's stream and sequence, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
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

    /// Append events and upsert snapshots atomically, and answer each event's global log
    /// position, in the order of `events`: the read models fold this process's commits
    /// at once, and some of them keep where a fact sits in the log. A sequence or key
    /// already taken fails the whole append with [`StoreError::Conflict`] and writes
    /// nothing.
    async fn append(
        &self,
        events: &[NewEvent],
        snapshots: &[NewSnapshot],
    ) -> Result<Vec<i64>, StoreError>;

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
    /// the order asked, in one round trip.
    async fn stream_versions(
        &self,
        keys: &[(&'static str, String)],
    ) -> Result<Vec<u64>, StoreError>;

    /// The stream and sequence of the events committed after `after` in the log's global
    /// order (see [`ProjectionStore::read_log`]), those of transactions that committed
    /// past one still open included, at most `limit`, in no order: what a read must
    /// still compare with the engine's cache when everything up to `after` was told to
    /// it (see [`crate::engine::Freshness`]).
    async fn appended_after(
        &self,
        after: LogPosition,
        limit: i64,
    ) -> Result<Vec<Appended>, StoreError>;

    /// The id of every stream of a type (every registered brand, say), in id order.
    async fn stream_ids(&self, aggregate_type: &'static str) -> Result<Vec<String>, StoreError>;

    /// The stream and payload of each `QuotaReserved` written within the last
    /// `window` of the store's own clock, newest first, at most `limit`: where holds
    /// may still be open after a restart (none lives longer than its time to live).
    async fn recent_holds(
        &self,
        window: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// Cheap reachability probe for readiness checks.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// This process's commits, heard by every consumer that watches them: each watcher has
/// a `Notify` of its own (which keeps a permit while its consumer is busy), so one commit
/// wakes every consumer rather than whichever happened to wait first.
#[derive(Debug, Default)]
pub struct CommitSignal {
    watchers: std::sync::Mutex<Vec<std::sync::Weak<Notify>>>,
}

impl CommitSignal {
    /// A new watcher, woken by every later commit.
    pub fn watch(&self) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        let mut watchers = self.watchers.lock().expect("watchers lock");
        watchers.retain(|w| w.strong_count() > 0);
        watchers.push(Arc::downgrade(&notify));
        notify
    }

    /// Wake every watcher.
    pub fn notify(&self) {
        let watchers = self.watchers.lock().expect("watchers lock");
        for notify in watchers.iter().filter_map(std::sync::Weak::upgrade) {
            notify.notify_one();
        }
    }
}

/// Reads of the log that several of this process's consumers ask for at once, made
/// once. A read joins another only while that one has not started: what it answers was
/// then read after the join, so it holds every event committed before, as a read of its
/// own would. The consumers a commit wakes ask for the same position in the same
/// moment; the first waits one turn of the scheduler for the others before it reads.
#[derive(Debug, Default)]
pub struct SharedReads {
    /// Reads not yet started, by position and limit.
    pending: std::sync::Mutex<HashMap<(LogPosition, i64), SharedRead>>,
    /// Reads answered to a consumer that joined another's.
    joined: std::sync::atomic::AtomicU64,
}

/// What a read answers those that joined it: `None` while it runs; a failed read
/// answers nothing, and each of them reads on its own.
type SharedRead = tokio::sync::watch::Receiver<Option<Arc<Vec<LogRecord>>>>;

impl SharedReads {
    /// Reads answered to a consumer that joined another's, since start.
    pub fn joined(&self) -> u64 {
        self.joined.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// [`ProjectionStore::read_log`] after `after`, made once for every consumer of this
/// process that asks for the same at the same moment (see [`SharedReads`]).
pub async fn read_log_shared(
    store: &dyn ProjectionStore,
    after: LogPosition,
    limit: i64,
) -> Result<Arc<Vec<LogRecord>>, StoreError> {
    let reads = store.shared_reads();
    let key = (after, limit);
    enum Part {
        Join(SharedRead),
        Lead(tokio::sync::watch::Sender<Option<Arc<Vec<LogRecord>>>>),
    }
    let part = {
        let mut pending = reads.pending.lock().expect("pending reads lock");
        match pending.get(&key) {
            Some(read) => Part::Join(read.clone()),
            None => {
                let (answer, read) = tokio::sync::watch::channel(None);
                pending.insert(key, read);
                Part::Lead(answer)
            }
        }
    };
    let mut read = match part {
        Part::Join(read) => read,
        Part::Lead(answer) => return lead(store, reads, key, answer).await,
    };
    if let Ok(records) = read.wait_for(Option::is_some).await {
        if let Some(records) = records.as_ref() {
            reads
                .joined
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(records.clone());
        }
    }
    // The read failed, or its caller went away: read alone.
    Ok(Arc::new(store.read_log(after, None, limit).await?))
}

/// Let the consumers woken with this one join, then read for all of them.
async fn lead(
    store: &dyn ProjectionStore,
    reads: &SharedReads,
    key: (LogPosition, i64),
    answer: tokio::sync::watch::Sender<Option<Arc<Vec<LogRecord>>>>,
) -> Result<Arc<Vec<LogRecord>>, StoreError> {
    /// Takes the read off the list of those one may join, also if its caller goes away.
    struct Unlist<'a> {
        reads: &'a SharedReads,
        key: (LogPosition, i64),
        read: SharedRead,
    }
    impl Drop for Unlist<'_> {
        fn drop(&mut self) {
            let mut pending = self.reads.pending.lock().expect("pending reads lock");
            if pending
                .get(&self.key)
                .is_some_and(|r| r.same_channel(&self.read))
            {
                pending.remove(&self.key);
            }
        }
    }
    let unlist = Unlist {
        reads,
        key,
        read: answer.subscribe(),
    };
    tokio::task::yield_now().await;
    // From here on, a consumer that asks reads after this read began: not for it.
    drop(unlist);
    let records = Arc::new(store.read_log(key.0, None, key.1).await?);
    answer.send_replace(Some(records.clone()));
    Ok(records)
}

// --- The read models and their checkpoint -----------------------------------------------
//
// What the projector and the replay need from a store: the log in global commit order,
// the read-model rows and the projector's checkpoint (migration 0003). A batch's rows and
// the checkpoint that covers them are written in one transaction, and the checkpoint
// moves only from the value the projector read (compare and set): two projectors on one
// database never both commit the same batch, and a crash between a batch and its
// checkpoint leaves both as they were.

/// The checkpoint of the service's projector (inserted by migration 0003).
pub const READ_MODELS_PROJECTOR: &str = "read_models";

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

    /// The last event [`ProjectionStore::read_log`] can read now ([`LogPosition::START`]
    /// for an empty log): where a consumer that starts live begins.
    async fn log_end(&self) -> Result<LogPosition, StoreError>;

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

    /// The reads of the log this process's consumers share ([`read_log_shared`]).
    fn shared_reads(&self) -> &SharedReads;
}

// --- API keys ---------------------------------------------------------------------------
//
// Table `api_keys`, migration 0002. Only the hash of a key's secret reaches the store;
// making keys, hashing them and the per-brand limit are in `crate::auth::api_keys`.

/// Rows returned by a listing, revoked keys included; the oldest are cut beyond it.
pub const API_KEYS_LISTED_MAX: i64 = 1_000;

/// What may be shown about a key: never the key, never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub brand_id: BrandId,
    pub label: String,
    pub created_at: DateTime<Utc>,
    /// Subject of the admin who created it.
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key row to insert. The store gives it its id and creation time.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub brand_id: BrandId,
    /// Already checked by `crate::auth::api_keys::KeyLabel`.
    pub label: String,
    /// Hex SHA-256 of the whole key: the only trace of the secret that is kept.
    pub secret_sha256: String,
    /// Subject of the admin who creates it.
    pub created_by: String,
}

#[async_trait]
pub trait ApiKeyStore: Send + Sync + 'static {
    /// Insert `key` unless its brand already has `active_max` active keys, as one atomic
    /// step: concurrent inserts for one brand never pass the limit together. `None` (and
    /// nothing written) when the brand has no room left.
    async fn insert_within_limit(
        &self,
        key: &NewApiKey,
        active_max: i64,
    ) -> Result<Option<ApiKeyInfo>, StoreError>;

    /// The brand's keys, revoked ones included, newest first (at most [`API_KEYS_LISTED_MAX`]).
    async fn list(&self, brand: &BrandId) -> Result<Vec<ApiKeyInfo>, StoreError>;

    /// Revoke one of `brand`'s keys. `true` if it existed and was active until now; a key
    /// of another brand is answered like an unknown one.
    async fn revoke(&self, brand: &BrandId, id: Uuid) -> Result<bool, StoreError>;

    /// The active key whose secret hashes to `secret_sha256`.
    async fn find_active_by_hash(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<ApiKeyInfo>, StoreError>;

    /// A signal notified when any process revokes a key, where the store can tell
    /// (PostgreSQL's NOTIFY); `None` where it cannot, and caches then age out instead.
    async fn watch_revocations(&self) -> Result<Option<Arc<tokio::sync::Notify>>, StoreError> {
        Ok(None)
    }
}

/// Rebuild an aggregate from its snapshot and later events.
pub fn rebuild<A: cqrs_es::Aggregate>(stream: &LoadedStream) -> Result<A, StoreError> {
    let corrupt = |what: &str, e: serde_json::Error| {
        StoreError::Corrupt(format!(
            "{} {}: {what}: {e}",
            stream.aggregate_type, stream.aggregate_id
        ))
    };
    let mut agg: A = match &stream.snapshot {
        Some((_, payload)) => serde_json::from_str(payload).map_err(|e| corrupt("snapshot", e))?,
        None => A::default(),
    };
    for e in &stream.events {
        let event: A::Event = serde_json::from_str(&e.payload)
            .map_err(|err| corrupt(&format!("event #{}", e.sequence), err))?;
        agg.apply(event);
    }
    Ok(agg)
}

/// The registries of `brands` as committed, read from the log (not through the engine's
/// queue: a consumer reading them must not wait behind the writes it follows).
pub async fn load_registries(
    log: &dyn EventLog,
    brands: &[BrandId],
) -> Result<Vec<(BrandId, ledger_aggregates::BrandAggregate)>, StoreError> {
    use cqrs_es::Aggregate;
    if brands.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<(&'static str, String)> = brands
        .iter()
        .map(|b| (ledger_aggregates::BrandAggregate::TYPE, b.to_string()))
        .collect();
    let mut out = Vec::with_capacity(brands.len());
    for stream in log.load_streams(&keys).await? {
        let brand = BrandId::parse(&stream.aggregate_id)
            .map_err(|e| StoreError::Corrupt(format!("registry {}: {e}", stream.aggregate_id)))?;
        out.push((brand, rebuild(&stream)?));
    }
    Ok(out)
}

// --- The outbox of notices --------------------------------------------------------------
//
// Tables `deliveries`, `delivery_attempts` and `webhook_secrets`, migration 0005. The
// notices consumer enqueues deliveries with its checkpoint in one transaction; the
// dispatcher claims due ones for a lease, attempts them and records each attempt.

/// The checkpoint of the consumer that turns events into notices (migration 0005).
pub const NOTICES_CONSUMER: &str = "notices";

/// Where a delivery stands.
pub const DELIVERY_PENDING: &str = "pending";
pub const DELIVERY_DELIVERED: &str = "delivered";
pub const DELIVERY_DEAD: &str = "dead";

/// A delivery to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub id: String,
    pub notice_id: String,
    pub brand_id: String,
    pub endpoint: String,
    pub kind: String,
    /// The notice as JSON text.
    pub notice: String,
    pub next_attempt_at: DateTime<Utc>,
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRow {
    pub id: String,
    pub notice_id: String,
    pub brand_id: String,
    pub endpoint: String,
    pub kind: String,
    pub notice: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRow {
    pub number: i64,
    pub at: DateTime<Utc>,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// An endpoint's key in a claim's exclusion list: brand and endpoint ids never hold
/// the unit separator.
pub fn endpoint_key(brand_id: &str, endpoint: &str) -> String {
    format!("{brand_id}\u{1f}{endpoint}")
}

/// What an attempt leaves a delivery in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    Delivered,
    /// Tried again at this time.
    RetryAt(DateTime<Utc>),
    Dead,
}

#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Insert `deliveries` (an id already present is left as it is) and move consumer
    /// `name` from `from` to `to`, in one transaction. `false` (nothing written) when
    /// the checkpoint is no longer `from`.
    async fn enqueue(
        &self,
        name: &str,
        from: LogPosition,
        to: LogPosition,
        deliveries: &[NewDelivery],
    ) -> Result<bool, StoreError>;

    /// Pending deliveries due at `now`, oldest first, at most `limit`, none of the
    /// `busy` endpoints (`brand_id`, `endpoint`), each pushed to `lease_until` so no
    /// other dispatcher takes it meanwhile; a dispatcher that dies with it leaves it due
    /// again when the lease ends.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
        busy: &[(String, String)],
    ) -> Result<Vec<DeliveryRow>, StoreError>;

    /// Record attempt `attempt` of delivery `id` and what it leaves the delivery in.
    async fn record_attempt(
        &self,
        id: &str,
        attempt: &AttemptRow,
        after: AfterAttempt,
    ) -> Result<(), StoreError>;

    /// Deliveries, newest first, with their attempts, at most `limit`.
    async fn deliveries(
        &self,
        brand_id: Option<&str>,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(DeliveryRow, Vec<AttemptRow>)>, StoreError>;

    /// Give a claimed delivery back without an attempt, due at `at`: its endpoint had
    /// as many attempts in flight as it may.
    async fn release(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Put a dead delivery back to pending, due at `now`. `false`: no dead delivery `id`.
    async fn revive(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// The secrets of these brands' webhook endpoints: (brand, endpoint, secrets).
    async fn webhook_secrets(
        &self,
        brand_ids: &[String],
    ) -> Result<Vec<(String, String, Vec<String>)>, StoreError>;

    /// Replace every webhook secret of a brand by `secrets` (endpoint, secrets).
    async fn set_webhook_secrets(
        &self,
        brand_id: &str,
        secrets: &[(String, Vec<String>)],
    ) -> Result<(), StoreError>;
}
