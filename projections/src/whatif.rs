//! What-if answers: a top-up simulated, the plans compared, usage projected, an action's
//! cost estimated, the current bill with tax. Pure functions of one brand-period's read
//! models ([`PeriodFigures`]), the period's plan snapshot, the catalog and `now`; no I/O.
//!
//! The original computed these with limits that ignored top-ups (reference §2.3, §7.6).
//! One rule here, everywhere: **effective limit = plan limit + the period's top-ups**.
//! Money is integer cents ([`Money`]), rates are [`Decimal`], every rounding is half up
//! (`money::cost_of` for overage on totals, [`round_cents`] for tax and per-day amounts).
//! Day counts are whole UTC days ([`elapsed_days`]).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use ledger_aggregates::money::cost_of;
use ledger_aggregates::period::{percentage, whole_percentage};
use ledger_aggregates::{
    Catalog, Currency, MetricKey, MetricKind, Money, OveragePolicy, PeriodKey, PlanDefinition,
    PlanId, PlanQuota,
};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

/// A simulated top-up of more units than this is not a purchase anyone makes: the
/// largest limit of the catalog is 9,999,999 calls; ten times that bounds the question.
pub const SIMULATED_TOP_UP_UNITS_MAX: u64 = 100_000_000;

/// An estimate for more units than this says nothing a smaller one does not: the same
/// bound as a single usage record (`ids::QUANTITY_MAX`).
pub const ESTIMATE_QUANTITY_MAX: u64 = ledger_aggregates::ids::QUANTITY_MAX;

/// The month length the original's projection figures assume when the caller does not
/// say (reference §2.11 `projectCosts(days = 30)`).
pub const PROJECTION_DAYS_DEFAULT: u32 = 30;
/// A projection further out than a year extrapolates one month's pace past meaning.
pub const PROJECTION_DAYS_MAX: u32 = 366;

/// At or above this percentage of its effective limit (or with any overage) a metric
/// calls for another plan (reference §2.10).
pub const UPGRADE_NEEDED_PCT: u64 = 85;
/// A candidate plan on which some metric would still stand at or above this percentage
/// of its limit is "still tense" (reference §2.10).
pub const STILL_TENSE_PCT: u64 = 90;

/// Projected at or above this percentage of the effective limit by the period's end, a
/// metric's velocity is `critical` (reference §2.12).
pub const VELOCITY_CRITICAL_PCT: u64 = 105;
/// Projected at or above this percentage, `warning` (reference §2.12).
pub const VELOCITY_WARNING_PCT: u64 = 90;
/// A projection above this share of the limit earns a recommendation (reference §2.11:
/// `projected > 0.9 × limit`).
pub const PROJECTION_RECOMMENDATION_PCT: u64 = 90;

/// A plan that costs more than this above the cheapest is "significantly more
/// expensive" (reference §2.11 `comparePlans`, 50 €).
pub const SIGNIFICANTLY_MORE_EXPENSIVE_CENTS: i64 = 5_000;

/// The country whose rate a bill uses when the caller names none: the ledger bills in
/// euros from France and keeps no country per brand, and 20 % is the rate the original
/// fell back to.
pub const DEFAULT_TAX_COUNTRY: &str = "FR";

/// VAT rates of the original's table (reference §2.11), as exact decimals. A rate of 0
/// is 0: the original's `taxRates[country] || 0.2` billed the US 20 %.
pub fn tax_rate(country: &str) -> Option<Decimal> {
    let percent = match country {
        "FR" | "UK" | "GB" => 20,
        "BE" | "ES" => 21,
        "DE" => 19,
        "IT" => 22,
        "US" => 0,
        _ => return None,
    };
    Some(Decimal::new(percent, 2))
}

/// The countries [`tax_rate`] knows, for error messages.
pub const TAX_COUNTRIES: &str = "FR, BE, DE, ES, IT, UK (or GB), US";

/// Why a what-if question has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhatIfError {
    /// The catalog has no such metric.
    UnknownMetric(MetricKey),
    /// The period's plan has no quota for the metric: it is unlimited, there is no limit
    /// to simulate against.
    MetricNotInPlan { metric: MetricKey, plan: PlanId },
    /// A number outside its named range.
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    /// No tax rate is known for the country.
    UnknownCountry(String),
}

