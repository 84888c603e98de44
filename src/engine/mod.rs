//! The command engine: one writer per process owns every aggregate in memory and
//! commits commands in groups.
//!
//! Callers put a job on a bounded queue and wait. The writer takes whatever is queued
//! (up to [`EngineConfig::batch_commands_max`]), decides each command against the
//! running state, appends all resulting events in one statement, and only then answers.
//! While that append is in flight, new jobs queue up and form the next batch: the
//! batch size grows with the load, which is what group commit means.

mod freshness;
pub mod holds;
mod probe;
mod refusals;
mod topups;
mod writer;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use ledger_aggregates::catalog::Catalog;
use ledger_aggregates::notifications::NotificationSettings;
use ledger_aggregates::period::LedgerRules;
use ledger_aggregates::topup::{TopUpCommand, TopUpError, TopUpOrder};
use ledger_aggregates::{
    BeforeRegistration, BrandAggregate, BrandError, BrandId, Effective, IdempotencyKey,
    LedgerError, LedgerEvent, MetricKey, PeriodCommand, PeriodKey, PlanId, QuotaDecision,
    UsagePeriodAggregate,
};
use ledger_projections::ProjectedEvent;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::store::{EventLog, StoreError};
use crate::tail::watermark::Watermarks;
pub use freshness::{Freshness, STALE_EVENTS_MAX};
pub use probe::{ProbeCounts, ProbeTotals, PROBE_UNREAD_MAX};

/// Told of what the writers committed, before their callers hear of it: the read models
/// fold this process's own commits at once instead of reading them back from the log.
/// Called on the writer's path, so it must not block.
pub trait CommitListener: Send + Sync + 'static {
    /// The brand-period events of one commit, in the order they were appended, with
    /// their log positions.
    fn committed(&self, events: Vec<ProjectedEvent>);
}

/// The one listener the writers call, set once after the engine starts.
pub(crate) type Listener = Arc<OnceLock<Arc<dyn CommitListener>>>;

/// Limits and tuning of the engine. Every field is a named limit with its reason.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Jobs waiting for the writer. Past this, callers get `Overloaded` at once instead
    /// of queueing without bound: 64 Ki jobs are about one second of peak load.
    pub queue_commands_max: usize,
    /// Independent writers, each owning the brands that hash to it. Appends of
    /// different shards commit concurrently (PostgreSQL flushes their WAL together);
    /// one brand is never split, so a hot brand is one writer whatever this number.
    /// One by default: on the two-core reference machine, two shards measured no gain
    /// (the writer's CPU, not the commit wait, bounds the many-brands load there).
    pub writer_shards: usize,
    /// Jobs decided and committed together. 1,024 events keep one append statement
    /// around a megabyte and its commit in the low milliseconds.
    pub batch_commands_max: usize,
    /// Aggregates kept in memory (least recently used evicted). 100 Ki period streams
    /// of a few KiB each stay well under a GiB.
    pub cache_streams_max: usize,
    /// After a batch is answered, the next append waits at most this long for as many
    /// jobs as were just answered to come back (callers in a loop reply at once). A
    /// commit costs about the same for 30 rows as for 100, so a fuller batch is nearly
    /// free throughput; PostgreSQL's `commit_delay` makes the same trade. Half a
    /// millisecond is about half a commit on the reference machine.
    pub batch_linger_max: std::time::Duration,
    /// A snapshot is written every this many events of a stream, in the same commit,
    /// so loading a hot stream never folds more than this many events.
    pub snapshot_every_events: u64,
    /// Recent idempotent outcomes kept in memory; older keys are found in the log.
    pub idempotency_cache_max: usize,
    /// Times a batch is re-decided after another process appended first.
    pub conflict_retries_max: u32,
    /// How far back a new period looks for gauge levels to carry over.
    pub gauge_lookback_periods_max: u32,
    /// Usage may be stamped at most this far in the future (callers' clock skew).
    pub future_skew_max: Duration,
    /// Repeated refusals of one metric by one way on a brand-period are appended as one
    /// event per window (see `refusals`): a client hammering an exhausted quota grows the
    /// log by two events a minute, not one per request. Zero appends each alone.
    pub refusal_window: std::time::Duration,
    /// Refusal windows kept (about 200 bytes each); past it refusals are appended alone.
    pub refusal_windows_max: usize,
    pub rules: LedgerRules,
    /// Where the writers count batches, appends, conflicts, refusals and crossings;
    /// `None` (one-shot commands, most tests) counts nothing.
    pub metrics: Option<Arc<crate::metrics::EngineMetrics>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            queue_commands_max: 65_536,
            writer_shards: 1,
            batch_commands_max: 1_024,
            batch_linger_max: std::time::Duration::from_micros(500),
            cache_streams_max: 100_000,
            snapshot_every_events: 1_000,
            idempotency_cache_max: 100_000,
            conflict_retries_max: 8,
            gauge_lookback_periods_max: 36,
            future_skew_max: Duration::minutes(5),
            refusal_window: std::time::Duration::from_secs(60),
            refusal_windows_max: 100_000,
            rules: LedgerRules::default(),
            metrics: None,
        }
    }
}

