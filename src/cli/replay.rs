//! `usage-ledger replay …`: the auditor's commands. Each reads the log from the store
//! in global order and folds it with `ledger_replay`; none of them trusts the stored
//! read models, and a read error is a failure, never a short success.
//!
//! - `rebuild`: every read model replaced by a replay of the whole log, with the
//!   projector's checkpoint, in one transaction.
//! - `verify`: a replay up to the projector's checkpoint compared with the stored
//!   models; each difference printed, non-zero exit if any.
//! - `as-of`: one brand-period's models as they stood at a sequence or an instant.
//! - `export`: the log as hash-chained JSON Lines; `verify-export` checks such a file.

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ledger_aggregates::ids::period_stream_id;
use ledger_aggregates::period::USAGE_PERIOD_TYPE;
use ledger_aggregates::{BrandId, PeriodKey};
use ledger_projections::{Differences, LogPosition, LogRecord};
use ledger_replay::{ExportError, ExportSummary, ExportWriter, ReplayError, Replayer};
use tokio::sync::mpsc;

use crate::store::{ProjectionStore, StoreError, READ_MODELS_PROJECTOR};
use crate::tail::rows::{restore_all, rows_of_all};
use crate::tail::RowError;

/// Events per read: large pages keep PostgreSQL streaming, and one page is folded
/// while the next is read.
pub const REPLAY_PAGE_EVENTS: i64 = 10_000;
/// Pages read ahead of the fold: enough to overlap reading and folding, and bounded
/// so a slow fold never buffers the whole log.
const PAGES_AHEAD_MAX: usize = 2;

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Replace every read model by a replay of the whole log.
    Rebuild,
    /// Replay the log up to the projector's checkpoint and compare with the stored
    /// read models; print each difference and exit non-zero if there is any.
    Verify,
    /// One brand-period's read models as they stood at a sequence or an instant.
    AsOf(AsOfArgs),
    /// Write the whole log as hash-chained JSON Lines.
    Export(ExportArgs),
    /// Check a file written by `export`: every hash, every chain, the trailer.
    VerifyExport(VerifyExportArgs),
}