impl fmt::Display for WhatIfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WhatIfError::UnknownMetric(m) => write!(f, "the catalog has no metric {m}"),
            WhatIfError::MetricNotInPlan { metric, plan } => {
                write!(f, "plan {plan} has no quota for {metric}: it is unlimited")
            }
            WhatIfError::OutOfRange {
                field,
                min,
                max,
                got,
            } => write!(f, "{field} must be {min} to {max}, not {got}"),
            WhatIfError::UnknownCountry(c) => {
                write!(f, "no tax rate is known for {c:?}; known: {TAX_COUNTRIES}")
            }
        }
    }
}

impl std::error::Error for WhatIfError {}

/// One metric of a brand-period as the read models hold it (`MetricQuota`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricFigures {
    pub metric: MetricKey,
    /// Counter: total of the period. Gauge: current level.
    pub current: u64,
    /// What overage is measured on: the sum for counters, the peak for gauges.
    pub billable: u64,
    /// The plan's limit before top-ups; `None`: unlimited.
    pub base_limit: Option<u64>,
    /// Plan limit + the period's top-ups; `None`: unlimited.
    pub effective_limit: Option<u64>,
    /// Overage units of the period so far (each part against the plan in force then).
    pub overage_units: u64,
    /// Overage cost of the period so far, in cents.
    pub overage_cost: Money,
    /// Units held for jobs; a `block` decision counts them.
    pub reserved: u64,
}

impl MetricFigures {
    /// Units the period's top-ups add: what the effective limit holds above the plan's.
    pub fn top_up_units(&self) -> u64 {
        match (self.effective_limit, self.base_limit) {
            (Some(effective), Some(base)) => effective.saturating_sub(base),
            _ => 0,
        }
    }

    /// A quota's metric that saw nothing this period.
    fn untouched(quota: &PlanQuota) -> Self {
        MetricFigures {
            metric: quota.metric.clone(),
            current: 0,
            billable: 0,
            base_limit: Some(quota.limit),
            effective_limit: Some(quota.limit),
            overage_units: 0,
            overage_cost: Money::ZERO,
            reserved: 0,
        }
    }
}

/// What the read models say of one brand-period: the summary's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodFigures {
    pub period: PeriodKey,
    /// The plan the period's events snapshotted (never today's catalog entry for it).
    pub plan: PlanDefinition,
    /// The plan's quotas, then metrics without a quota that saw usage.
    pub metrics: Vec<MetricFigures>,
    /// The base price the period is billed (prorated over plan changes).
    pub base: Money,
    /// The period's overage cost: the sum of the metrics' overage costs.
    pub overage: Money,
}

impl PeriodFigures {
    /// The figures of a metric with a quota in the period's plan.
    fn quota_metric(&self, metric: &MetricKey) -> Option<(&PlanQuota, MetricFigures)> {
        let quota = self.plan.quota(metric)?;
        let figures = self
            .metrics
            .iter()
            .find(|m| &m.metric == metric)
            .cloned()
            .unwrap_or_else(|| MetricFigures::untouched(quota));
        Some((quota, figures))
    }
}

// ---------------------------------------------------------------------------------
// Days and rates
// ---------------------------------------------------------------------------------

const SECONDS_PER_DAY: i64 = 86_400;

/// Days of the period (28 to 31).
pub fn period_days(period: PeriodKey) -> u32 {
    let seconds = (period.end() - period.start()).num_seconds();
    u32::try_from(seconds / SECONDS_PER_DAY).expect("a month has 28 to 31 days")
}

/// Whole UTC days of the period gone by at `now`, at least 1 (on its first day, usage
/// so far is a day's pace) and at most the period's days (an ended period is all gone).
/// The original divided by fractional days; whole days keep a rate stable within a day.
pub fn elapsed_days(period: PeriodKey, now: DateTime<Utc>) -> u32 {
    let seconds = (now - period.start()).num_seconds().max(0);
    let whole = u32::try_from(seconds / SECONDS_PER_DAY).unwrap_or(u32::MAX);
    whole.clamp(1, period_days(period))
}

/// Units per day at the pace of the period so far.
fn daily_rate(current: u64, elapsed: u32) -> Decimal {
    Decimal::from(current) / Decimal::from(elapsed)
}

