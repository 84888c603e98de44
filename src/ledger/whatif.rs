//! What-if queries: the current period's figures gathered the way the summary reads
//! them (the read models and the period's plan snapshot), then handed to the pure
//! calculators of `ledger_projections::whatif`.

use ledger_aggregates::{BrandId, MetricKey, PeriodKey};
use ledger_projections::whatif::{
    self, Bill, Comparison, Estimate, MetricFigures, PeriodFigures, Projection, TopUpSimulation,
    WhatIfError,
};

use super::summary::PeriodSummary;
use super::{Ledger, QueryError};

/// Why a what-if query has no answer: the read failed, or the question is refused.
#[derive(Debug, thiserror::Error)]
pub enum WhatIfQueryError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{0}")]
    Refused(#[from] WhatIfError),
}

/// An answer and the period it is about (read once, so both agree at a month's turn).
#[derive(Debug, Clone)]
pub struct Answer<T> {
    pub period: PeriodKey,
    pub value: T,
}

impl<T> Answer<T> {
    fn of(figures: &PeriodFigures, value: T) -> Self {
        Answer {
            period: figures.period,
            value,
        }
    }
}

impl Ledger {
    /// The figures of `brand`'s current period: its summary's, holding every write this
    /// process acknowledged. An unregistered brand is [`QueryError::UnknownBrand`].
    pub async fn what_if_figures(&self, brand: BrandId) -> Result<PeriodFigures, QueryError> {
        let period = self.period_or_now(None);
        Ok(figures_of(self.summary(brand, period).await?))
    }

    /// `units` more top-up units on `metric`, simulated.
    pub async fn simulate_top_up(
        &self,
        brand: BrandId,
        metric: &MetricKey,
        units: u64,
    ) -> Result<Answer<TopUpSimulation>, WhatIfQueryError> {
        let f = self.what_if_figures(brand).await?;
        let now = self.engine.now();
        let sim = whatif::simulate_top_up(&f, self.engine.catalog(), metric, units, now)?;
        Ok(Answer::of(&f, sim))
    }

    /// Every catalog plan priced on the current period's usage, and the recommended one.
    pub async fn compare_plans(&self, brand: BrandId) -> Result<Answer<Comparison>, QueryError> {
        let f = self.what_if_figures(brand).await?;
        let comparison = whatif::compare_plans(&f, self.engine.catalog());
        Ok(Answer::of(&f, comparison))
    }

    /// The current period's pace projected over `days` days and to its end.
    pub async fn project(
        &self,
        brand: BrandId,
        days: u32,
    ) -> Result<Answer<Projection>, WhatIfQueryError> {
        let f = self.what_if_figures(brand).await?;
        let projection = whatif::project(&f, days, self.engine.now())?;
        Ok(Answer::of(&f, projection))
    }

    /// What `quantity` more units of `metric` would cost.
    pub async fn estimate(
        &self,
        brand: BrandId,
        metric: &MetricKey,
        quantity: u64,
    ) -> Result<Answer<Estimate>, WhatIfQueryError> {
        let f = self.what_if_figures(brand).await?;
        let estimate = whatif::estimate(&f, self.engine.catalog(), metric, quantity)?;
        Ok(Answer::of(&f, estimate))
    }

    /// The current period's bill so far, taxed at `country`'s rate.
    pub async fn current_bill(
        &self,
        brand: BrandId,
        country: &str,
    ) -> Result<Answer<Bill>, WhatIfQueryError> {
        let f = self.what_if_figures(brand).await?;
        let bill = whatif::current_bill(&f, country)?;
        Ok(Answer::of(&f, bill))
    }
}

/// A summary as the calculators take it: the same figures, nothing recomputed.
fn figures_of(s: PeriodSummary) -> PeriodFigures {
    let metrics = s
        .metrics
        .into_iter()
        .map(|m| MetricFigures {
            metric: m.metric,
            current: m.totals.current,
            billable: m.totals.billable,
            base_limit: m.base_limit,
            effective_limit: m.totals.effective_limit,
            overage_units: m.totals.overage_units,
            overage_cost: m.totals.overage_cost,
            reserved: m.totals.held,
        })
        .collect();
    PeriodFigures {
        period: s.period,
        plan: std::sync::Arc::unwrap_or_clone(s.plan),
        metrics,
        base: s.base,
        overage: s.overage,
    }
}
