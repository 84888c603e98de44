//! The brand-period aggregate: all usage of one brand in one billing period.
//!
//! `decide` holds every business rule and emits events; `apply` only folds them. The
//! first event of a stream (`PeriodOpened`) snapshots the plan and the metric kinds in
//! force, so a replay never needs today's catalog. Usage events carry the running
//! totals, the effective limit and the overage cost after them.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use crate::catalog::{
    MetricKind, OveragePolicy, PlanDefinition, PlanQuota, CRITICAL_THRESHOLD_PCT,
};
use crate::hold::{Hold, HoldTtl, Release, OPEN_HOLDS_MAX};
use crate::ids::{BrandId, MetricKey, PeriodKey, PlanId, Quantity, QUANTITY_MAX};
use crate::money::{cost_of, prorate, Currency, Money};

/// Rules that are configuration, not data of one stream.
#[derive(Debug, Clone, Copy)]
pub struct LedgerRules {
    /// How long after a period ends usage for it is still accepted (late reports,
    /// clock skew of callers). Stripe's longest invoice finalization grace is 72 h.
    pub late_usage_grace: Duration,
}

impl LedgerRules {
    /// The last instant `period` accepts usage: its end plus the grace.
    pub fn accepts_usage_until(&self, period: PeriodKey) -> DateTime<Utc> {
        period.end() + self.late_usage_grace
    }
}

/// The default grace after a period's end, in hours (see [`LedgerRules::late_usage_grace`]).
pub const LATE_USAGE_GRACE_HOURS_DEFAULT: i64 = 72;

impl Default for LedgerRules {
    fn default() -> Self {
        Self {
            late_usage_grace: Duration::hours(LATE_USAGE_GRACE_HOURS_DEFAULT),
        }
    }
}

/// How usage reached the ledger: a plain record, or a check-quota with `consume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageVia {
    Record,
    CheckQuota,
    /// A gauge's level set above its current one.
    Gauge,
    /// A hold placed (or refused) for a long job, or committed as usage.
    Reservation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn of_threshold(threshold_pct: u8) -> Self {
        if threshold_pct >= CRITICAL_THRESHOLD_PCT {
            Severity::Critical
        } else {
            Severity::Warning
        }
    }
}

/// What a caller asks of one brand's period: the one command type the HTTP API, the
/// command line, the reset planner and the bench build. The instant it is decided at
/// is not part of it: the engine passes its clock's reading to
/// [`UsagePeriodAggregate::decide`] beside it.
///
/// The serde form is the idempotency fingerprint's input (a key stored once must be
/// recognised on every later version), so the tags and field names are those the
/// request type has always had (`{"action":"record","metric":…}`); the engine pins the
/// resulting hashes in a test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action")]
pub enum PeriodCommand {
    /// Record usage that happened. On a `block` metric usage above the effective limit
    /// is refused (and the refusal recorded); on `charge` it is billed.
    #[serde(rename = "record")]
    RecordUsage {
        metric: MetricKey,
        quantity: Quantity,
        /// When the usage happened; `None` is the decision time. Selects the period.
        occurred_at: Option<DateTime<Utc>>,
    },
    /// Ask whether `requested` units fit. With `consume`, an allowed request is recorded
    /// in the same decision (no check-then-act race); a refused one is recorded as denied.
    #[serde(rename = "check")]
    CheckQuota {
        metric: MetricKey,
        requested: Quantity,
        consume: bool,
        /// With `consume`: when the usage happened (a platform service replaying what
        /// it served during an outage), which selects the period like a record's;
        /// `None` is the decision time. Absent from the fingerprint when `None`, so keys
        /// stored before it existed keep their hash.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        occurred_at: Option<DateTime<Utc>>,
    },
    /// Set a gauge (seats, GB stored) to an absolute level.
    #[serde(rename = "set_gauge")]
    SetGaugeLevel { metric: MetricKey, level: u64 },
    /// Credit purchased or granted units to the effective limit of this period.
    #[serde(rename = "top_up")]
    ApplyTopUp {
        metric: MetricKey,
        units: Quantity,
        price: Money,
        reference: String,
        actor: String,
    },
    /// A signed correction by support or the reset tool, with who and why.
    #[serde(rename = "adjust")]
    AdjustUsage {
        metric: MetricKey,
        delta: i64,
        actor: String,
        reason: String,
    },
    /// Hold `amount` units for a job for `ttl`: counted by every decision while held,
    /// refused (and the refusal recorded) when it does not fit under a `block` limit.
    #[serde(rename = "reserve")]
    Reserve {
        metric: MetricKey,
        amount: Quantity,
        ttl: HoldTtl,
    },
    /// Record what the job used, at most the held amount (all of it by default), and
    /// release the hold.
    #[serde(rename = "commit_hold")]
    CommitHold { hold: u64, amount: Option<Quantity> },
    /// Release a hold without recording usage.
    #[serde(rename = "void_hold")]
    VoidHold { hold: u64 },
    /// Release every hold whose time to live has run out: what the engine's sweeper
    /// issues, so expiry is an event in the log rather than a rule of each reader.
    #[serde(rename = "expire_holds")]
    ExpireHolds,
    /// Freeze the invoice of the period.
    #[serde(rename = "close")]
    ClosePeriod {
        actor: String,
        /// The plan in force when the period ended, from the brand registry's history.
        /// A period closed without ever having been opened is opened on it (today's
        /// plan may be a later one); the decision itself bills the plan the period
        /// runs on, so it is ignored once the period is open.
        #[serde(skip_serializing_if = "Option::is_none")]
        plan_at_end: Option<Box<PlanDefinition>>,
    },
}

impl PeriodCommand {
    /// The metric the command acts on (`None` for a close).
    pub fn metric(&self) -> Option<&MetricKey> {
        match self {
            PeriodCommand::RecordUsage { metric, .. }
            | PeriodCommand::CheckQuota { metric, .. }
            | PeriodCommand::SetGaugeLevel { metric, .. }
            | PeriodCommand::ApplyTopUp { metric, .. }
            | PeriodCommand::AdjustUsage { metric, .. }
            | PeriodCommand::Reserve { metric, .. } => Some(metric),
            PeriodCommand::CommitHold { .. }
            | PeriodCommand::VoidHold { .. }
            | PeriodCommand::ExpireHolds
            | PeriodCommand::ClosePeriod { .. } => None,
        }
    }
}

/// The facts a period opens on. Not a caller's command: the engine supplies them
/// before the first command of a period, from the catalog and the brand's previous
/// period, and `PeriodOpened` snapshots them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodOpening {
    pub brand_id: BrandId,
    pub period: PeriodKey,
    pub plan: PlanDefinition,
    /// Every metric the catalog knows, with its kind: unknown metrics are refused.
    pub metric_kinds: BTreeMap<MetricKey, MetricKind>,
    /// Gauge levels at the end of the brand's previous period.
    pub carried_levels: BTreeMap<MetricKey, u64>,
}

/// Everything a period stream decides: a caller's command, or one of the two the
/// engine issues on its own (the opening, a plan change of the brand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamCommand {
    OpenPeriod(PeriodOpening),
    /// The brand's plan changed while this period is open.
    ApplyPlan(PlanDefinition),
    Caller(PeriodCommand),
}

impl From<PeriodCommand> for StreamCommand {
    fn from(command: PeriodCommand) -> Self {
        StreamCommand::Caller(command)
    }
}

impl From<PeriodOpening> for StreamCommand {
    fn from(opening: PeriodOpening) -> Self {
        StreamCommand::OpenPeriod(opening)
    }
}

