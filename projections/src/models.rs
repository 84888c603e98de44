//! `ReadModels`: every model, fed by one entry point, and compared as a whole.

use serde::{Deserialize, Serialize};

use crate::alerts::AlertTimeline;
use crate::cost::PeriodCost;
use crate::cursor::{Delivery, ReadModel};
use crate::diff::{Diff, Differences};
use crate::event::ProjectedEvent;
use crate::overage::OverageLedger;
use crate::quota::QuotaSummary;
use crate::topups::TopUpHistory;

/// All read models of the ledger. Each keeps its own cursors, so each stays idempotent
/// on its own and can be stored, rebuilt or checked apart from the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadModels {
    pub quota_summary: QuotaSummary,
    pub period_cost: PeriodCost,
    pub alert_timeline: AlertTimeline,
    pub top_up_history: TopUpHistory,
    pub overage_ledger: OverageLedger,
}

impl ReadModels {
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply `event` to every model. Answers `AppliedAfterGap` if any model saw a gap,
    /// else `Applied` if any model folded it, else `Duplicate`.
    pub fn apply(&mut self, event: &ProjectedEvent) -> Delivery {
        let deliveries = [
            self.quota_summary.apply(event),
            self.period_cost.apply(event),
            self.alert_timeline.apply(event),
            self.top_up_history.apply(event),
            self.overage_ledger.apply(event),
        ];
        let rank = |d: &Delivery| match d {
            Delivery::AppliedAfterGap { .. } => 2,
            Delivery::Applied => 1,
            Delivery::Duplicate { .. } => 0,
        };
        deliveries
            .into_iter()
            .max_by_key(rank)
            .expect("five models answered")
    }

    /// Apply events in order.
    pub fn apply_all<'a>(&mut self, events: impl IntoIterator<Item = &'a ProjectedEvent>) {
        for event in events {
            self.apply(event);
        }
    }

    /// The models a fold of `events` in order gives, from nothing.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a ProjectedEvent>) -> Self {
        let mut models = Self::new();
        models.apply_all(events);
        models
    }

    /// Every leaf where `self` (left, e.g. the stored models) and `right` (e.g. a fresh
    /// replay) differ, cursors included, each with its path and both values.
    pub fn diff(&self, right: &ReadModels) -> Differences {
        let mut out = Differences::default();
        Diff::diff(self, right, "", &mut out);
        out
    }
}

crate::diff::diff_fields!(ReadModels {
    quota_summary,
    period_cost,
    alert_timeline,
    top_up_history,
    overage_ledger,
});