/// Days until usage reaches `limit` at `rate`, two decimals, negative once past it;
/// `None` when nothing is used (the limit is never reached).
fn days_to_limit(current: u64, limit: u64, rate: Decimal) -> Option<Decimal> {
    if rate.is_zero() {
        return None;
    }
    let left = Decimal::from(limit) - Decimal::from(current);
    Some((left / rate).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero))
}

/// An amount in cents rounded half up to a whole cent (the ledger's one rounding rule).
pub fn round_cents(exact: Decimal) -> Money {
    let rounded = exact.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    Money::from_minor(
        rounded
            .to_i64()
            .expect("amounts of a period fit in i64 cents"),
    )
}

/// `current` is at least `pct` % of `limit`, in exact integer arithmetic (89.996 % is
/// not 90 %). A zero limit with usage is 100 %.
fn at_least_pct(current: u64, limit: u64, pct: u64) -> bool {
    match limit {
        0 => current > 0 && pct <= 100,
        _ => u128::from(current) * 100 >= u128::from(pct) * u128::from(limit),
    }
}

fn in_range(field: &'static str, got: u64, min: u64, max: u64) -> Result<(), WhatIfError> {
    match (min..=max).contains(&got) {
        true => Ok(()),
        false => Err(WhatIfError::OutOfRange {
            field,
            min,
            max,
            got,
        }),
    }
}

/// The quota of `metric` in the period's plan, or why there is none.
fn quota_of<'a>(
    figures: &'a PeriodFigures,
    catalog: &Catalog,
    metric: &MetricKey,
) -> Result<(&'a PlanQuota, MetricFigures), WhatIfError> {
    if catalog.metric(metric).is_none() {
        return Err(WhatIfError::UnknownMetric(metric.clone()));
    }
    figures
        .quota_metric(metric)
        .ok_or_else(|| WhatIfError::MetricNotInPlan {
            metric: metric.clone(),
            plan: figures.plan.id.clone(),
        })
}

// ---------------------------------------------------------------------------------
// Top-up simulation (reference §2.8)
// ---------------------------------------------------------------------------------

/// What `units` more top-up units would do to a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpSimulation {
    pub metric: MetricKey,
    pub unit: String,
    pub base_limit: u64,
    /// Units the period's top-ups already add.
    pub bonus_units: u64,
    /// Base limit + bonus units.
    pub effective_limit: u64,
    /// Effective limit + the simulated units.
    pub simulated_limit: u64,
    pub current: u64,
    /// Of the effective limit, two decimals, not capped.
    pub current_percentage: Decimal,
    /// Of the simulated limit; with a simulated limit of 0, the current percentage.
    pub simulated_percentage: Decimal,
    /// At the period's pace; negative once past the limit, `None` with no usage.
    pub original_days_to_limit: Option<Decimal>,
    pub simulated_days_to_limit: Option<Decimal>,
    /// Simulated minus original days to limit.
    pub regained_days: Option<Decimal>,
    /// What the units would cost as overage at the plan's rate, for `charge` only.
    pub estimated_cost: Option<Money>,
    pub overage_policy: OveragePolicy,
}

/// Simulate a top-up of `units` (0 allowed, as in the original) on `metric`.
pub fn simulate_top_up(
    figures: &PeriodFigures,
    catalog: &Catalog,
    metric: &MetricKey,
    units: u64,
    now: DateTime<Utc>,
) -> Result<TopUpSimulation, WhatIfError> {
    in_range("units", units, 0, SIMULATED_TOP_UP_UNITS_MAX)?;
    let (quota, m) = quota_of(figures, catalog, metric)?;
    let effective = m.effective_limit.unwrap_or(quota.limit);
    let simulated = effective + units;
    let rate = daily_rate(m.current, elapsed_days(figures.period, now));
    let original_days = days_to_limit(m.current, effective, rate);
    let simulated_days = days_to_limit(m.current, simulated, rate);
    let current_percentage = percentage(m.current, effective);
    let simulated_percentage = match simulated {
        0 => current_percentage,
        _ => percentage(m.current, simulated),
    };
    Ok(TopUpSimulation {
        metric: metric.clone(),
        unit: quota.unit.clone(),
        base_limit: quota.limit,
        bonus_units: m.top_up_units(),
        effective_limit: effective,
        simulated_limit: simulated,
        current: m.current,
        current_percentage,
        simulated_percentage,
        original_days_to_limit: original_days,
        simulated_days_to_limit: simulated_days,
        regained_days: original_days.zip(simulated_days).map(|(o, s)| s - o),
        estimated_cost: charge_rate(quota).map(|r| cost_of(units, r)),
        overage_policy: quota.overage,
    })
}

