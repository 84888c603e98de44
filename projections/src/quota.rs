//! `QuotaSummary`: per brand, period and metric, usage against the limits in force.
//!
//! Every figure is the one the last event of the metric carried (`MetricTotals`); only
//! the base limit comes from the plan snapshot of `PeriodOpened`/`PlanApplied`, and the
//! percentage from `period::percentage`, the rule the aggregate's alerts use.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ledger_aggregates::period::percentage;
use ledger_aggregates::{BrandId, LedgerEvent, MetricKey, MetricTotals, Money, PeriodKey};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::cursor::{Admitted, ReadModel, StreamCursors};
use crate::event::ProjectedEvent;
use crate::keyed::ByPeriod;
use crate::totals;

/// One metric of one brand-period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricQuota {
    /// Counter: total of the period. Gauge: current level.
    pub current: u64,
    /// What overage is computed on: the sum for counters, the peak level for gauges.
    pub billable: u64,
    /// The plan's own limit, before top-ups; `None` when the plan has no quota for the
    /// metric (unlimited).
    pub base_limit: Option<u64>,
    /// Base limit plus the period's top-ups, as the last event carried it.
    pub effective_limit: Option<u64>,
    /// Units credited by top-ups this period; they survive a plan change.
    pub top_up_units: u64,
    /// current / effective limit × 100, two decimals, not capped (a display may cap it
    /// at 100 and show the excess as overage); `None` when unlimited.
    pub percentage: Option<Decimal>,
    /// Billable units above the effective limit.
    pub overage_units: u64,
    /// The overage cost of the period for this metric, in cents (see `PeriodCost` for
    /// the rounding rule).
    pub overage_cost: Money,
    /// Units held for jobs (reservations) not yet committed, voided or expired.
    /// Defaulted so rows written before holds existed still load.
    #[serde(default)]
    pub reserved: u64,
    /// When the figures last changed: the `at` of the event that changed them.
    pub updated_at: DateTime<Utc>,
}

impl MetricQuota {
    fn new(base_limit: Option<u64>, totals: &MetricTotals, at: DateTime<Utc>) -> Self {
        let mut row = Self {
            current: 0,
            billable: 0,
            base_limit,
            effective_limit: None,
            top_up_units: 0,
            percentage: None,
            overage_units: 0,
            overage_cost: Money::ZERO,
            reserved: 0,
            updated_at: at,
        };
        row.set(totals, at);
        row
    }

    fn set(&mut self, totals: &MetricTotals, at: DateTime<Utc>) {
        self.current = totals.current;
        self.billable = totals.billable;
        self.effective_limit = totals.effective_limit;
        self.percentage = totals
            .effective_limit
            .map(|limit| percentage(totals.current, limit));
        self.overage_units = totals.overage_units;
        self.overage_cost = totals.overage_cost;
        self.reserved = totals.held;
        self.updated_at = at;
    }
}

/// The metrics of a brand-period: every quota of its plan, plus every metric without a
/// quota that saw usage.
pub type PeriodQuotas = BTreeMap<MetricKey, MetricQuota>;

/// Usage against limits, per brand, period and metric.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaSummary {
    cursors: StreamCursors,
    rows: ByPeriod<PeriodQuotas>,
}

impl QuotaSummary {
    pub fn new() -> Self {
        Self::default()
    }

    /// Put back the rows of a brand-period stream folded up to `sequence`.
    pub(crate) fn restore(
        &mut self,
        brand: &BrandId,
        period: PeriodKey,
        sequence: u64,
        rows: PeriodQuotas,
    ) {
        self.cursors.restore_period(brand, period, sequence);
        self.rows.insert(brand, period, rows);
    }

    /// The metrics of `brand` in `period`, in metric order.
    pub fn period(&self, brand: &BrandId, period: PeriodKey) -> Option<&PeriodQuotas> {
        self.rows.get(brand, period)
    }

    pub fn get(
        &self,
        brand: &BrandId,
        period: PeriodKey,
        metric: &MetricKey,
    ) -> Option<&MetricQuota> {
        self.period(brand, period)?.get(metric)
    }

