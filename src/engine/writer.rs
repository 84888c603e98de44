//! The writer task: batches jobs, decides them against the in-memory aggregates, and
//! commits each batch with one append.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use ledger_aggregates::brand::{BrandCommand, Effective, BRAND_EVENT_VERSION};
use ledger_aggregates::catalog::Catalog;
use ledger_aggregates::ids::period_stream_id;
use ledger_aggregates::period::{
    PeriodCommand, PeriodOpening, Severity, UsageVia, LEDGER_EVENT_VERSION,
};
use ledger_aggregates::topup::{TopUpCommand, TopUpEvent, TopUpId};
use ledger_aggregates::{
    BrandAggregate, BrandEvent, BrandId, LedgerEvent, MetricKey, MetricKind, OveragePolicy,
    PeriodKey, PlanDefinition, PlanId, Quantity, QuotaDecision, UsagePeriodAggregate,
};
use ledger_projections::{Payload, ProjectedEvent};
use lru::LruCache;
use tokio::sync::mpsc;

use super::refusals::{self, Refusals};
use super::{
    Committed, EngineConfig, EngineError, Freshness, Job, Listener, Metadata, Outcome,
    PeriodRequest, PlanChange, TopUpChange,
};
use crate::clock::Clock;
use crate::store::{rebuild, EventLog, NewEvent, NewSnapshot, StoreError};
use crate::tail::watermark::Watermarks;

const PERIOD: &str = UsagePeriodAggregate::TYPE;
const BRAND: &str = BrandAggregate::TYPE;
const EMPTY_METADATA: &str = "{}";
/// Room reserved for one event's JSON: a `UsageRecorded` is ~290 bytes, the largest
/// common events a little more; a rare larger one grows the buffer once.
const PAYLOAD_BYTES_TYPICAL: usize = 512;
/// How often the writer looks for refusal windows that ended: their counts reach the log
/// at most this long after the window.
const REFUSAL_TICK_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// The answer prepared for one job, sent only after the batch commits.
enum Answer {
    Period(Result<Outcome, EngineError>),
    Plan(Result<PlanChange, EngineError>),
    ReadPeriod(Option<UsagePeriodAggregate>),
    ReadBrand(Option<BrandAggregate>),
    TopUp(Result<TopUpChange, EngineError>),
    Notifications(Result<bool, EngineError>),
}

/// What a batch will append, and the keys to remember once it is committed.
#[derive(Default)]
struct Staged {
    events: Vec<NewEvent>,
    snapshots: Vec<NewSnapshot>,
    /// Streams whose cached state now includes uncommitted events, with the last
    /// sequence staged on them.
    touched: Vec<(&'static str, String, u64)>,
    /// Streams whose staged sequences reached a multiple of the snapshot interval.
    snapshot_due: Vec<(&'static str, String)>,
    /// (stream id, key) -> (fingerprint, outcome) of commands in this batch.
    keyed: HashMap<(String, String), (String, Outcome)>,
    /// What the batch counts in the metrics once it commits (only when they are kept).
    tallies: Vec<Tally>,
    /// What the batch does to the windows of repeated refusals.
    refusals: refusals::Staged,
    /// The brand-period events among `events`, by their index there, for the commit
    /// listener.
    period_events: Vec<(usize, LedgerEvent)>,
}

/// A fact of a batch the metrics count once it is committed.
enum Tally {
    Refused(UsageVia),
    Crossed {
        plan: PlanId,
        metric: MetricKey,
        severity: Severity,
        policy: &'static str,
    },
}

impl Staged {
    /// Note the refusals and crossings among `events`, decided under `plan`.
    fn tally(&mut self, plan: &PlanDefinition, events: &[LedgerEvent]) {
        for e in events {
            match e {
                LedgerEvent::UsageDenied { via, .. } => self.tallies.push(Tally::Refused(*via)),
                LedgerEvent::ThresholdCrossed {
                    metric, severity, ..
                } => self.tallies.push(Tally::Crossed {
                    plan: plan.id.clone(),
                    metric: metric.clone(),
                    severity: *severity,
                    policy: match plan.quota(metric).map(|q| q.overage) {
                        Some(OveragePolicy::Block) => "block",
                        Some(OveragePolicy::Charge) => "charge",
                        None => "none",
                    },
                }),
                _ => {}
            }
        }
    }
}

/// The period and stream id a period job acts on.
type Target = (PeriodKey, String);
/// Gauge levels carried into each period the batch opens, by stream id.
type Carried = HashMap<String, BTreeMap<MetricKey, u64>>;
/// Outcomes of idempotency keys already used: (stream id, key) -> (fingerprint, outcome).
type Known = HashMap<(String, String), (String, Outcome)>;

/// Where a batch looks for idempotency keys that are not in memory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyLookup {
    /// Nowhere: they are taken as new. A key the log already holds fails the append
    /// on the unique key index (a conflict, nothing written), and the batch is decided
    /// again with [`KeyLookup::Log`]. Fresh keys, nearly all of them, cost no query.
    AssumeNew,
    /// In the log, one query for the batch: after a conflict.
    Log,
}

/// Jobs decided together, with their answers, waiting for (or in) one append.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    answers: Vec<Answer>,
    staged: Staged,
}

impl Batch {
    fn with_capacity(jobs: usize) -> Self {
        Self {
            jobs: Vec::with_capacity(jobs),
            answers: Vec::with_capacity(jobs),
            staged: Staged {
                events: Vec::with_capacity(jobs),
                ..Staged::default()
            },
        }
    }
}

/// The append of the batch in flight: the events it wrote (handed back) and their log
/// positions.
type Append = tokio::task::JoinHandle<(Vec<NewEvent>, Result<Vec<i64>, StoreError>)>;

pub(crate) struct Writer {
    log: Arc<dyn EventLog>,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    cfg: Arc<EngineConfig>,
    periods: LruCache<String, UsagePeriodAggregate>,
    brands: LruCache<String, BrandAggregate>,
    /// Recent idempotent outcomes: (stream id, key) -> (fingerprint, outcome).
    keys: LruCache<(String, String), (String, Outcome)>,
    /// Keys of the batch whose append is in flight: not yet in `keys` nor in the log.
    pending_keys: HashMap<(String, String), (String, Outcome)>,
    /// Where committed writes are announced to the read models' readers.
    marks: Arc<Watermarks>,
    /// Told of every commit before its callers are.
    listener: Listener,
    /// Repeated refusals counted in memory until they are appended as one event.
    refusals: Refusals,
    /// What the log holds that the cache may not, and this writer's shard.
    freshness: (Arc<Freshness>, usize),
}