/// One caller's command for a brand's period, with what the engine needs around it.
/// The engine decides it at its clock's reading.
#[derive(Debug, Clone)]
pub struct PeriodRequest {
    pub brand: BrandId,
    /// The period to act on. `None`: the period of `occurred_at` for records, else now's.
    pub period: Option<PeriodKey>,
    pub command: PeriodCommand,
    pub idempotency_key: Option<IdempotencyKey>,
    /// Stored with every event the command appends; part of the idempotency fingerprint.
    pub metadata: Metadata,
}

/// Entries of one command's metadata: enough for a request id, a source and a few
/// caller tags; more belongs in the caller's own systems, not in every event row.
pub const METADATA_ENTRIES_MAX: usize = 16;
/// Metadata keys are short identifiers.
pub const METADATA_KEY_CHARS_MAX: usize = 64;
/// Metadata values are tags and ids, not documents.
pub const METADATA_VALUE_CHARS_MAX: usize = 256;
/// Caller input an error message quotes back, at most: enough to recognise a key
/// (the longest valid one fits), while a 5,000-character key does not make a
/// 5,000-character answer and log line.
pub const ECHO_CHARS_MAX: usize = 64;

/// `text` as an error may quote it: whole up to [`ECHO_CHARS_MAX`] characters, else its
/// first ones followed by an ellipsis.
pub fn echo(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(ECHO_CHARS_MAX) {
        None => text.into(),
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
    }
}

/// Facts about a command (who sent it, the caller's request id, …) stored in the
/// events' `metadata` column. A flat string map because that is the cqrs-es metadata
/// type: `postgres-es` and `sqlite-es` read it back as is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Metadata(BTreeMap<String, String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata holds {0} entries; at most {METADATA_ENTRIES_MAX} are accepted")]
    TooMany(usize),
    /// The key as echoed: at most [`ECHO_CHARS_MAX`] characters and an ellipsis.
    #[error(
        "metadata key {0:?} must be 1 to {METADATA_KEY_CHARS_MAX} characters of [A-Za-z0-9_.-]"
    )]
    BadKey(String),
    /// The key of the value, as echoed.
    #[error("metadata value of {0:?} is longer than {METADATA_VALUE_CHARS_MAX} characters")]
    ValueTooLong(String),
}

impl Metadata {
    pub fn parse(entries: BTreeMap<String, String>) -> Result<Self, MetadataError> {
        if entries.len() > METADATA_ENTRIES_MAX {
            return Err(MetadataError::TooMany(entries.len()));
        }
        for (k, v) in &entries {
            let key_ok = !k.is_empty()
                && k.chars().count() <= METADATA_KEY_CHARS_MAX
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            // Keys are echoed capped: a bad key can be of any length.
            if !key_ok {
                return Err(MetadataError::BadKey(echo(k).into_owned()));
            }
            if v.chars().count() > METADATA_VALUE_CHARS_MAX {
                return Err(MetadataError::ValueTooLong(echo(k).into_owned()));
            }
        }
        Ok(Metadata(entries))
    }

    /// Set an entry the service itself vouches for (e.g. `actor`), replacing any
    /// caller value under that key.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.insert(key.to_owned(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }

    /// The JSON text stored in the `metadata` column.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("a string map always serializes")
    }
}

/// An event with its place in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Committed {
    pub sequence: u64,
    pub event: LedgerEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub brand: BrandId,
    pub period: PeriodKey,
    /// What this command appended (empty for a pure check). For a replayed key, the
    /// first event the original command appended.
    pub events: Vec<Committed>,
    /// For records and checks: the quota decision.
    pub decision: Option<QuotaDecision>,
    /// True when an earlier command with the same idempotency key is being answered.
    pub replayed: bool,
}