    /// Every brand-period, in brand then period order.
    pub fn iter(&self) -> impl Iterator<Item = (&BrandId, PeriodKey, &PeriodQuotas)> {
        self.rows.iter()
    }
}

/// Fold one event of a brand-period stream into its rows: the quotas' one rule, for
/// [`QuotaSummary`] and for `PeriodModels` alike.
pub(crate) fn fold_rows(rows: &mut PeriodQuotas, event: &LedgerEvent) {
    match event {
        LedgerEvent::PeriodOpened { plan, at, .. } => {
            for (metric, t) in totals::opening(event) {
                let base = plan.quota(&metric).map(|q| q.limit);
                rows.insert(metric, MetricQuota::new(base, &t, *at));
            }
        }
        LedgerEvent::PlanApplied {
            plan, totals, at, ..
        } => {
            // An untouched metric the new plan has no quota for has nothing to show.
            rows.retain(|m, _| totals.contains_key(m) || plan.quota(m).is_some());
            let metrics = plan.quotas.iter().map(|q| &q.metric).chain(totals.keys());
            for metric in metrics {
                let t = totals
                    .get(metric)
                    .copied()
                    .unwrap_or_else(|| totals::untouched(plan, metric));
                let base = plan.quota(metric).map(|q| q.limit);
                match rows.get_mut(metric) {
                    Some(row) => {
                        row.base_limit = base;
                        row.set(&t, *at);
                    }
                    None => {
                        rows.insert(metric.clone(), MetricQuota::new(base, &t, *at));
                    }
                }
            }
        }
        _ => {
            let Some((metric, t)) = totals::carried(event) else {
                return;
            };
            let at = totals::at_of(event);
            let top_up_units = match event {
                LedgerEvent::TopUpApplied { units, .. } => *units,
                _ => 0,
            };
            match rows.get_mut(metric) {
                Some(row) => {
                    row.top_up_units += top_up_units;
                    row.set(t, at);
                }
                None => {
                    // Metrics with a quota got their row when the plan was applied; this
                    // one has none, so its base limit is none too.
                    let mut row = MetricQuota::new(None, t, at);
                    row.top_up_units = top_up_units;
                    rows.insert(metric.clone(), row);
                }
            }
        }
    }
}

/// Whether [`fold_rows`] changes anything for `event`.
fn concerns_quotas(event: &LedgerEvent) -> bool {
    match event {
        LedgerEvent::PeriodOpened { .. } | LedgerEvent::PlanApplied { .. } => true,
        LedgerEvent::UsageRecorded { .. }
        | LedgerEvent::GaugeLevelSet { .. }
        | LedgerEvent::UsageAdjusted { .. }
        | LedgerEvent::TopUpApplied { .. }
        | LedgerEvent::QuotaReserved { .. }
        | LedgerEvent::HoldReleased { .. } => totals::carried(event).is_some(),
        LedgerEvent::UsageDenied { .. }
        | LedgerEvent::ThresholdCrossed { .. }
        | LedgerEvent::ThresholdResolved { .. }
        | LedgerEvent::PeriodClosed { .. } => false,
    }
}

impl ReadModel for QuotaSummary {
    fn cursors(&self) -> &StreamCursors {
        &self.cursors
    }
    fn cursors_mut(&mut self) -> &mut StreamCursors {
        &mut self.cursors
    }

    fn fold(&mut self, event: &ProjectedEvent, _: &Admitted) {
        let Some((brand, period, e)) = event.as_period() else {
            return;
        };
        if concerns_quotas(e) {
            self.rows
                .with(brand, period, BTreeMap::new, |rows| fold_rows(rows, e));
        }
    }
}

crate::diff::diff_fields!(MetricQuota {
    current,
    billable,
    base_limit,
    effective_limit,
    top_up_units,
    percentage,
    overage_units,
    overage_cost,
    reserved,
    updated_at,
});
crate::diff::diff_fields!(QuotaSummary { cursors, rows });
