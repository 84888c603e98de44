//! Where each event states a metric's totals. Usage events carry them; the two plan
//! events are read here once for every model that needs them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use ledger_aggregates::UsagePeriodAggregate;
use ledger_aggregates::{LedgerEvent, MetricKey, MetricTotals, Money, PlanDefinition};

/// The metric and totals a usage event carries (`UsageRecorded`, `GaugeLevelSet`,
/// `UsageAdjusted`, `TopUpApplied`, and the holds' `QuotaReserved`, `HoldReleased`):
/// the metric's state after the event.
pub(crate) fn carried(event: &LedgerEvent) -> Option<(&MetricKey, &MetricTotals)> {
    match event {
        LedgerEvent::UsageRecorded { metric, totals, .. }
        | LedgerEvent::GaugeLevelSet { metric, totals, .. }
        | LedgerEvent::UsageAdjusted { metric, totals, .. }
        | LedgerEvent::TopUpApplied { metric, totals, .. }
        | LedgerEvent::QuotaReserved { metric, totals, .. }
        | LedgerEvent::HoldReleased { metric, totals, .. } => Some((metric, totals)),
        _ => None,
    }
}

/// The totals a period opens with: every quota of the snapshotted plan, and every gauge
/// level carried over from the previous period (which may already be in overage).
///
/// `PeriodOpened` carries levels, not totals, so they are computed here by the
/// aggregate's own rule (`UsagePeriodAggregate::totals` of the just-opened period) from
/// the plan the event snapshots: never from today's catalog, never by a second copy of
/// the rule.
pub(crate) fn opening(opened: &LedgerEvent) -> BTreeMap<MetricKey, MetricTotals> {
    let LedgerEvent::PeriodOpened {
        plan,
        carried_levels,
        ..
    } = opened
    else {
        return BTreeMap::new();
    };
    let mut period = UsagePeriodAggregate::default();
    period.fold(opened);
    plan.quotas
        .iter()
        .map(|q| &q.metric)
        .chain(carried_levels.keys())
        .filter_map(|m| Some((m.clone(), period.totals(m)?)))
        .collect()
}

/// The totals of a metric no event of the period has touched, under `plan`: nothing
/// used, the plan's limit (no top-ups: a top-up touches its metric). `PlanApplied`
/// carries totals only for touched metrics; these are the others'.
pub(crate) fn untouched(plan: &PlanDefinition, metric: &MetricKey) -> MetricTotals {
    MetricTotals {
        current: 0,
        billable: 0,
        effective_limit: plan.quota(metric).map(|q| q.limit),
        overage_units: 0,
        overage_cost: Money::ZERO,
        held: 0,
    }
}

/// The instant an event records.
pub(crate) fn at_of(event: &LedgerEvent) -> DateTime<Utc> {
    match event {
        LedgerEvent::PeriodOpened { at, .. }
        | LedgerEvent::PlanApplied { at, .. }
        | LedgerEvent::UsageRecorded { at, .. }
        | LedgerEvent::UsageDenied { at, .. }
        | LedgerEvent::GaugeLevelSet { at, .. }
        | LedgerEvent::UsageAdjusted { at, .. }
        | LedgerEvent::TopUpApplied { at, .. }
        | LedgerEvent::ThresholdCrossed { at, .. }
        | LedgerEvent::ThresholdResolved { at, .. }
        | LedgerEvent::QuotaReserved { at, .. }
        | LedgerEvent::HoldReleased { at, .. }
        | LedgerEvent::PeriodClosed { at, .. } => *at,
    }
}