#[derive(Debug, Args)]
pub struct AsOfArgs {
    #[arg(long, alias = "brandId")]
    pub brand: BrandId,
    /// The billing period, `YYYY-MM`.
    #[arg(long)]
    pub period: PeriodKey,
    /// A stream sequence (`42`) or an RFC 3339 instant (`2026-11-20T12:00:00Z`).
    #[arg(long)]
    pub at: ledger_replay::Cutoff,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The file to write (created or truncated); standard output when absent.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyExportArgs {
    /// A file written by `replay export`.
    pub file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayFailure {
    #[error("reading the log failed: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Row(#[from] RowError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// `verify` found the stored models different from the replay.
    #[error("the stored read models differ from a replay of the log in {0} places")]
    Differs(usize),
}

/// What a replay read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    pub events: u64,
    /// The last event read (the start of the log when it is empty).
    pub through: LogPosition,
}

/// Read the log after the start and up to `until` in global order, a page at a time,
/// reading ahead while `each` handles the current page. Any read error ends it with
/// that error.
pub async fn scan_log(
    store: Arc<dyn ProjectionStore>,
    until: Option<LogPosition>,
    progress: &ProgressBar,
    mut each: impl FnMut(&[LogRecord]) -> Result<(), ReplayFailure>,
) -> Result<ReplayReport, ReplayFailure> {
    let (tx, mut rx) = mpsc::channel::<Result<Vec<LogRecord>, StoreError>>(PAGES_AHEAD_MAX);
    let reader = tokio::spawn(async move {
        let mut after = LogPosition::START;
        loop {
            let page = store.read_log(after, until, REPLAY_PAGE_EVENTS).await;
            let last = match &page {
                Ok(records) => records.last().map(|r| r.at),
                Err(_) => None,
            };
            let full = matches!(&page, Ok(r) if r.len() as i64 == REPLAY_PAGE_EVENTS);
            if tx.send(page).await.is_err() {
                return;
            }
            match last {
                Some(at) if full => after = at,
                _ => return,
            }
        }
    });
    let mut report = ReplayReport {
        events: 0,
        through: LogPosition::START,
    };
    while let Some(page) = rx.recv().await {
        let page = page?;
        each(&page)?;
        if let Some(last) = page.last() {
            report.through = last.at;
        }
        report.events += page.len() as u64;
        progress.inc(page.len() as u64);
    }
    reader
        .await
        .map_err(|e| std::io::Error::other(format!("log reader: {e}")))?;
    Ok(report)
}

/// A progress bar over the log's events, drawn on standard error when it is a
/// terminal (and hidden otherwise, so scripts and tests read clean output).
pub async fn progress_over_log(
    store: &dyn ProjectionStore,
    what: &str,
) -> Result<ProgressBar, StoreError> {
    let bar = ProgressBar::new(store.log_len().await?);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {human_pos}/{human_len} events, {per_sec}, eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    Ok(bar)
}

/// Fold the log (up to `until`) into fresh models.
async fn replay_log(
    store: Arc<dyn ProjectionStore>,
    until: Option<LogPosition>,
    what: &str,
) -> Result<(Replayer, ReplayReport), ReplayFailure> {
    let progress = progress_over_log(store.as_ref(), what).await?;
    let mut replayer = Replayer::new();
    let report = scan_log(
        store,
        until,
        &progress,
        |page| Ok(replayer.apply_all(page)?),
    )
    .await?;
    progress.finish_and_clear();
    Ok((replayer, report))
}

/// `rebuild`: every read model and the checkpoint replaced by a replay, in one
/// transaction. A projector running meanwhile finds its checkpoint moved and carries
/// on from the rebuilt one.
pub async fn rebuild(
    store: Arc<dyn ProjectionStore>,
    out: &mut impl Write,
) -> Result<ReplayReport, ReplayFailure> {
    let (replayer, report) = replay_log(store.clone(), None, "rebuilding").await?;
    let rows = rows_of_all(replayer.models());
    store
        .replace_models(READ_MODELS_PROJECTOR, report.through, &rows)
        .await?;
    writeln!(
        out,
        "rebuilt {} brand-period rows from {} events (checkpoint {})",
        rows.len(),
        report.events,
        report.through
    )?;
    Ok(report)
}

/// `verify`: the stored models against a replay of the log up to their checkpoint.
/// Differences are printed and make it fail.
pub async fn verify(
    store: Arc<dyn ProjectionStore>,
    out: &mut impl Write,
) -> Result<ReplayReport, ReplayFailure> {
    let (checkpoint, rows) = store.snapshot_models(READ_MODELS_PROJECTOR).await?;
    let stored = restore_all(&rows)?;
    let (replayer, report) = replay_log(store, Some(checkpoint), "verifying").await?;
    // Through the rows' form, so both sides hold exactly what a store keeps.
    let replayed = restore_all(&rows_of_all(replayer.models()))?;
    let differences: Differences = stored.diff(&replayed);
    if !differences.is_empty() {
        writeln!(out, "stored (left) vs replay (right):\n{differences}")?;
        return Err(ReplayFailure::Differs(differences.total()));
    }
    writeln!(
        out,
        "verified {} brand-period rows against {} events (checkpoint {}): no differences",
        rows.len(),
        report.events,
        checkpoint
    )?;
    Ok(report)
}

/// `as-of`: one brand-period's models at a cutoff, as JSON.
pub async fn as_of(
    store: &dyn ProjectionStore,
    args: &AsOfArgs,
    out: &mut impl Write,
) -> Result<(), ReplayFailure> {
    let stream = period_stream_id(&args.brand, args.period);
    let records = store.stream_records(USAGE_PERIOD_TYPE, &stream).await?;
    let models = ledger_replay::as_of(&records, &args.brand, args.period, args.at)?;
    let answer = serde_json::json!({
        "brandId": args.brand,
        "period": args.period,
        "asOf": args.at.to_string(),
        "models": models,
    });
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&answer).expect("models serialize")
    )?;
    Ok(())
}

/// `export`: the whole log, hash-chained, to `out`.
pub async fn export(
    store: Arc<dyn ProjectionStore>,
    out: impl Write,
) -> Result<ExportSummary, ReplayFailure> {
    let progress = progress_over_log(store.as_ref(), "exporting").await?;
    let mut writer = ExportWriter::new(out);
    scan_log(store, None, &progress, |page| {
        page.iter().try_for_each(|r| writer.write(r))?;
        Ok(())
    })
    .await?;
    progress.finish_and_clear();
    Ok(writer.finish()?)
}

/// `verify-export`: check a file `export` wrote.
pub fn verify_export(args: &VerifyExportArgs) -> Result<ExportSummary, ReplayFailure> {
    let file = std::fs::File::open(&args.file)?;
    Ok(ledger_replay::verify_export(BufReader::new(file))?)
}