impl Outcome {
    /// True when a `block` quota refused the command, whether its refusal was appended
    /// alone or counted with others (then `events` is empty).
    pub fn refused(&self) -> bool {
        self.decision.as_ref().is_some_and(|d| !d.allowed)
            || matches!(
                self.events.first(),
                Some(Committed {
                    event: LedgerEvent::UsageDenied { .. },
                    ..
                })
            )
    }
}

/// What a plan change did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanChange {
    pub brand: BrandId,
    pub plan: PlanId,
    pub registered: bool,
    pub changed: bool,
    /// The open period the new plan was applied to, if any.
    pub applied_to: Option<PeriodKey>,
    /// The first period on the new plan when it does not take effect at once.
    pub effective_from: Option<PeriodKey>,
}

/// What a step of a top-up order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpChange {
    pub brand: BrandId,
    /// The order after the step.
    pub order: TopUpOrder,
    /// False for a repeat: the order already stood so.
    pub changed: bool,
    /// The credit appended to a period when this step paid the order.
    pub credited: Option<Outcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the ledger is overloaded; retry shortly")]
    Overloaded,
    #[error("the ledger is shutting down")]
    Stopped,
    #[error("brand {0} is not registered")]
    BrandNotRegistered(BrandId),
    /// The command is for a time before the brand existed.
    #[error(transparent)]
    BeforeRegistration(#[from] BeforeRegistration),
    #[error("unknown metric {0}")]
    UnknownMetric(MetricKey),
    #[error("unknown plan {0}")]
    UnknownPlan(PlanId),
    #[error("occurredAt {occurred_at} is more than {skew_s} s in the future")]
    InFuture {
        occurred_at: DateTime<Utc>,
        skew_s: i64,
    },
    #[error("a period is required for this action")]
    PeriodRequired,
    #[error("period {period} has not ended: it can be closed from {end}")]
    NotEnded {
        period: PeriodKey,
        end: DateTime<Utc>,
    },
    #[error("idempotency key {0} was already used with a different request")]
    KeyReuse(IdempotencyKey),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Brand(#[from] BrandError),
    /// Shared: one failed append fails every command of its batch.
    #[error(transparent)]
    Store(Arc<StoreError>),
}

impl From<TopUpError> for EngineError {
    fn from(e: TopUpError) -> Self {
        EngineError::Brand(e.into())
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(Arc::new(e))
    }
}

impl EngineError {
    /// The error told to every caller of a failed batch.
    pub(crate) fn clone_for_fanout(&self) -> EngineError {
        match self {
            EngineError::Store(e) => EngineError::Store(e.clone()),
            other => unreachable!("only store failures fail a whole batch, not {other}"),
        }
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

pub(crate) enum Job {
    Period {
        req: PeriodRequest,
        /// SHA-256 of the request, for idempotency-key payload checks.
        fingerprint: String,
        /// For pure checks: the registry's and the period's versions in the log when
        /// the check was asked; a cached state behind them is reloaded first.
        logged: Option<[u64; 2]>,
        reply: Reply<Outcome>,
    },
    SetPlan {
        brand: BrandId,
        plan: PlanId,
        actor: String,
        /// `None`: upgrades now, downgrades at the next period.
        effective: Option<Effective>,
        reply: Reply<PlanChange>,
    },
    ReadPeriod {
        brand: BrandId,
        period: PeriodKey,
        /// The stream's version in the log when the read was asked: a cached state
        /// behind it (another process appended) is reloaded first.
        logged: u64,
        reply: Reply<Option<UsagePeriodAggregate>>,
    },
    ReadBrand {
        brand: BrandId,
        logged: u64,
        reply: Reply<Option<BrandAggregate>>,
    },
    TopUp {
        brand: BrandId,
        step: TopUpCommand,
        /// The registry's version in the log when the step was asked.
        logged: u64,
        reply: Reply<TopUpChange>,
    },
    /// Replace a brand's notification settings; answers whether they changed.
    SetNotifications {
        brand: BrandId,
        settings: NotificationSettings,
        actor: String,
        logged: u64,
        reply: Reply<bool>,
    },
}

/// A cloneable handle to the engine. Dropping every handle stops the writers after
/// they have answered what is queued.
#[derive(Clone)]
pub struct Engine {
    /// One queue per writer shard; a brand always goes to the same shard.
    shards: Arc<[mpsc::Sender<Job>]>,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    config: Arc<EngineConfig>,
    /// Set by [`Engine::drain`]: the writers stop taking jobs, answer those queued, end.
    closing: watch::Sender<bool>,
    /// The writer tasks, awaited by [`Engine::drain`].
    writers: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// What the writers acknowledged per stream, for reads of the read models.
    marks: Arc<Watermarks>,
    /// Batched version probes of pure checks.
    prober: probe::Prober,
    /// How far the log was compared with the writers' caches.
    freshness: Arc<Freshness>,
    /// Where holds placed here are announced to the sweeper that expires them.
    holds: holds::Notices,
    /// Told of every commit, see [`Engine::on_commit`].
    listener: Listener,
}

impl Engine {
    /// Start the writer tasks on the current runtime.
    pub fn start(
        log: Arc<dyn EventLog>,
        catalog: Arc<Catalog>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Engine {
        let n = config.writer_shards.max(1);
        // Each shard gets an equal part of the queue and cache budgets.
        let shard_cfg = Arc::new(EngineConfig {
            queue_commands_max: (config.queue_commands_max / n).max(1),
            cache_streams_max: (config.cache_streams_max / n).max(1),
            idempotency_cache_max: (config.idempotency_cache_max / n).max(1),
            refusal_windows_max: (config.refusal_windows_max / n).max(1),
            ..config.clone()
        });
        let closing = watch::Sender::new(false);
        let marks = Arc::new(Watermarks::new());
        let listener = Listener::default();
        let freshness = Arc::new(Freshness::new(n));
        let mut writers = Vec::with_capacity(n);
        let shards: Vec<_> = (0..n)
            .map(|shard| {
                let (tx, rx) = mpsc::channel(shard_cfg.queue_commands_max);
                let w = writer::Writer::new(
                    log.clone(),
                    catalog.clone(),
                    clock.clone(),
                    shard_cfg.clone(),
                    marks.clone(),
                    listener.clone(),
                    (freshness.clone(), shard),
                );
                writers.push(tokio::spawn(w.run(rx, closing.subscribe())));
                tx
            })
            .collect();
        let config = Arc::new(config);
        let prober = probe::Prober::start(log.clone(), freshness.clone());
        let shards: Arc<[mpsc::Sender<Job>]> = shards.into();
        let holds = holds::start(
            log.clone(),
            Arc::downgrade(&shards),
            clock.clone(),
            closing.subscribe(),
        );
        Engine {
            shards,
            catalog,
            clock,
            config,
            closing,
            writers: Arc::new(Mutex::new(writers)),
            marks,
            prober,
            freshness,
            holds,
            listener,
        }
    }

    /// How the version probes of reads and pure checks were answered since start.
    pub fn probe_counts(&self) -> &ProbeCounts {
        &self.prober.counts
    }

    /// Where a consumer of the log tells the writers what the log holds (see
    /// [`Freshness`]).
    pub fn freshness(&self) -> Arc<Freshness> {
        self.freshness.clone()
    }

    /// Tell `listener` of every commit from now on, before its callers are answered.
    /// `false` (and nothing changes) when one is already set.
    pub fn on_commit(&self, listener: Arc<dyn CommitListener>) -> bool {
        self.listener.set(listener).is_ok()
    }

    /// Stop taking commands, answer every one already queued, and wait for the writers
    /// to end. Later commands are answered [`EngineError::Stopped`].
    pub async fn drain(&self) {
        self.closing.send_replace(true);
        let writers = std::mem::take(&mut *self.writers.lock().expect("writers lock"));
        for w in writers {
            if let Err(e) = w.await {
                tracing::error!(error = %e, "a writer task failed while draining");
            }
        }
    }

    /// The streams this engine acknowledged writes on, as the read models' readers
    /// need them.
    pub fn watermarks(&self) -> Arc<Watermarks> {
        self.marks.clone()
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Commands waiting in the writers' queues now.
    pub fn queued(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.max_capacity() - s.capacity())
            .sum()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Run one period command. Bad input is refused here, before it reaches the queue.
    pub async fn execute(&self, mut req: PeriodRequest) -> Result<Outcome, EngineError> {
        self.validate(&req)?;
        // Only keyed commands are ever compared, so only they pay for the hash.
        let fingerprint = match req.idempotency_key {
            Some(_) => fingerprint(&req),
            None => String::new(),
        };
        let logged = match req.command {
            PeriodCommand::CheckQuota { consume: false, .. } => {
                // Probed for the period decided on, fixed now so the writer uses the same.
                let period = writer::target_period(&req, self.clock.now());
                req.period = Some(period);
                let keys = vec![
                    (BrandAggregate::TYPE, req.brand.to_string()),
                    (
                        UsagePeriodAggregate::TYPE,
                        ledger_aggregates::ids::period_stream_id(&req.brand, period),
                    ),
                ];
                match self.probe(keys).await?[..] {
                    [brand, period] => Some([brand, period]),
                    _ => unreachable!("one version per key"),
                }
            }
            _ => None,
        };
        let brand = req.brand.clone();
        let outcome = self
            .submit(&brand, |reply| Job::Period {
                req,
                fingerprint,
                logged,
                reply,
            })
            .await?;
        if !outcome.replayed {
            self.holds
                .placed(&outcome.brand, outcome.period, &outcome.events);
        }
        Ok(outcome)
    }

    /// Register a brand on a plan, or move it to another plan by the default rule: an
    /// upgrade now (applied to its open period), a downgrade at the next period.
    pub async fn set_plan(
        &self,
        brand: BrandId,
        plan: PlanId,
        actor: String,
    ) -> Result<PlanChange, EngineError> {
        self.change_plan(brand, plan, actor, None).await
    }

    /// [`Engine::set_plan`], taking effect when `effective` says (`None`: the rule).
    pub async fn change_plan(
        &self,
        brand: BrandId,
        plan: PlanId,
        actor: String,
        effective: Option<Effective>,
    ) -> Result<PlanChange, EngineError> {
        if self.catalog.plan(&plan).is_none() {
            return Err(EngineError::UnknownPlan(plan));
        }
        self.submit(&brand.clone(), |reply| Job::SetPlan {
            brand,
            plan,
            actor,
            effective,
            reply,
        })
        .await
    }

    /// The period's aggregate as of every command answered so far (`None`: no events),
    /// including what other processes (the CLI, a second instance) appended before the
    /// call: one indexed probe of the log (shared with concurrent reads) decides
    /// whether the cached state is behind.
    pub async fn period_state(
        &self,
        brand: BrandId,
        period: PeriodKey,
    ) -> Result<Option<UsagePeriodAggregate>, EngineError> {
        let id = ledger_aggregates::ids::period_stream_id(&brand, period);
        let logged = self.probe_one(UsagePeriodAggregate::TYPE, id).await?;
        self.submit(&brand.clone(), |reply| Job::ReadPeriod {
            brand,
            period,
            logged,
            reply,
        })
        .await
    }

    /// The brand registry's state, fresh in the same sense as [`Engine::period_state`].
    pub async fn brand_state(&self, brand: BrandId) -> Result<Option<BrandAggregate>, EngineError> {
        let logged = self
            .probe_one(BrandAggregate::TYPE, brand.to_string())
            .await?;
        self.submit(&brand.clone(), |reply| Job::ReadBrand {
            brand,
            logged,
            reply,
        })
        .await
    }

    /// The versions of `keys` in the log now, batched with concurrent reads.
    async fn probe(&self, keys: probe::ProbeKeys) -> Result<Vec<u64>, EngineError> {
        match self.prober.versions(keys).await {
            Some(versions) => versions.map_err(EngineError::Store),
            None => Err(EngineError::Overloaded),
        }
    }

    async fn probe_one(
        &self,
        aggregate_type: &'static str,
        id: String,
    ) -> Result<u64, EngineError> {
        let versions = self.probe(vec![(aggregate_type, id)]).await?;
        Ok(versions[0])
    }

    async fn submit<T>(
        &self,
        brand: &BrandId,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<T, EngineError> {
        submit(&self.shards, brand, job).await
    }

    fn validate(&self, req: &PeriodRequest) -> Result<(), EngineError> {
        if let Some(metric) = req.command.metric() {
            if self.catalog.metric(metric).is_none() {
                return Err(EngineError::UnknownMetric(metric.clone()));
            }
        }
        if let Some(at) = writer::stamped_at(&req.command) {
            if at > self.clock.now() + self.config.future_skew_max {
                return Err(EngineError::InFuture {
                    occurred_at: at,
                    skew_s: self.config.future_skew_max.num_seconds(),
                });
            }
            // Refused here, before any stream is loaded: whether a period still takes
            // usage depends on the clock alone, and a stale timestamp (a replayed queue,
            // a zeroed clock) must not make the writer open or look back from 1970.
            let period = PeriodKey::containing(at);
            let deadline = self.config.rules.accepts_usage_until(period);
            if self.clock.now() > deadline {
                return Err(LedgerError::TooLate { period, deadline }.into());
            }
        }
        if let PeriodCommand::ClosePeriod { .. } = &req.command {
            self.check_ended(req.period.ok_or(EngineError::PeriodRequired)?)?;
        }
        Ok(())
    }

    /// A period can be closed once it has ended: an earlier close would freeze an
    /// invoice that usage of the period still changes.
    pub fn check_ended(&self, period: PeriodKey) -> Result<(), EngineError> {
        match self.clock.now() < period.end() {
            true => Err(EngineError::NotEnded {
                period,
                end: period.end(),
            }),
            false => Ok(()),
        }
    }
}

/// The shard of a brand: a fixed hash, so every stream of the brand (registry and
/// periods) has one writer and one cache.
fn shard<'a>(shards: &'a [mpsc::Sender<Job>], brand: &BrandId) -> &'a mpsc::Sender<Job> {
    &shards[shard_index(shards.len(), brand.as_str())]
}

/// The writer shard of `brand`, of `shards`.
fn shard_index(shards: usize, brand: &str) -> usize {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() uses fixed keys: the same brand maps to the same shard.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    brand.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// Queue a job on its brand's writer and wait for the answer.
async fn submit<T>(
    shards: &[mpsc::Sender<Job>],
    brand: &BrandId,
    job: impl FnOnce(Reply<T>) -> Job,
) -> Result<T, EngineError> {
    let (reply, rx) = oneshot::channel();
    shard(shards, brand)
        .try_send(job(reply))
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EngineError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => EngineError::Stopped,
        })?;
    rx.await.map_err(|_| EngineError::Stopped)?
}

/// SHA-256 over the canonical JSON of what the request asks, so a retry with the same
/// key but another payload is recognised. Stable across restarts and versions as long
/// as the `PeriodCommand` serialization is; `fingerprints_of_stored_keys_never_change`
/// pins it.
fn fingerprint(req: &PeriodRequest) -> String {
    #[derive(Serialize)]
    struct Canon<'a> {
        brand: &'a BrandId,
        period: Option<PeriodKey>,
        /// Named `action` since the first stored keys: the name is part of the hash.
        action: &'a PeriodCommand,
        // Absent when empty, so fingerprints of requests without metadata are the
        // ones recorded before metadata existed.
        #[serde(skip_serializing_if = "Metadata::is_empty")]
        metadata: &'a Metadata,
    }
    let canon = serde_json::to_vec(&Canon {
        brand: &req.brand,
        period: req.period,
        action: &req.command,
        metadata: &req.metadata,
    })
    .expect("requests always serialize");
    // Into a fixed buffer: `hex::encode` collects its digits one `char` at a time.
    let mut text = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(canon), &mut text).expect("64 bytes hold 32 in hex");
    String::from_utf8(text.to_vec()).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use ledger_aggregates::{Money, PlanDefinition, Quantity};

    use super::*;

    fn m(s: &str) -> MetricKey {
        MetricKey::parse(s).unwrap()
    }

    fn q(n: u64) -> Quantity {
        Quantity::new(n).unwrap()
    }

    /// A plan written out in full, so the pinned fingerprint does not follow edits of
    /// the default catalog.
    fn plan() -> PlanDefinition {
        serde_json::from_str(
            r#"{"id":"starter","name":"Starter","basePriceCents":2900,"currency":"EUR",
            "headline":"For makers","catalogVersion":"2026.1","quotas":[{"metric":"renders_3d",
            "label":"3D renders","description":"Rendered scenes","limit":10,"period":"month",
            "overage":"charge","overageRate":"0.5","notificationThresholds":[50,75,90],
            "unit":"renders","kind":"counter"}],"features":[{"id":"api","label":"API",
            "enabled":true}]}"#,
        )
        .unwrap()
    }

    fn request(command: PeriodCommand) -> PeriodRequest {
        PeriodRequest {
            brand: BrandId::parse("acme").unwrap(),
            period: None,
            command,
            idempotency_key: Some(IdempotencyKey::parse("k-1").unwrap()),
            metadata: Metadata::default(),
        }
    }

    #[test]
    fn an_error_echoes_at_most_the_echo_limit_of_caller_input() {
        // A key of the longest valid length is echoed whole; a longer one is cut at
        // the limit (counted in characters, so a multi-byte key is never split inside
        // a character) and ends with an ellipsis.
        let fits = "k".repeat(ECHO_CHARS_MAX);
        assert_eq!(echo(&fits), fits.as_str());
        let long = "é".repeat(5_000);
        let echoed = echo(&long);
        assert_eq!(echoed.chars().count(), ECHO_CHARS_MAX + 1);
        assert!(echoed.ends_with('…'), "{echoed}");
        let bad = [(long, "v".to_owned())].into_iter().collect();
        let err = Metadata::parse(bad).unwrap_err().to_string();
        assert!(err.chars().count() < 2 * ECHO_CHARS_MAX + 80, "{err}");
    }

    #[test]
    fn fingerprints_of_stored_keys_never_change() {
        // Proves a retry after an upgrade is still recognised: these hashes were
        // computed with the engine's former request type (`Action`), and keys stored
        // since hold them. A failure here means the command's serialization changed.
        let at = Utc.with_ymd_and_hms(2026, 11, 15, 12, 30, 0).unwrap();
        let mut tagged = request(PeriodCommand::RecordUsage {
            metric: m("api_calls"),
            quantity: q(3),
            occurred_at: Some(at),
        });
        tagged.period = Some(PeriodKey::parse("2026-11").unwrap());
        tagged.metadata = Metadata::parse(
            [("source", "batch"), ("request_id", "r-9")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
        )
        .unwrap();
        let cases = [
            (
                "record",
                request(PeriodCommand::RecordUsage {
                    metric: m("api_calls"),
                    quantity: q(3),
                    occurred_at: None,
                }),
                "13ae3b9c95c6661185fe65152477c241802cf0b4f5ddab86a5f4a6e8e85b603c",
            ),
            (
                "record at a time, with metadata",
                tagged,
                "14af43f70f5eefbd1e024f250365ef1555ecaf673d3dea20bf95c1928220f4bd",
            ),
            (
                "check",
                request(PeriodCommand::CheckQuota {
                    metric: m("team_members"),
                    requested: q(1),
                    consume: true,
                    occurred_at: None,
                }),
                "5b8b8d40987e11a54ca54a15590929c080fd604878eb14e0eec97962e516fe6e",
            ),
            (
                "gauge",
                request(PeriodCommand::SetGaugeLevel {
                    metric: m("storage_gb"),
                    level: 7,
                }),
                "e08ad3193c28af83a542bd553329cac692e613dbd805df7405ff6e5866ca65bb",
            ),
            (
                "top-up",
                request(PeriodCommand::ApplyTopUp {
                    metric: m("renders_3d"),
                    units: q(25),
                    price: Money::from_minor(1250),
                    reference: "stripe:pi_1".into(),
                    actor: "billing".into(),
                }),
                "7add34797f81a651dea41026a695424a6c4926e156f535f00136a6b62b5dce40",
            ),
            (
                "adjustment",
                request(PeriodCommand::AdjustUsage {
                    metric: m("renders_3d"),
                    delta: -4,
                    actor: "support".into(),
                    reason: "double count".into(),
                }),
                "305f18702853c6d1211e74c93b74f4629afbac8010722a3338a9599dc27520fa",
            ),
            (
                "close",
                request(PeriodCommand::ClosePeriod {
                    actor: "billing".into(),
                    plan_at_end: None,
                }),
                "f8e5db2b30148e78f19d46e93f20ee007783b77004f38cbb021c7f1e80d1406a",
            ),
            (
                "close on the plan at the end",
                request(PeriodCommand::ClosePeriod {
                    actor: "billing".into(),
                    plan_at_end: Some(Box::new(plan())),
                }),
                "fce637f99c803fc2c2bb50ca15c2c0c331398056f75b33f93e74d61707c54760",
            ),
        ];
        for (what, req, pinned) in cases {
            assert_eq!(fingerprint(&req), pinned, "{what}");
        }
        // What the first request hashes as its command, readable where a hash is not.
        let record = request(PeriodCommand::RecordUsage {
            metric: m("api_calls"),
            quantity: q(3),
            occurred_at: None,
        });
        assert_eq!(
            serde_json::to_string(&record.command).unwrap(),
            r#"{"action":"record","metric":"api_calls","quantity":3,"occurred_at":null}"#
        );
    }
}
