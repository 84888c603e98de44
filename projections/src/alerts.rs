//! `AlertTimeline`: every threshold crossing of a brand-period, in stream order.
//!
//! A crossing is a fact of the log (`ThresholdCrossed`, raised once per metric,
//! threshold and period by the aggregate, plan changes included), so the timeline only
//! lists them: one entry per event. That bounds it: at most one entry per metric and
//! threshold percentage (1 to 100) in a period.

use chrono::{DateTime, Utc};
use ledger_aggregates::period::Severity;
use ledger_aggregates::{BrandId, LedgerEvent, MetricKey, PeriodKey};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::event::ProjectedEvent;
use crate::timeline::{Timeline, TimelineEntry};

/// One threshold crossing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub metric: MetricKey,
    /// The percentage of the effective limit that was reached (50, 75, 90 by default).
    pub threshold: u8,
    /// `critical` from 90 %, `warning` below.
    pub severity: Severity,
    /// current / effective limit × 100 when it was crossed, two decimals, not capped.
    pub percentage: Decimal,
    /// Usage and effective limit the crossing was computed on.
    pub current: u64,
    pub effective_limit: u64,
    /// When it was crossed: it never changes on later reads.
    pub at: DateTime<Utc>,
    /// Where the crossing sits in the log, for an auditor to find it.
    pub position: i64,
    pub sequence: u64,
}

/// Threshold crossings per brand and period, in the order they happened.
pub type AlertTimeline = Timeline<Alert>;

impl TimelineEntry for Alert {
    fn of(event: &ProjectedEvent) -> Option<(&BrandId, PeriodKey, Self)> {
        let (
            brand,
            period,
            LedgerEvent::ThresholdCrossed {
                metric,
                threshold,
                severity,
                percentage,
                current,
                effective_limit,
                at,
            },
        ) = event.as_period()?
        else {
            return None;
        };
        Some((
            brand,
            period,
            Alert {
                metric: metric.clone(),
                threshold: *threshold,
                severity: *severity,
                percentage: *percentage,
                current: *current,
                effective_limit: *effective_limit,
                at: *at,
                position: event.position,
                sequence: event.sequence,
            },
        ))
    }
}

crate::diff::diff_fields!(Alert {
    metric,
    threshold,
    severity,
    percentage,
    current,
    effective_limit,
    at,
    position,
    sequence,
});