/// The rate of a `charge` quota; `None` for `block`.
fn charge_rate(quota: &PlanQuota) -> Option<Decimal> {
    match quota.overage {
        OveragePolicy::Charge => Some(quota.overage_rate.unwrap_or_default()),
        OveragePolicy::Block => None,
    }
}

// ---------------------------------------------------------------------------------
// Plan comparison and recommendation (reference §2.10, §2.11 comparePlans)
// ---------------------------------------------------------------------------------

/// The wording of a comparison line (the original's strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComparisonVerdict {
    BestValue,
    Acceptable,
    SignificantlyMoreExpensive,
}

impl ComparisonVerdict {
    pub fn text(self) -> &'static str {
        match self {
            ComparisonVerdict::BestValue => "✅ Best value for your usage",
            ComparisonVerdict::Acceptable => "💰 Acceptable alternative",
            ComparisonVerdict::SignificantlyMoreExpensive => "⚠️  Significantly more expensive",
        }
    }
}

/// What the period's usage would cost on one plan of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanComparison {
    pub plan: PlanId,
    pub name: String,
    /// The plan's base price for a whole period.
    pub base_price: Money,
    /// Overage of `charge` quotas against the plan's limits plus the period's top-ups.
    pub estimated_overage: Money,
    pub total: Money,
    /// `total` minus the cheapest plan's total (never negative).
    pub extra_cost_vs_cheapest: Money,
    /// The plan the period is billed on.
    pub current: bool,
    /// Metrics whose usage is above a `block` limit of this plan: it would have refused
    /// part of it.
    pub blocked_metrics: Vec<MetricKey>,
    pub verdict: ComparisonVerdict,
}

/// What the recommendation says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecommendationKind {
    /// No metric is at 85 % of its limit nor in overage.
    NotNeeded,
    /// The first higher tier on which no metric stands at 90 % or more.
    Upgrade,
    /// Every higher tier would still be tense: the top tier, said so.
    UpgradeStillTense,
    /// An upgrade is needed but the brand is on the top tier: nothing higher to offer.
    TopTier,
}

/// A plan to move to, never the brand's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recommendation {
    pub kind: RecommendationKind,
    pub plan: Option<PlanId>,
    pub message: String,
}

/// The catalog's plans priced on the period's usage, cheapest first (tier order on a
/// tie), and the recommended plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// The plan the period is billed on.
    pub plan: PlanId,
    pub plans: Vec<PlanComparison>,
    pub recommendation: Recommendation,
}

/// Price every catalog plan as if it had run the whole period, on the period's usage
/// (billable units: peaks for gauges) and top-ups: a top-up raises the limit of
/// whatever plan is in force, so each candidate's limit is its own plus the top-ups.
pub fn compare_plans(figures: &PeriodFigures, catalog: &Catalog) -> Comparison {
    let mut plans: Vec<PlanComparison> = catalog
        .plans()
        .iter()
        .map(|p| price_plan(figures, p))
        .collect();
    plans.sort_by_key(|c| c.total);
    let cheapest = plans.first().map_or(Money::ZERO, |c| c.total);
    for (i, c) in plans.iter_mut().enumerate() {
        c.extra_cost_vs_cheapest = c.total - cheapest;
        c.verdict = match () {
            _ if i == 0 => ComparisonVerdict::BestValue,
            _ if c.extra_cost_vs_cheapest.minor() > SIGNIFICANTLY_MORE_EXPENSIVE_CENTS => {
                ComparisonVerdict::SignificantlyMoreExpensive
            }
            _ => ComparisonVerdict::Acceptable,
        };
    }
    Comparison {
        plan: figures.plan.id.clone(),
        plans,
        recommendation: recommend_plan(figures, catalog),
    }
}