impl Writer {
    pub(crate) fn new(
        log: Arc<dyn EventLog>,
        catalog: Arc<Catalog>,
        clock: Arc<dyn Clock>,
        cfg: Arc<EngineConfig>,
        marks: Arc<Watermarks>,
        listener: Listener,
        freshness: (Arc<Freshness>, usize),
    ) -> Self {
        // Each job needs at most two streams; the cache must hold a whole batch.
        let streams = cfg.cache_streams_max.max(4 * cfg.batch_commands_max);
        let cap = |n: usize| NonZeroUsize::new(n.max(1)).expect("max(1) is non-zero");
        Self {
            log,
            catalog,
            clock,
            periods: LruCache::new(cap(streams)),
            brands: LruCache::new(cap(streams)),
            keys: LruCache::new(cap(cfg.idempotency_cache_max)),
            pending_keys: HashMap::new(),
            marks,
            listener,
            refusals: Refusals::new(cfg.refusal_window, cfg.refusal_windows_max),
            freshness,
            cfg,
        }
    }

    /// The writer loop. While one batch's append is in flight, the jobs that arrive are
    /// decided against the running state (which already includes the in-flight batch)
    /// into the next batch; that batch is appended as soon as the previous one has
    /// committed. Deciding overlaps the commit wait, and appends stay strictly ordered.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Job>,
        mut closing: tokio::sync::watch::Receiver<bool>,
    ) {
        let max = self.cfg.batch_commands_max;
        let mut next = Batch::default();
        let mut inflight: Option<(Batch, Append)> = None;
        let mut open = true;
        // Set when a batch is answered: launch the next one once `expect` jobs are in
        // it, or at `until`, whichever comes first.
        let mut linger: Option<(usize, tokio::time::Instant)> = None;
        // One timer, re-armed only when the linger deadline moves: a fresh `Sleep` per
        // loop turn registered and cancelled a timer for every job that arrived.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        // Counted refusals are appended within a second of their window's end.
        let counting = !self.cfg.refusal_window.is_zero();
        let mut tick = tokio::time::interval(
            self.cfg
                .refusal_window
                .clamp(std::time::Duration::from_millis(1), REFUSAL_TICK_MAX),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drained_refusals = false;
        loop {
            if inflight.is_none() {
                // Lingering fills appends; a batch with nothing to append (pure checks,
                // reads) gains nothing from waiting and is answered at once.
                let filled = next.staged.events.is_empty()
                    || linger.is_none_or(|(expect, until)| {
                        next.jobs.len() >= expect.min(max) || tokio::time::Instant::now() >= until
                    });
                let work = !next.jobs.is_empty() || !next.staged.events.is_empty();
                if !work && !open && !drained_refusals && self.refusals.pending() {
                    // Once, so that a store that refuses the append does not hold the exit.
                    drained_refusals = true;
                    self.flush_refusals(&mut next, true).await;
                    continue;
                }
                if work && (filled || !open) {
                    // The next batch will likely be this size: reserving it up front
                    // saves growing every vector of the batch by doubling.
                    let size = next.jobs.len();
                    let batch = std::mem::replace(&mut next, Batch::with_capacity(size));
                    if batch.staged.events.is_empty() {
                        self.answer_in_place(batch);
                    } else {
                        inflight = Some(self.launch(batch));
                    }
                    linger = None;
                } else if !work && !open {
                    break;
                }
            }
            let room = open && next.jobs.len() < max;
            let lingering = linger.is_some() && inflight.is_none() && !next.jobs.is_empty();
            if let Some((_, until)) = linger {
                if timer.deadline() != until {
                    timer.as_mut().reset(until);
                }
            }
            tokio::select! {
                biased;
                // Closing the queue refuses new jobs; those queued are still received.
                changed = closing.changed(), if open && !rx.is_closed() => {
                    if changed.is_err() || *closing.borrow() {
                        rx.close();
                    }
                }
                _ = &mut timer, if lingering => linger = None,
                _ = tick.tick(), if counting && open => self.flush_refusals(&mut next, false).await,
                done = async {
                    match inflight.as_mut() {
                        Some((_, append)) => append.await,
                        None => std::future::pending().await,
                    }
                }, if inflight.is_some() => {
                    let (mut batch, _) = inflight.take().expect("the branch runs only with a batch in flight");
                    let done = match done {
                        Ok((events, done)) => {
                            batch.staged.events = events;
                            done
                        }
                        Err(e) => Err(StoreError::Corrupt(format!("append task failed: {e}"))),
                    };
                    let answered = batch.jobs.len();
                    self.finish(batch, done, &mut next).await;
                    let until = tokio::time::Instant::now() + self.cfg.batch_linger_max;
                    linger = Some((next.jobs.len() + answered, until));
                }
                job = rx.recv(), if room => match job {
                    None => open = false,
                    Some(job) => {
                        let mut jobs = vec![job];
                        let mut yielded = false;
                        while next.jobs.len() + jobs.len() < max {
                            match rx.try_recv() {
                                Ok(job) => jobs.push(job),
                                // Callers woken by the last answers are runnable but have
                                // not sent yet; each send would wake the writer for one
                                // job. Letting them run first decides them in one pass.
                                Err(_) if !yielded => {
                                    yielded = true;
                                    tokio::task::yield_now().await;
                                }
                                Err(_) => break,
                            }
                        }
                        self.decide_into(&mut next, jobs).await;
                    }
                },
                else => break,
            }
        }
    }

    /// Decide `jobs` into the next batch. If loading fails, nothing of them was staged
    /// and they are answered with the error at once.
    async fn decide_into(&mut self, next: &mut Batch, jobs: Vec<Job>) {
        let now = self.clock.now();
        match self
            .decide_batch(&jobs, now, KeyLookup::AssumeNew, &mut next.staged)
            .await
        {
            Ok(answers) => {
                next.jobs.extend(jobs);
                next.answers.extend(answers);
            }
            Err(e) => reply_all(jobs.into_iter(), Err(EngineError::Store(Arc::new(e)))),
        }
    }

    /// Start appending a decided batch; its keys stay visible to later decisions.
    fn launch(&mut self, mut batch: Batch) -> (Batch, Append) {
        self.stage_snapshots(&mut batch.staged);
        let events = std::mem::take(&mut batch.staged.events);
        let snapshots = std::mem::take(&mut batch.staged.snapshots);
        self.pending_keys = std::mem::take(&mut batch.staged.keyed);
        self.refusals.launching(&batch.staged.refusals);
        let log = self.log.clone();
        let metrics = self.cfg.metrics.clone();
        let commands = batch.jobs.len();
        let append = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let done = log.append(&events, &snapshots).await;
            if let (Some(m), Ok(_)) = (&metrics, &done) {
                m.batch_commands.observe(commands as f64);
                m.append_seconds.observe(started.elapsed().as_secs_f64());
            }
            (events, done)
        });
        (batch, append)
    }

    /// Answer a batch that appends nothing (pure checks, reads) now: it has no commit
    /// to wait for, so it needs no task, and no batch in flight holds it back.
    fn answer_in_place(&mut self, mut batch: Batch) {
        for (k, v) in std::mem::take(&mut batch.staged.keyed) {
            self.keys.put(k, v);
        }
        self.answer(batch, &[]);
    }

    /// Tell readers what a committed batch wrote (its events at `positions`), then its
    /// callers.
    fn answer(&mut self, mut batch: Batch, positions: &[i64]) {
        self.acknowledge(&mut batch.staged, positions);
        reply_all(batch.jobs.into_iter(), Ok(batch.answers));
    }

    /// Answer a batch whose append returned. On failure, the speculative next batch is
    /// discarded with it: both are decided again from the log.
    async fn finish(
        &mut self,
        mut batch: Batch,
        done: Result<Vec<i64>, StoreError>,
        next: &mut Batch,
    ) {
        let done = match done {
            Ok(positions) => {
                for (k, v) in self.pending_keys.drain() {
                    self.keys.put(k, v);
                }
                self.answer(batch, &positions);
                return;
            }
            Err(e) => e,
        };
        self.pending_keys.clear();
        let mut next = std::mem::take(next);
        self.refusals.landed();
        for staged in [&mut batch.staged, &mut next.staged] {
            self.refusals.restore(std::mem::take(&mut staged.refusals));
        }
        for (t, id, _) in batch.staged.touched.iter().chain(&next.staged.touched) {
            self.evict(t, id);
        }
        let mut retry = next.jobs;
        match done {
            // A unique violation aborted the statement: nothing was written, so the
            // in-flight jobs are safe to decide again.
            StoreError::Conflict(why) => {
                tracing::debug!(%why, "append conflict; reloading and deciding again");
                if let Some(m) = &self.cfg.metrics {
                    m.conflicts.inc();
                }
                let mut jobs = batch.jobs;
                jobs.append(&mut retry);
                retry = jobs;
            }
            // Any other failure may have happened after the commit (a lost connection):
            // re-running could apply the same command twice, so its callers are told.
            e => {
                tracing::error!(error = %e, "append failed; every caller of the batch is told");
                reply_all(batch.jobs.into_iter(), Err(EngineError::Store(Arc::new(e))));
            }
        }
        if !retry.is_empty() {
            self.process(&mut retry).await;
        }
    }

    /// Decide and append one batch on its own, retrying conflicts: the path of batches
    /// whose pipelined append conflicted.
    async fn process(&mut self, batch: &mut Vec<Job>) {
        let now = self.clock.now();
        let mut attempt = 0;
        let answers = loop {
            let mut staged = Staged::default();
            let result = self.attempt(batch, now, &mut staged).await;
            if result.is_err() {
                // The cache may hold uncommitted decisions: forget them, reload later.
                for (t, id, _) in &staged.touched {
                    self.evict(t, id);
                }
                self.refusals.restore(std::mem::take(&mut staged.refusals));
            }
            match result {
                Ok((answers, positions)) => {
                    self.acknowledge(&mut staged, &positions);
                    for (k, v) in staged.keyed {
                        self.keys.put(k, v);
                    }
                    break Ok(answers);
                }
                Err(StoreError::Conflict(why)) if attempt < self.cfg.conflict_retries_max => {
                    tracing::debug!(attempt, %why, "append conflict; reloading and deciding again");
                    if let Some(m) = &self.cfg.metrics {
                        m.conflicts.inc();
                    }
                    attempt += 1;
                }
                Err(e) => break Err(EngineError::Store(Arc::new(e))),
            }
        };
        reply_all(batch.drain(..), answers);
    }

    /// Stage into `next` the refusal counts whose window ended (every one with `all`).
    /// When a stream cannot be loaded, the counts wait for the next tick.
    async fn flush_refusals(&mut self, next: &mut Batch, all: bool) {
        let mut taken = refusals::Staged::default();
        let due = self.refusals.due(self.clock.now(), all, &mut taken);
        if due.is_empty() {
            return;
        }
        let mut missing: Vec<(&'static str, String)> = due
            .iter()
            .filter(|(id, _)| !self.periods.contains(id))
            .map(|(id, _)| (PERIOD, id.clone()))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if let Err(e) = self.load(&missing).await {
            tracing::warn!(error = %e, "refusal counts wait: their streams did not load");
            self.refusals.restore(taken);
            return;
        }
        let every = self.cfg.snapshot_every_events;
        let mut unloaded = Vec::new();
        for (id, event) in &due {
            // Loading may have evicted another due stream from a full cache: it waits.
            let Some(agg) = self.periods.get_mut(id) else {
                unloaded.push(id.as_str());
                continue;
            };
            let first = agg.version + 1;
            next.staged.stage(
                id,
                first,
                std::slice::from_ref(event),
                None,
                EMPTY_METADATA,
                every,
            );
            agg.fold(event);
        }
        self.refusals.restore(taken.split_off(&unloaded));
        next.staged.refusals.absorb(taken);
    }

    /// Tell readers what a committed batch wrote (its events at `positions`), before its
    /// callers hear of it, and count it.
    fn acknowledge(&mut self, staged: &mut Staged, positions: &[i64]) {
        if let Some(listener) = self.listener.get() {
            let events: Vec<ProjectedEvent> = staged
                .period_events
                .drain(..)
                .filter_map(|(i, event)| {
                    let e = &staged.events[i];
                    let sequence = u64::try_from(e.sequence).ok()?;
                    ProjectedEvent::from_stored(
                        positions[i],
                        PERIOD,
                        &e.aggregate_id,
                        sequence,
                        Payload::Period(event),
                    )
                    .ok()
                })
                .collect();
            if !events.is_empty() {
                listener.committed(events);
            }
        }
        self.refusals
            .acknowledge(std::mem::take(&mut staged.refusals));
        if let Some(m) = &self.cfg.metrics {
            for t in &staged.tallies {
                match t {
                    Tally::Refused(via) => m.refusals.with_label_values(&[via_label(*via)]).inc(),
                    Tally::Crossed {
                        plan,
                        metric,
                        severity,
                        policy,
                    } => m
                        .alerts
                        .with_label_values(&[
                            plan.as_str(),
                            metric.as_str(),
                            match severity {
                                Severity::Warning => "warning",
                                Severity::Critical => "critical",
                            },
                            policy,
                        ])
                        .inc(),
                }
            }
        }
        self.marks.acknowledge(
            staged
                .touched
                .iter()
                .filter(|(t, _, _)| *t == PERIOD)
                .map(|(_, id, last)| (id.as_str(), *last)),
        );
    }

    fn evict(&mut self, aggregate_type: &str, id: &str) {
        if aggregate_type == PERIOD {
            self.periods.pop(id);
        } else {
            self.brands.pop(id);
        }
    }

    /// Decide every job of the batch and append the result. Nothing is answered here.
    async fn attempt(
        &mut self,
        batch: &[Job],
        now: DateTime<Utc>,
        staged: &mut Staged,
    ) -> Result<(Vec<Answer>, Vec<i64>), StoreError> {
        let answers = self
            .decide_batch(batch, now, KeyLookup::Log, staged)
            .await?;
        self.stage_snapshots(staged);
        let positions = self.log.append(&staged.events, &staged.snapshots).await?;
        Ok((answers, positions))
    }

    /// Load what the jobs need, then decide each in order into `staged`. Store errors
    /// can only come from loading, before anything is decided.
    async fn decide_batch(
        &mut self,
        batch: &[Job],
        now: DateTime<Utc>,
        lookup: KeyLookup,
        staged: &mut Staged,
    ) -> Result<Vec<Answer>, StoreError> {
        self.forget_stale();
        // Each period job's stream, resolved once against this batch's clock.
        let targets: Vec<Option<Target>> = batch
            .iter()
            .map(|job| match job {
                Job::Period { req, .. } => {
                    let period = target_period(req, now);
                    Some((period, period_stream_id(&req.brand, period)))
                }
                // A plan change may open the brand's current period (see `decide_plan`).
                Job::SetPlan { brand, .. } => {
                    let period = PeriodKey::containing(now);
                    Some((period, period_stream_id(brand, period)))
                }
                // A paid top-up is credited to its period in the same append.
                Job::TopUp {
                    brand,
                    step: TopUpCommand::Settle { period, .. },
                    ..
                } => Some((*period, period_stream_id(brand, *period))),
                _ => None,
            })
            .collect();
        self.refresh_stale(batch, &targets).await?;
        self.load_missing(batch, &targets, now).await?;
        let carried = self.carried_levels(batch, &targets).await?;
        let known = self.known_keys(batch, &targets, lookup).await?;
        let mut answers = Vec::with_capacity(batch.len());
        for (job, target) in batch.iter().zip(&targets) {
            answers.push(match (job, target) {
                (
                    Job::Period {
                        req, fingerprint, ..
                    },
                    Some((period, id)),
                ) => Answer::Period(self.decide_period(
                    req,
                    fingerprint,
                    (*period, id),
                    now,
                    (&carried, &known),
                    staged,
                )),
                (Job::Period { .. }, None) => unreachable!("every period job has a target"),
                (
                    Job::SetPlan {
                        brand,
                        plan,
                        actor,
                        effective,
                        ..
                    },
                    _,
                ) => Answer::Plan(self.decide_plan(
                    brand,
                    (plan, *effective),
                    actor,
                    (now, &carried),
                    staged,
                )),
                (Job::ReadPeriod { brand, period, .. }, _) => Answer::ReadPeriod(
                    self.periods
                        .get(&period_stream_id(brand, *period))
                        .filter(|a| a.version > 0)
                        .cloned(),
                ),
                (Job::ReadBrand { brand, .. }, _) => Answer::ReadBrand(
                    self.brands
                        .get(brand.as_str())
                        .filter(|a| a.version > 0)
                        .cloned(),
                ),
                (
                    Job::SetNotifications {
                        brand,
                        settings,
                        actor,
                        ..
                    },
                    _,
                ) => {
                    Answer::Notifications(self.decide_settings(brand, settings, actor, now, staged))
                }
                (Job::TopUp { brand, step, .. }, target) => Answer::TopUp(self.decide_topup(
                    brand,
                    step,
                    target.as_ref().map(|(p, id)| (*p, id.as_str())),
                    now,
                    (&carried, &known),
                    staged,
                )),
            });
        }
        Ok(answers)
    }

    /// The streams a job reads or writes, borrowed where the job already holds the id:
    /// nearly every stream is cached, and only a missing one needs an owned copy.
    fn streams_of<'a>(
        job: &'a Job,
        target: &'a Option<Target>,
        now: DateTime<Utc>,
    ) -> [Option<(&'static str, Cow<'a, str>)>; 2] {
        match job {
            Job::Period { req, .. } => [
                Some((BRAND, Cow::Borrowed(req.brand.as_str()))),
                target
                    .as_ref()
                    .map(|(_, id)| (PERIOD, Cow::Borrowed(id.as_str()))),
            ],
            Job::SetPlan { brand, .. } => [
                Some((BRAND, Cow::Borrowed(brand.as_str()))),
                Some((
                    PERIOD,
                    Cow::Owned(period_stream_id(brand, PeriodKey::containing(now))),
                )),
            ],
            Job::ReadPeriod { brand, period, .. } => [
                Some((PERIOD, Cow::Owned(period_stream_id(brand, *period)))),
                None,
            ],
            Job::ReadBrand { brand, .. } => [Some((BRAND, Cow::Borrowed(brand.as_str()))), None],
            Job::SetNotifications { brand, .. } => {
                [Some((BRAND, Cow::Borrowed(brand.as_str()))), None]
            }
            Job::TopUp { brand, .. } => [
                Some((BRAND, Cow::Borrowed(brand.as_str()))),
                target
                    .as_ref()
                    .map(|(_, id)| (PERIOD, Cow::Borrowed(id.as_str()))),
            ],
        }
    }

    /// Drop the streams the log holds more of than the cache: what the consumer that
    /// follows the log told this writer since the last batch. A job queued after its
    /// probe saw the log up to that consumer's position is decided after this.
    fn forget_stale(&mut self) {
        let (freshness, shard) = &self.freshness;
        let stale = freshness.take(*shard);
        if stale.forget_all {
            self.periods.clear();
            self.brands.clear();
        }
        for (t, id, sequence) in stale.events {
            let cached = if t == PERIOD {
                self.periods.peek(&id).map(|a| a.version)
            } else {
                self.brands.peek(&id).map(|a| a.version)
            };
            if cached.is_some_and(|v| v < sequence) {
                self.evict(t, &id);
            }
        }
    }

    /// Commands that append learn of another process's writes from the conflict their
    /// append meets, but a period opened from a cached registry would take a plan
    /// another process changed: the registries of periods about to open are compared
    /// with the log (one query for the batch, once per brand and period) and dropped
    /// from the cache when the log holds more. Pure checks were probed before they
    /// queued (see `probe`).
    async fn refresh_stale(
        &mut self,
        batch: &[Job],
        targets: &[Option<Target>],
    ) -> Result<(), StoreError> {
        let mut keys: Vec<(&'static str, String)> = Vec::new();
        for (job, target) in batch.iter().zip(targets) {
            let (Job::Period { req, logged, .. }, Some((_, id))) = (job, target) else {
                continue;
            };
            let opening = !self.periods.peek(id).is_some_and(|p| p.is_open());
            if opening && logged.is_none() {
                keys.push((BRAND, req.brand.to_string()));
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        keys.sort_unstable();
        keys.dedup();
        let logged = self.log.stream_versions(&keys).await?;
        for ((t, id), logged) in keys.iter().zip(logged) {
            let cached = self.brands.peek(id).map(|a| a.version);
            if cached.is_some_and(|v| v < logged) {
                self.evict(t, id);
            }
        }
        Ok(())
    }

    /// Load every stream the batch needs that is not cached, in one call. A read that
    /// saw the log further than the cache (another process appended) reloads its stream.
    async fn load_missing(
        &mut self,
        batch: &[Job],
        targets: &[Option<Target>],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut missing: Vec<(&'static str, String)> = Vec::new();
        for (job, target) in batch.iter().zip(targets) {
            let logged = |t: &str| match job {
                Job::ReadPeriod { logged, .. } | Job::ReadBrand { logged, .. } => *logged,
                Job::TopUp { logged, .. } | Job::SetNotifications { logged, .. } if t == BRAND => {
                    *logged
                }
                Job::Period {
                    logged: Some([brand, period]),
                    ..
                } => match t {
                    PERIOD => *period,
                    _ => *brand,
                },
                _ => 0,
            };
            for (t, id) in Self::streams_of(job, target, now).into_iter().flatten() {
                let logged = logged(t);
                let version = if t == PERIOD {
                    self.periods.peek(id.as_ref()).map(|a| a.version)
                } else {
                    self.brands.peek(id.as_ref()).map(|a| a.version)
                };
                let cached = version.is_some_and(|v| v >= logged);
                if !cached && !missing.iter().any(|(mt, mid)| *mt == t && *mid == id) {
                    missing.push((t, id.into_owned()));
                }
            }
        }
        self.load(&missing).await
    }

    async fn load(&mut self, keys: &[(&'static str, String)]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        for stream in self.log.load_streams(keys).await? {
            if stream.aggregate_type == PERIOD {
                let agg: UsagePeriodAggregate = rebuild(&stream)?;
                self.periods.put(stream.aggregate_id, agg);
            } else {
                let agg: BrandAggregate = rebuild(&stream)?;
                self.brands.put(stream.aggregate_id, agg);
            }
        }
        Ok(())
    }

    /// Gauge levels for each period this batch will open: those of the brand's newest
    /// earlier period, found by exact-key lookups over a bounded window. One lookup and
    /// one load for the whole batch, not one per period: a month's first commands, or a
    /// period close, open a period for every brand at once. A pure check of a counter
    /// needs none: it writes nothing, and its answer reads no gauge.
    async fn carried_levels(
        &mut self,
        batch: &[Job],
        targets: &[Option<Target>],
    ) -> Result<Carried, StoreError> {
        // Each period to open, with its brand's earlier periods, newest first.
        let mut opening: HashMap<String, Vec<String>> = HashMap::new();
        for (job, (period, id)) in batch
            .iter()
            .zip(targets)
            .filter_map(|(job, target)| Some((job, target.as_ref()?)))
        {
            let opened = self.periods.peek(id).is_some_and(|a| a.is_open());
            if opened || opening.contains_key(id) || self.reads_no_gauge(job) {
                continue;
            }
            let (brand, _) = ledger_aggregates::ids::parse_period_stream_id(id)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let earlier = std::iter::successors(Some(period.prev()), |p| Some(p.prev()))
                .take(self.cfg.gauge_lookback_periods_max as usize)
                .map(|p| period_stream_id(&brand, p))
                .collect();
            opening.insert(id.clone(), earlier);
        }
        if opening.is_empty() {
            return Ok(HashMap::new());
        }
        let candidates: Vec<String> = opening.values().flatten().cloned().collect();
        let existing: HashSet<String> = self
            .log
            .existing_streams(PERIOD, &candidates)
            .await?
            .into_iter()
            .collect();
        let previous: HashMap<String, Option<String>> = opening
            .into_iter()
            .map(|(id, earlier)| (id, earlier.into_iter().find(|p| existing.contains(p))))
            .collect();
        let mut missing: Vec<(&'static str, String)> = previous
            .values()
            .flatten()
            .filter(|p| !self.periods.contains(*p))
            .map(|p| (PERIOD, p.clone()))
            .collect();
        missing.sort();
        missing.dedup();
        self.load(&missing).await?;
        Ok(previous
            .into_iter()
            .map(|(id, prev)| {
                let levels = prev
                    .and_then(|p| self.periods.peek(&p).map(|a| a.gauge_levels()))
                    .unwrap_or_default();
                (id, levels)
            })
            .collect())
    }

    /// A check without `consume` of a metric that is not a gauge: it writes nothing and
    /// its answer depends on that metric alone (an unknown metric is refused).
    fn reads_no_gauge(&self, job: &Job) -> bool {
        let Job::Period { req, .. } = job else {
            return false;
        };
        match &req.command {
            PeriodCommand::CheckQuota {
                metric,
                consume: false,
                ..
            } => self.catalog.metric_kinds().get(metric) != Some(&MetricKind::Gauge),
            _ => false,
        }
    }

    /// Outcomes of keys already used, from memory and, with [`KeyLookup::Log`], for
    /// the rest from the log.
    async fn known_keys(
        &mut self,
        batch: &[Job],
        targets: &[Option<Target>],
        lookup: KeyLookup,
    ) -> Result<HashMap<(String, String), (String, Outcome)>, StoreError> {
        let mut known = HashMap::new();
        let mut ask = Vec::new();
        for (job, target) in batch.iter().zip(targets) {
            let (Job::Period { req, .. }, Some((_, id))) = (job, target) else {
                continue;
            };
            let Some(key) = &req.idempotency_key else {
                continue;
            };
            let k = (id.clone(), key.to_string());
            match self.pending_keys.get(&k).or_else(|| self.keys.get(&k)) {
                Some(hit) => {
                    known.insert(k, hit.clone());
                }
                None if lookup == KeyLookup::Log => ask.push(k),
                None => {}
            }
        }
        if ask.is_empty() {
            return Ok(known);
        }
        for hit in self.log.find_keyed(PERIOD, &ask).await? {
            let event: LedgerEvent = serde_json::from_str(&hit.payload).map_err(|e| {
                StoreError::Corrupt(format!("{} #{}: {e}", hit.aggregate_id, hit.sequence))
            })?;
            let (brand, period) = ledger_aggregates::ids::parse_period_stream_id(&hit.aggregate_id)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let plan = self
                .periods
                .peek(&hit.aggregate_id)
                .and_then(|a| a.plan().cloned());
            let decision = plan.and_then(|p| UsagePeriodAggregate::decision_of(&event, &p));
            let outcome = Outcome {
                brand,
                period,
                events: vec![Committed {
                    sequence: hit.sequence as u64,
                    event,
                }],
                decision,
                replayed: true,
            };
            known.insert(
                (hit.aggregate_id, hit.idempotency_key),
                (hit.request_hash, outcome),
            );
        }
        Ok(known)
    }

    fn decide_period(
        &mut self,
        req: &PeriodRequest,
        fingerprint: &str,
        (period, id): (PeriodKey, &str),
        now: DateTime<Utc>,
        (carried, known): (&Carried, &Known),
        staged: &mut Staged,
    ) -> Result<Outcome, EngineError> {
        if let Some(key) = &req.idempotency_key {
            let k = (id.to_owned(), key.to_string());
            if let Some((hash, outcome)) = staged.keyed.get(&k).or_else(|| known.get(&k)) {
                if hash != fingerprint {
                    return Err(EngineError::KeyReuse(key.clone()));
                }
                if let Some(m) = &self.cfg.metrics {
                    m.idempotent_replays.inc();
                }
                return Ok(Outcome {
                    replayed: true,
                    ..outcome.clone()
                });
            }
        }
        // Borrowed, not cloned: the plan is copied only when a period opens.
        let brand = self
            .brands
            .peek(req.brand.as_str())
            .filter(|b| b.is_registered())
            .ok_or_else(|| EngineError::BrandNotRegistered(req.brand.clone()))?;
        // Refused before anything is opened or staged: a brand has no period, and no
        // usage, before it was registered (a period it never had is billed nothing).
        brand.check_existed(period, stamped_at(&req.command))?;
        let plan = brand
            .plan_for(period)
            .expect("a registered brand has a plan");
        // A period first opened by its close is billed on the plan it ended on.
        let plan = match &req.command {
            PeriodCommand::ClosePeriod {
                plan_at_end: Some(at_end),
                ..
            } => at_end.as_ref(),
            _ => plan,
        };
        let cached = self.periods.peek(id).expect("loaded before deciding");
        // Opening and the command are decided on a copy when the period is new, so a
        // refused command (or a pure check) leaves no `PeriodOpened` behind.
        let mut opening = None;
        if !cached.is_open() {
            let mut fresh = cached.clone();
            let facts = PeriodOpening {
                brand_id: req.brand.clone(),
                period,
                plan: plan.clone(),
                metric_kinds: self.catalog.metric_kinds().clone(),
                carried_levels: carried.get(id).cloned().unwrap_or_default(),
            };
            let events = fresh.decide_opening(&facts, now, &self.cfg.rules)?;
            events.iter().for_each(|e| fresh.fold(e));
            opening = Some((fresh, events));
        }
        let agg = match &mut opening {
            Some((fresh, _)) => fresh,
            None => self.periods.get_mut(id).expect("loaded before deciding"),
        };
        let first_sequence = agg.version + 1;
        let decision = check_decision(agg, &req.command, now)?;
        let mut events = agg.decide(&req.command, now, &self.cfg.rules)?;
        if let (Some(_), Some(plan)) = (&self.cfg.metrics, agg.plan()) {
            staged.tally(plan, &events);
        }
        let decision = decision.or_else(|| {
            let plan = agg.plan()?;
            events
                .first()
                .and_then(|e| UsagePeriodAggregate::decision_of(e, plan))
        });
        let decision = decision.map(|mut d| {
            d.consumed = matches!(events.first(), Some(LedgerEvent::UsageRecorded { .. }));
            d
        });
        let mut counted = false;
        if matches!(events.as_slice(), [LedgerEvent::UsageDenied { .. }]) {
            let denied = events.pop().expect("matched one event");
            match self.refusals.decide(id, denied, &mut staged.refusals) {
                Some(event) => events.push(event),
                None => counted = true,
            }
        }
        events.iter().for_each(|e| agg.fold(e));
        if events.is_empty() {
            // Nothing to write: a pure check, or a refusal counted in its window. A fresh
            // opening copy is dropped.
            let outcome = Outcome {
                brand: req.brand.clone(),
                period,
                events: Vec::new(),
                decision,
                replayed: false,
            };
            // A counted refusal's key is remembered in memory, so a retry is not counted
            // again.
            if let (true, Some(key)) = (counted, &req.idempotency_key) {
                staged.keyed.insert(
                    (id.to_owned(), key.to_string()),
                    (fingerprint.to_owned(), outcome.clone()),
                );
            }
            return Ok(outcome);
        }
        let every = self.cfg.snapshot_every_events;
        if let Some((fresh, open_events)) = opening {
            let opened_at = first_sequence - open_events.len() as u64;
            staged.stage(id, opened_at, &open_events, None, EMPTY_METADATA, every);
            self.periods.put(id.to_owned(), fresh);
        }
        let key = req
            .idempotency_key
            .as_ref()
            .map(|k| (k.to_string(), fingerprint.to_owned()));
        // Serialized once per command, not per event.
        let metadata = match req.metadata.is_empty() {
            true => Cow::Borrowed(EMPTY_METADATA),
            false => Cow::Owned(req.metadata.to_json()),
        };
        staged.stage(id, first_sequence, &events, key.clone(), &metadata, every);
        let committed = (first_sequence..)
            .zip(events)
            .map(|(sequence, event)| Committed { sequence, event })
            .collect();
        let outcome = Outcome {
            brand: req.brand.clone(),
            period,
            events: committed,
            decision,
            replayed: false,
        };
        if let Some((k, hash)) = key {
            staged
                .keyed
                .insert((id.to_owned(), k), (hash, outcome.clone()));
        }
        Ok(outcome)
    }

    fn decide_plan(
        &mut self,
        brand: &BrandId,
        (plan_id, effective): (&ledger_aggregates::PlanId, Option<Effective>),
        actor: &str,
        (now, carried): (DateTime<Utc>, &Carried),
        staged: &mut Staged,
    ) -> Result<PlanChange, EngineError> {
        let plan = self
            .catalog
            .plan(plan_id)
            .cloned()
            .ok_or_else(|| EngineError::UnknownPlan(plan_id.clone()))?;
        let agg = self
            .brands
            .get_mut(brand.as_str())
            .expect("loaded before deciding");
        let registered = !agg.is_registered();
        let period = PeriodKey::containing(now);
        let previous = agg.plan_for(period).cloned();
        let events = agg.decide(&BrandCommand::SetPlan {
            brand_id: brand.clone(),
            plan: plan.clone(),
            actor: actor.to_owned(),
            at: now,
            effective,
        })?;
        let effective_from = events.iter().find_map(|e| match e {
            BrandEvent::PlanChanged { effective_from, .. } => *effective_from,
            _ => None,
        });
        let every = self.cfg.snapshot_every_events;
        staged.stage_registry(brand, agg, &events, every);
        // The plan in force now takes effect in the brand's open period, in the same
        // commit; a change scheduled for a later period leaves it as it is.
        let plan = agg
            .plan_for(period)
            .cloned()
            .expect("a brand that just set a plan has one");
        let id = period_stream_id(brand, period);
        let changes_now = previous.as_ref().is_some_and(|p| *p != plan);
        let current = self.periods.get_mut(&id).expect("loaded before deciding");
        if let (true, false, Some(previous)) = (changes_now, current.is_open(), previous) {
            // The period so far ran on the previous plan: it opens on it now, so the
            // change splits it and each plan is billed for its share.
            let facts = PeriodOpening {
                brand_id: brand.clone(),
                period,
                plan: previous,
                metric_kinds: self.catalog.metric_kinds().clone(),
                carried_levels: carried.get(&id).cloned().unwrap_or_default(),
            };
            let opened = current.decide_opening(&facts, now, &self.cfg.rules)?;
            staged.stage(
                &id,
                current.version + 1,
                &opened,
                None,
                EMPTY_METADATA,
                every,
            );
            opened.iter().for_each(|e| current.fold(e));
        }
        let mut applied_to = None;
        if let Some(p) = self
            .periods
            .get_mut(&id)
            .filter(|p| p.is_open() && p.closed.is_none())
        {
            let applied = p.decide_plan_change(&plan, now, &self.cfg.rules)?;
            staged.stage(&id, p.version + 1, &applied, None, EMPTY_METADATA, every);
            if self.cfg.metrics.is_some() {
                staged.tally(&plan, &applied);
            }
            applied.iter().for_each(|e| p.fold(e));
            if !applied.is_empty() {
                applied_to = Some(period);
            }
        }
        Ok(PlanChange {
            brand: brand.clone(),
            plan: plan_id.clone(),
            registered,
            changed: !events.is_empty(),
            applied_to,
            effective_from,
        })
    }

    /// A step of a top-up order, decided by the brand's registry. The payment of an
    /// order also credits its period: both streams are appended in the same commit, so
    /// an order is never paid without its credit nor credited twice.
    fn decide_topup(
        &mut self,
        brand: &BrandId,
        step: &TopUpCommand,
        target: Option<(PeriodKey, &str)>,
        now: DateTime<Utc>,
        (carried, known): (&Carried, &Known),
        staged: &mut Staged,
    ) -> Result<TopUpChange, EngineError> {
        let agg = self
            .brands
            .peek(brand.as_str())
            .filter(|b| b.is_registered())
            .ok_or_else(|| EngineError::BrandNotRegistered(brand.clone()))?;
        let (number, events) = agg.decide_topup(step)?;
        let credit = match (events.first(), target) {
            (Some(BrandEvent::TopUp(TopUpEvent::Paid { .. })), Some(target)) => {
                let order = agg.topups.get(number).expect("a paid order is known");
                Some(PeriodRequest {
                    brand: brand.clone(),
                    period: Some(target.0),
                    command: PeriodCommand::ApplyTopUp {
                        metric: order.metric.clone(),
                        units: Quantity::new(order.units).expect("checked when the order opened"),
                        price: order.price,
                        reference: TopUpId {
                            brand: brand.clone(),
                            number,
                        }
                        .to_string(),
                        actor: order.actor.clone(),
                    },
                    idempotency_key: None,
                    metadata: Metadata::default(),
                })
            }
            _ => None,
        };
        let credited = match (credit, target) {
            (Some(req), Some(target)) => {
                Some(self.decide_period(&req, "", target, now, (carried, known), staged)?)
            }
            _ => None,
        };
        let every = self.cfg.snapshot_every_events;
        let agg = self
            .brands
            .get_mut(brand.as_str())
            .expect("loaded before deciding");
        staged.stage_registry(brand, agg, &events, every);
        let order = agg
            .topups
            .get(number)
            .cloned()
            .expect("the order a step concerns is known");
        Ok(TopUpChange {
            brand: brand.clone(),
            order,
            changed: !events.is_empty(),
            credited,
        })
    }

    fn decide_settings(
        &mut self,
        brand: &BrandId,
        settings: &ledger_aggregates::notifications::NotificationSettings,
        actor: &str,
        now: DateTime<Utc>,
        staged: &mut Staged,
    ) -> Result<bool, EngineError> {
        let every = self.cfg.snapshot_every_events;
        let agg = self
            .brands
            .get_mut(brand.as_str())
            .filter(|b| b.is_registered())
            .ok_or_else(|| EngineError::BrandNotRegistered(brand.clone()))?;
        let events = agg.decide(&BrandCommand::SetNotifications {
            settings: settings.clone(),
            actor: actor.to_owned(),
            at: now,
        })?;
        staged.stage_registry(brand, agg, &events, every);
        Ok(!events.is_empty())
    }

    /// Snapshot the streams due for one, as they stand with every staged event folded.
    fn stage_snapshots(&mut self, staged: &mut Staged) {
        for (t, id) in std::mem::take(&mut staged.snapshot_due) {
            let state = if t == PERIOD {
                self.periods
                    .peek(&id)
                    .map(|a| (a.version, serde_json::to_string(a)))
            } else {
                self.brands
                    .peek(&id)
                    .map(|a| (a.version, serde_json::to_string(a)))
            };
            // A stream evicted since it was staged is snapshotted at its next interval.
            if let Some((version, Ok(payload))) = state {
                staged.snapshots.push(NewSnapshot {
                    aggregate_type: t,
                    aggregate_id: id,
                    last_sequence: version as i64,
                    payload,
                });
            }
        }
    }
}

/// The period a request acts on.
pub(crate) fn target_period(req: &PeriodRequest, now: DateTime<Utc>) -> PeriodKey {
    if let Some(p) = req.period {
        return p;
    }
    match stamped_at(&req.command) {
        Some(at) => PeriodKey::containing(at),
        None => PeriodKey::containing(now),
    }
}

/// When the usage a command carries happened, if the caller stamped it.
pub(crate) fn stamped_at(command: &PeriodCommand) -> Option<DateTime<Utc>> {
    match command {
        PeriodCommand::RecordUsage { occurred_at, .. }
        | PeriodCommand::CheckQuota { occurred_at, .. } => *occurred_at,
        _ => None,
    }
}

/// A pure check answers what the state says: it appends nothing to rebuild the answer
/// from. Every other command answers from its first event, as it stood after it.
fn check_decision(
    agg: &UsagePeriodAggregate,
    command: &PeriodCommand,
    now: DateTime<Utc>,
) -> Result<Option<QuotaDecision>, EngineError> {
    match command {
        PeriodCommand::CheckQuota {
            metric,
            requested,
            consume: false,
            ..
        } => Ok(Some(agg.evaluate(metric, *requested, now)?)),
        _ => Ok(None),
    }
}

fn via_label(via: UsageVia) -> &'static str {
    match via {
        UsageVia::Record => "record",
        UsageVia::CheckQuota => "check_quota",
        UsageVia::Gauge => "gauge",
        UsageVia::Reservation => "reservation",
    }
}

/// What staging needs to know of an event of either stream type.
trait StreamEvent: serde::Serialize {
    const AGGREGATE_TYPE: &'static str;
    const VERSION: &'static str;
    fn type_str(&self) -> &'static str;
    /// The event, if it is a brand-period's: what the commit listener is told of.
    fn of_period(&self) -> Option<&LedgerEvent>;
}

impl StreamEvent for LedgerEvent {
    const AGGREGATE_TYPE: &'static str = PERIOD;
    const VERSION: &'static str = LEDGER_EVENT_VERSION;
    fn type_str(&self) -> &'static str {
        self.event_type_str()
    }
    fn of_period(&self) -> Option<&LedgerEvent> {
        Some(self)
    }
}

impl StreamEvent for BrandEvent {
    const AGGREGATE_TYPE: &'static str = BRAND;
    const VERSION: &'static str = BRAND_EVENT_VERSION;
    fn type_str(&self) -> &'static str {
        self.event_type_str()
    }
    fn of_period(&self) -> Option<&LedgerEvent> {
        None
    }
}

impl Staged {
    /// Stage a registry decision's `events` after what `agg` holds, and fold them in:
    /// the cached registry then includes them, as every later decision of the batch needs.
    fn stage_registry(
        &mut self,
        brand: &BrandId,
        agg: &mut BrandAggregate,
        events: &[BrandEvent],
        every: u64,
    ) {
        self.stage(
            brand.as_str(),
            agg.version + 1,
            events,
            None,
            EMPTY_METADATA,
            every,
        );
        events.iter().for_each(|e| agg.fold(e));
    }

    /// Stage the events one decision produced for stream `id`, numbered from `first`.
    /// The idempotency key goes on the first event only: one row per key. The stream is
    /// marked touched, and due for a snapshot when a sequence reaches a multiple of `every`.
    fn stage<E: StreamEvent>(
        &mut self,
        id: &str,
        first: u64,
        events: &[E],
        mut key: Option<(String, String)>,
        metadata: &str,
        every: u64,
    ) {
        if events.is_empty() {
            return;
        }
        for (sequence, event) in (first..).zip(events) {
            let (idempotency_key, request_hash) = key.take().unzip();
            if let Some(e) = event.of_period() {
                self.period_events.push((self.events.len(), e.clone()));
            }
            self.events.push(NewEvent {
                aggregate_type: E::AGGREGATE_TYPE,
                aggregate_id: id.to_owned(),
                sequence: sequence as i64,
                event_type: event.type_str(),
                event_version: E::VERSION,
                payload: payload_json(event),
                metadata: metadata.to_owned(),
                idempotency_key,
                request_hash,
            });
            if sequence % every.max(1) == 0 {
                self.snapshot_due.push((E::AGGREGATE_TYPE, id.to_owned()));
            }
        }
        let last = first + events.len() as u64 - 1;
        self.touched.push((E::AGGREGATE_TYPE, id.to_owned(), last));
    }
}

/// An event's JSON, written into a buffer sized for it at once: growing from serde_json's
/// default 128 bytes reallocated every payload two or three times.
fn payload_json(event: &impl serde::Serialize) -> String {
    let mut buf = Vec::with_capacity(PAYLOAD_BYTES_TYPICAL);
    serde_json::to_writer(&mut buf, event).expect("events always serialize");
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

fn reply_all(jobs: impl Iterator<Item = Job>, answers: Result<Vec<Answer>, EngineError>) {
    match answers {
        Ok(answers) => {
            for (job, answer) in jobs.zip(answers) {
                // A caller that gave up waiting is not an error of the ledger.
                let _ = match (job, answer) {
                    (Job::Period { reply, .. }, Answer::Period(r)) => reply.send(r).map_err(drop),
                    (Job::SetPlan { reply, .. }, Answer::Plan(r)) => reply.send(r).map_err(drop),
                    (Job::ReadPeriod { reply, .. }, Answer::ReadPeriod(r)) => {
                        reply.send(Ok(r)).map_err(drop)
                    }
                    (Job::ReadBrand { reply, .. }, Answer::ReadBrand(r)) => {
                        reply.send(Ok(r)).map_err(drop)
                    }
                    (Job::TopUp { reply, .. }, Answer::TopUp(r)) => reply.send(r).map_err(drop),
                    (Job::SetNotifications { reply, .. }, Answer::Notifications(r)) => {
                        reply.send(r).map_err(drop)
                    }
                    _ => unreachable!("answers are built in job order, one per job"),
                };
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "batch failed; every caller in it is told");
            for job in jobs {
                let err = e.clone_for_fanout();
                let _ = match job {
                    Job::Period { reply, .. } => reply.send(Err(err)).map_err(drop),
                    Job::SetPlan { reply, .. } => reply.send(Err(err)).map_err(drop),
                    Job::ReadPeriod { reply, .. } => reply.send(Err(err)).map_err(drop),
                    Job::ReadBrand { reply, .. } => reply.send(Err(err)).map_err(drop),
                    Job::TopUp { reply, .. } => reply.send(Err(err)).map_err(drop),
                    Job::SetNotifications { reply, .. } => reply.send(Err(err)).map_err(drop),
                };
            }
        }
    }
}
