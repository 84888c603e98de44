//! `PeriodCost`: the estimated cost of each brand-period, in integer cents.
//!
//! # Rounding rule
//!
//! The fold never rounds: it adds amounts the events already carry, in whole cents.
//! They were rounded by the aggregate with `ledger_aggregates::money::cost_of`, once per
//! metric on the period total:
//!
//! - a metric's overage cost is `overage_units × rate`, computed exactly in `Decimal`
//!   (the rate is cents per unit and may be fractional, e.g. 0.5), then rounded to a
//!   whole cent **half away from zero** (`RoundingStrategy::MidpointAwayFromZero`):
//!   1.5 → 2, 2.5 → 3, 1.49 → 1; amounts are never negative, so this is "halves up";
//! - `overage_units` is the metric's *period* total above its effective limit (plan
//!   limit + top-ups), for gauges on the peak level; after a plan change each plan
//!   measures only what was used under it (the aggregate's `totals_for`), and each plan
//!   segment is rounded once on its total. It is never rounded per
//!   event, so the marginal costs of a metric's events always add up to its cost
//!   (3 events of 1 unit at 0.5 cent cost 1, 0 and 1 cent: round(0.5), round(1.0) −
//!   round(0.5), round(1.5) − round(1.0));
//! - each metric is rounded on its own and the period's overage is the sum of those
//!   whole cents: two metrics of 1.5 cents each cost 2 + 2 = 4 cents, not round(3.0);
//! - `total` = `base` + `usage` + `overage`, with `usage` always 0 (plans have no
//!   per-unit price besides overage; the field keeps the original API's shape).
//!
//! Closing a period freezes `base`, `overage` and `total` at the invoice's figures (the
//! same sums, by the same rule). Usage still accepted after the close (within the grace
//! window) and corrections after it move the metrics' overage costs, and the difference
//! from the invoice is shown in `adjustment`: finance bills it as an adjustment of the
//! closed invoice, it never rewrites the invoice.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ledger_aggregates::period::{base_lines, PlanSegment};
use ledger_aggregates::{
    BrandId, Currency, LedgerEvent, MetricKey, Money, PeriodKey, PlanDefinition, PlanId,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cursor::{Admitted, ReadModel, StreamCursors};
use crate::event::ProjectedEvent;
use crate::keyed::ByPeriod;
use crate::totals;

/// The estimated cost of one brand-period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostEstimate {
    /// The plan the period is billed on (the last one applied before the close).
    pub plan_id: PlanId,
    pub currency: Currency,
    /// The base price, in cents: each plan's prorated by the time it is in force (the
    /// last one until the period's end), see `period::base_lines`.
    pub base: Money,
    /// Always 0: plans have no per-unit usage price besides overage.
    pub usage: Money,
    /// Sum of the metrics' overage costs; once invoiced, the invoice's overage.
    pub overage: Money,
    /// `base + usage + overage`; once invoiced, the invoice's total.
    pub total: Money,
    /// Set by `PeriodClosed`: `base`, `overage` and `total` are the invoice's and no
    /// longer move.
    pub invoiced: bool,
    /// How far the metrics' overage costs moved after the invoice (late usage within
    /// the grace window, corrections): billed by finance as an adjustment of the closed
    /// invoice, negative for a credit. Always 0 before the close.
    pub adjustment: Money,
    /// Each metric's overage cost as its last event carried it (only non-zero ones):
    /// what `overage`, and after the close `adjustment`, are summed from.
    pub overage_by_metric: BTreeMap<MetricKey, Money>,
    /// The plan as the period's events snapshotted it (`PeriodOpened`, then each
    /// `PlanApplied`): what a summary shows, whatever the catalog says today. Absent
    /// only in rows stored before it was kept; a rebuild fills it in.
    /// Shared: every fold of the stream copies its models, and the plan is most of them.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "shared_plan_out",
        deserialize_with = "shared_plan_in"
    )]
    pub plan: Option<Arc<PlanDefinition>>,
    /// The plans in force, in order, with the instant each took effect: what `base` is
    /// prorated on. Empty only in rows stored before it was kept.
    #[serde(default)]
    pub segments: Vec<PlanSegment>,
}

/// An `Arc`'s plan is written as the plan itself (serde's `rc` feature would do the same
/// for every crate of the build).
fn shared_plan_out<S: Serializer>(
    plan: &Option<Arc<PlanDefinition>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    plan.as_deref().serialize(s)
}

fn shared_plan_in<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Arc<PlanDefinition>>, D::Error> {
    Ok(Option::<PlanDefinition>::deserialize(d)?.map(Arc::new))
}

