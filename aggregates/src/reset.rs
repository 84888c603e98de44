//! The quota reset planner: the runbook's `quota:reset`, done the ledger way. Pure: given
//! a period's state and the operator's request, it says which commands to append and
//! what to tell the operator; the command line loads the state and submits the commands.
//!
//! The original script (`scripts/quota-guardian-reset.ts`, reference §5 and defect 17
//! of §7) deleted every usage row of the brand for the month, whatever `--metric` said,
//! wrote one row at the target, and added a completed top-up of 25 units on every run.
//! Its target was taken on the plan's *base* limit, so with the top-up the percentage
//! was wrong: starter `ai_generations` at `--target=90` gave 18/20, then 18/45 = 40 %
//! once the 25 units were added, and no alert fired. This planner differs on purpose:
//!
//! - **Nothing is deleted.** For one metric of one open period it plans compensating
//!   commands: an optional `ApplyTopUp`, then one `AdjustUsage` by the signed delta
//!   that brings usage to the target. Other metrics are never touched.
//! - **The target is taken on the effective limit after the top-up** (plan limit + the
//!   period's top-ups + this reset's top-up): `ceil(effective × target / 100)`, the
//!   smallest usage at which the ledger's threshold rule (`current × 100 ≥ t × limit`)
//!   reaches `target`. The alert state the operator asks for is the one they get.
//! - **No credit unless asked for.** A reset corrects usage; credit is a separate
//!   decision with a price, so it is granted only when the request names units (the
//!   command line's `--topup` defaults to 0). A grant is free (price 0) unless the
//!   request gives its total price.
//! - **Repeating a reset never stacks credit or usage.** The top-up's idempotency key
//!   is the metric, units and price (`cli-reset:<metric>:topup:<units>:<price>`), so an
//!   identical top-up is granted at most once per period: a retry after a failure, or a
//!   second run, finds it in the log and does not grant it again (the dry run says so
//!   too). To add more credit, grant a different amount or use the top-up grant of the
//!   API. The adjustment's key is the target and the stream version it was computed
//!   against (`cli-reset:<metric>:adjust:<target>:<effective>:v<version>`), so two
//!   runs planned on the same state append it once; a run on a metric already at its
//!   target appends nothing.
//! - **A gauge is reset with `AdjustUsage`, not `SetGaugeLevel`.** A gauge level is a
//!   measurement its source reports; a reset is a correction by an operator. The
//!   adjustment records who and why, lowers the recorded peak on the way down (so a
//!   mistaken level is not billed as overage), and never records a `UsageDenied` as a
//!   refused level would on a `block` gauge. The next level the source reports still
//!   replaces it, and the plan says so.
//! - **A dry run prints exactly the commands the run would append**: the plan's
//!   `Display` lists them with their idempotency keys.
//!
//! [`plan_reset`] is the decision; [`as_it_will_open`] stands in for a period without
//! events; [`Standing`] is where a metric stands after the run.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::catalog::{MetricKind, OveragePolicy, PlanDefinition};
use crate::ids::{BrandId, IdempotencyKey, MetricKey, PeriodKey, PlanId, Quantity, QUANTITY_MAX};
use crate::money::Money;
use crate::period::{
    effective_limit, percentage, LedgerRules, PeriodCommand, PeriodOpening, ThresholdChange,
    UsagePeriodAggregate,
};

/// The original capped `--target` at 150 %: far enough above 100 % to put a `charge`
/// metric into overage for a test or a demo, not so far that a typo bills a customer
/// ten times its plan. Above it the planner refuses rather than silently clamping.
pub const RESET_TARGET_PCT_MAX: u32 = 150;

/// The original's default target: the critical alert threshold (90 %).
pub const RESET_TARGET_PCT_DEFAULT: u32 = 90;

/// The `reference` of top-ups granted by a reset, for finance and auditors.
pub const RESET_TOP_UP_REFERENCE: &str = "cli-reset";

/// What [`plan_reset`] needs besides the period's state: the operator's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetRequest {
    pub metric: MetricKey,
    /// Percent of the effective limit after the top-up, 1..=[`RESET_TARGET_PCT_MAX`].
    pub target_pct: u32,
    /// Units of credit to grant (0: none).
    pub top_up_units: u64,
    /// Total price of the grant; `None` is a free credit.
    pub price: Option<Money>,
    /// Recorded on every appended event.
    pub actor: String,
}

