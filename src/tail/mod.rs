//! Following the log: one loop per consumer, in commit order, from where the consumer
//! stands, with its status (position, events, lag, last error).
//!
//! The loop reads the log in global order after the consumer's position (never past a
//! transaction that may still commit, see [`ProjectionStore::read_log`]; one read for
//! the consumers a commit wakes together, see [`crate::store::SharedReads`]), hands each
//! batch to the [`Consumer`], and moves on to where the consumer says it stands. It
//! wakes on this process's commits at once, on every process's commits on PostgreSQL
//! (LISTEN/NOTIFY), and polls as a safety net; a failed pass is retried after a pause.
//! What a consumer keeps, and its checkpoint, are its own: the read models write theirs
//! with their rows in one transaction; an effectful consumer would write it with its
//! outbox.
//!
//! Readers that must see what was committed before them ([`Tail::catch_up`]) ask for a
//! pass that starts after their request and wait for it, bounded.
//!
//! # Layout
//! - this file: the [`Consumer`] trait, the loop and its [`Tail`] handle.
//! - [`projector`]: the read models' consumer, serving them from a bounded memory.
//! - [`caches`]: the engine's caches' consumer, telling the writers what the log holds.
//! - [`notices`]: the notices consumer, filling the outbox of deliveries.
//! - [`live`]: the live feed's consumer, handing committed summaries to the hub.
//! - [`rows`]: read-model rows as stored, to and from `PeriodModels`.
//! - [`watermark`]: what this process acknowledged per stream, so reads wait only for that.

pub mod caches;
pub mod live;
pub mod notices;
pub mod projector;
pub mod rows;
pub mod watermark;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use hdrhistogram::Histogram;
use ledger_projections::{LogPosition, LogRecord};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::store::{read_log_shared, ProjectionStore, StoreError};
pub use rows::RowError;

/// Events read and handed to a consumer per batch: large enough to amortize a commit,
/// small enough that a batch stays in the milliseconds.
pub const TAIL_BATCH_EVENTS_MAX: i64 = 2_000;
/// Passes without a wake-up: other processes' commits on SQLite, lost notifications.
pub const TAIL_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Pause after a failed pass (store down, an undecodable event) before the next try.
pub const TAIL_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Lag samples are kept in milliseconds up to this; above it they count as this.
const LAG_MS_TRACKED_MAX: u64 = 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("undecodable event: {0}")]
    Decode(#[from] ledger_projections::DecodeError),
    #[error(transparent)]
    Row(#[from] RowError),
    /// A consumer that asks the engine (the notices', for a brand's settings) met its
    /// failure: the store down, the engine overloaded.
    #[error("the engine could not answer: {0}")]
    Engine(String),
    /// The log was read with a hole: sequences `expected..got` of a stream were never
    /// delivered. Never committed: what a consumer keeps stays a replay of the log.
    #[error("stream {stream}: expected sequence {expected}, read {got}")]
    Gap {
        stream: String,
        expected: u64,
        got: u64,
    },
}

/// Something that follows the log. The loop calls it from one task, in log order.
#[async_trait]
pub trait Consumer: Send + 'static {
    /// The consumer's name in logs and status.
    fn name(&self) -> &'static str;

    /// Where to start: the checkpoint this consumer persisted.
    async fn start(&mut self) -> Result<LogPosition, TailError>;

    /// Take `records`, the log right after `from` in global order. Answers where the
    /// consumer now stands: the last record, or further if it learnt that a rival had
    /// already gone further.
    async fn apply(
        &mut self,
        from: LogPosition,
        records: &[LogRecord],
    ) -> Result<LogPosition, TailError>;

    /// The log holds nothing more for now: a moment to persist what waits. `persist`
    /// is set when a reader asked for everything to be persisted now.
    async fn caught_up(&mut self, persist: bool) -> Result<(), TailError>;

    /// The loop is stopping: persist what waits.
    async fn stop(&mut self) -> Result<(), TailError>;
}

/// What a consumer's loop reports about itself.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TailStatus {
    /// The last event taken in, `transaction/position` in the log's global order.
    #[schema(value_type = String, example = "1523/4")]
    #[serde(serialize_with = "display")]
    pub checkpoint: LogPosition,
    /// Events taken in since start.
    pub events_projected: u64,
    /// Commit-to-consumer lag of the events taken since start, in milliseconds: from
    /// the event's `recorded_at` (its transaction's start, by the database clock) to
    /// the moment the consumer had taken it in.
    pub lag_ms: LagSummary,
    /// The last pass's failure, cleared by the next successful pass.
    pub last_error: Option<String>,
}

