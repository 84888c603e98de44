//! `OverageLedger`: what finance bills for overage, per period, brand and metric.
//!
//! Each line is a metric of a brand on a `charge` quota that went over its effective
//! limit: units over, the rate of the plan snapshot the period runs on, and the amount
//! in cents as the events carried it (rounded once per metric on the period total; see
//! `PeriodCost` for the rule). A line appears under the invoice's own rule (units over
//! *and* a non-zero amount), so closing a period never adds or drops a charge line:
//! after `PeriodClosed` the charge lines *are* the invoice's lines.
//!
//! # Late usage
//!
//! The aggregate still accepts usage for a closed period within the grace window
//! (`UsageRecorded` with `after_close: true`), and gauge levels and corrections after
//! the close also move a metric's overage. None of this rewrites the invoice: each
//! metric whose overage moved after the close gets one **adjustment** line, the change
//! since the close (units and amount, negative for a credit), at the plan's rate. So at
//! any moment, per period:
//!
//! - `charged` = Σ charge lines = Σ of the brands' `CostEstimate::overage`;
//! - `adjustments` = Σ adjustment lines = Σ of the brands' `CostEstimate::adjustment`;
//! - `charged + adjustments` = Σ of every metric's current overage cost.
//!
//! Brand-period streams are folded independently, so brands of a period may be open
//! and closed side by side.

use std::collections::BTreeMap;

use ledger_aggregates::period::Invoice;
use ledger_aggregates::{
    BrandId, LedgerEvent, MetricKey, MetricTotals, Money, OveragePolicy, PeriodKey, PlanDefinition,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::cursor::{Admitted, ReadModel, StreamCursors};
use crate::event::ProjectedEvent;
use crate::keyed::BrandMap;
use crate::totals;

/// Whether a line is billed on the period's invoice or adjusts a closed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Overage of the period: on the invoice (or to be, while the period is open).
    Charge,
    /// A change of overage after the invoice was issued.
    Adjustment,
}

/// One metric's overage line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverageLine {
    /// Units over the effective limit; for an adjustment, the change since the close
    /// (negative when a correction lowered it).
    pub units: i64,
    /// Cents per unit, from the plan snapshot of the period. Always set for a `charge`
    /// quota; optional like the invoice's.
    pub rate: Option<Decimal>,
    /// In cents; for an adjustment, the change since the close (negative: a credit).
    pub amount: Money,
}

/// Sums of a period's lines, in cents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverageTotals {
    pub charged: Money,
    pub adjustments: Money,
    /// `charged + adjustments`.
    pub total: Money,
}

/// A metric's overage as its last event carried it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overage {
    pub units: u64,
    pub amount: Money,
}

/// The overage of one brand in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrandOverages {
    /// Rates of the `charge` quotas of the plan in force, cents per unit.
    rates: BTreeMap<MetricKey, Decimal>,
    /// Each metric's overage now (non-zero only): what lines are derived from.
    running: BTreeMap<MetricKey, Overage>,
    /// Each metric's overage when the period closed (what the invoice billed); `None`
    /// while open. Adjustments are measured from it.
    at_close: Option<BTreeMap<MetricKey, Overage>>,
    charges: BTreeMap<MetricKey, OverageLine>,
    adjustments: BTreeMap<MetricKey, OverageLine>,
}

/// A line as finance reads it: flat, with its brand and metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinanceLine {
    pub brand: BrandId,
    pub metric: MetricKey,
    pub kind: LineKind,
    pub units: i64,
    pub rate: Option<Decimal>,
    pub amount: Money,
}

/// The overage of one period: every brand's lines and their totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodOverages {
    brands: BrandMap<BrandOverages>,
    totals: OverageTotals,
}

/// Overage lines per period, brand and metric, for finance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverageLedger {
    cursors: StreamCursors,
    periods: BTreeMap<PeriodKey, PeriodOverages>,
}

/// Change of a period's totals caused by one line moving.
#[derive(Default)]
pub(crate) struct Delta {
    charged: Money,
    adjustments: Money,
}

impl Delta {
    fn plus(self, other: Delta) -> Delta {
        Delta {
            charged: self.charged + other.charged,
            adjustments: self.adjustments + other.adjustments,
        }
    }
}

fn rates_of(plan: &PlanDefinition) -> BTreeMap<MetricKey, Decimal> {
    plan.quotas
        .iter()
        .filter(|q| q.overage == OveragePolicy::Charge)
        .filter_map(|q| Some((q.metric.clone(), q.overage_rate?)))
        .collect()
}