fn price_plan(figures: &PeriodFigures, plan: &PlanDefinition) -> PlanComparison {
    let mut overage = Money::ZERO;
    let mut blocked = Vec::new();
    for m in &figures.metrics {
        let Some(quota) = plan.quota(&m.metric) else {
            continue;
        };
        let above = m.billable.saturating_sub(quota.limit + m.top_up_units());
        match charge_rate(quota) {
            Some(rate) => overage = overage + cost_of(above, rate),
            None if above > 0 => blocked.push(m.metric.clone()),
            None => {}
        }
    }
    PlanComparison {
        plan: plan.id.clone(),
        name: plan.name.clone(),
        base_price: plan.base_price_cents,
        estimated_overage: overage,
        total: plan.base_price_cents + overage,
        extra_cost_vs_cheapest: Money::ZERO,
        current: plan.id == figures.plan.id,
        blocked_metrics: blocked,
        verdict: ComparisonVerdict::Acceptable,
    }
}

/// The reference §2.10 rule, fixed: an upgrade is needed when a metric of the period's
/// plan is at 85 % of its effective limit or in overage; the answer is the first higher
/// tier on which no metric would stand at 90 % (its limit plus the period's top-ups), or
/// the top tier if all would; never the brand's own plan: on the top tier it says so.
pub fn recommend_plan(figures: &PeriodFigures, catalog: &Catalog) -> Recommendation {
    let needs_upgrade = figures.metrics.iter().any(|m| {
        m.effective_limit
            .is_some_and(|l| at_least_pct(m.current, l, UPGRADE_NEEDED_PCT) || m.overage_units > 0)
    });
    if !needs_upgrade {
        return Recommendation {
            kind: RecommendationKind::NotNeeded,
            plan: None,
            message: format!("{} covers the period's usage", figures.plan.name),
        };
    }
    let higher = higher_tiers(&figures.plan, catalog);
    let Some(top) = higher.last() else {
        return Recommendation {
            kind: RecommendationKind::TopTier,
            plan: None,
            message: format!(
                "{} is the top tier: a top-up or a custom agreement is the way to more capacity",
                figures.plan.name
            ),
        };
    };
    match higher.iter().find(|p| !still_tense(figures, p)) {
        Some(p) => Recommendation {
            kind: RecommendationKind::Upgrade,
            plan: Some(p.id.clone()),
            message: format!("{} covers the period's usage with room to spare", p.name),
        },
        None => Recommendation {
            kind: RecommendationKind::UpgradeStillTense,
            plan: Some(top.id.clone()),
            message: format!(
                "{} is the largest plan, and some metric would still be at {STILL_TENSE_PCT} % or more of its limit",
                top.name
            ),
        },
    }
}

/// The catalog's plans above `plan` in tier order; for a plan the catalog no longer
/// lists, those with a higher base price.
fn higher_tiers<'a>(plan: &PlanDefinition, catalog: &'a Catalog) -> Vec<&'a PlanDefinition> {
    let plans = catalog.plans();
    match plans.iter().position(|p| p.id == plan.id) {
        Some(i) => plans[i + 1..].iter().collect(),
        None => plans
            .iter()
            .filter(|p| p.base_price_cents > plan.base_price_cents)
            .collect(),
    }
}

/// Some metric the candidate limits would stand at 90 % or more of its limit plus the
/// period's top-ups.
fn still_tense(figures: &PeriodFigures, candidate: &PlanDefinition) -> bool {
    figures.metrics.iter().any(|m| {
        candidate
            .quota(&m.metric)
            .is_some_and(|q| at_least_pct(m.current, q.limit + m.top_up_units(), STILL_TENSE_PCT))
    })
}

// ---------------------------------------------------------------------------------
// Projections and velocity (reference §2.11 projectCosts, §2.12)
// ---------------------------------------------------------------------------------

/// Where a metric's pace takes it by the period's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum VelocityStatus {
    Ok,
    Warning,
    Critical,
}

