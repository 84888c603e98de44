//! Version probes of reads, batched: a pure check or a read of the engine's state
//! appends nothing, so it learns from no conflict that another process wrote first; it
//! asks the log how far its streams are before it is answered. Callers that ask while a
//! probe is in flight share the next one: one query for all of them, and none of it on
//! the writer's path.
//!
//! While a consumer follows the log for the writers ([`Freshness`]), the query reads only
//! the events past that consumer's position: the writers were told of everything before
//! it. Otherwise, or when that consumer lags, it asks each stream's version.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use ledger_projections::LogPosition;

use super::Freshness;
use crate::store::{EventLog, StoreError};

/// Probes waiting for the prober: as many as the engine's queue holds commands.
pub const PROBE_QUEUE_MAX: usize = 65_536;
/// Probes answered by one query: at most 1,024 streams keep it one fast index walk.
pub const PROBE_BATCH_MAX: usize = 512;
/// How long a query waits for as many probes as the last one answered.
pub const PROBE_LINGER_MAX: std::time::Duration = std::time::Duration::from_micros(200);
/// Events past the writers' follower that one probe reads. It trails the log by a few
/// milliseconds, some hundreds of events at full ingest; at this many it lags, and the
/// probe asks each stream's version instead.
pub const PROBE_UNREAD_MAX: i64 = 2_048;

/// The streams of one read: a check's registry and period, or one stream.
pub(crate) type ProbeKeys = Vec<(&'static str, String)>;
type ProbeReply = oneshot::Sender<Result<Vec<u64>, Arc<StoreError>>>;

/// How the probes since start were answered, query by query.
#[derive(Debug, Default)]
pub struct ProbeCounts {
    /// From the events past the writers' follower.
    pub past_follower: AtomicU64,
    /// From each stream's version: no follower, or one that lagged.
    pub by_stream: AtomicU64,
    /// Reads past the follower that found it lagging by [`PROBE_UNREAD_MAX`] events:
    /// once per position it stands at, since the probes that follow ask by stream.
    pub follower_lagged: AtomicU64,
    /// Probes answered, each a pure check's or a read's.
    pub probes: AtomicU64,
}

/// [`ProbeCounts`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeTotals {
    pub past_follower: u64,
    pub by_stream: u64,
    pub follower_lagged: u64,
    pub probes: u64,
}

impl ProbeCounts {
    pub fn snapshot(&self) -> ProbeTotals {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        ProbeTotals {
            past_follower: load(&self.past_follower),
            by_stream: load(&self.by_stream),
            follower_lagged: load(&self.follower_lagged),
            probes: load(&self.probes),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Prober {
    tx: mpsc::Sender<(ProbeKeys, ProbeReply)>,
    pub(crate) counts: Arc<ProbeCounts>,
}

impl Prober {
    pub(crate) fn start(log: Arc<dyn EventLog>, freshness: Arc<Freshness>) -> Self {
        let (tx, rx) = mpsc::channel(PROBE_QUEUE_MAX);
        let counts = Arc::new(ProbeCounts::default());
        tokio::spawn(run(log, freshness, counts.clone(), rx));
        Self { tx, counts }
    }

    /// The versions of `keys` in the log, in their order, as committed when the probe
    /// ran (after this call began). `None` when the prober is full or gone: the caller
    /// is overloaded.
    pub(crate) async fn versions(
        &self,
        keys: ProbeKeys,
    ) -> Option<Result<Vec<u64>, Arc<StoreError>>> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send((keys, reply)).ok()?;
        rx.await.ok()
    }
}

async fn run(
    log: Arc<dyn EventLog>,
    freshness: Arc<Freshness>,
    counts: Arc<ProbeCounts>,
    mut rx: mpsc::Receiver<(ProbeKeys, ProbeReply)>,
) {
    let mut answered = 0;
    // Where the follower stood when a probe found it lagging: while it stands there
    // (stopped, or its passes failing), probes ask by stream without reading again.
    let mut lagging_at = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        take_queued(&mut rx, &mut batch);
        // The callers the last query answered come back in a moment, and one query costs
        // the same for all of them.
        if batch.len() < answered {
            let until = tokio::time::Instant::now() + PROBE_LINGER_MAX;
            while batch.len() < answered {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(probe)) => {
                        batch.push(probe);
                        take_queued(&mut rx, &mut batch);
                    }
                    _ => break,
                }
            }
        }
        answered = batch.len();
        // Each stream once: checks of one brand share its registry and period streams.
        // `slots` holds, key after key of the batch, where its stream is in `distinct`.
        let mut distinct: Vec<(&'static str, String)> = Vec::new();
        let mut index: HashMap<(&'static str, &str), usize> = HashMap::new();
        let slots: Vec<usize> = batch
            .iter()
            .flat_map(|(keys, _)| keys)
            .map(|(t, id)| {
                *index.entry((*t, id.as_str())).or_insert_with(|| {
                    distinct.push((*t, id.clone()));
                    distinct.len() - 1
                })
            })
            .collect();
        counts
            .probes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let asked = versions(
            log.as_ref(),
            &freshness,
            &counts,
            &mut lagging_at,
            &distinct,
        );
        match asked.await {
            Ok(versions) => {
                let mut slots = slots.into_iter();
                for (keys, reply) in batch {
                    let mine = slots.by_ref().take(keys.len()).map(|i| versions[i]);
                    let _ = reply.send(Ok(mine.collect()));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn take_queued(
    rx: &mut mpsc::Receiver<(ProbeKeys, ProbeReply)>,
    batch: &mut Vec<(ProbeKeys, ProbeReply)>,
) {
    while batch.len() < PROBE_BATCH_MAX {
        match rx.try_recv() {
            Ok(probe) => batch.push(probe),
            Err(_) => break,
        }
    }
}

/// The version each of `keys` must be cached at (in their order): what the log holds
/// past the writers' follower, 0 for a stream it holds nothing of there (the writer was
/// told of the rest); each stream's version when no follower stands near the end, or
/// while it still stands at `lagging_at`, where it was last found lagging.
async fn versions(
    log: &dyn EventLog,
    freshness: &Freshness,
    counts: &ProbeCounts,
    lagging_at: &mut Option<LogPosition>,
    keys: &[(&'static str, String)],
) -> Result<Vec<u64>, StoreError> {
    let following = freshness.read_to().filter(|at| Some(*at) != *lagging_at);
    if let Some(after) = following {
        let unread = log.appended_after(after, PROBE_UNREAD_MAX).await?;
        if (unread.len() as i64) >= PROBE_UNREAD_MAX {
            *lagging_at = Some(after);
            counts.follower_lagged.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut last: HashMap<(&str, &str), u64> = HashMap::with_capacity(unread.len());
            for e in &unread {
                let v = last
                    .entry((e.aggregate_type.as_str(), e.aggregate_id.as_str()))
                    .or_insert(0);
                *v = (*v).max(e.sequence);
            }
            counts.past_follower.fetch_add(1, Ordering::Relaxed);
            return Ok(keys
                .iter()
                .map(|(t, id)| last.get(&(*t, id.as_str())).copied().unwrap_or(0))
                .collect());
        }
    }
    let v = log.stream_versions(keys).await?;
    counts.by_stream.fetch_add(1, Ordering::Relaxed);
    match v.len() {
        n if n == keys.len() => Ok(v),
        n => Err(StoreError::Corrupt(format!(
            "{n} stream versions for {} streams",
            keys.len()
        ))),
    }
}