/// A stream command with the instant it is decided at: the aggregate's cqrs-es
/// command, since `handle` has no clock to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    pub command: StreamCommand,
    pub at: DateTime<Utc>,
}

impl Stamped {
    pub fn new(command: impl Into<StreamCommand>, at: DateTime<Utc>) -> Self {
        Self {
            command: command.into(),
            at,
        }
    }
}

/// The hold a usage commits: its number and what it held (the usage may be less; the
/// rest is given back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldCommit {
    pub number: u64,
    pub held: u64,
}

/// The state of one metric after an event: what a reader needs without recomputing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricTotals {
    /// Counter: sum of the period. Gauge: current level.
    pub current: u64,
    /// What overage is computed on: the sum for counters, the peak level since the plan
    /// in force took effect for gauges (deleting data just before close must not dodge
    /// storage overage).
    pub billable: u64,
    /// Plan limit plus top-ups of the period; `None` when the plan has no quota.
    pub effective_limit: Option<u64>,
    /// Overage of the period so far, each part against the plan in force when it was
    /// used (see `totals_for`).
    pub overage_units: u64,
    /// Overage cost of the period so far for this metric, rounded once per plan segment.
    pub overage_cost: Money,
    /// Units held for jobs (reservations) and not yet committed, voided or expired.
    /// Absent when none, so events of periods without holds keep their shape.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerEvent {
    PeriodOpened {
        brand_id: BrandId,
        period: PeriodKey,
        plan: PlanDefinition,
        metric_kinds: BTreeMap<MetricKey, MetricKind>,
        carried_levels: BTreeMap<MetricKey, u64>,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
    PlanApplied {
        previous_plan: PlanId,
        plan: PlanDefinition,
        /// Every metric's totals under the new limits.
        totals: BTreeMap<MetricKey, MetricTotals>,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
    UsageRecorded {
        metric: MetricKey,
        quantity: u64,
        via: UsageVia,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        occurred_at: DateTime<Utc>,
        /// True when recorded after `PeriodClosed`, within the grace window: finance
        /// bills it as an adjustment of the closed invoice.
        after_close: bool,
        /// What this event alone added to the overage cost.
        marginal_cost: Money,
        totals: MetricTotals,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
        /// The hold this usage commits (and releases), when it commits one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hold: Option<HoldCommit>,
    },
    UsageDenied {
        metric: MetricKey,
        requested: u64,
        via: UsageVia,
        current: u64,
        effective_limit: u64,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
        /// Units held for jobs when it was refused: they count against the limit.
        #[serde(default, skip_serializing_if = "is_zero")]
        held: u64,
        /// Refusals this event stands for. Repeated refusals of one metric by one way are
        /// counted by the engine and appended as one event (`first_at` to `at`, the other
        /// fields those of the last); 1, and absent, for a refusal appended alone.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        count: u64,
        /// When the first of `count` refusals happened, when there are several.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_at: Option<DateTime<Utc>>,
    },
    /// Units set aside for a job until `expires_at` (see [`crate::hold`]).
    QuotaReserved {
        hold: u64,
        metric: MetricKey,
        amount: u64,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        expires_at: DateTime<Utc>,
        /// The metric with the hold counted (`held`).
        totals: MetricTotals,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
    /// A hold ended without usage: voided by the caller, or expired (then `at` is its
    /// expiry instant, whenever the event was appended).
    HoldReleased {
        hold: u64,
        metric: MetricKey,
        amount: u64,
        reason: Release,
        totals: MetricTotals,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
    GaugeLevelSet {
        metric: MetricKey,
        previous: u64,
        marginal_cost: Money,
        totals: MetricTotals,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
    UsageAdjusted {
        metric: MetricKey,
        delta: i64,
        actor: String,
        reason: String,
        marginal_cost: Money,
        totals: MetricTotals,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
    TopUpApplied {
        metric: MetricKey,
        units: u64,
        price: Money,
        reference: String,
        actor: String,
        marginal_cost: Money,
        totals: MetricTotals,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
    ThresholdCrossed {
        metric: MetricKey,
        threshold: u8,
        severity: Severity,
        /// current / effective limit × 100, two decimals, not capped.
        percentage: Decimal,
        current: u64,
        effective_limit: u64,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
    /// A crossed threshold no longer holds: usage fell below it, or the effective limit
    /// rose above it (top-up, plan change, correction, lower gauge). The next crossing
    /// of the same threshold fires again.
    ThresholdResolved {
        metric: MetricKey,
        threshold: u8,
        severity: Severity,
        /// current / effective limit × 100 when it resolved, two decimals; 0 when the
        /// metric has no quota any more.
        percentage: Decimal,
        current: u64,
        /// `None` when the plan in force has no quota for the metric any more.
        effective_limit: Option<u64>,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
    PeriodClosed {
        invoice: Invoice,
        actor: String,
        #[serde(serialize_with = "crate::timestamp::serialize")]
        at: DateTime<Utc>,
    },
}

/// Bump when an event's shape changes; upcasters key on it.
pub const LEDGER_EVENT_VERSION: &str = "1";

impl DomainEvent for LedgerEvent {
    fn event_type(&self) -> String {
        self.event_type_str().to_owned()
    }
    fn event_version(&self) -> String {
        LEDGER_EVENT_VERSION.to_owned()
    }
}

impl LedgerEvent {
    pub fn event_type_str(&self) -> &'static str {
        match self {
            LedgerEvent::PeriodOpened { .. } => "PeriodOpened",
            LedgerEvent::PlanApplied { .. } => "PlanApplied",
            LedgerEvent::UsageRecorded { .. } => "UsageRecorded",
            LedgerEvent::UsageDenied { .. } => "UsageDenied",
            LedgerEvent::GaugeLevelSet { .. } => "GaugeLevelSet",
            LedgerEvent::UsageAdjusted { .. } => "UsageAdjusted",
            LedgerEvent::TopUpApplied { .. } => "TopUpApplied",
            LedgerEvent::ThresholdCrossed { .. } => "ThresholdCrossed",
            LedgerEvent::ThresholdResolved { .. } => "ThresholdResolved",
            LedgerEvent::QuotaReserved { .. } => "QuotaReserved",
            LedgerEvent::HoldReleased { .. } => "HoldReleased",
            LedgerEvent::PeriodClosed { .. } => "PeriodClosed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub metric: MetricKey,
    pub billable_units: u64,
    pub effective_limit: u64,
    pub overage_units: u64,
    #[serde(with = "crate::money::rate_serde")]
    pub rate: Option<Decimal>,
    pub amount: Money,
}

/// A plan in force over part of a period: from `from` to the next segment's start, or
/// to the period's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSegment {
    pub plan_id: PlanId,
    pub base_price: Money,
    pub from: DateTime<Utc>,
}

impl PlanSegment {
    pub fn new(plan: &PlanDefinition, from: DateTime<Utc>) -> Self {
        Self {
            plan_id: plan.id.clone(),
            base_price: plan.base_price_cents,
            from,
        }
    }
}

/// One base line of an invoice: a plan's base price for the part of the period it was
/// in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseLine {
    pub plan_id: PlanId,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub amount: Money,
}

/// The base lines of `period` on its plan `segments`: each plan's base price prorated by
/// the seconds it was in force, each line rounded half up to a cent (`money::prorate`);
/// the base is their sum. A period on one plan has one line, its full base price.
pub fn base_lines(segments: &[PlanSegment], period: PeriodKey) -> Vec<BaseLine> {
    let whole = (period.end() - period.start()).num_seconds();
    let ends = segments
        .iter()
        .skip(1)
        .map(|s| s.from)
        .chain(std::iter::once(period.end()));
    segments
        .iter()
        .zip(ends)
        .map(|(s, to)| {
            let from = s.from.clamp(period.start(), period.end());
            let to = to.clamp(from, period.end());
            BaseLine {
                plan_id: s.plan_id.clone(),
                from,
                to,
                amount: prorate(s.base_price, (to - from).num_seconds(), whole),
            }
        })
        .filter(|l| l.to > l.from)
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub plan_id: PlanId,
    pub currency: Currency,
    /// The sum of `base_lines`.
    pub base: Money,
    /// One line per plan in force during the period. Defaulted so invoices frozen before
    /// it existed still load (their base is one plan's full price).
    #[serde(default)]
    pub base_lines: Vec<BaseLine>,
    /// One line per metric with overage, in metric order.
    pub lines: Vec<InvoiceLine>,
    pub overage: Money,
    pub total: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("the period is not open yet")]
    NotOpened,
    #[error("the period is already open")]
    AlreadyOpened,
    #[error("usage at {occurred_at} does not belong to period {period}")]
    WrongPeriod {
        period: PeriodKey,
        occurred_at: DateTime<Utc>,
    },
    #[error("unknown metric {0}")]
    UnknownMetric(MetricKey),
    #[error("{metric} is a {kind:?} metric; this operation needs a gauge")]
    NotAGauge { metric: MetricKey, kind: MetricKind },
    #[error("{0} is a gauge: its level is set, not added to")]
    GaugeIsSet(MetricKey),
    #[error("period {period} stopped accepting usage at {deadline} (period end + grace)")]
    TooLate {
        period: PeriodKey,
        deadline: DateTime<Utc>,
    },
    #[error("period {0} is closed")]
    Closed(PeriodKey),
    #[error("an adjustment of {delta} would take {metric} below zero (current {current})")]
    BelowZero {
        metric: MetricKey,
        delta: i64,
        current: u64,
    },
    #[error("an adjustment must be non-zero and at most {QUANTITY_MAX} in size")]
    BadAdjustment,
    #[error("a gauge level must be at most {QUANTITY_MAX}")]
    BadLevel,
    #[error("{metric} is blocked at {effective_limit}: the adjustment would reach {would_be}")]
    AboveBlockLimit {
        metric: MetricKey,
        effective_limit: u64,
        would_be: u64,
    },
    #[error("top-ups need a metric with a quota; {0} is unlimited on this plan")]
    TopUpOnUnlimited(MetricKey),
    #[error("hold {0} was never placed in this period")]
    UnknownHold(u64),
    #[error("hold {0} is no longer held: it was committed, voided or expired")]
    HoldNotHeld(u64),
    #[error("hold {hold} expired at {expires_at}")]
    HoldExpired {
        hold: u64,
        expires_at: DateTime<Utc>,
    },
    #[error("hold {hold} holds {held} units; {amount} cannot be committed")]
    CommitAboveHold { hold: u64, held: u64, amount: u64 },
    #[error("{OPEN_HOLDS_MAX} holds are open in this period already")]
    TooManyHolds,
}

/// The opening facts of a period, as snapshotted by `PeriodOpened`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    pub brand_id: BrandId,
    pub period: PeriodKey,
    pub plan: PlanDefinition,
    pub metric_kinds: BTreeMap<MetricKey, MetricKind>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricState {
    pub current: u64,
    /// A gauge's highest level since the plan in force took effect.
    pub peak: u64,
    pub top_up_units: u64,
    /// Thresholds crossed and not resolved since: each fires once until it resolves.
    pub fired: Vec<u8>,
    pub overage_cost: Money,
    /// Defaulted so snapshots taken before it existed still load.
    #[serde(default)]
    pub overage_units: u64,
    /// What the plans in force earlier in the period left (nothing before a change).
    #[serde(default)]
    pub settled: Settled,
    /// Units of the open holds on this metric (expired ones included until released).
    #[serde(default)]
    pub held: u64,
}

/// The overage a metric carries from the plans in force earlier in the period: usage is
/// billed against the limits in force when it happened, never against a later plan's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    /// Overage units and cost of the period up to the last plan change.
    pub units: u64,
    pub cost: Money,
    /// A counter's usage when the plan in force took effect: only what was used after
    /// it is measured against that plan's limit.
    pub start: u64,
}

/// The state of a metric with no usage yet in the period.
static NO_USAGE: MetricState = MetricState {
    current: 0,
    peak: 0,
    top_up_units: 0,
    fired: Vec::new(),
    overage_cost: Money::ZERO,
    overage_units: 0,
    settled: Settled {
        units: 0,
        cost: Money::ZERO,
        start: 0,
    },
    held: 0,
};

impl MetricState {
    /// What this metric settles when another plan takes effect now.
    fn at_plan_change(&self) -> Settled {
        Settled {
            units: self.overage_units,
            cost: self.overage_cost,
            start: self.current,
        }
    }
}

/// The answer to a quota question, with the original's `QuotaEvaluation` fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaDecision {
    pub allowed: bool,
    /// Units left under the effective limit once the decision is made: after the
    /// consumption when it consumed, as things stand otherwise.
    pub remaining: Option<u64>,
    /// The plan's base limit (`None`: unlimited).
    pub limit: Option<u64>,
    /// Base limit plus top-ups.
    pub effective_limit: Option<u64>,
    /// Usage once the decision is made (after the consumption when it consumed).
    pub current: u64,
    /// Units above the effective limit if the request is (or was) applied.
    pub overage: u64,
    pub will_charge: bool,
    /// The marginal cost of this request alone, in cents.
    pub estimated_cost: Money,
    /// The period's overage cost for this metric if the request is applied, in cents.
    pub cumulative_overage_cost: Money,
    pub plan_id: PlanId,
    /// `None` when the plan has no quota for the metric (unlimited).
    pub overage_policy: Option<OveragePolicy>,
    pub consumed: bool,
    /// Units held for jobs once decided: `remaining` already leaves them out.
    pub reserved: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsagePeriodAggregate {
    pub opened: Option<Opened>,
    /// The plans in force, in order: the opening one from the period's start, then one
    /// per plan change from its instant. Defaulted so older snapshots still load.
    #[serde(default)]
    pub segments: Vec<PlanSegment>,
    pub metrics: BTreeMap<MetricKey, MetricState>,
    pub closed: Option<Invoice>,
    /// Number of events applied: the stream's last sequence.
    pub version: u64,
    /// The open holds by number, at most [`OPEN_HOLDS_MAX`].
    #[serde(default)]
    pub holds: BTreeMap<u64, Hold>,
    /// Holds placed in the period so far: the next one is numbered one more.
    #[serde(default)]
    pub holds_placed: u64,
}

/// The aggregate type name stored in `events.aggregate_type`.
pub const USAGE_PERIOD_TYPE: &str = "usage_period";

impl Aggregate for UsagePeriodAggregate {
    const TYPE: &'static str = USAGE_PERIOD_TYPE;
    type Command = Stamped;
    type Event = LedgerEvent;
    type Error = LedgerError;
    type Services = LedgerRules;

    async fn handle(
        &mut self,
        command: Self::Command,
        rules: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide_stamped(&command, rules)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.fold(&event);
    }
}

impl UsagePeriodAggregate {
    pub fn is_open(&self) -> bool {
        self.opened.is_some()
    }

    pub fn plan(&self) -> Option<&PlanDefinition> {
        self.opened.as_ref().map(|o| &o.plan)
    }

    pub fn metric(&self, metric: &MetricKey) -> Option<&MetricState> {
        self.metrics.get(metric)
    }

    /// Gauge levels to carry into the next period.
    pub fn gauge_levels(&self) -> BTreeMap<MetricKey, u64> {
        let Some(o) = &self.opened else {
            return BTreeMap::new();
        };
        self.metrics
            .iter()
            .filter(|(k, s)| o.metric_kinds.get(*k) == Some(&MetricKind::Gauge) && s.current > 0)
            .map(|(k, s)| (k.clone(), s.current))
            .collect()
    }

    /// A metric's totals as they stand, under the plan in force (`None` before opening).
    /// The same rule the events carry, so a summary equals the last event's totals.
    pub fn totals(&self, metric: &MetricKey) -> Option<MetricTotals> {
        let opened = self.opened.as_ref()?;
        let state = self.metrics.get(metric).cloned().unwrap_or_default();
        Some(totals_for(
            opened.plan.quota(metric),
            opened.kind(metric),
            (state.current, state.peak),
            state.top_up_units,
            &state.settled,
            state.held,
        ))
    }

    /// Units held on `metric` at `at`: holds past their expiry hold nothing, even
    /// before the sweeper's event releases them.
    pub fn held_at(&self, metric: &MetricKey, at: DateTime<Utc>) -> u64 {
        let held = self.metrics.get(metric).map_or(0, |s| s.held);
        if held == 0 {
            return 0;
        }
        let lapsed: u64 = self
            .holds
            .values()
            .filter(|h| &h.metric == metric && h.expired_at(at))
            .map(|h| h.amount)
            .sum();
        held.saturating_sub(lapsed)
    }

    /// Decide a caller's command at `at` against the current state. Pure: the engine
    /// calls it on its hot path with its clock's reading, and cqrs-es through `handle`.
    pub fn decide(
        &self,
        command: &PeriodCommand,
        at: DateTime<Utc>,
        rules: &LedgerRules,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let ctx = self.ctx(rules)?;
        let opened = ctx.opened;
        match command {
            PeriodCommand::RecordUsage {
                metric,
                quantity,
                occurred_at,
            } => {
                let occurred_at = occurred_at.unwrap_or(at);
                if !opened.period.contains(occurred_at) {
                    return Err(LedgerError::WrongPeriod {
                        period: opened.period,
                        occurred_at,
                    });
                }
                if ctx.kind(metric)? == MetricKind::Gauge {
                    return Err(LedgerError::GaugeIsSet(metric.clone()));
                }
                ctx.consume(metric, *quantity, UsageVia::Record, occurred_at, at)
            }
            PeriodCommand::CheckQuota {
                metric,
                requested,
                consume,
                occurred_at,
            } => {
                if *consume {
                    if ctx.kind(metric)? == MetricKind::Gauge {
                        return Err(LedgerError::GaugeIsSet(metric.clone()));
                    }
                    ctx.check_not_too_late(at)?;
                    let occurred_at = occurred_at.unwrap_or(at);
                    if !opened.period.contains(occurred_at) {
                        return Err(LedgerError::WrongPeriod {
                            period: opened.period,
                            occurred_at,
                        });
                    }
                    ctx.consume(metric, *requested, UsageVia::CheckQuota, occurred_at, at)
                } else {
                    ctx.kind(metric)?;
                    Ok(Vec::new())
                }
            }
            PeriodCommand::SetGaugeLevel { metric, level } => ctx.set_gauge(metric, *level, at),
            PeriodCommand::ApplyTopUp {
                metric,
                units,
                price,
                reference,
                actor,
            } => ctx.top_up(metric, *units, *price, reference, actor, at),
            PeriodCommand::AdjustUsage {
                metric,
                delta,
                actor,
                reason,
            } => ctx.adjust(metric, *delta, actor, reason, at),
            PeriodCommand::Reserve {
                metric,
                amount,
                ttl,
            } => ctx.reserve(metric, *amount, *ttl, at),
            PeriodCommand::CommitHold { hold, amount } => ctx.commit_hold(*hold, *amount, at),
            PeriodCommand::VoidHold { hold } => ctx.void_hold(*hold, at),
            PeriodCommand::ExpireHolds => Ok(ctx.expire_holds(at)),
            PeriodCommand::ClosePeriod { actor, .. } => ctx.close(actor, at),
        }
    }

    /// Decide the opening of the period at `at`: `PeriodOpened`, then the crossings of
    /// carried levels that already stand above thresholds of the new period.
    pub fn decide_opening(
        &self,
        opening: &PeriodOpening,
        at: DateTime<Utc>,
        rules: &LedgerRules,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        if self.opened.is_some() {
            return Err(LedgerError::AlreadyOpened);
        }
        let PeriodOpening {
            brand_id,
            period,
            plan,
            metric_kinds,
            carried_levels,
        } = opening;
        let opened = LedgerEvent::PeriodOpened {
            brand_id: brand_id.clone(),
            period: *period,
            plan: plan.clone(),
            metric_kinds: metric_kinds.clone(),
            carried_levels: carried_levels.clone(),
            at,
        };
        let mut after = self.clone();
        after.fold(&opened);
        let o = after.opened.as_ref().expect("just opened");
        let ctx = Ctx {
            agg: &after,
            opened: o,
            rules,
        };
        let mut events = vec![opened.clone()];
        for (metric, state) in &after.metrics {
            let t = totals_for(
                plan.quota(metric),
                o.kind(metric),
                (state.current, state.peak),
                0,
                &state.settled,
                0,
            );
            events.extend(ctx.thresholds(metric, &MetricState::default(), &t, at));
        }
        Ok(events)
    }

    /// Decide applying the brand's new `plan` to the open period at `at`: the totals
    /// under the new limits, and the thresholds they cross. Nothing when it is the same plan.
    pub fn decide_plan_change(
        &self,
        plan: &PlanDefinition,
        at: DateTime<Utc>,
        rules: &LedgerRules,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let ctx = self.ctx(rules)?;
        ctx.apply_plan(plan, at)
    }

    /// Decide any command of the stream: what `handle` runs.
    pub fn decide_stamped(
        &self,
        stamped: &Stamped,
        rules: &LedgerRules,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        match &stamped.command {
            StreamCommand::OpenPeriod(opening) => self.decide_opening(opening, stamped.at, rules),
            StreamCommand::ApplyPlan(plan) => self.decide_plan_change(plan, stamped.at, rules),
            StreamCommand::Caller(command) => self.decide(command, stamped.at, rules),
        }
    }

    /// Evaluate a request at `at` without deciding anything: what `CheckQuota` answers.
    pub fn evaluate(
        &self,
        metric: &MetricKey,
        requested: Quantity,
        at: DateTime<Utc>,
    ) -> Result<QuotaDecision, LedgerError> {
        let opened = self.opened.as_ref().ok_or(LedgerError::NotOpened)?;
        if !opened.metric_kinds.contains_key(metric) {
            return Err(LedgerError::UnknownMetric(metric.clone()));
        }
        let state = self.metrics.get(metric).cloned().unwrap_or_default();
        let quota = opened.plan.quota(metric);
        Ok(evaluate(
            &opened.plan.id,
            quota,
            (&state, self.held_at(metric, at)),
            opened.kind(metric),
            requested.get(),
        ))
    }

    /// The decision a recorded usage, gauge level or denial event stands for, as it stood after the
    /// event: what a consuming check answers, and what a retry with the same
    /// idempotency key answers, rebuilt from the stored event alone.
    pub fn decision_of(event: &LedgerEvent, plan: &PlanDefinition) -> Option<QuotaDecision> {
        match event {
            LedgerEvent::UsageRecorded {
                metric,
                marginal_cost,
                totals,
                ..
            }
            | LedgerEvent::GaugeLevelSet {
                metric,
                marginal_cost,
                totals,
                ..
            } => Some(allowed_decision(plan, metric, totals, *marginal_cost, true)),
            LedgerEvent::QuotaReserved { metric, totals, .. } => {
                Some(allowed_decision(plan, metric, totals, Money::ZERO, false))
            }
            LedgerEvent::UsageDenied {
                metric,
                requested,
                current,
                effective_limit,
                held,
                ..
            } => {
                let quota = plan.quota(metric);
                Some(QuotaDecision {
                    allowed: false,
                    remaining: Some(effective_limit.saturating_sub(current + held)),
                    limit: quota.map(|q| q.limit),
                    effective_limit: Some(*effective_limit),
                    current: *current,
                    overage: (current + held + requested).saturating_sub(*effective_limit),
                    will_charge: false,
                    estimated_cost: Money::ZERO,
                    cumulative_overage_cost: Money::ZERO,
                    plan_id: plan.id.clone(),
                    overage_policy: quota.map(|q| q.overage),
                    consumed: false,
                    reserved: *held,
                })
            }
            _ => None,
        }
    }

    /// Fold one event: `Aggregate::apply` by reference, for callers that keep the event
    /// (the engine stages it after folding) and need no copy.
    pub fn fold(&mut self, event: &LedgerEvent) {
        self.version += 1;
        match event {
            LedgerEvent::PeriodOpened {
                brand_id,
                period,
                plan,
                metric_kinds,
                carried_levels,
                ..
            } => {
                self.opened = Some(Opened {
                    brand_id: brand_id.clone(),
                    period: *period,
                    plan: plan.clone(),
                    metric_kinds: metric_kinds.clone(),
                });
                self.segments = vec![PlanSegment::new(plan, period.start())];
                for (metric, level) in carried_levels {
                    let kind = metric_kinds
                        .get(metric)
                        .copied()
                        .unwrap_or(MetricKind::Gauge);
                    let t = totals_for(
                        plan.quota(metric),
                        kind,
                        (*level, *level),
                        0,
                        &Settled::default(),
                        0,
                    );
                    let s = self.metrics.entry(metric.clone()).or_default();
                    s.current = *level;
                    s.peak = *level;
                    s.overage_cost = t.overage_cost;
                    s.overage_units = t.overage_units;
                }
            }
            LedgerEvent::PlanApplied {
                plan, totals, at, ..
            } => {
                if let Some(o) = self.opened.as_mut() {
                    o.plan = plan.clone();
                }
                self.segments.push(PlanSegment::new(plan, *at));
                for (metric, t) in totals {
                    let s = self.metrics.entry(metric.clone()).or_default();
                    s.settled = s.at_plan_change();
                    s.peak = s.current;
                    s.overage_cost = t.overage_cost;
                    s.overage_units = t.overage_units;
                }
            }
            LedgerEvent::UsageRecorded {
                metric,
                totals,
                hold,
                ..
            } => {
                let released = hold
                    .and_then(|h| self.holds.remove(&h.number))
                    .map_or(0, |h| h.amount);
                let s = self.metrics.entry(metric.clone()).or_default();
                s.current = totals.current;
                s.peak = totals.billable.max(totals.current);
                s.overage_cost = totals.overage_cost;
                s.overage_units = totals.overage_units;
                s.held = s.held.saturating_sub(released);
            }
            LedgerEvent::GaugeLevelSet { metric, totals, .. }
            | LedgerEvent::UsageAdjusted { metric, totals, .. } => {
                let s = self.metrics.entry(metric.clone()).or_default();
                s.current = totals.current;
                s.peak = totals.billable.max(totals.current);
                s.overage_cost = totals.overage_cost;
                s.overage_units = totals.overage_units;
            }
            LedgerEvent::QuotaReserved {
                hold,
                metric,
                amount,
                expires_at,
                at,
                ..
            } => {
                self.holds.insert(
                    *hold,
                    Hold {
                        metric: metric.clone(),
                        amount: *amount,
                        reserved_at: *at,
                        expires_at: *expires_at,
                    },
                );
                self.holds_placed = self.holds_placed.max(*hold);
                self.metrics.entry(metric.clone()).or_default().held += amount;
            }
            LedgerEvent::HoldReleased {
                hold,
                metric,
                amount,
                ..
            } => {
                self.holds.remove(hold);
                let s = self.metrics.entry(metric.clone()).or_default();
                s.held = s.held.saturating_sub(*amount);
            }
            LedgerEvent::TopUpApplied {
                metric,
                units,
                totals,
                ..
            } => {
                let s = self.metrics.entry(metric.clone()).or_default();
                s.top_up_units += units;
                s.overage_cost = totals.overage_cost;
                s.overage_units = totals.overage_units;
            }
            LedgerEvent::ThresholdCrossed {
                metric, threshold, ..
            } => {
                let s = self.metrics.entry(metric.clone()).or_default();
                s.fired.push(*threshold);
            }
            LedgerEvent::ThresholdResolved {
                metric, threshold, ..
            } => {
                if let Some(s) = self.metrics.get_mut(metric) {
                    s.fired.retain(|t| t != threshold);
                }
            }
            LedgerEvent::UsageDenied { .. } => {}
            LedgerEvent::PeriodClosed { invoice, .. } => self.closed = Some(invoice.clone()),
        }
    }
}

impl Opened {
    fn kind(&self, metric: &MetricKey) -> MetricKind {
        self.metric_kinds
            .get(metric)
            .copied()
            .unwrap_or(MetricKind::Counter)
    }
}

/// Effective limit of a metric: plan limit plus the period's top-ups.
pub fn effective_limit(quota: Option<&PlanQuota>, state: &MetricState) -> Option<u64> {
    quota.map(|q| q.limit + state.top_up_units)
}

/// The totals of a metric whose state would be `current`/`peak` with `top_ups`, on top
/// of what earlier plans of the period `settled`.
///
/// A counter's overage under the plan in force is the part of its usage since that plan
/// took effect that lies above the limit; earlier usage keeps the overage its own plan
/// gave it. A gauge is a level that persists: under each plan its peak is measured
/// against that plan's limit, and the period bills the costliest of those, once.
fn totals_for(
    quota: Option<&PlanQuota>,
    kind: MetricKind,
    (current, peak): (u64, u64),
    top_ups: u64,
    settled: &Settled,
    held: u64,
) -> MetricTotals {
    let billable = match kind {
        MetricKind::Counter => current,
        MetricKind::Gauge => peak.max(current),
    };
    let effective_limit = quota.map(|q| q.limit + top_ups);
    let above = |units: u64| effective_limit.map_or(0, |l| units.saturating_sub(l));
    let units_now = match kind {
        MetricKind::Counter => above(billable).saturating_sub(above(settled.start)),
        MetricKind::Gauge => above(billable),
    };
    let cost_now = match quota {
        Some(q) if q.overage == OveragePolicy::Charge => {
            cost_of(units_now, q.overage_rate.unwrap_or_default())
        }
        _ => Money::ZERO,
    };
    let (overage_units, overage_cost) = match kind {
        MetricKind::Counter => (settled.units + units_now, settled.cost + cost_now),
        MetricKind::Gauge if (cost_now, units_now) >= (settled.cost, settled.units) => {
            (units_now, cost_now)
        }
        MetricKind::Gauge => (settled.units, settled.cost),
    };
    MetricTotals {
        current,
        billable,
        effective_limit,
        overage_units,
        overage_cost,
        held,
    }
}

/// The decision an allowed usage (or a hold) stands for, from the totals after it.
fn allowed_decision(
    plan: &PlanDefinition,
    metric: &MetricKey,
    totals: &MetricTotals,
    marginal_cost: Money,
    consumed: bool,
) -> QuotaDecision {
    let quota = plan.quota(metric);
    QuotaDecision {
        allowed: true,
        remaining: totals
            .effective_limit
            .map(|l| l.saturating_sub(totals.current + totals.held)),
        limit: quota.map(|q| q.limit),
        effective_limit: totals.effective_limit,
        current: totals.current,
        overage: totals.overage_units,
        will_charge: marginal_cost.minor() > 0,
        estimated_cost: marginal_cost,
        cumulative_overage_cost: totals.overage_cost,
        plan_id: plan.id.clone(),
        overage_policy: quota.map(|q| q.overage),
        consumed,
        reserved: totals.held,
    }
}

/// Whether `requested` more units fit on a metric in `state` with `held` units held:
/// a `block` limit counts the holds as used.
fn evaluate(
    plan_id: &PlanId,
    quota: Option<&PlanQuota>,
    (state, held): (&MetricState, u64),
    kind: MetricKind,
    requested: u64,
) -> QuotaDecision {
    let after = totals_for(
        quota,
        kind,
        (state.current + requested, state.peak),
        state.top_up_units,
        &state.settled,
        held,
    );
    let eff = after.effective_limit;
    let blocked = quota.is_some_and(|q| q.overage == OveragePolicy::Block)
        && eff.is_some_and(|l| state.current + held + requested > l);
    let marginal = after.overage_cost - state.overage_cost;
    QuotaDecision {
        allowed: !blocked,
        remaining: eff.map(|l| l.saturating_sub(state.current + held)),
        limit: quota.map(|q| q.limit),
        effective_limit: eff,
        current: state.current,
        overage: if blocked {
            eff.map_or(0, |l| (state.current + held + requested).saturating_sub(l))
        } else {
            after.overage_units
        },
        will_charge: !blocked && marginal.minor() > 0,
        estimated_cost: if blocked { Money::ZERO } else { marginal },
        cumulative_overage_cost: if blocked {
            state.overage_cost
        } else {
            after.overage_cost
        },
        plan_id: plan_id.clone(),
        overage_policy: quota.map(|q| q.overage),
        consumed: false,
        reserved: held,
    }
}

/// Percentage of the effective limit, two decimals, half up. A zero limit with usage is 100 %.
pub fn percentage(current: u64, effective_limit: u64) -> Decimal {
    ratio_pct(current, effective_limit)
        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Percentage of the effective limit as a whole number, half up like money: what alert
/// messages show. Rounded from the ratio itself, never from the two-decimal figure
/// (62.495 % is 62, where 62.50 would round to 63).
pub fn whole_percentage(current: u64, effective_limit: u64) -> Decimal {
    ratio_pct(current, effective_limit)
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
}

/// current / limit × 100 to Decimal's 28 digits: a tie (an exact .5) is exact.
fn ratio_pct(current: u64, effective_limit: u64) -> Decimal {
    if effective_limit == 0 {
        return if current > 0 {
            Decimal::ONE_HUNDRED
        } else {
            Decimal::ZERO
        };
    }
    Decimal::from(current) * Decimal::ONE_HUNDRED / Decimal::from(effective_limit)
}

/// Whether `current` is at least `threshold_pct` % of `limit`, in exact integers (a
/// rounded percentage would fire 90 % at 89.996 %). A zero limit is reached by any use.
pub(crate) fn reached(current: u64, limit: u64, threshold_pct: u8) -> bool {
    if limit == 0 {
        return current > 0;
    }
    u128::from(current) * 100 >= u128::from(threshold_pct) * u128::from(limit)
}

/// How a metric's active thresholds change when it moves to `current` against `limit`
/// under `quota`: the fired thresholds that no longer hold resolve (usage fell below
/// them, the limit rose above them, or the plan in force no longer has them), and the
/// ones newly reached cross. A threshold is thus active at most once at a time, and
/// fires again after it resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThresholdChange {
    /// In the order they fired.
    pub resolved: Vec<u8>,
    /// In the quota's order.
    pub crossed: Vec<u8>,
}

impl ThresholdChange {
    pub fn of(quota: Option<&PlanQuota>, fired: &[u8], current: u64, limit: Option<u64>) -> Self {
        let (Some(q), Some(l)) = (quota, limit) else {
            return ThresholdChange {
                resolved: fired.to_vec(),
                crossed: Vec::new(),
            };
        };
        let holds = |t: u8| q.notification_thresholds.contains(&t) && reached(current, l, t);
        ThresholdChange {
            resolved: fired.iter().copied().filter(|t| !holds(*t)).collect(),
            crossed: q
                .notification_thresholds
                .iter()
                .copied()
                .filter(|t| !fired.contains(t) && reached(current, l, *t))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.resolved.is_empty() && self.crossed.is_empty()
    }

    /// The active thresholds after the change, from those `fired` before it.
    pub fn apply_to(&self, fired: &mut Vec<u8>) {
        fired.retain(|t| !self.resolved.contains(t));
        fired.extend(&self.crossed);
    }
}

/// The threshold events of moving `metric` from `state` to `totals` under `quota`:
/// resolutions first, then crossings (see [`ThresholdChange`]).
fn threshold_events(
    quota: Option<&PlanQuota>,
    metric: &MetricKey,
    state: &MetricState,
    totals: &MetricTotals,
    at: DateTime<Utc>,
) -> Vec<LedgerEvent> {
    let limit = totals.effective_limit.filter(|_| quota.is_some());
    let current = totals.current;
    let change = ThresholdChange::of(quota, &state.fired, current, limit);
    // A Decimal division on every command was ~2 % of the process (`perf`, hot brand):
    // only a crossing or a resolution needs the percentage.
    if change.is_empty() {
        return Vec::new();
    }
    let pct = limit.map_or(Decimal::ZERO, |l| percentage(current, l));
    let resolved = change
        .resolved
        .into_iter()
        .map(|t| LedgerEvent::ThresholdResolved {
            metric: metric.clone(),
            threshold: t,
            severity: Severity::of_threshold(t),
            percentage: pct,
            current,
            effective_limit: limit,
            at,
        });
    let crossed = change
        .crossed
        .into_iter()
        .map(|t| LedgerEvent::ThresholdCrossed {
            metric: metric.clone(),
            threshold: t,
            severity: Severity::of_threshold(t),
            percentage: pct,
            current,
            effective_limit: limit.unwrap_or_default(),
            at,
        });
    resolved.chain(crossed).collect()
}

/// The borrowed context of one decision.
struct Ctx<'a> {
    agg: &'a UsagePeriodAggregate,
    opened: &'a Opened,
    rules: &'a LedgerRules,
}

impl UsagePeriodAggregate {
    /// What deciding on an opened period needs; a period not opened decides nothing.
    fn ctx<'a>(&'a self, rules: &'a LedgerRules) -> Result<Ctx<'a>, LedgerError> {
        let opened = self.opened.as_ref().ok_or(LedgerError::NotOpened)?;
        Ok(Ctx {
            agg: self,
            opened,
            rules,
        })
    }
}

impl Ctx<'_> {
    fn kind(&self, metric: &MetricKey) -> Result<MetricKind, LedgerError> {
        self.opened
            .metric_kinds
            .get(metric)
            .copied()
            .ok_or_else(|| LedgerError::UnknownMetric(metric.clone()))
    }

    /// Borrowed, not cloned: deciding runs once per command on the hot path, and a
    /// clone copies the crossing list.
    fn state(&self, metric: &MetricKey) -> &MetricState {
        self.agg.metrics.get(metric).unwrap_or(&NO_USAGE)
    }

    fn quota(&self, metric: &MetricKey) -> Option<&PlanQuota> {
        self.opened.plan.quota(metric)
    }

    fn check_not_too_late(&self, at: DateTime<Utc>) -> Result<(), LedgerError> {
        let deadline = self.rules.accepts_usage_until(self.opened.period);
        if at > deadline {
            return Err(LedgerError::TooLate {
                period: self.opened.period,
                deadline,
            });
        }
        Ok(())
    }

    fn check_open(&self) -> Result<(), LedgerError> {
        match self.agg.closed {
            Some(_) => Err(LedgerError::Closed(self.opened.period)),
            None => Ok(()),
        }
    }

    /// Threshold resolutions and crossings caused by moving `metric` to `totals`.
    fn thresholds(
        &self,
        metric: &MetricKey,
        state: &MetricState,
        totals: &MetricTotals,
        at: DateTime<Utc>,
    ) -> Vec<LedgerEvent> {
        threshold_events(self.quota(metric), metric, state, totals, at)
    }

    fn consume(
        &self,
        metric: &MetricKey,
        quantity: Quantity,
        via: UsageVia,
        occurred_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let kind = self.kind(metric)?;
        self.check_not_too_late(at)?;
        let state = self.state(metric);
        let quota = self.quota(metric);
        let held = self.agg.held_at(metric, at);
        let decision = evaluate(
            &self.opened.plan.id,
            quota,
            (state, held),
            kind,
            quantity.get(),
        );
        if !decision.allowed {
            return Ok(vec![self.denied(
                metric,
                quantity.get(),
                via,
                &decision,
                at,
            )]);
        }
        let current = state.current + quantity.get();
        let totals = totals_for(
            quota,
            kind,
            (current, state.peak.max(current)),
            state.top_up_units,
            &state.settled,
            held,
        );
        let mut events = vec![LedgerEvent::UsageRecorded {
            metric: metric.clone(),
            quantity: quantity.get(),
            via,
            occurred_at,
            after_close: self.agg.closed.is_some(),
            marginal_cost: totals.overage_cost - state.overage_cost,
            totals,
            at,
            hold: None,
        }];
        events.extend(self.thresholds(metric, state, &totals, at));
        Ok(events)
    }

    fn set_gauge(
        &self,
        metric: &MetricKey,
        level: u64,
        at: DateTime<Utc>,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let kind = self.kind(metric)?;
        if kind != MetricKind::Gauge {
            return Err(LedgerError::NotAGauge {
                metric: metric.clone(),
                kind,
            });
        }
        if level > QUANTITY_MAX {
            return Err(LedgerError::BadLevel);
        }
        self.check_not_too_late(at)?;
        let state = self.state(metric);
        let quota = self.quota(metric);
        if level > state.current {
            // Gauges are never held: a level is set, not reserved.
            let decision = evaluate(
                &self.opened.plan.id,
                quota,
                (state, 0),
                kind,
                level - state.current,
            );
            if !decision.allowed {
                let requested = level - state.current;
                return Ok(vec![self.denied(
                    metric,
                    requested,
                    UsageVia::Gauge,
                    &decision,
                    at,
                )]);
            }
        }
        let totals = totals_for(
            quota,
            kind,
            (level, state.peak.max(level)),
            state.top_up_units,
            &state.settled,
            0,
        );
        let mut events = vec![LedgerEvent::GaugeLevelSet {
            metric: metric.clone(),
            previous: state.current,
            marginal_cost: totals.overage_cost - state.overage_cost,
            totals,
            at,
        }];
        events.extend(self.thresholds(metric, state, &totals, at));
        Ok(events)
    }

    fn top_up(
        &self,
        metric: &MetricKey,
        units: Quantity,
        price: Money,
        reference: &str,
        actor: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let kind = self.kind(metric)?;
        self.check_open()?;
        let quota = self
            .quota(metric)
            .ok_or_else(|| LedgerError::TopUpOnUnlimited(metric.clone()))?;
        let state = self.state(metric);
        let totals = totals_for(
            Some(quota),
            kind,
            (state.current, state.peak),
            state.top_up_units + units.get(),
            &state.settled,
            self.agg.held_at(metric, at),
        );
        let mut events = vec![LedgerEvent::TopUpApplied {
            metric: metric.clone(),
            units: units.get(),
            price,
            reference: reference.to_owned(),
            actor: actor.to_owned(),
            marginal_cost: totals.overage_cost - state.overage_cost,
            totals,
            at,
        }];
        events.extend(self.thresholds(metric, state, &totals, at));
        Ok(events)
    }

    fn adjust(
        &self,
        metric: &MetricKey,
        delta: i64,
        actor: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let kind = self.kind(metric)?;
        if delta == 0 || delta.unsigned_abs() > QUANTITY_MAX {
            return Err(LedgerError::BadAdjustment);
        }
        self.check_not_too_late(at)?;
        let state = self.state(metric);
        let current = state
            .current
            .checked_add_signed(delta)
            .ok_or(LedgerError::BelowZero {
                metric: metric.clone(),
                delta,
                current: state.current,
            })?;
        let quota = self.quota(metric);
        let limit = effective_limit(quota, state);
        let held = self.agg.held_at(metric, at);
        if let (Some(q), Some(l)) = (quota, limit) {
            if q.overage == OveragePolicy::Block && delta > 0 && current + held > l {
                return Err(LedgerError::AboveBlockLimit {
                    metric: metric.clone(),
                    effective_limit: l,
                    would_be: current + held,
                });
            }
        }
        // A downward correction says the history was wrong, so a gauge's recorded peak
        // comes down with it; an upward one can only raise the peak to the new level.
        let peak = if delta < 0 {
            state.peak.saturating_add_signed(delta).max(current)
        } else {
            state.peak.max(current)
        };
        let totals = totals_for(
            quota,
            kind,
            (current, peak),
            state.top_up_units,
            &state.settled,
            held,
        );
        let mut events = vec![LedgerEvent::UsageAdjusted {
            metric: metric.clone(),
            delta,
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            marginal_cost: totals.overage_cost - state.overage_cost,
            totals,
            at,
        }];
        events.extend(self.thresholds(metric, state, &totals, at));
        Ok(events)
    }

    /// The refusal of `requested` units as `decision` found it.
    fn denied(
        &self,
        metric: &MetricKey,
        requested: u64,
        via: UsageVia,
        decision: &QuotaDecision,
        at: DateTime<Utc>,
    ) -> LedgerEvent {
        LedgerEvent::UsageDenied {
            metric: metric.clone(),
            requested,
            via,
            current: decision.current,
            effective_limit: decision.effective_limit.unwrap_or_default(),
            at,
            held: decision.reserved,
            count: 1,
            first_at: None,
        }
    }

    /// The metric's totals as they stand with `held` units held.
    fn totals_holding(&self, metric: &MetricKey, held: u64) -> MetricTotals {
        let s = self.state(metric);
        totals_for(
            self.quota(metric),
            self.opened.kind(metric),
            (s.current, s.peak),
            s.top_up_units,
            &s.settled,
            held,
        )
    }

    fn reserve(
        &self,
        metric: &MetricKey,
        amount: Quantity,
        ttl: HoldTtl,
        at: DateTime<Utc>,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let kind = self.kind(metric)?;
        if kind == MetricKind::Gauge {
            return Err(LedgerError::GaugeIsSet(metric.clone()));
        }
        self.check_not_too_late(at)?;
        if !self.opened.period.contains(at) {
            return Err(LedgerError::WrongPeriod {
                period: self.opened.period,
                occurred_at: at,
            });
        }
        let open = self
            .agg
            .holds
            .values()
            .filter(|h| !h.expired_at(at))
            .count();
        if open >= OPEN_HOLDS_MAX {
            return Err(LedgerError::TooManyHolds);
        }
        let held = self.agg.held_at(metric, at);
        let state = self.state(metric);
        let decision = evaluate(
            &self.opened.plan.id,
            self.quota(metric),
            (state, held),
            kind,
            amount.get(),
        );
        if !decision.allowed {
            let via = UsageVia::Reservation;
            return Ok(vec![self.denied(metric, amount.get(), via, &decision, at)]);
        }
        Ok(vec![LedgerEvent::QuotaReserved {
            hold: self.agg.holds_placed + 1,
            metric: metric.clone(),
            amount: amount.get(),
            expires_at: at + ttl.duration(),
            totals: self.totals_holding(metric, held + amount.get()),
            at,
        }])
    }

    /// The hold numbered `number` if it still holds at `at`.
    fn open_hold(&self, number: u64, at: DateTime<Utc>) -> Result<&Hold, LedgerError> {
        let hold = self.agg.holds.get(&number).ok_or(match number {
            n if n >= 1 && n <= self.agg.holds_placed => LedgerError::HoldNotHeld(n),
            n => LedgerError::UnknownHold(n),
        })?;
        if hold.expired_at(at) {
            return Err(LedgerError::HoldExpired {
                hold: number,
                expires_at: hold.expires_at,
            });
        }
        Ok(hold)
    }

    fn commit_hold(
        &self,
        number: u64,
        amount: Option<Quantity>,
        at: DateTime<Utc>,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        let hold = self.open_hold(number, at)?;
        let units = amount.map_or(hold.amount, Quantity::get);
        if units > hold.amount {
            return Err(LedgerError::CommitAboveHold {
                hold: number,
                held: hold.amount,
                amount: units,
            });
        }
        self.check_not_too_late(at)?;
        let metric = &hold.metric;
        let kind = self.kind(metric)?;
        let state = self.state(metric);
        // The hold was admitted, so what it commits is never refused: it was counted
        // against the limit all along.
        let current = state.current + units;
        let held = self.agg.held_at(metric, at).saturating_sub(hold.amount);
        let totals = totals_for(
            self.quota(metric),
            kind,
            (current, state.peak.max(current)),
            state.top_up_units,
            &state.settled,
            held,
        );
        let mut events = vec![LedgerEvent::UsageRecorded {
            metric: metric.clone(),
            quantity: units,
            via: UsageVia::Reservation,
            // The job's usage belongs where its quota was taken.
            occurred_at: hold.reserved_at,
            after_close: self.agg.closed.is_some(),
            marginal_cost: totals.overage_cost - state.overage_cost,
            totals,
            at,
            hold: Some(HoldCommit {
                number,
                held: hold.amount,
            }),
        }];
        events.extend(self.thresholds(metric, state, &totals, at));
        Ok(events)
    }

    fn void_hold(&self, number: u64, at: DateTime<Utc>) -> Result<Vec<LedgerEvent>, LedgerError> {
        let hold = self.open_hold(number, at)?;
        let held = self
            .agg
            .held_at(&hold.metric, at)
            .saturating_sub(hold.amount);
        Ok(vec![LedgerEvent::HoldReleased {
            hold: number,
            metric: hold.metric.clone(),
            amount: hold.amount,
            reason: Release::Voided,
            totals: self.totals_holding(&hold.metric, held),
            at,
        }])
    }

    /// The release of every hold past its expiry at `at`, in the order they expired,
    /// each dated at its expiry instant.
    fn expire_holds(&self, at: DateTime<Utc>) -> Vec<LedgerEvent> {
        let mut lapsed: Vec<(&u64, &Hold)> = self
            .agg
            .holds
            .iter()
            .filter(|(_, h)| h.expired_at(at))
            .collect();
        lapsed.sort_by_key(|(n, h)| (h.expires_at, **n));
        // Holds still open count on: `held` after each release is the running total.
        let mut held: BTreeMap<&MetricKey, u64> = BTreeMap::new();
        lapsed
            .into_iter()
            .map(|(n, h)| {
                let left = held
                    .entry(&h.metric)
                    .or_insert_with(|| self.state(&h.metric).held);
                *left = left.saturating_sub(h.amount);
                LedgerEvent::HoldReleased {
                    hold: *n,
                    metric: h.metric.clone(),
                    amount: h.amount,
                    reason: Release::Expired,
                    totals: self.totals_holding(&h.metric, *left),
                    at: h.expires_at,
                }
            })
            .collect()
    }

    fn apply_plan(
        &self,
        plan: &PlanDefinition,
        at: DateTime<Utc>,
    ) -> Result<Vec<LedgerEvent>, LedgerError> {
        self.check_open()?;
        if plan == &self.opened.plan {
            return Ok(Vec::new());
        }
        let totals: BTreeMap<MetricKey, MetricTotals> = self
            .agg
            .metrics
            .iter()
            .map(|(m, s)| {
                // The new plan measures only what comes after it; a gauge's level is
                // measured against it from now on.
                let t = totals_for(
                    plan.quota(m),
                    self.opened.kind(m),
                    (s.current, s.current),
                    s.top_up_units,
                    &s.at_plan_change(),
                    self.agg.held_at(m, at),
                );
                (m.clone(), t)
            })
            .collect();
        let mut events = Vec::new();
        for (m, t) in &totals {
            events.extend(threshold_events(plan.quota(m), m, self.state(m), t, at));
        }
        events.insert(
            0,
            LedgerEvent::PlanApplied {
                previous_plan: self.opened.plan.id.clone(),
                plan: plan.clone(),
                totals,
                at,
            },
        );
        Ok(events)
    }

    fn close(&self, actor: &str, at: DateTime<Utc>) -> Result<Vec<LedgerEvent>, LedgerError> {
        self.check_open()?;
        let plan = &self.opened.plan;
        let lines: Vec<InvoiceLine> = self
            .agg
            .metrics
            .iter()
            .filter_map(|(m, s)| {
                // A metric the last plan leaves unlimited still owes what earlier plans
                // of the period settled.
                let q = plan.quota(m);
                let t = totals_for(
                    q,
                    self.opened.kind(m),
                    (s.current, s.peak),
                    s.top_up_units,
                    &s.settled,
                    s.held,
                );
                (t.overage_units > 0 && t.overage_cost.minor() > 0).then(|| InvoiceLine {
                    metric: m.clone(),
                    billable_units: t.billable,
                    effective_limit: t.effective_limit.unwrap_or_default(),
                    overage_units: t.overage_units,
                    rate: q.and_then(|q| q.overage_rate),
                    amount: t.overage_cost,
                })
            })
            .collect();
        let overage: Money = lines.iter().map(|l| l.amount).sum();
        let segments = match self.agg.segments.is_empty() {
            true => vec![PlanSegment::new(plan, self.opened.period.start())],
            false => self.agg.segments.clone(),
        };
        let base_lines = base_lines(&segments, self.opened.period);
        let base: Money = base_lines.iter().map(|l| l.amount).sum();
        Ok(vec![LedgerEvent::PeriodClosed {
            invoice: Invoice {
                plan_id: plan.id.clone(),
                currency: plan.currency,
                base,
                base_lines,
                lines,
                overage,
                total: base + overage,
            },
            actor: actor.to_owned(),
            at,
        }])
    }
}