/// Put `line` at `metric` (or remove it when `None`); answers how the amount moved.
fn replace(
    lines: &mut BTreeMap<MetricKey, OverageLine>,
    metric: &MetricKey,
    line: Option<OverageLine>,
) -> Money {
    let new = line.as_ref().map_or(Money::ZERO, |l| l.amount);
    let old = match line {
        Some(line) => match lines.get_mut(metric) {
            Some(slot) => std::mem::replace(slot, line).amount,
            None => {
                lines.insert(metric.clone(), line);
                Money::ZERO
            }
        },
        None => lines.remove(metric).map_or(Money::ZERO, |l| l.amount),
    };
    new - old
}

impl BrandOverages {
    fn new(plan: &PlanDefinition) -> Self {
        Self {
            rates: rates_of(plan),
            running: BTreeMap::new(),
            at_close: None,
            charges: BTreeMap::new(),
            adjustments: BTreeMap::new(),
        }
    }

    /// The overages a `PeriodOpened` starts, and how they move the period's totals;
    /// `None` for any other event.
    pub(crate) fn opened(event: &LedgerEvent) -> Option<(Self, Delta)> {
        let LedgerEvent::PeriodOpened { plan, .. } = event else {
            return None;
        };
        let mut b = Self::new(plan);
        let delta = totals::opening(event)
            .iter()
            .fold(Delta::default(), |d, (metric, t)| d.plus(b.set(metric, t)));
        Some((b, delta))
    }

    /// Fold an event after the stream's `PeriodOpened`: the overages' one rule, for
    /// [`OverageLedger`] and for `PeriodModels` alike. Answers how the period's totals
    /// move, `None` when the event concerns no overage.
    pub(crate) fn fold(&mut self, event: &LedgerEvent) -> Option<Delta> {
        Some(match event {
            LedgerEvent::PlanApplied { plan, totals, .. } => {
                self.rates = rates_of(plan);
                totals.iter().fold(Delta::default(), |d, (metric, t)| {
                    d.plus(self.set(metric, t))
                })
            }
            LedgerEvent::PeriodClosed { invoice, .. } => self.close(invoice),
            _ => {
                let (metric, t) = totals::carried(event)?;
                self.set(metric, t)
            }
        })
    }

    /// Lines billed on the period's invoice (or to be), per metric.
    pub fn charges(&self) -> &BTreeMap<MetricKey, OverageLine> {
        &self.charges
    }

    /// Changes after the invoice, per metric.
    pub fn adjustments(&self) -> &BTreeMap<MetricKey, OverageLine> {
        &self.adjustments
    }

    pub fn is_closed(&self) -> bool {
        self.at_close.is_some()
    }

    /// Move `metric` to `totals` and re-derive its line.
    fn set(&mut self, metric: &MetricKey, totals: &MetricTotals) -> Delta {
        let now = Overage {
            units: totals.overage_units,
            amount: totals.overage_cost,
        };
        if now == Overage::default() {
            self.running.remove(metric);
        } else if let Some(slot) = self.running.get_mut(metric) {
            *slot = now;
        } else {
            self.running.insert(metric.clone(), now);
        }
        // Looked up only for a line: most usage is under its limit and has none.
        let rate = || self.rates.get(metric).copied();
        match &self.at_close {
            None => {
                // The invoice's rule: units over and something to bill.
                let line = (now.units > 0 && now.amount > Money::ZERO).then(|| OverageLine {
                    units: units_i64(now.units),
                    rate: rate(),
                    amount: now.amount,
                });
                Delta {
                    charged: replace(&mut self.charges, metric, line),
                    ..Delta::default()
                }
            }
            Some(at_close) => {
                let then = at_close.get(metric).copied().unwrap_or_default();
                let line = (now != then).then(|| OverageLine {
                    units: units_i64(now.units) - units_i64(then.units),
                    rate: rate(),
                    amount: now.amount - then.amount,
                });
                Delta {
                    adjustments: replace(&mut self.adjustments, metric, line),
                    ..Delta::default()
                }
            }
        }
    }

    /// Freeze the charge lines at the invoice's.
    fn close(&mut self, invoice: &Invoice) -> Delta {
        let before: Money = self.charges.values().map(|l| l.amount).sum();
        self.charges = invoice
            .lines
            .iter()
            .map(|l| {
                let line = OverageLine {
                    units: units_i64(l.overage_units),
                    rate: l.rate,
                    amount: l.amount,
                };
                (l.metric.clone(), line)
            })
            .collect();
        self.at_close = Some(self.running.clone());
        Delta {
            charged: invoice.overage - before,
            ..Delta::default()
        }
    }
}

/// Units are at most a period's usage, far below `i64::MAX` (one command moves at most
/// `QUANTITY_MAX` = 10⁹ units).
fn units_i64(units: u64) -> i64 {
    i64::try_from(units).expect("a period's units stay far below i64::MAX")
}

