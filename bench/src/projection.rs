//! With the projector beside the engine: its lag over the timed run, then replays of
//! the log the run wrote.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use ledger_projections::{LogRecord, ProjectedEvent, ReadModels};
use ledger_replay::Replayer;
use usage_ledger::cli::replay::scan_log;
use usage_ledger::store::ProjectionStore;
use usage_ledger::tail::projector::Projector;

use crate::report::{thousands, verdict};
use crate::BoxError;

/// How long the projector may take to fold what the timed run left behind.
pub(crate) const PROJECTOR_CATCH_UP_MAX: Duration = Duration::from_secs(120);
/// Event-to-read-model lag the issue asks for, at p99, while the engine runs flat out.
const TARGET_LAG_P99_MS_MAX: u64 = 100;
/// Replay rates the issue asks for: folding in memory, and reading PostgreSQL too.
const TARGET_FOLD_EVENTS_PER_S_MIN: f64 = 1_000_000.0;
const TARGET_PG_REPLAY_EVENTS_PER_S_MIN: f64 = 200_000.0;
/// Replays of the same log per measurement; the median is reported.
const REPLAY_REPEATS: usize = 3;

/// The projector's lag over the timed run, then replay rates over the log the run
/// wrote: from PostgreSQL (read, decode, fold), from records in memory (decode, fold)
/// and from decoded events (fold alone).
pub(crate) async fn projection_remarks(
    projector: &Projector,
    store: Arc<dyn ProjectionStore>,
) -> Result<Vec<String>, BoxError> {
    let caught_up = projector.catch_up(PROJECTOR_CATCH_UP_MAX).await;
    let status = projector.status();
    projector.abort();
    let lag = status.lag_ms;
    let mut out = vec![format!(
        "projector lag over the timed run: p50 {} ms, p99 {} ms, max {} ms over {} events{} \
         (target p99 < {TARGET_LAG_P99_MS_MAX} ms: {})",
        lag.p50,
        lag.p99,
        lag.max,
        lag.samples,
        if caught_up { "" } else { ", NOT caught up" },
        verdict(caught_up && lag.p99 < TARGET_LAG_P99_MS_MAX)
    )];
    out.push(format!(
        "the consumer took {} of its {} events as the engine handed them over, and decoded \
         the rest from the log",
        projector.events_handed_over(),
        status.events_projected
    ));
    let hidden = ProgressBar::hidden();
    let median = |mut rates: Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let mut from_pg = Vec::new();
    let mut records = Vec::new();
    for _ in 0..REPLAY_REPEATS {
        let started = Instant::now();
        let mut replayer = Replayer::new();
        let report = scan_log(store.clone(), None, &hidden, |page| {
            Ok(replayer.apply_all(page)?)
        })
        .await?;
        from_pg.push(report.events as f64 / started.elapsed().as_secs_f64());
    }
    let mut read_only = Vec::new();
    for _ in 0..REPLAY_REPEATS {
        let started = Instant::now();
        let report = scan_log(store.clone(), None, &hidden, |_| Ok(())).await?;
        read_only.push(report.events as f64 / started.elapsed().as_secs_f64());
    }
    scan_log(store, None, &hidden, |page| {
        records.extend_from_slice(page);
        Ok(())
    })
    .await?;
    let mut decode_fold = Vec::new();
    let mut fold = Vec::new();
    let events: Vec<ProjectedEvent> = records
        .iter()
        .map(LogRecord::decode)
        .collect::<Result<_, _>>()?;
    for _ in 0..REPLAY_REPEATS {
        let started = Instant::now();
        Replayer::new().apply_all(&records)?;
        decode_fold.push(records.len() as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let mut models = ReadModels::new();
        for e in &events {
            models.apply(e);
        }
        fold.push(events.len() as f64 / started.elapsed().as_secs_f64());
        std::hint::black_box(&models);
    }
    let (from_pg, decode_fold, fold) = (median(from_pg), median(decode_fold), median(fold));
    out.push(format!(
        "replay of the {} events from PostgreSQL (read, decode, fold): {} events/s \
         (target >= {}: {}); reading alone {} events/s",
        records.len(),
        thousands(from_pg),
        thousands(TARGET_PG_REPLAY_EVENTS_PER_S_MIN),
        verdict(from_pg >= TARGET_PG_REPLAY_EVENTS_PER_S_MIN),
        thousands(median(read_only))
    ));
    out.push(format!(
        "replay in memory: fold {} events/s (target >= {}: {}); decode + fold {} events/s",
        thousands(fold),
        thousands(TARGET_FOLD_EVENTS_PER_S_MIN),
        verdict(fold >= TARGET_FOLD_EVENTS_PER_S_MIN),
        thousands(decode_fold)
    ));
    Ok(out)
}
