//! The projector: tails the log in global order and keeps the read models of
//! `ledger_projections` in the store, with its checkpoint, one transaction per batch.
//!
//! Per batch it loads only the rows of the brand-period streams the batch touches,
//! folds the batch into them and saves them with the new checkpoint (compare and set).
//! The folds deduplicate by stream sequence, so a batch delivered again (after a crash
//! between the fold and the commit, or a lost race with another projector) counts
//! once. It wakes on this process's commits, on PostgreSQL on every process's commits
//! (LISTEN/NOTIFY), and polls as a safety net.
//!
//! Reads that must see what was acknowledged before them ([`Projector::catch_up`])
//! ask for a pass that starts after their request and wait for it, bounded.

pub mod rows;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use hdrhistogram::Histogram;
use ledger_aggregates::{BrandId, PeriodKey};
use ledger_projections::{Delivery, LogPosition, LogRecord};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::store::{ProjectionStore, StoreError};
pub use rows::{models_from_row, restore_all, rows_of_all, RowError};

/// Events read and folded per transaction: large enough to amortize the commit, small
/// enough that a batch (its rows loaded, folded, written) stays in the milliseconds.
pub const PROJECTOR_BATCH_EVENTS_MAX: i64 = 2_000;
/// Passes without a wake-up: other processes' commits on SQLite, lost notifications.
pub const PROJECTOR_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Pause after a failed pass (store down, an undecodable event) before the next try.
pub const PROJECTOR_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How long a read waits for the models to catch up before answering from what they
/// hold; the answer then says how far they are behind.
pub const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(2);
/// Lag samples are kept in milliseconds up to this; above it they count as this.
const LAG_MS_TRACKED_MAX: u64 = 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("undecodable event: {0}")]
    Decode(#[from] ledger_projections::DecodeError),
    #[error(transparent)]
    Row(#[from] RowError),
    /// The log was read with a hole: sequences `expected..got` of a stream were never
    /// delivered. Never committed: the models stay a replay of the log.
    #[error("stream {stream}: expected sequence {expected}, read {got}")]
    Gap {
        stream: String,
        expected: u64,
        got: u64,
    },
}

/// What the projector reports about itself.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectorStatus {
    /// The last event folded in, `transaction/position` in the log's global order.
    #[schema(value_type = String, example = "1523/4")]
    #[serde(serialize_with = "display")]
    pub checkpoint: LogPosition,
    /// Events folded and committed since start.
    pub events_projected: u64,
    /// Commit-to-model lag of the events projected since start, in milliseconds: from
    /// the event's `recorded_at` (its transaction's start, by the database clock) to
    /// the commit of the batch that folded it.
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
    task: Mutex<Option<tokio::task::AbortHandle>>,
    store: Arc<dyn ProjectionStore>,
    name: &'static str,
    wake: Arc<Notify>,
    /// Passes asked for by readers; a pass serves every request made before it began.
    requested: AtomicU64,
    /// The highest request a finished pass served.
    served: watch::Sender<u64>,
    checkpoint: Mutex<LogPosition>,
    events_projected: AtomicU64,
    lag: Mutex<Histogram<u64>>,
    last_error: Mutex<Option<String>>,
}

/// A running projector; cheap to clone.
#[derive(Clone)]
pub struct Projector {
    shared: Arc<Shared>,
}

impl Projector {
    /// Start projecting into the checkpoint `name` of `store`.
    pub async fn start(
        store: Arc<dyn ProjectionStore>,
        name: &'static str,
    ) -> Result<Self, StoreError> {
        let wake = store.watch_commits().await?;
        let checkpoint = store.checkpoint(name).await?;
        let shared = Arc::new(Shared {
            task: Mutex::new(None),
            store,
            name,
            wake,
            requested: AtomicU64::new(0),
            served: watch::Sender::new(0),
            checkpoint: Mutex::new(checkpoint),
            events_projected: AtomicU64::new(0),
            lag: Mutex::new(
                Histogram::new_with_max(LAG_MS_TRACKED_MAX, 3).expect("valid histogram bounds"),
            ),
            last_error: Mutex::new(None),
        });
        let task = tokio::spawn(run(Arc::clone(&shared)));
        *shared.task.lock().expect("task lock") = Some(task.abort_handle());
        Ok(Self { shared })
    }

