//! `TopUpHistory`: every top-up credited to a brand-period, in stream order.
//!
//! One entry per `TopUpApplied`; the history is as long as the period's top-ups, each of
//! them a purchase or a grant, and a reader pages it.

use chrono::{DateTime, Utc};
use ledger_aggregates::{BrandId, LedgerEvent, MetricKey, Money, PeriodKey};
use serde::{Deserialize, Serialize};

use crate::cursor::{Admitted, ReadModel, StreamCursors};
use crate::event::ProjectedEvent;
use crate::keyed::ByPeriod;

/// One top-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUp {
    pub metric: MetricKey,
    /// Units added to the effective limit of the period.
    pub units: u64,
    /// What the brand paid for them, in cents (0 for a grant).
    pub price: Money,
    /// The purchase or grant it comes from (an order id, a support reason).
    pub reference: String,
    /// Who applied it.
    pub actor: String,
    /// The metric's effective limit right after it.
    pub effective_limit: Option<u64>,
    pub at: DateTime<Utc>,
    /// Where the top-up sits in the log, for an auditor to find it.
    pub position: i64,
    pub sequence: u64,
}

/// Top-ups per brand and period, in the order they were applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpHistory {
    cursors: StreamCursors,
    entries: ByPeriod<Vec<TopUp>>,
}

impl TopUpHistory {
    pub fn new() -> Self {
        Self::default()
    }

    /// The top-ups of `brand` in `period`, oldest first (empty when none).
    pub fn get(&self, brand: &BrandId, period: PeriodKey) -> &[TopUp] {
        self.entries.get(brand, period).map_or(&[], Vec::as_slice)
    }

    /// Every brand-period with top-ups, in brand then period order.
    pub fn iter(&self) -> impl Iterator<Item = (&BrandId, PeriodKey, &[TopUp])> {
        self.entries.iter().map(|(b, p, v)| (b, p, v.as_slice()))
    }
}

impl ReadModel for TopUpHistory {
    fn cursors(&self) -> &StreamCursors {
        &self.cursors
    }
    fn cursors_mut(&mut self) -> &mut StreamCursors {
        &mut self.cursors
    }

    fn fold(&mut self, event: &ProjectedEvent, _: &Admitted) {
        let Some((
            brand,
            period,
            LedgerEvent::TopUpApplied {
                metric,
                units,
                price,
                reference,
                actor,
                totals,
                at,
                ..
            },
        )) = event.as_period()
        else {
            return;
        };
        self.entries
            .get_or_insert_with(brand, period, Vec::new)
            .push(TopUp {
                metric: metric.clone(),
                units: *units,
                price: *price,
                reference: reference.clone(),
                actor: actor.clone(),
                effective_limit: totals.effective_limit,
                at: *at,
                position: event.position,
                sequence: event.sequence,
            });
    }
}

crate::diff::diff_fields!(TopUp {
    metric,
    units,
    price,
    reference,
    actor,
    effective_limit,
    at,
    position,
    sequence,
});
crate::diff::diff_fields!(TopUpHistory { cursors, entries });
