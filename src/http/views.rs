//! Response shapes shared by several routes. Field names follow the original API
//! (`type`, `current`, `limit`, `percentage`, `overage`; camelCase; cents), with the
//! extra fields it lacked added alongside, never renamed.

use chrono::{DateTime, Utc};
use ledger_aggregates::period::Crossing;
use ledger_aggregates::Catalog;
use ledger_aggregates::{BrandId, LedgerEvent, MetricKey, MetricTotals, Money, PeriodKey};
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use utoipa::ToSchema;

use crate::engine::Committed;

/// One metric of a period, as the summary and the record answer show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricView {
    /// The metric key (`type` in the original's summary).
    #[serde(rename = "type")]
    #[schema(value_type = String)]
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

/// One threshold crossing, as the summary's `alerts` list shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertView {
    /// `warning` below 90 %, `critical` from 90 %.
    #[schema(value_type = String, example = "warning")]
    pub severity: ledger_aggregates::period::Severity,
    /// `"<label> at <pct>% of quota"`, the original's wording.
    pub message: String,
    #[schema(value_type = String)]
    pub metric: MetricKey,
    pub threshold: u8,
    /// When the crossing was recorded: it never changes on later reads.
    pub timestamp: DateTime<Utc>,
}

impl AlertView {
    pub fn new(metric: &MetricKey, label: &str, c: &Crossing) -> Self {
        AlertView {
            severity: c.severity,
            message: format!("{label} at {}% of quota", c.percentage.round()),
            metric: metric.clone(),
            threshold: c.threshold,
            timestamp: c.at,
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
                    percentage,
                    at,
                    ..
                } => Some(AlertView::new(
                    metric,
                    &label_of(metric),
                    &Crossing {
                        threshold: *threshold,
                        severity: *severity,
                        percentage: *percentage,
                        at: *at,
                    },
                )),
                _ => None,
            })
            .collect()
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