impl PeriodOverages {
    pub fn totals(&self) -> OverageTotals {
        self.totals
    }

    pub fn brand(&self, brand: &BrandId) -> Option<&BrandOverages> {
        self.brands.get(brand)
    }

    pub fn brands(&self) -> impl Iterator<Item = (&BrandId, &BrandOverages)> {
        self.brands.iter()
    }

    /// Every line, flat: by brand, then metric, charge before adjustment.
    pub fn lines(&self) -> Vec<FinanceLine> {
        let mut lines = Vec::new();
        for (brand, b) in self.brands.iter() {
            let charges = b.charges.iter().map(|(m, l)| (m, LineKind::Charge, l));
            let adjustments = b
                .adjustments
                .iter()
                .map(|(m, l)| (m, LineKind::Adjustment, l));
            let mut of_brand: Vec<_> = charges.chain(adjustments).collect();
            of_brand.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
            lines.extend(of_brand.into_iter().map(|(metric, kind, l)| FinanceLine {
                brand: brand.clone(),
                metric: metric.clone(),
                kind,
                units: l.units,
                rate: l.rate,
                amount: l.amount,
            }));
        }
        lines
    }

    fn add(&mut self, delta: Delta) {
        self.totals.charged = self.totals.charged + delta.charged;
        self.totals.adjustments = self.totals.adjustments + delta.adjustments;
        self.totals.total = self.totals.charged + self.totals.adjustments;
    }
}

impl OverageLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Put back the lines of a brand-period stream folded up to `sequence`; the
    /// period's totals take its charges and adjustments in.
    pub(crate) fn restore(
        &mut self,
        brand: &BrandId,
        period: PeriodKey,
        sequence: u64,
        lines: Option<BrandOverages>,
    ) {
        self.cursors.restore_period(brand, period, sequence);
        let Some(lines) = lines else {
            return;
        };
        let p = self.periods.entry(period).or_default();
        let sum = |l: &BTreeMap<MetricKey, OverageLine>| l.values().map(|l| l.amount).sum();
        let delta = Delta {
            charged: sum(&lines.charges),
            adjustments: sum(&lines.adjustments),
        };
        if let Some(old) = p.brands.insert(brand.clone(), lines) {
            p.add(Delta {
                charged: Money::ZERO - sum(&old.charges),
                adjustments: Money::ZERO - sum(&old.adjustments),
            });
        }
        p.add(delta);
    }

    pub fn period(&self, period: PeriodKey) -> Option<&PeriodOverages> {
        self.periods.get(&period)
    }

    /// The totals of `period` (zero when nothing was billed in it).
    pub fn totals(&self, period: PeriodKey) -> OverageTotals {
        self.period(period)
            .map_or_else(OverageTotals::default, PeriodOverages::totals)
    }

    /// Every line of `period`, flat: by brand, then metric, charge before adjustment.
    pub fn lines(&self, period: PeriodKey) -> Vec<FinanceLine> {
        self.period(period)
            .map_or_else(Vec::new, PeriodOverages::lines)
    }

    /// Every period, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (PeriodKey, &PeriodOverages)> {
        self.periods.iter().map(|(p, o)| (*p, o))
    }

    fn opened(&mut self, brand: &BrandId, period: PeriodKey, event: &LedgerEvent) {
        let Some((b, delta)) = BrandOverages::opened(event) else {
            return;
        };
        let p = self.periods.entry(period).or_default();
        p.brands.insert(brand.clone(), b);
        p.add(delta);
    }
}

impl ReadModel for OverageLedger {
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
        if let LedgerEvent::PeriodOpened { .. } = e {
            self.opened(brand, period, e);
            return;
        }
        // Every period stream starts with `PeriodOpened`; without it (events skipped,
        // reported by `Delivery::AppliedAfterGap`) there are no rates to bill at.
        let Some(p) = self.periods.get_mut(&period) else {
            return;
        };
        let Some(b) = p.brands.get_mut(brand) else {
            return;
        };
        if let Some(delta) = b.fold(e) {
            p.add(delta);
        }
    }
}

crate::diff::diff_fields!(OverageLine {
    units,
    rate,
    amount
});
crate::diff::diff_fields!(OverageTotals {
    charged,
    adjustments,
    total
});
crate::diff::diff_fields!(Overage { units, amount });
crate::diff::diff_fields!(BrandOverages {
    rates,
    running,
    at_close,
    charges,
    adjustments,
});
crate::diff::diff_fields!(PeriodOverages { brands, totals });
crate::diff::diff_fields!(OverageLedger { cursors, periods });
