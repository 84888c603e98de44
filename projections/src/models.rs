//! `ReadModels`: every model, fed by one entry point, and compared as a whole.

use ledger_aggregates::{BrandId, PeriodKey};
use serde::{Deserialize, Serialize};

use crate::alerts::{ActiveAlerts, Alert};
use crate::cost::{CostEstimate, PeriodCost};
use crate::cursor::{Delivery, ReadModel};
use crate::diff::{Diff, Differences};
use crate::event::ProjectedEvent;
use crate::overage::{BrandOverages, OverageLedger};
use crate::quota::{PeriodQuotas, QuotaSummary};
use crate::timeline::TimelineEntry;
use crate::topups::{TopUp, TopUpHistory};

/// All read models of the ledger. Each keeps its own cursors, so each stays idempotent
/// on its own and can be stored, rebuilt or checked apart from the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadModels {
    pub quota_summary: QuotaSummary,
    pub period_cost: PeriodCost,
    pub active_alerts: ActiveAlerts,
    pub top_up_history: TopUpHistory,
    pub overage_ledger: OverageLedger,
}

/// Everything the read models hold about one brand-period stream: the unit a store
/// keeps as one row. Streams fold independently of each other, so a batch of events
/// needs only the rows of the streams it touches, each folded on its own
/// ([`PeriodModels::apply`], by the same rules as [`ReadModels::apply`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodModels {
    /// The last sequence of the stream folded in.
    pub sequence: u64,
    pub quotas: PeriodQuotas,
    /// `None` only if the stream's `PeriodOpened` was never seen (a gap).
    pub cost: Option<CostEstimate>,
    /// The alerts that stand (crossed, not resolved), oldest first.
    pub alerts: Vec<Alert>,
    pub top_ups: Vec<TopUp>,
    /// `None` only if the stream's `PeriodOpened` was never seen (a gap).
    pub overages: Option<BrandOverages>,
}

impl ReadModels {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the models hold about one brand-period stream, `None` if they never saw it.
    pub fn period_models(&self, brand: &BrandId, period: PeriodKey) -> Option<PeriodModels> {
        let sequence = self.quota_summary.cursors().period(brand, period);
        if sequence == 0 {
            return None;
        }
        Some(PeriodModels {
            sequence,
            quotas: self
                .quota_summary
                .period(brand, period)
                .cloned()
                .unwrap_or_default(),
            cost: self.period_cost.get(brand, period).cloned(),
            alerts: self.active_alerts.get(brand, period).to_vec(),
            top_ups: self.top_up_history.get(brand, period).to_vec(),
            overages: self
                .overage_ledger
                .period(period)
                .and_then(|p| p.brand(brand))
                .cloned(),
        })
    }

    /// Every brand-period stream the models saw, in brand then period order.
    pub fn periods(&self) -> impl Iterator<Item = (&BrandId, PeriodKey)> {
        self.quota_summary
            .cursors()
            .periods()
            .map(|(b, p, _)| (b, p))
    }

    /// Put back what [`ReadModels::period_models`] copied out, replacing what the models
    /// held about that stream. The models then take the stream's next events as if
    /// they had folded it from its start.
    pub fn restore(&mut self, brand: &BrandId, period: PeriodKey, models: PeriodModels) {
        let PeriodModels {
            sequence,
            quotas,
            cost,
            alerts,
            top_ups,
            overages,
        } = models;
        self.quota_summary.restore(brand, period, sequence, quotas);
        self.period_cost.restore(brand, period, sequence, cost);
        self.active_alerts.restore(brand, period, sequence, alerts);
        self.top_up_history
            .restore(brand, period, sequence, top_ups);
        self.overage_ledger
            .restore(brand, period, sequence, overages);
    }

    /// Apply `event` to every model. Answers `AppliedAfterGap` if any model saw a gap,
    /// else `Applied` if any model folded it, else `Duplicate`.
    pub fn apply(&mut self, event: &ProjectedEvent) -> Delivery {
        let deliveries = [
            self.quota_summary.apply(event),
            self.period_cost.apply(event),
            self.active_alerts.apply(event),
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

impl PeriodModels {
    /// A stream none of whose events was folded yet.
    pub fn new() -> Self {
        Self {
            sequence: 0,
            quotas: PeriodQuotas::new(),
            cost: None,
            alerts: Vec::new(),
            top_ups: Vec::new(),
            overages: None,
        }
    }

    /// Fold the next event of this stream, as [`ReadModels::apply`] folds it into every
    /// model, without looking the stream up in them: what the projector does per
    /// event. The caller hands it this stream's events only: another stream's would be
    /// folded as if it were of this one, and a brand registry event changes nothing.
    pub fn apply(&mut self, event: &ProjectedEvent) -> Delivery {
        let Some((_, period, e)) = event.as_period() else {
            return Delivery::Duplicate {
                last_applied: self.sequence,
            };
        };
        let last = self.sequence;
        if event.sequence <= last {
            return Delivery::Duplicate { last_applied: last };
        }
        self.sequence = event.sequence;
        crate::quota::fold_rows(&mut self.quotas, e);
        match crate::cost::opened(period, e) {
            Some(row) => self.cost = Some(row),
            None => {
                if let Some(row) = &mut self.cost {
                    crate::cost::fold_row(row, period, e);
                }
            }
        }
        if let Some((_, _, change)) = Alert::of(event) {
            change.fold(&mut self.alerts);
        }
        if let Some((_, _, change)) = TopUp::of(event) {
            change.fold(&mut self.top_ups);
        }
        match BrandOverages::opened(e) {
            Some((b, _)) => self.overages = Some(b),
            None => {
                if let Some(b) = &mut self.overages {
                    b.fold(e);
                }
            }
        }
        if event.sequence == last + 1 {
            Delivery::Applied
        } else {
            Delivery::AppliedAfterGap { expected: last + 1 }
        }
    }
}

impl Default for PeriodModels {
    fn default() -> Self {
        Self::new()
    }
}

crate::diff::diff_fields!(ReadModels {
    quota_summary,
    period_cost,
    active_alerts,
    top_up_history,
    overage_ledger,
});
