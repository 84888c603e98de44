//! Response shapes shared by several routes. Field names follow the original API
//! (`type`, `current`, `limit`, `percentage`, `overage`; camelCase; cents), with the
//! extra fields it lacked added alongside, never renamed.

use chrono::{DateTime, Utc};
use ledger_aggregates::period::{whole_percentage, Severity};
use ledger_aggregates::{
    BrandId, Catalog, LedgerEvent, MetricKey, MetricTotals, Money, OveragePolicy, PeriodKey,
    QuotaDecision,
};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::engine::Committed;

/// One metric of a period, as the summary and the record answer show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricView {
    /// The metric key (`type` in the original's summary).
    #[serde(rename = "type")]
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    /// Counter: total of the period. Gauge: current level.
    pub current: u64,
    /// The effective limit (plan limit + top-ups); `null` when the plan has no quota.
    pub limit: Option<u64>,
    /// The plan's own limit, before top-ups.
    pub base_limit: Option<u64>,
    /// Units added by top-ups this period.
    pub top_up_units: u64,
    /// current / limit × 100, two decimals, capped at 100 like the original (the
    /// excess shows in `overage`). A zero limit with usage is 100.
    pub percentage: f64,
    /// Billable units above the effective limit (for gauges: the period's peak).
    pub overage: u64,
    /// What the overage costs so far, in cents.
    pub overage_cost: i64,
    /// Units held for jobs (reservations); `limit - current - reserved` are left.
    pub reserved: u64,
    pub unit: String,
}

/// Percentages are for display: two decimals as a JSON number, never used for money.
const PERCENTAGE_CAP: f64 = 100.0;

impl MetricView {
    /// The view of `totals`; top-ups are what the effective limit holds above the plan's.
    pub fn new(
        catalog: &Catalog,
        metric: &MetricKey,
        base_limit: Option<u64>,
        totals: &MetricTotals,
    ) -> Self {
        let top_up_units = match (totals.effective_limit, base_limit) {
            (Some(effective), Some(base)) => effective.saturating_sub(base),
            _ => 0,
        };
        let percentage = totals.effective_limit.map_or(0.0, |limit| {
            ledger_aggregates::period::percentage(totals.current, limit)
                .to_f64()
                .unwrap_or(PERCENTAGE_CAP)
                .min(PERCENTAGE_CAP)
        });
        MetricView {
            metric: metric.clone(),
            current: totals.current,
            limit: totals.effective_limit,
            base_limit,
            top_up_units,
            percentage,
            overage: totals.overage_units,
            overage_cost: totals.overage_cost.minor(),
            reserved: totals.held,
            unit: unit_of(catalog, metric),
        }
    }
}

/// The catalog's unit of a metric (`render`, `gb`, …).
pub fn unit_of(catalog: &Catalog, metric: &MetricKey) -> String {
    catalog
        .metric(metric)
        .map(|m| m.unit.clone())
        .unwrap_or_default()
}

/// One threshold alert, as the summary's `alerts` list and a record's answer show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertView {
    /// `warning` below 90 %, `critical` from 90 %.
    #[schema(value_type = String, example = "warning")]
    pub severity: Severity,
    /// The seed's wording, `"<label> à <pct>% du quota"`, the percentage rounded half up.
    #[schema(example = "Rendus 3D à 78% du quota")]
    pub message: String,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    pub threshold: u8,
    /// When the threshold was crossed: it never changes on later reads.
    pub timestamp: DateTime<Utc>,
}

/// `"<label> à <pct>% du quota"` (seed §2), the percentage of `current` against
/// `limit` a whole number, half up; 0 without a limit.
pub fn alert_message(label: &str, current: u64, limit: Option<u64>) -> String {
    let pct = limit.map_or(Decimal::ZERO, |l| whole_percentage(current, l));
    format!("{label} à {pct}% du quota")
}

impl AlertView {
    /// The alert crossing `threshold` of `metric` at `at`, worded with where usage
    /// stands (`current` against `limit`).
    pub fn new(
        metric: &MetricKey,
        label: &str,
        (threshold, severity): (u8, Severity),
        (current, limit): (u64, Option<u64>),
        at: DateTime<Utc>,
    ) -> Self {
        AlertView {
            severity,
            message: alert_message(label, current, limit),
            metric: metric.clone(),
            threshold,
            timestamp: at,
        }
    }