impl ResetRequest {
    /// Refusals that depend on the request alone.
    pub fn check(&self) -> Result<(), ResetRefusal> {
        if self.target_pct == 0 || self.target_pct > RESET_TARGET_PCT_MAX {
            return Err(ResetRefusal::TargetOutOfRange(self.target_pct));
        }
        if self.top_up_units > QUANTITY_MAX {
            return Err(ResetRefusal::TopUpTooLarge(self.top_up_units));
        }
        match self.price {
            Some(p) if p.minor() < 0 => Err(ResetRefusal::NegativePrice),
            Some(_) if self.top_up_units == 0 => Err(ResetRefusal::PriceWithoutTopUp),
            _ => Ok(()),
        }
    }

    /// The key of the top-up this request grants, if it grants one: an earlier grant
    /// under it is not granted again (see [`plan_reset`]).
    pub fn top_up_key(&self) -> Option<IdempotencyKey> {
        match self.top_up_units {
            0 => None,
            units => Some(top_up_key(
                &self.metric,
                units,
                self.price.unwrap_or(Money::ZERO),
            )),
        }
    }
}

/// One command the reset appends, with the idempotency key that makes it safe to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetStep {
    pub command: PeriodCommand,
    pub key: IdempotencyKey,
}

impl ResetStep {
    pub fn is_top_up(&self) -> bool {
        matches!(self.command, PeriodCommand::ApplyTopUp { .. })
    }
}

/// What a reset will do, computed from one state of the period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetPlan {
    pub brand: BrandId,
    pub period: PeriodKey,
    pub plan: PlanId,
    pub metric: MetricKey,
    pub kind: MetricKind,
    pub overage: OveragePolicy,
    /// The stream version the plan was computed against (part of the adjustment's key).
    pub version: u64,
    pub target_pct: u32,
    /// Usage before the reset.
    pub current: u64,
    /// The plan's base limit.
    pub limit: u64,
    /// Top-up units already in the period before this reset.
    pub top_up_units_before: u64,
    /// Units this reset grants (0 when none was asked or it was granted already).
    pub top_up_units: u64,
    /// Sequence of the identical top-up an earlier reset of this period granted.
    pub top_up_granted_at: Option<u64>,
    /// Plan limit + every top-up, this reset's included.
    pub effective_limit: u64,
    /// Usage after the reset: `ceil(effective_limit × target_pct / 100)`.
    pub target_value: u64,
    /// `target_value` in percent of `effective_limit`, two decimals.
    pub percentage: Decimal,
    /// Thresholds the run will cross (not active before it, reached after it).
    pub new_alerts: Vec<u8>,
    /// Active thresholds the run will resolve (no longer reached after it).
    pub resolved_alerts: Vec<u8>,
    /// Thresholds active before the run; an active threshold never fires again until
    /// it resolves.
    pub alerts_already_raised: Vec<u8>,
    /// The commands to append, in order (the top-up first: the target counts it).
    pub steps: Vec<ResetStep>,
}

/// Why a reset is refused. Every refusal comes before anything is appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResetRefusal {
    #[error(
        "--target must be 1 to {RESET_TARGET_PCT_MAX} (percent of the effective limit), got {0}"
    )]
    TargetOutOfRange(u32),
    #[error("--topup must be at most {QUANTITY_MAX} units, got {0}")]
    TopUpTooLarge(u64),
    #[error("--price-cents is the price of a top-up: it needs --topup")]
    PriceWithoutTopUp,
    #[error("--price-cents must not be negative")]
    NegativePrice,
    #[error("unknown metric {metric}; the catalog has: {known}")]
    UnknownMetric { metric: MetricKey, known: String },
    #[error(
        "period {period} of brand {brand} has no events yet: a gauge's level carries over \
         from the previous period when the period opens; record a level first"
    )]
    PeriodNotOpen { brand: BrandId, period: PeriodKey },
    /// [`plan_reset`] was given a state without `PeriodOpened`.
    #[error("the period has no events yet: there is no usage to reset")]
    NotOpened,
    #[error("period {0} is closed: its invoice is final, so it can no longer be reset")]
    PeriodClosed(PeriodKey),
    #[error("period {period} stopped accepting usage at {deadline} (period end + grace)")]
    TooLate {
        period: PeriodKey,
        deadline: DateTime<Utc>,
    },
    #[error(
        "{metric} has no quota on plan {plan} (unlimited): there is no limit to reset \
         against or to top up; metrics with a quota: {with_quota}"
    )]
    Unlimited {
        metric: MetricKey,
        plan: PlanId,
        with_quota: String,
    },
    #[error(
        "{metric} blocks usage above its effective limit {effective_limit}: a target of \
         {target_pct} % ({target_value}) cannot be reached; use at most 100 or add a top-up"
    )]
    AboveBlockLimit {
        metric: MetricKey,
        effective_limit: u64,
        target_pct: u32,
        target_value: u128,
    },
    #[error(
        "moving {metric} from {current} to {target_value} exceeds the {QUANTITY_MAX} units \
         one command may move"
    )]
    AdjustmentTooLarge {
        metric: MetricKey,
        current: u64,
        target_value: u128,
    },
}

