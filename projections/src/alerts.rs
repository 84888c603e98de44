//! `ActiveAlerts`: the threshold alerts of a brand-period that stand now, in the order
//! they were raised.
//!
//! A crossing and its resolution are facts of the log (`ThresholdCrossed`,
//! `ThresholdResolved`, decided by the aggregate with the usage that causes them), so
//! the model only follows them: a crossing adds an alert, its resolution removes it.
//! That bounds it: at most one alert per metric and threshold percentage (1 to 100)
//! stands at a time. The whole timeline, resolutions included, is the log's to tell.

use chrono::{DateTime, Utc};
use ledger_aggregates::period::Severity;
use ledger_aggregates::{BrandId, LedgerEvent, MetricKey, PeriodKey};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::event::ProjectedEvent;
use crate::timeline::{Change, Timeline, TimelineEntry};

/// One threshold crossing that has not resolved.
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

/// The alerts that stand per brand and period, in the order they were raised.
pub type ActiveAlerts = Timeline<Alert>;

impl TimelineEntry for Alert {
    /// A threshold of a metric is raised at most once until it resolves.
    type Key = (MetricKey, u8);
    fn key(&self) -> Self::Key {
        (self.metric.clone(), self.threshold)
    }

    fn of(event: &ProjectedEvent) -> Option<(&BrandId, PeriodKey, Change<Self>)> {
        let (brand, period, event_of_period) = event.as_period()?;
        let change = match event_of_period {
            LedgerEvent::ThresholdCrossed {
                metric,
                threshold,
                severity,
                percentage,
                current,
                effective_limit,
                at,
            } => Change::Add(Alert {
                metric: metric.clone(),
                threshold: *threshold,
                severity: *severity,
                percentage: *percentage,
                current: *current,
                effective_limit: *effective_limit,
                at: *at,
                position: event.position,
                sequence: event.sequence,
            }),
            LedgerEvent::ThresholdResolved {
                metric, threshold, ..
            } => Change::Remove((metric.clone(), *threshold)),
            _ => return None,
        };
        Some((brand, period, change))
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