    /// The alerts a commit raised, from its `ThresholdCrossed` events.
    pub fn from_events(events: &[Committed], label_of: impl Fn(&MetricKey) -> String) -> Vec<Self> {
        events
            .iter()
            .filter_map(|c| match &c.event {
                LedgerEvent::ThresholdCrossed {
                    metric,
                    threshold,
                    severity,
                    current,
                    effective_limit,
                    at,
                    ..
                } => Some(AlertView::new(
                    metric,
                    &label_of(metric),
                    (*threshold, *severity),
                    (*current, Some(*effective_limit)),
                    *at,
                )),
                _ => None,
            })
            .collect()
    }
}

/// What the wire says for the limit and the units left of a metric without a quota, as
/// the original did (reference §2.4): clients compare numbers, never `null`.
pub const UNLIMITED_WIRE_UNITS: u64 = 999_999;

/// The overage policy as the wire names it; `none` for a metric without a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyView {
    Block,
    Charge,
    None,
}

/// A quota decision on the wire: the original's `QuotaEvaluation` fields (reference
/// §2.4) and the ledger's own beside them. Amounts in cents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionView {
    pub allowed: bool,
    /// Units left under the effective limit once decided (after the consumption when
    /// it consumed); 999999 when unlimited.
    pub remaining: u64,
    /// The plan's base limit; 999999 when unlimited.
    pub limit: u64,
    /// Base limit plus top-ups; 999999 when unlimited.
    pub effective_limit: u64,
    /// True when the plan has no quota for the metric (the 999999 above are then not
    /// counts).
    pub unlimited: bool,
    /// Usage once decided (after the consumption when it consumed).
    pub current: u64,
    /// Units above the effective limit once the request is applied.
    pub overage: u64,
    pub will_charge: bool,
    /// The marginal overage cost of this request alone.
    pub estimated_cost: i64,
    /// The period's overage cost for this metric once the request is applied.
    pub cumulative_overage_cost: i64,
    pub plan_id: String,
    pub overage_policy: PolicyView,
    pub consumed: bool,
    /// Units held for jobs (reservations) once decided; `remaining` leaves them out.
    pub reserved: u64,
}

impl From<&QuotaDecision> for DecisionView {
    fn from(d: &QuotaDecision) -> Self {
        let unlimited = d.limit.is_none();
        let units = |v: Option<u64>| v.unwrap_or(UNLIMITED_WIRE_UNITS);
        DecisionView {
            allowed: d.allowed,
            remaining: units(d.remaining),
            limit: units(d.limit),
            effective_limit: units(d.effective_limit),
            unlimited,
            current: d.current,
            overage: d.overage,
            will_charge: d.will_charge,
            estimated_cost: d.estimated_cost.minor(),
            cumulative_overage_cost: d.cumulative_overage_cost.minor(),
            plan_id: d.plan_id.to_string(),
            overage_policy: match d.overage_policy {
                Some(OveragePolicy::Block) => PolicyView::Block,
                Some(OveragePolicy::Charge) => PolicyView::Charge,
                None => PolicyView::None,
            },
            consumed: d.consumed,
            reserved: d.reserved,
        }
    }
}

/// The stable public id of an event: its stream and sequence.
pub fn event_id(brand: &BrandId, period: PeriodKey, sequence: u64) -> String {
    format!("{brand}:{period}#{sequence}")
}

/// Amounts of the summary's `estimatedCost`, in cents.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct CostView {
    pub base: i64,
    /// Always 0: plans have no per-unit usage price besides overage (the original's field).
    pub usage: i64,
    pub overage: i64,
    pub total: i64,
}

impl CostView {
    pub fn new(base: Money, overage: Money) -> Self {
        CostView {
            base: base.minor(),
            usage: 0,
            overage: overage.minor(),
            total: (base + overage).minor(),
        }
    }
}
use super::schema::MetricKeySchema;