impl CostEstimate {
    fn new(plan: &PlanDefinition, period: PeriodKey) -> Self {
        Self {
            plan_id: plan.id.clone(),
            currency: plan.currency,
            base: plan.base_price_cents,
            usage: Money::ZERO,
            overage: Money::ZERO,
            total: plan.base_price_cents,
            invoiced: false,
            adjustment: Money::ZERO,
            overage_by_metric: BTreeMap::new(),
            plan: Some(Arc::new(plan.clone())),
            segments: vec![PlanSegment::new(plan, period.start())],
        }
    }

    /// The plan in force from `at` on: the base is prorated again.
    fn apply_plan(&mut self, plan: &PlanDefinition, period: PeriodKey, at: DateTime<Utc>) {
        self.plan_id = plan.id.clone();
        self.currency = plan.currency;
        self.plan = Some(Arc::new(plan.clone()));
        self.segments.push(PlanSegment::new(plan, at));
        self.base = base_lines(&self.segments, period)
            .iter()
            .map(|l| l.amount)
            .sum();
    }

    fn set_metric(&mut self, metric: &MetricKey, cost: Money) {
        if cost == Money::ZERO {
            self.overage_by_metric.remove(metric);
        } else if let Some(c) = self.overage_by_metric.get_mut(metric) {
            *c = cost;
        } else {
            self.overage_by_metric.insert(metric.clone(), cost);
        }
    }

    /// Recompute the sums from the metrics (at most one per catalog metric).
    fn refresh(&mut self) {
        let running: Money = self.overage_by_metric.values().copied().sum();
        if self.invoiced {
            self.adjustment = running - self.overage;
        } else {
            self.overage = running;
            self.total = self.base + self.usage + self.overage;
        }
    }
}

/// Estimated cost per brand and period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodCost {
    cursors: StreamCursors,
    rows: ByPeriod<CostEstimate>,
}

impl PeriodCost {
    pub fn new() -> Self {
        Self::default()
    }

    /// Put back the estimate of a brand-period stream folded up to `sequence`.
    pub(crate) fn restore(
        &mut self,
        brand: &BrandId,
        period: PeriodKey,
        sequence: u64,
        row: Option<CostEstimate>,
    ) {
        self.cursors.restore_period(brand, period, sequence);
        if let Some(row) = row {
            self.rows.insert(brand, period, row);
        }
    }

    pub fn get(&self, brand: &BrandId, period: PeriodKey) -> Option<&CostEstimate> {
        self.rows.get(brand, period)
    }

    /// Every brand-period, in brand then period order.
    pub fn iter(&self) -> impl Iterator<Item = (&BrandId, PeriodKey, &CostEstimate)> {
        self.rows.iter()
    }

    /// The brands with an estimate in `period`, in brand order.
    pub fn in_period(&self, period: PeriodKey) -> impl Iterator<Item = (&BrandId, &CostEstimate)> {
        self.rows.in_period(period)
    }
}

impl ReadModel for PeriodCost {
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
        match opened(period, e) {
            Some(row) => self.rows.insert(brand, period, row),
            None => {
                if let Some(row) = self.rows.get_mut(brand, period) {
                    fold_row(row, period, e);
                }
            }
        }
    }
}

/// The estimate a `PeriodOpened` starts; `None` for any other event.
pub(crate) fn opened(period: PeriodKey, event: &LedgerEvent) -> Option<CostEstimate> {
    let LedgerEvent::PeriodOpened { plan, .. } = event else {
        return None;
    };
    let mut row = CostEstimate::new(plan, period);
    for (metric, t) in totals::opening(event) {
        row.set_metric(&metric, t.overage_cost);
    }
    row.refresh();
    Some(row)
}

/// Fold an event after its stream's `PeriodOpened` into the estimate: the cost's one
/// rule, for [`PeriodCost`] and for `PeriodModels` alike. Every period stream starts
/// with `PeriodOpened`; a model that has not seen it has skipped events (reported by
/// `Delivery::AppliedAfterGap`) and has no estimate to fold into.
pub(crate) fn fold_row(row: &mut CostEstimate, period: PeriodKey, event: &LedgerEvent) {
    match event {
        LedgerEvent::PlanApplied {
            plan, totals, at, ..
        } => {
            row.apply_plan(plan, period, *at);
            for (metric, t) in totals {
                row.set_metric(metric, t.overage_cost);
            }
        }
        LedgerEvent::PeriodClosed { invoice, .. } => {
            row.plan_id = invoice.plan_id.clone();
            row.currency = invoice.currency;
            row.base = invoice.base;
            row.usage = Money::ZERO;
            row.overage = invoice.overage;
            row.total = invoice.total;
            row.invoiced = true;
        }
        _ => {
            if let Some((metric, t)) = totals::carried(event) {
                row.set_metric(metric, t.overage_cost);
            }
        }
    }
    row.refresh();
}

crate::diff::diff_fields!(CostEstimate {
    plan_id,
    currency,
    base,
    usage,
    overage,
    total,
    invoiced,
    adjustment,
    overage_by_metric,
    plan,
    segments,
});
crate::diff::diff_fields!(PeriodCost { cursors, rows });