impl VelocityStatus {
    /// The dashboard's words (reference §2.12).
    pub fn label(self) -> &'static str {
        match self {
            VelocityStatus::Ok => "Stable",
            VelocityStatus::Warning => "Sous tension",
            VelocityStatus::Critical => "Action immédiate",
        }
    }

    fn of(projected: u64, limit: u64) -> Self {
        match () {
            _ if at_least_pct(projected, limit, VELOCITY_CRITICAL_PCT) => VelocityStatus::Critical,
            _ if at_least_pct(projected, limit, VELOCITY_WARNING_PCT) => VelocityStatus::Warning,
            _ => VelocityStatus::Ok,
        }
    }
}

/// One metric's pace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Velocity {
    pub metric: MetricKey,
    pub label: String,
    pub unit: String,
    pub current: u64,
    pub effective_limit: u64,
    /// Units per day over the whole elapsed days, two decimals; 0 for a gauge (a level
    /// has no pace: it stands until changed).
    pub daily_rate: Decimal,
    /// At this pace by the period's end, whole units (half up); a gauge's peak level.
    pub projected_units: u64,
    /// Of the effective limit, two decimals.
    pub projected_percentage: Decimal,
    /// `None` when the limit is never reached at this pace.
    pub days_to_limit: Option<Decimal>,
    pub status: VelocityStatus,
}

/// The original's projection figures and the per-metric velocity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    /// The month length the original's figures assume.
    pub days: u32,
    pub elapsed_days: u32,
    pub period_days: u32,
    /// Overage cost so far per elapsed day, half up.
    pub current_daily: Money,
    /// The period's base plus `projected_overage`.
    pub projected_monthly: Money,
    /// Overage of `charge` quotas for `days` days at the period's pace, against the
    /// effective limits.
    pub projected_overage: Money,
    /// One line per metric projected above 90 % of its effective limit in `days` days.
    pub recommendations: Vec<String>,
    /// Per quota, highest projected percentage first.
    pub velocity: Vec<Velocity>,
}

/// Project the period's pace: over `days` days for the original's figures, to the
/// period's end for the velocity.
///
/// The original took the last 7 days' records and divided by the dates that had some,
/// and its `currentDaily` divided the overage so far by the days of the whole month;
/// here every rate is the period's usage over its whole elapsed UTC days.
pub fn project(
    figures: &PeriodFigures,
    days: u32,
    now: DateTime<Utc>,
) -> Result<Projection, WhatIfError> {
    in_range("days", u64::from(days), 1, u64::from(PROJECTION_DAYS_MAX))?;
    let elapsed = elapsed_days(figures.period, now);
    let total_days = period_days(figures.period);
    let mut projected_overage = Money::ZERO;
    let mut recommendations = Vec::new();
    let mut velocity = Vec::new();
    for quota in &figures.plan.quotas {
        let Some((_, m)) = figures.quota_metric(&quota.metric) else {
            continue;
        };
        let limit = m.effective_limit.unwrap_or(quota.limit);
        let pace = Pace::of(quota, &m, elapsed);
        let in_days = pace.units_after(days);
        if let Some(rate) = charge_rate(quota) {
            projected_overage = projected_overage + cost_of(in_days.saturating_sub(limit), rate);
        }
        if u128::from(in_days) * 100 > u128::from(PROJECTION_RECOMMENDATION_PCT) * u128::from(limit)
        {
            let pct = whole_percentage(in_days, limit);
            recommendations.push(format!(
                "⚠️  {} will reach {pct}% of quota. Consider upgrading.",
                quota.metric
            ));
        }
        velocity.push(pace.velocity(quota, &m, limit, total_days));
    }
    velocity.sort_by_key(|v| std::cmp::Reverse(v.projected_percentage));
    Ok(Projection {
        days,
        elapsed_days: elapsed,
        period_days: total_days,
        current_daily: round_cents(Decimal::from(figures.overage.minor()) / Decimal::from(elapsed)),
        projected_monthly: figures.base + projected_overage,
        projected_overage,
        recommendations,
        velocity,
    })
}

/// A metric's pace: a counter's units per day, or a gauge's standing level.
enum Pace {
    PerDay(Decimal),
    Level(u64),
}

impl Pace {
    fn of(quota: &PlanQuota, m: &MetricFigures, elapsed: u32) -> Self {
        match quota.kind {
            MetricKind::Counter => Pace::PerDay(daily_rate(m.current, elapsed)),
            MetricKind::Gauge => Pace::Level(m.billable),
        }
    }