fn display<S: serde::Serializer>(v: &LogPosition, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct LagSummary {
    pub samples: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

struct Shared {
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    name: &'static str,
    wake: Arc<Notify>,
    /// Passes asked for by readers; a pass serves every request made before it began.
    requested: AtomicU64,
    /// Set with a request that wants everything persisted at the end of its pass.
    persist: AtomicBool,
    /// The highest request a finished pass served.
    served: watch::Sender<u64>,
    /// Set to stop the loop after its current pass.
    stopping: watch::Sender<bool>,
    position: Mutex<LogPosition>,
    events: AtomicU64,
    lag: Mutex<Histogram<u64>>,
    last_error: Mutex<Option<String>>,
}

/// A running consumer loop; cheap to clone.
#[derive(Clone)]
pub struct Tail {
    shared: Arc<Shared>,
}

impl Tail {
    /// Start following `store`'s log with `consumer`, from where it says it stands.
    pub async fn start<C: Consumer>(
        store: Arc<dyn ProjectionStore>,
        mut consumer: C,
    ) -> Result<Self, TailError> {
        let wake = store.watch_commits().await?;
        let position = consumer.start().await?;
        let shared = Arc::new(Shared {
            task: Mutex::new(None),
            name: consumer.name(),
            wake,
            requested: AtomicU64::new(0),
            persist: AtomicBool::new(false),
            served: watch::Sender::new(0),
            stopping: watch::Sender::new(false),
            position: Mutex::new(position),
            events: AtomicU64::new(0),
            lag: Mutex::new(
                Histogram::new_with_max(LAG_MS_TRACKED_MAX, 3).expect("valid histogram bounds"),
            ),
            last_error: Mutex::new(None),
        });
        let task = tokio::spawn(run(Arc::clone(&shared), store, consumer));
        *shared.task.lock().expect("task lock") = Some(task);
        Ok(Self { shared })
    }

    /// Wait (at most `wait`) until the consumer has taken in every event committed
    /// before this call. `false` when the wait ran out.
    pub async fn catch_up(&self, wait: Duration) -> bool {
        self.request(wait, false).await
    }

    /// [`Tail::catch_up`], then have the consumer persist everything it holds.
    pub async fn persist(&self, wait: Duration) -> bool {
        self.request(wait, true).await
    }

    async fn request(&self, wait: Duration, persist: bool) -> bool {
        if persist {
            self.shared.persist.store(true, Ordering::SeqCst);
        }
        let ticket = self.shared.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.wake.notify_one();
        let mut served = self.shared.served.subscribe();
        tokio::time::timeout(wait, served.wait_for(|s| *s >= ticket))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn status(&self) -> TailStatus {
        let s = &self.shared;
        let lag = s.lag.lock().expect("lag lock");
        TailStatus {
            checkpoint: *s.position.lock().expect("position lock"),
            events_projected: s.events.load(Ordering::Relaxed),
            lag_ms: LagSummary {
                samples: lag.len(),
                p50: lag.value_at_quantile(0.5),
                p99: lag.value_at_quantile(0.99),
                max: lag.max(),
            },
            last_error: s.last_error.lock().expect("error lock").clone(),
        }
    }

    /// Stop after the current pass, letting the consumer persist what waits.
    pub async fn stop(&self) {
        self.shared.stopping.send_replace(true);
        self.shared.wake.notify_one();
        let task = self.shared.task.lock().expect("task lock").take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(consumer = self.shared.name, error = %e, "consumer task failed");
            }
        }
    }

    /// Stop at once, wherever the current batch is (what it had not committed is
    /// rolled back). Readers waiting in [`Tail::catch_up`] time out.
    pub fn abort(&self) {
        if let Some(task) = self.shared.task.lock().expect("task lock").take() {
            task.abort();
        }
    }

    /// Forget the lag samples so far (a benchmark measures one phase).
    pub fn reset_lag(&self) {
        self.shared.lag.lock().expect("lag lock").reset();
    }
}

async fn run<C: Consumer>(s: Arc<Shared>, store: Arc<dyn ProjectionStore>, mut consumer: C) {
    let mut stopping = s.stopping.subscribe();
    loop {
        let serving = s.requested.load(Ordering::SeqCst);
        let persist = s.persist.swap(false, Ordering::SeqCst);
        let failed = match pass(&s, store.as_ref(), &mut consumer, persist).await {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(consumer = s.name, error = %e, "consumer pass failed");
                Some(e.to_string())
            }
        };
        let retry = failed.is_some();
        *s.last_error.lock().expect("error lock") = failed;
        // A failed pass serves its readers too: they answer from what the consumer
        // holds rather than wait for a store that is down.
        s.served.send_replace(serving);
        if *stopping.borrow() {
            if let Err(e) = consumer.stop().await {
                tracing::error!(consumer = s.name, error = %e, "consumer failed to stop cleanly");
            }
            return;
        }
        if retry {
            tokio::time::sleep(TAIL_RETRY_DELAY).await;
            continue;
        }
        if s.requested.load(Ordering::SeqCst) > serving {
            continue;
        }
        tokio::select! {
            _ = s.wake.notified() => {}
            _ = stopping.changed() => {}
            _ = tokio::time::sleep(TAIL_POLL_INTERVAL) => {}
        }
    }
}

/// Hand batches to the consumer until the log (as far as it is committed) is taken in.
async fn pass<C: Consumer>(
    s: &Shared,
    store: &dyn ProjectionStore,
    consumer: &mut C,
    persist: bool,
) -> Result<(), TailError> {
    loop {
        let from = *s.position.lock().expect("position lock");
        let records = read_log_shared(store, from, TAIL_BATCH_EVENTS_MAX).await?;
        if records.is_empty() {
            return consumer.caught_up(persist).await;
        }
        let to = consumer.apply(from, &records).await?;
        *s.position.lock().expect("position lock") = to;
        s.events.fetch_add(records.len() as u64, Ordering::Relaxed);
        record_lag(s, &records);
        if (records.len() as i64) < TAIL_BATCH_EVENTS_MAX {
            return consumer.caught_up(persist).await;
        }
    }
}

fn record_lag(s: &Shared, records: &[LogRecord]) {
    let now = Utc::now();
    let mut lag = s.lag.lock().expect("lag lock");
    for r in records {
        let ms = (now - r.recorded_at).num_milliseconds().max(0) as u64;
        lag.saturating_record(ms.min(LAG_MS_TRACKED_MAX));
    }
}