    /// Wait (at most `wait`) until the models hold every event acknowledged before this
    /// call. `false` when the wait ran out: the models are behind.
    pub async fn catch_up(&self, wait: Duration) -> bool {
        let ticket = self.shared.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.wake.notify_one();
        let mut served = self.shared.served.subscribe();
        tokio::time::timeout(wait, served.wait_for(|s| *s >= ticket))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn status(&self) -> ProjectorStatus {
        let s = &self.shared;
        let lag = s.lag.lock().expect("lag lock");
        ProjectorStatus {
            checkpoint: *s.checkpoint.lock().expect("checkpoint lock"),
            events_projected: s.events_projected.load(Ordering::Relaxed),
            lag_ms: LagSummary {
                samples: lag.len(),
                p50: lag.value_at_quantile(0.5),
                p99: lag.value_at_quantile(0.99),
                max: lag.max(),
            },
            last_error: s.last_error.lock().expect("error lock").clone(),
        }
    }

    /// Stop projecting, wherever the current batch is (its transaction is dropped,
    /// uncommitted). Readers waiting in [`Projector::catch_up`] time out.
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

async fn run(s: Arc<Shared>) {
    loop {
        let serving = s.requested.load(Ordering::SeqCst);
        let failed = match pass(&s).await {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(projector = s.name, error = %e, "projection pass failed");
                Some(e.to_string())
            }
        };
        let retry = failed.is_some();
        *s.last_error.lock().expect("error lock") = failed;
        // A failed pass serves its readers too: they answer from the models as they
        // are rather than wait for a store that is down.
        s.served.send_replace(serving);
        if retry {
            tokio::time::sleep(PROJECTOR_RETRY_DELAY).await;
            continue;
        }
        if s.requested.load(Ordering::SeqCst) > serving {
            continue;
        }
        tokio::select! {
            _ = s.wake.notified() => {}
            _ = tokio::time::sleep(PROJECTOR_POLL_INTERVAL) => {}
        }
    }
}

/// Project batches until the log (as far as it is committed) is folded in.
async fn pass(s: &Shared) -> Result<(), ProjectorError> {
    loop {
        let from = *s.checkpoint.lock().expect("checkpoint lock");
        let records = s
            .store
            .read_log(from, None, PROJECTOR_BATCH_EVENTS_MAX)
            .await?;
        let Some(last) = records.last() else {
            return Ok(());
        };
        let to = last.at;
        let rows = fold_batch(s.store.as_ref(), &records).await?;
        if s.store.save_models(s.name, from, to, &rows).await? {
            *s.checkpoint.lock().expect("checkpoint lock") = to;
            s.events_projected
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            record_lag(s, &records);
        } else {
            // Another projector or a rebuild moved the checkpoint: start from there.
            let now = s.store.checkpoint(s.name).await?;
            *s.checkpoint.lock().expect("checkpoint lock") = now;
        }
        if (records.len() as i64) < PROJECTOR_BATCH_EVENTS_MAX {
            return Ok(());
        }
    }
}

/// The rows of the streams `records` touch, with the records folded in.
pub async fn fold_batch(
    store: &dyn ProjectionStore,
    records: &[LogRecord],
) -> Result<Vec<crate::store::ModelRow>, ProjectorError> {
    let mut events = Vec::with_capacity(records.len());
    let mut touched: BTreeSet<(BrandId, PeriodKey)> = BTreeSet::new();
    for record in records {
        let event = record.decode()?;
        // Registry events change no read model (plans reach them as period events).
        if let Some((brand, period, _)) = event.as_period() {
            touched.insert((brand.clone(), period));
            events.push(event);
        }
    }
    let keys: Vec<(String, String)> = touched
        .iter()
        .map(|(b, p)| (b.to_string(), p.to_string()))
        .collect();
    let mut models = restore_all(&store.load_models(&keys).await?)?;
    for event in &events {
        if let Delivery::AppliedAfterGap { expected } = models.apply(event) {
            return Err(ProjectorError::Gap {
                stream: event.stream_id(),
                expected,
                got: event.sequence,
            });
        }
    }
    // The models hold exactly the touched streams: their rows, loaded, and the batch.
    Ok(rows_of_all(&models))
}

fn record_lag(s: &Shared, records: &[LogRecord]) {
    let now = Utc::now();
    let mut lag = s.lag.lock().expect("lag lock");
    for r in records {
        let ms = (now - r.recorded_at).num_milliseconds().max(0) as u64;
        lag.saturating_record(ms.min(LAG_MS_TRACKED_MAX));
    }
}