    /// Units used in `days` days at this pace (whole units, half up).
    fn units_after(&self, days: u32) -> u64 {
        match self {
            Pace::PerDay(rate) => (rate * Decimal::from(days))
                .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero)
                .to_u64()
                .unwrap_or(u64::MAX),
            Pace::Level(level) => *level,
        }
    }

    fn velocity(&self, quota: &PlanQuota, m: &MetricFigures, limit: u64, days: u32) -> Velocity {
        let projected = self.units_after(days);
        let rate = match self {
            Pace::PerDay(rate) => *rate,
            Pace::Level(_) => Decimal::ZERO,
        };
        Velocity {
            metric: quota.metric.clone(),
            label: quota.label.clone(),
            unit: quota.unit.clone(),
            current: m.current,
            effective_limit: limit,
            daily_rate: rate.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero),
            projected_units: projected,
            projected_percentage: percentage(projected, limit),
            days_to_limit: days_to_limit(m.current, limit, rate),
            status: VelocityStatus::of(projected, limit),
        }
    }
}

// ---------------------------------------------------------------------------------
// Estimate of an action's cost (reference §2.11 estimateActionCost)
// ---------------------------------------------------------------------------------

/// What `quantity` more units of a metric would cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    pub metric: MetricKey,
    pub quantity: u64,
    pub current: u64,
    /// `None`: the plan has no quota (unlimited).
    pub base_limit: Option<u64>,
    pub effective_limit: Option<u64>,
    /// `None` for an unlimited metric.
    pub overage_policy: Option<OveragePolicy>,
    /// False when a `block` quota would refuse the units (holds count); true otherwise.
    pub allowed: bool,
    /// The usage after would stand above the effective limit.
    pub will_exceed: bool,
    /// Units of `quantity` above the effective limit that are not overage already.
    pub new_overage_units: u64,
    /// The marginal cost of the units alone: what the bill would grow by.
    pub marginal_cost: Money,
    /// The metric's overage cost of the period so far, and with the units.
    pub overage_cost_before: Money,
    pub overage_cost_after: Money,
    /// The period's total so far (base + overage, before tax), and with the units.
    pub total_before: Money,
    pub total_after: Money,
}

/// The cost of `quantity` more units of `metric` (a gauge raised by `quantity`).
///
/// The original's `estimatedCost` was the cumulative overage (existing overage included)
/// and its `totalAfter` added it to a taxed total that already held that overage; here
/// the marginal cost is the units' own, and both totals are before tax.
pub fn estimate(
    figures: &PeriodFigures,
    catalog: &Catalog,
    metric: &MetricKey,
    quantity: u64,
) -> Result<Estimate, WhatIfError> {
    in_range("quantity", quantity, 1, ESTIMATE_QUANTITY_MAX)?;
    if catalog.metric(metric).is_none() {
        return Err(WhatIfError::UnknownMetric(metric.clone()));
    }
    let total_before = figures.base + figures.overage;
    let unlimited = Estimate {
        metric: metric.clone(),
        quantity,
        current: 0,
        base_limit: None,
        effective_limit: None,
        overage_policy: None,
        allowed: true,
        will_exceed: false,
        new_overage_units: 0,
        marginal_cost: Money::ZERO,
        overage_cost_before: Money::ZERO,
        overage_cost_after: Money::ZERO,
        total_before,
        total_after: total_before,
    };
    let Some((quota, m)) = figures.quota_metric(metric) else {
        let current = figures
            .metrics
            .iter()
            .find(|m| &m.metric == metric)
            .map_or(0, |m| m.current);
        return Ok(Estimate {
            current,
            ..unlimited
        });
    };
    let limit = m.effective_limit.unwrap_or(quota.limit);
    let (allowed, will_exceed, new_units, marginal) = match charge_rate(quota) {
        Some(rate) => charged(quota.kind, &m, quantity, limit, rate),
        None => {
            let fits = m.current + m.reserved + quantity <= limit;
            (fits, !fits, 0, Money::ZERO)
        }
    };
    Ok(Estimate {
        current: m.current,
        base_limit: Some(quota.limit),
        effective_limit: Some(limit),
        overage_policy: Some(quota.overage),
        allowed,
        will_exceed,
        new_overage_units: new_units,
        marginal_cost: marginal,
        overage_cost_before: m.overage_cost,
        overage_cost_after: m.overage_cost + marginal,
        total_after: total_before + marginal,
        ..unlimited
    })
}