/// The idempotency key of a reset's top-up: the same grant is made at most once per
/// metric and period (keys are unique per stream, i.e. per brand and period).
pub fn top_up_key(metric: &MetricKey, units: u64, price: Money) -> IdempotencyKey {
    key(format!("cli-reset:{metric}:topup:{units}:{price}"))
}

/// The idempotency key of a reset's adjustment: the target and the state it was
/// computed against, which together determine the delta.
fn adjust_key(metric: &MetricKey, target_pct: u32, effective: u64, version: u64) -> IdempotencyKey {
    key(format!(
        "cli-reset:{metric}:adjust:{target_pct}:{effective}:v{version}"
    ))
}

fn key(raw: String) -> IdempotencyKey {
    // A metric key is at most 64 characters of [a-z0-9_] and the numbers are at most 20
    // digits each, so the key is always visible ASCII and far below 255 characters.
    IdempotencyKey::parse(&raw).expect("reset keys are short visible ASCII")
}

/// The kind of `metric` in `kinds` (the catalog's, or those a period opened on).
pub fn kind_of(
    kinds: &BTreeMap<MetricKey, MetricKind>,
    metric: &MetricKey,
) -> Result<MetricKind, ResetRefusal> {
    kinds
        .get(metric)
        .copied()
        .ok_or_else(|| ResetRefusal::UnknownMetric {
            metric: metric.clone(),
            known: kinds
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// A reset is a correction of usage, so it is refused once the period stopped accepting
/// usage, as the ledger would refuse its adjustment.
pub fn check_not_too_late(
    period: PeriodKey,
    now: DateTime<Utc>,
    rules: &LedgerRules,
) -> Result<(), ResetRefusal> {
    let deadline = rules.accepts_usage_until(period);
    match now > deadline {
        true => Err(ResetRefusal::TooLate { period, deadline }),
        false => Ok(()),
    }
}

/// A period with no events yet, as the engine will open it on the first command: on the
/// brand's current `plan`, every counter at zero. A gauge carries its level over from
/// the previous period, which only the opening itself decides, so a gauge waits for the
/// period to open (its first reported level does that).
pub fn as_it_will_open(
    brand: &BrandId,
    period: PeriodKey,
    plan: &PlanDefinition,
    metric_kinds: &BTreeMap<MetricKey, MetricKind>,
    metric: &MetricKey,
    at: DateTime<Utc>,
    rules: &LedgerRules,
) -> Result<UsagePeriodAggregate, ResetRefusal> {
    if metric_kinds.get(metric) != Some(&MetricKind::Counter) {
        return Err(ResetRefusal::PeriodNotOpen {
            brand: brand.clone(),
            period,
        });
    }
    let opening = PeriodOpening {
        brand_id: brand.clone(),
        period,
        plan: plan.clone(),
        metric_kinds: metric_kinds.clone(),
        carried_levels: BTreeMap::new(),
    };
    let mut state = UsagePeriodAggregate::default();
    let events = state
        .decide_opening(&opening, at, rules)
        .expect("an empty stream always opens");
    events.iter().for_each(|e| state.fold(e));
    Ok(state)
}

/// Plan a reset of one metric against `state`. Pure: no I/O, no clock.
///
/// `top_up_granted_at` is the sequence of an identical top-up (same
/// [`ResetRequest::top_up_key`]) already in the period, if any: it is then not granted
/// again, and `state` already counts it in the effective limit.
pub fn plan_reset(
    state: &UsagePeriodAggregate,
    req: &ResetRequest,
    top_up_granted_at: Option<u64>,
) -> Result<ResetPlan, ResetRefusal> {
    req.check()?;
    let opened = state.opened.as_ref().ok_or(ResetRefusal::NotOpened)?;
    if state.closed.is_some() {
        return Err(ResetRefusal::PeriodClosed(opened.period));
    }
    let metric = &req.metric;
    let kind = kind_of(&opened.metric_kinds, metric)?;
    let quota = opened
        .plan
        .quota(metric)
        .ok_or_else(|| ResetRefusal::Unlimited {
            metric: metric.clone(),
            plan: opened.plan.id.clone(),
            with_quota: opened
                .plan
                .quotas
                .iter()
                .map(|q| q.metric.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let ms = state.metric(metric).cloned().unwrap_or_default();
    let grant = match top_up_granted_at {
        Some(_) => 0,
        None => req.top_up_units,
    };
    // Saturating: a limit near u64::MAX is unlimited in all but name, and the target
    // check below refuses any delta above QUANTITY_MAX anyway.
    let effective = quota
        .limit
        .saturating_add(ms.top_up_units)
        .saturating_add(grant);
    let target = target_value(effective, req.target_pct);
    if quota.overage == OveragePolicy::Block && target > u128::from(effective) {
        return Err(ResetRefusal::AboveBlockLimit {
            metric: metric.clone(),
            effective_limit: effective,
            target_pct: req.target_pct,
            target_value: target,
        });
    }
    let delta = target as i128 - i128::from(ms.current);
    if delta.unsigned_abs() > u128::from(QUANTITY_MAX) {
        return Err(ResetRefusal::AdjustmentTooLarge {
            metric: metric.clone(),
            current: ms.current,
            target_value: target,
        });
    }
    // In range: `target` is at most `current` + QUANTITY_MAX and delta fits in i64.
    let (target, delta) = (target as u64, delta as i64);
    let mut steps = Vec::new();
    if grant > 0 {
        let price = req.price.unwrap_or(Money::ZERO);
        steps.push(ResetStep {
            command: PeriodCommand::ApplyTopUp {
                metric: metric.clone(),
                units: Quantity::new(grant).expect("checked by ResetRequest::check"),
                price,
                reference: RESET_TOP_UP_REFERENCE.to_owned(),
                actor: req.actor.clone(),
            },
            key: top_up_key(metric, grant, price),
        });
    }
    if delta != 0 {
        steps.push(ResetStep {
            command: PeriodCommand::AdjustUsage {
                metric: metric.clone(),
                delta,
                actor: req.actor.clone(),
                reason: format!(
                    "quota reset: {} % of the effective limit {effective}",
                    req.target_pct
                ),
            },
            key: adjust_key(metric, req.target_pct, effective, state.version),
        });
    }
    // The alert changes of each step, by the rule the steps are decided with.
    let mut active = ms.fired.clone();
    let (mut new_alerts, mut resolved_alerts) = (Vec::new(), Vec::new());
    let moves = [(grant > 0, ms.current), (delta != 0, target)];
    for current in moves.iter().filter(|(step, _)| *step).map(|(_, c)| *c) {
        let change = ThresholdChange::of(Some(quota), &active, current, Some(effective));
        change.apply_to(&mut active);
        new_alerts.retain(|t| !change.resolved.contains(t));
        resolved_alerts.extend(change.resolved.iter().filter(|t| ms.fired.contains(t)));
        new_alerts.extend(change.crossed);
    }
    let mut alerts_already_raised = ms.fired.clone();
    alerts_already_raised.sort_unstable();
    resolved_alerts.sort_unstable();
    Ok(ResetPlan {
        brand: opened.brand_id.clone(),
        period: opened.period,
        plan: opened.plan.id.clone(),
        metric: metric.clone(),
        kind,
        overage: quota.overage,
        version: state.version,
        target_pct: req.target_pct,
        current: ms.current,
        limit: quota.limit,
        top_up_units_before: ms.top_up_units,
        top_up_units: grant,
        top_up_granted_at,
        effective_limit: effective,
        target_value: target,
        percentage: percentage(target, effective),
        new_alerts,
        resolved_alerts,
        alerts_already_raised,
        steps,
    })
}

/// `ceil(effective × pct / 100)` in exact integers: the smallest usage at which the
/// threshold rule `current × 100 ≥ pct × effective` holds.
fn target_value(effective: u64, pct: u32) -> u128 {
    (u128::from(effective) * u128::from(pct)).div_ceil(100)
}

/// Where a metric stands against its effective limit, as the report after a run says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub current: u64,
    pub effective_limit: u64,
}

impl Standing {
    /// `None` before the period opens or when the plan has no quota for `metric`.
    pub fn of(state: &UsagePeriodAggregate, metric: &MetricKey) -> Option<Standing> {
        let ms = state.metric(metric).cloned().unwrap_or_default();
        let quota = state.plan().and_then(|p| p.quota(metric));
        Some(Standing {
            current: ms.current,
            effective_limit: effective_limit(quota, &ms)?,
        })
    }
}

impl fmt::Display for Standing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "now: {} of effective limit {} = {} %",
            self.current,
            self.effective_limit,
            percentage(self.current, self.effective_limit)
        )
    }
}

impl fmt::Display for ResetPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reset {} of brand {}, period {} (plan {}, stream version {})",
            self.metric, self.brand, self.period, self.plan, self.version
        )?;
        let before = self.limit + self.top_up_units_before;
        writeln!(
            f,
            "  before: {} of effective limit {before} (plan limit {} + {} top-up units) = {} %",
            self.current,
            self.limit,
            self.top_up_units_before,
            percentage(self.current, before)
        )?;
        let limit_is = match self.top_up_units {
            0 => "the effective limit",
            _ => "the effective limit after this reset's top-up",
        };
        writeln!(
            f,
            "  target: {} % of {limit_is}: ceil({} × {} / 100) = {}",
            self.target_pct, self.effective_limit, self.target_pct, self.target_value
        )?;
        if let Some(seq) = self.top_up_granted_at {
            writeln!(
                f,
                "  top-up: an identical top-up was already granted in this period (#{seq}): \
                 not granted again"
            )?;
        }
        match self.steps.is_empty() {
            true => writeln!(
                f,
                "  commands: none ({} already stands at the target)",
                self.metric
            )?,
            false => writeln!(f, "  commands:")?,
        }
        for (n, step) in self.steps.iter().enumerate() {
            write!(f, "    {}. ", n + 1)?;
            self.fmt_step(f, step)?;
        }
        writeln!(
            f,
            "  after: {} of effective limit {} = {} %, the percentage the alerts are computed on",
            self.target_value, self.effective_limit, self.percentage
        )?;
        writeln!(
            f,
            "  alerts: new {}; resolved {}; active before the run: {}",
            pct_list(&self.new_alerts),
            pct_list(&self.resolved_alerts),
            pct_list(&self.alerts_already_raised)
        )?;
        if self.kind == MetricKind::Gauge {
            writeln!(
                f,
                "  note: {} is a gauge: the next level its source reports replaces this one",
                self.metric
            )?;
        }
        Ok(())
    }
}

