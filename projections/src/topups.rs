//! `TopUpHistory`: every top-up credited to a brand-period, in stream order.
//!
//! One entry per `TopUpApplied`; the history is as long as the period's top-ups, each of
//! them a purchase or a grant, and a reader pages it.

use chrono::{DateTime, Utc};
use ledger_aggregates::{BrandId, LedgerEvent, MetricKey, Money, PeriodKey};
use serde::{Deserialize, Serialize};

use crate::event::ProjectedEvent;
use crate::timeline::{Change, Timeline, TimelineEntry};

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
pub type TopUpHistory = Timeline<TopUp>;

impl TimelineEntry for TopUp {
    /// Top-ups are never removed: the key only names one.
    type Key = u64;
    fn key(&self) -> u64 {
        self.sequence
    }

    fn of(event: &ProjectedEvent) -> Option<(&BrandId, PeriodKey, Change<Self>)> {
        let (
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
        ) = event.as_period()?
        else {
            return None;
        };
        Some((
            brand,
            period,
            Change::Add(TopUp {
                metric: metric.clone(),
                units: *units,
                price: *price,
                reference: reference.clone(),
                actor: actor.clone(),
                effective_limit: totals.effective_limit,
                at: *at,
                position: event.position,
                sequence: event.sequence,
            }),
        ))
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