/// `(allowed, will_exceed, new overage units, marginal cost)` of `quantity` more units
/// on a `charge` quota. The overage is priced on the metric's total against the limit
/// in force, rounded on totals (the aggregate's rule), so the marginal cost is the
/// difference of two rounded totals.
fn charged(
    kind: MetricKind,
    m: &MetricFigures,
    quantity: u64,
    limit: u64,
    rate: Decimal,
) -> (bool, bool, u64, Money) {
    let billable_after = match kind {
        MetricKind::Counter => m.billable + quantity,
        MetricKind::Gauge => m.billable.max(m.current + quantity),
    };
    let above_before = m.billable.saturating_sub(limit);
    let above_after = billable_after.saturating_sub(limit);
    let new_units = above_after - above_before;
    let marginal = cost_of(above_after, rate) - cost_of(above_before, rate);
    (true, above_after > 0, new_units, marginal)
}

// ---------------------------------------------------------------------------------
// The current bill (reference §2.11 calculateCurrentBill)
// ---------------------------------------------------------------------------------

/// One quota's line of a bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillLine {
    pub metric: MetricKey,
    /// Billable units (a gauge's peak).
    pub quantity: u64,
    pub base_limit: u64,
    /// Plan limit + the period's top-ups.
    pub limit: u64,
    pub overage: u64,
    /// Cents per overage unit; `None` for `block`.
    pub unit_price: Option<Decimal>,
    pub cost: Money,
}

/// The period's bill so far, with tax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bill {
    pub period: PeriodKey,
    pub plan: PlanId,
    /// The plan's currency.
    pub currency: Currency,
    pub country: String,
    pub tax_rate: Decimal,
    pub base_price: Money,
    /// Always empty: plans have no per-unit price besides overage (the original's field).
    pub usage_costs: BTreeMap<MetricKey, Money>,
    pub total_usage_cost: Money,
    /// Per metric with a non-zero overage cost.
    pub overage_costs: BTreeMap<MetricKey, Money>,
    /// The summary's `estimatedCost.overage`, to the cent.
    pub total_overage_cost: Money,
    pub subtotal: Money,
    /// `subtotal × rate`, half up.
    pub tax: Money,
    pub total: Money,
    pub breakdown: Vec<BillLine>,
}

/// The bill of the period as it stands, taxed at `country`'s rate. Limits include the
/// top-ups and the overage is the read models' (the original recomputed it on base
/// limits), so the bill's overage is the summary's.
pub fn current_bill(figures: &PeriodFigures, country: &str) -> Result<Bill, WhatIfError> {
    let rate = tax_rate(country).ok_or_else(|| WhatIfError::UnknownCountry(country.to_owned()))?;
    let breakdown: Vec<BillLine> = figures
        .plan
        .quotas
        .iter()
        .filter_map(|q| {
            let (_, m) = figures.quota_metric(&q.metric)?;
            Some(BillLine {
                metric: q.metric.clone(),
                quantity: m.billable,
                base_limit: q.limit,
                limit: m.effective_limit.unwrap_or(q.limit),
                overage: m.overage_units,
                unit_price: charge_rate(q),
                cost: m.overage_cost,
            })
        })
        .collect();
    let overage_costs: BTreeMap<MetricKey, Money> = figures
        .metrics
        .iter()
        .filter(|m| m.overage_cost != Money::ZERO)
        .map(|m| (m.metric.clone(), m.overage_cost))
        .collect();
    let subtotal = figures.base + figures.overage;
    let tax = round_cents(Decimal::from(subtotal.minor()) * rate);
    Ok(Bill {
        period: figures.period,
        plan: figures.plan.id.clone(),
        currency: figures.plan.currency,
        country: country.to_owned(),
        tax_rate: rate,
        base_price: figures.base,
        usage_costs: BTreeMap::new(),
        total_usage_cost: Money::ZERO,
        overage_costs,
        total_overage_cost: figures.overage,
        subtotal,
        tax,
        total: subtotal + tax,
        breakdown,
    })
}

#[cfg(test)]
#[path = "whatif_tests.rs"]
mod tests;