impl ResetPlan {
    fn fmt_step(&self, f: &mut fmt::Formatter<'_>, step: &ResetStep) -> fmt::Result {
        match &step.command {
            PeriodCommand::ApplyTopUp {
                metric,
                units,
                price,
                reference,
                ..
            } => writeln!(
                f,
                "TopUp {metric} +{} units, price {price} cents, reference {reference} [key {}]",
                units.get(),
                step.key
            ),
            PeriodCommand::AdjustUsage {
                metric,
                delta,
                reason,
                ..
            } => writeln!(
                f,
                "Adjust {metric} by {delta:+} ({} → {}), reason \"{reason}\" [key {}]",
                self.current, self.target_value, step.key
            ),
            other => writeln!(f, "{other:?} [key {}]", step.key),
        }
    }
}

fn pct_list(thresholds: &[u8]) -> String {
    match thresholds.is_empty() {
        true => "none".to_owned(),
        false => thresholds
            .iter()
            .map(|t| format!("{t} %"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::catalog::Catalog;
    use crate::period::reached;

    fn m(s: &str) -> MetricKey {
        MetricKey::parse(s).unwrap()
    }

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 15, 12, 0, 0).unwrap()
    }

    fn november() -> PeriodKey {
        PeriodKey::parse("2026-11").unwrap()
    }

    fn apply(agg: &mut UsagePeriodAggregate, cmd: PeriodCommand) {
        let events = agg.decide(&cmd, at(), &LedgerRules::default()).unwrap();
        events.iter().for_each(|e| agg.fold(e));
    }

    /// An open November 2026 period of brand `acme` on `plan` of the default catalog.
    fn period_on(plan: &str) -> UsagePeriodAggregate {
        let catalog = Catalog::default_catalog();
        let opening = PeriodOpening {
            brand_id: BrandId::parse("acme").unwrap(),
            period: november(),
            plan: catalog.plan(&PlanId::parse(plan).unwrap()).unwrap().clone(),
            metric_kinds: catalog.metric_kinds().clone(),
            carried_levels: BTreeMap::new(),
        };
        let mut agg = UsagePeriodAggregate::default();
        let events = agg
            .decide_opening(&opening, at(), &LedgerRules::default())
            .unwrap();
        events.iter().for_each(|e| agg.fold(e));
        agg
    }

    fn record(agg: &mut UsagePeriodAggregate, metric: &str, n: u64) {
        apply(
            agg,
            PeriodCommand::RecordUsage {
                metric: m(metric),
                quantity: Quantity::new(n).unwrap(),
                occurred_at: None,
            },
        );
    }

    fn top_up(agg: &mut UsagePeriodAggregate, metric: &str, n: u64) {
        apply(
            agg,
            PeriodCommand::ApplyTopUp {
                metric: m(metric),
                units: Quantity::new(n).unwrap(),
                price: Money::ZERO,
                reference: "stripe".into(),
                actor: "billing".into(),
            },
        );
    }

    fn req(metric: &str, target_pct: u32, top_up_units: u64) -> ResetRequest {
        ResetRequest {
            metric: m(metric),
            target_pct,
            top_up_units,
            price: None,
            actor: "cli:ops".into(),
        }
    }

    /// Decide a plan's steps against the aggregate, as the engine would.
    fn execute(agg: &mut UsagePeriodAggregate, plan: &ResetPlan) {
        for step in &plan.steps {
            assert!(
                matches!(
                    step.command,
                    PeriodCommand::ApplyTopUp { .. } | PeriodCommand::AdjustUsage { .. }
                ),
                "a reset never plans {:?}",
                step.command
            );
            apply(agg, step.command.clone());
        }
    }

    fn deltas(plan: &ResetPlan) -> Vec<i64> {
        plan.steps
            .iter()
            .filter_map(|s| match s.command {
                PeriodCommand::AdjustUsage { delta, .. } => Some(delta),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_target_is_taken_on_the_effective_limit_after_the_top_up() {
        // Proves the fix of the original's misleading percentage (§5, §7.17): starter
        // ai_generations (limit 20) at 20, target 90 with 25 units gives 41/45 (the
        // original gave 18/45 = 40 %), and the 90 % threshold is what it reaches.
        let mut agg = period_on("starter");
        record(&mut agg, "ai_generations", 20);
        let plan = plan_reset(&agg, &req("ai_generations", 90, 25), None).unwrap();
        assert_eq!((plan.effective_limit, plan.target_value), (45, 41));
        assert_eq!(plan.steps.len(), 2);
        assert!(matches!(
            plan.steps[0].command,
            PeriodCommand::ApplyTopUp { ref units, price, .. }
                if units.get() == 25 && price == Money::ZERO
        ));
        assert_eq!(deltas(&plan), [21]);
        assert_eq!(plan.percentage.to_string(), "91.11");
        execute(&mut agg, &plan);
        let s = agg.metric(&m("ai_generations")).unwrap();
        assert_eq!((s.current, s.top_up_units), (41, 25));
        assert!(reached(41, 45, 90) && !reached(40, 45, 90));
    }

    #[test]
    fn top_ups_already_in_the_period_count_in_the_effective_limit() {
        // Proves earlier credit is part of the limit the target is taken on.
        let mut agg = period_on("starter");
        top_up(&mut agg, "ai_generations", 10);
        record(&mut agg, "ai_generations", 5);
        let plan = plan_reset(&agg, &req("ai_generations", 90, 0), None).unwrap();
        assert_eq!((plan.top_up_units_before, plan.effective_limit), (10, 30));
        assert_eq!((plan.target_value, deltas(&plan)), (27, vec![22]));
        assert_eq!(plan.new_alerts, [50, 75, 90]);
    }

    #[test]
    fn a_target_below_current_usage_plans_a_negative_adjustment() {
        // Proves a reset lowers usage with a compensating event instead of deleting rows.
        let mut agg = period_on("starter");
        record(&mut agg, "ai_generations", 20);
        let plan = plan_reset(&agg, &req("ai_generations", 50, 0), None).unwrap();
        assert_eq!((plan.target_value, deltas(&plan)), (10, vec![-10]));
        assert_eq!(plan.new_alerts, Vec::<u8>::new());
        assert_eq!(plan.resolved_alerts, [75, 90]);
        assert_eq!(plan.alerts_already_raised, [50, 75, 90]);
        execute(&mut agg, &plan);
        assert_eq!(agg.metric(&m("ai_generations")).unwrap().current, 10);
    }

    #[test]
    fn a_metric_already_at_its_target_plans_no_command() {
        // Proves a delta of zero appends nothing, which is what makes a second run a no-op.
        let mut agg = period_on("starter");
        record(&mut agg, "ai_generations", 18);
        let plan = plan_reset(&agg, &req("ai_generations", 90, 0), None).unwrap();
        assert_eq!(plan.target_value, 18);
        assert!(plan.steps.is_empty());
        assert!(plan.to_string().contains("already stands at the target"));
    }

    #[test]
    fn targets_of_zero_or_above_the_cap_are_refused_and_the_cap_itself_is_allowed() {
        // Proves the original's bounds: > 0 and at most 150 %, refused rather than clamped.
        let mut agg = period_on("starter");
        record(&mut agg, "ai_generations", 1);
        for bad in [0, RESET_TARGET_PCT_MAX + 1] {
            let err = plan_reset(&agg, &req("ai_generations", bad, 0), None).unwrap_err();
            assert!(
                matches!(err, ResetRefusal::TargetOutOfRange(t) if t == bad),
                "{err}"
            );
        }
        let plan = plan_reset(&agg, &req("ai_generations", 150, 0), None).unwrap();
        assert_eq!(plan.target_value, 30);
    }

    #[test]
    fn an_unlimited_metric_is_refused_even_for_a_top_up() {
        // Proves a metric without a quota has nothing to reset and takes no credit:
        // exports_gltf has no quota on starter.
        let mut agg = period_on("starter");
        record(&mut agg, "exports_gltf", 3);
        let err = plan_reset(&agg, &req("exports_gltf", 90, 10), None).unwrap_err();
        assert!(matches!(err, ResetRefusal::Unlimited { .. }), "{err}");
        assert!(err.to_string().contains("ai_generations"), "{err}");
    }

    #[test]
    fn a_gauge_is_reset_with_an_adjustment_that_lowers_its_billed_peak() {
        // Proves the choice of AdjustUsage for gauges: storage_gb (charge, limit 5) at 8
        // comes down to 3 and its billable peak with it, so no overage is billed for
        // the corrected level (a SetGaugeLevel would keep the peak of 8).
        let mut agg = period_on("starter");
        apply(
            &mut agg,
            PeriodCommand::SetGaugeLevel {
                metric: m("storage_gb"),
                level: 8,
            },
        );
        let plan = plan_reset(&agg, &req("storage_gb", 60, 0), None).unwrap();
        assert_eq!(plan.kind, MetricKind::Gauge);
        assert_eq!((plan.target_value, deltas(&plan)), (3, vec![-5]));
        assert!(plan.to_string().contains("is a gauge"));
        execute(&mut agg, &plan);
        let s = agg.metric(&m("storage_gb")).unwrap();
        assert_eq!((s.current, s.peak, s.overage_cost), (3, 3, Money::ZERO));
    }

    #[test]
    fn a_block_metric_cannot_be_reset_above_its_limit() {
        // Proves a target the engine would refuse (team_members blocks at 3) is refused
        // before anything, the top-up included, is appended.
        let mut agg = period_on("starter");
        apply(
            &mut agg,
            PeriodCommand::SetGaugeLevel {
                metric: m("team_members"),
                level: 2,
            },
        );
        let err = plan_reset(&agg, &req("team_members", 150, 1), None).unwrap_err();
        assert!(
            matches!(
                err,
                ResetRefusal::AboveBlockLimit {
                    effective_limit: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert!(plan_reset(&agg, &req("team_members", 100, 0), None).is_ok());
    }

    #[test]
    fn a_top_up_already_granted_in_the_period_is_not_granted_again() {
        // Proves a retry after the top-up was appended (or a second run) adds no credit
        // and still reaches the target against the limit that counts the first grant.
        let mut agg = period_on("starter");
        record(&mut agg, "ai_generations", 20);
        top_up(&mut agg, "ai_generations", 25);
        let plan = plan_reset(&agg, &req("ai_generations", 90, 25), Some(3)).unwrap();
        assert_eq!((plan.top_up_units, plan.effective_limit), (0, 45));
        assert_eq!(deltas(&plan), [21]);
        assert_eq!(plan.steps.len(), 1);
        assert!(plan
            .to_string()
            .contains("already granted in this period (#3)"));
    }

    #[test]
    fn the_adjustment_key_follows_the_state_and_the_top_up_key_does_not() {
        // Proves the idempotency keys: the same state and request give the same keys
        // (a retry is replayed), a new state gives a new adjustment key, and the
        // top-up key depends only on metric, units and price.
        let mut agg = period_on("starter");
        record(&mut agg, "ai_generations", 20);
        let r = req("ai_generations", 90, 25);
        let first = plan_reset(&agg, &r, None).unwrap();
        assert_eq!(first.steps, plan_reset(&agg, &r, None).unwrap().steps);
        assert_eq!(
            first.steps[0].key.as_str(),
            "cli-reset:ai_generations:topup:25:0"
        );
        record(&mut agg, "renders_2d", 1);
        let later = plan_reset(&agg, &r, None).unwrap();
        assert_eq!(later.steps[0].key, first.steps[0].key);
        assert_ne!(later.steps[1].key, first.steps[1].key);
    }

    #[test]
    fn a_closed_period_and_bad_prices_are_refused() {
        // Proves a final invoice is never reset and a price only comes with a top-up.
        let mut agg = period_on("starter");
        record(&mut agg, "ai_generations", 20);
        let mut priced = req("ai_generations", 90, 0);
        priced.price = Some(Money::from_minor(500));
        let err = plan_reset(&agg, &priced, None).unwrap_err();
        assert!(matches!(err, ResetRefusal::PriceWithoutTopUp), "{err}");
        priced.top_up_units = 10;
        priced.price = Some(Money::from_minor(-1));
        let err = plan_reset(&agg, &priced, None).unwrap_err();
        assert!(matches!(err, ResetRefusal::NegativePrice), "{err}");
        apply(
            &mut agg,
            PeriodCommand::ClosePeriod {
                actor: "billing".into(),
                plan_at_end: None,
            },
        );
        let err = plan_reset(&agg, &req("ai_generations", 90, 0), None).unwrap_err();
        assert!(matches!(err, ResetRefusal::PeriodClosed(_)), "{err}");
    }

    #[test]
    fn the_target_value_is_the_smallest_usage_that_reaches_the_target() {
        // Proves the inverse of the ledger's threshold rule over a range of limits and
        // targets: the target value reaches the percentage and one unit less does not.
        for effective in 1..=60u64 {
            for pct in [1u8, 33, 50, 75, 90, 99, 100, 150] {
                let t = target_value(effective, u32::from(pct)) as u64;
                assert!(reached(t, effective, pct), "{t}/{effective} at {pct}");
                assert!(
                    !reached(t - 1, effective, pct),
                    "{t}-1/{effective} at {pct}"
                );
            }
        }
    }

    #[test]
    fn a_period_without_events_is_planned_as_it_will_open_for_a_counter_only() {
        // Proves a counter of an unopened period starts at zero on the brand's plan, and a
        // gauge (whose level the opening carries over) waits for the period to open.
        let catalog = Catalog::default_catalog();
        let plan = catalog.plan(&PlanId::parse("starter").unwrap()).unwrap();
        let brand = BrandId::parse("acme").unwrap();
        let kinds = catalog.metric_kinds();
        let rules = LedgerRules::default();
        let state = as_it_will_open(
            &brand,
            november(),
            plan,
            kinds,
            &m("ai_generations"),
            at(),
            &rules,
        )
        .unwrap();
        assert_eq!((state.version, state.plan()), (1, Some(plan)));
        let planned = plan_reset(&state, &req("ai_generations", 90, 0), None).unwrap();
        assert_eq!((planned.current, planned.target_value), (0, 18));
        let err = as_it_will_open(
            &brand,
            november(),
            plan,
            kinds,
            &m("team_members"),
            at(),
            &rules,
        )
        .unwrap_err();
        assert!(matches!(err, ResetRefusal::PeriodNotOpen { .. }), "{err}");
    }

    #[test]
    fn a_reset_is_refused_once_the_period_stopped_accepting_usage() {
        // Proves the grace after the period's end is the ledger's: accepted up to the
        // deadline, refused one second after it.
        let rules = LedgerRules::default();
        let deadline = rules.accepts_usage_until(november());
        assert!(check_not_too_late(november(), deadline, &rules).is_ok());
        let err = check_not_too_late(november(), deadline + chrono::Duration::seconds(1), &rules)
            .unwrap_err();
        assert_eq!(
            err,
            ResetRefusal::TooLate {
                period: november(),
                deadline
            }
        );
    }

    #[test]
    fn an_unknown_metric_is_refused_with_every_known_one_listed() {
        // Proves the operator is told which metrics exist.
        let catalog = Catalog::default_catalog();
        let err = kind_of(catalog.metric_kinds(), &m("renders_4d")).unwrap_err();
        assert!(
            err.to_string().contains("ai_generations, api_calls"),
            "{err}"
        );
        assert_eq!(
            kind_of(catalog.metric_kinds(), &m("storage_gb")),
            Ok(MetricKind::Gauge)
        );
    }

    #[test]
    fn the_standing_after_a_run_is_taken_on_the_effective_limit() {
        // Proves the report's last line counts the period's top-ups in the limit.
        let mut agg = period_on("starter");
        top_up(&mut agg, "ai_generations", 25);
        record(&mut agg, "ai_generations", 41);
        let standing = Standing::of(&agg, &m("ai_generations")).unwrap();
        assert_eq!(
            standing.to_string(),
            "now: 41 of effective limit 45 = 91.11 %\n"
        );
        assert_eq!(Standing::of(&agg, &m("exports_gltf")), None);
    }

    #[test]
    fn only_a_request_with_units_has_a_top_up_key() {
        // Proves the log is asked about a grant only when one is requested.
        assert_eq!(req("ai_generations", 90, 0).top_up_key(), None);
        let mut priced = req("ai_generations", 90, 25);
        priced.price = Some(Money::from_minor(500));
        assert_eq!(
            priced.top_up_key().unwrap().as_str(),
            "cli-reset:ai_generations:topup:25:500"
        );
    }
}
