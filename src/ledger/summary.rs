//! A brand-period's summary and current usage, from the read models, and the same
//! summary replayed from the log as of a point of the stream.
//!
//! A period with events is summarized on the plan its events snapshotted; only a
//! period without any event falls back to the plan the brand is on today (and only
//! then is the registry read).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use ledger_aggregates::ids::period_stream_id;
use ledger_aggregates::{
    BrandId, MetricKey, MetricTotals, Money, PeriodKey, PlanDefinition, UsagePeriodAggregate,
};
use ledger_projections::{Alert, PeriodModels, PeriodQuotas};
use ledger_replay::{as_of, Cutoff};

use super::{Ledger, QueryError};

/// Where a period stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodStatus {
    /// Now is in it.
    Active,
    /// Over, not closed.
    Ended,
    /// Its invoice is frozen.
    Closed,
    /// Not begun.
    Upcoming,
}

impl PeriodStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodStatus::Active => "active",
            PeriodStatus::Ended => "ended",
            PeriodStatus::Closed => "closed",
            PeriodStatus::Upcoming => "upcoming",
        }
    }
}

/// One metric of a summary.
#[derive(Debug, Clone)]
pub struct MetricSummary {
    pub metric: MetricKey,
    /// The plan's limit, before top-ups (`None`: unlimited).
    pub base_limit: Option<u64>,
    pub totals: MetricTotals,
}

/// The highest alert that stands on a metric, with the metric's label on the period's
/// plan and where usage stands now.
#[derive(Debug, Clone)]
pub struct AlertSummary {
    pub label: String,
    pub alert: Alert,
    /// Where the metric stands now: usage and effective limit.
    pub now: (u64, Option<u64>),
}

/// What a brand-period comes to.
#[derive(Debug, Clone)]
pub struct PeriodSummary {
    pub brand: BrandId,
    pub period: PeriodKey,
    pub status: PeriodStatus,
    /// The plan the period is billed on.
    pub plan: Arc<PlanDefinition>,
    /// Plan quotas in plan order, then metrics without a quota that saw usage.
    pub metrics: Vec<MetricSummary>,
    pub base: Money,
    pub overage: Money,
    /// Per metric, the highest threshold that stands (crossed, not resolved), newest
    /// first. Reading never adds any.
    pub alerts: Vec<AlertSummary>,
}

/// A summary with the point of its stream it stands at (replayed as of a cutoff, or
/// served from the read models).
#[derive(Debug, Clone)]
pub struct AsOfSummary {
    pub summary: PeriodSummary,
    /// The last event of the stream folded in (0: the period had no event yet).
    pub sequence: u64,
}

impl Ledger {
    /// The period of `period`, or the current one.
    pub fn period_or_now(&self, period: Option<PeriodKey>) -> PeriodKey {
        period.unwrap_or_else(|| PeriodKey::containing(self.engine.now()))
    }

    /// The summary of a brand-period, holding every write this process acknowledged
    /// on it. An unregistered brand is [`QueryError::UnknownBrand`].
    pub async fn summary(
        &self,
        brand: BrandId,
        period: PeriodKey,
    ) -> Result<PeriodSummary, QueryError> {
        let models = self.projector.period(&brand, period).await?;
        let (plan, registered_at) = self.plan_of(&brand, period, models.as_deref()).await?;
        Ok(self.summarize(brand, period, (plan, registered_at), models.as_deref()))
    }

    /// [`Ledger::summary`] with the last sequence of the stream it holds (0: the period
    /// had no event yet), so a live client can tell whether it missed anything.
    pub async fn summary_sequenced(
        &self,
        brand: BrandId,
        period: PeriodKey,
    ) -> Result<AsOfSummary, QueryError> {
        let models = self.projector.period(&brand, period).await?;
        let basis = self.plan_of(&brand, period, models.as_deref()).await?;
        let sequence = models.as_ref().map_or(0, |m| m.sequence);
        Ok(AsOfSummary {
            summary: self.summarize(brand, period, basis, models.as_deref()),
            sequence,
        })
    }

    /// Usage per metric: the plan's metrics at 0 unless used, and every metric used.
    pub async fn current(
        &self,
        brand: BrandId,
        period: PeriodKey,
    ) -> Result<BTreeMap<MetricKey, u64>, QueryError> {
        let models = self.projector.period(&brand, period).await?;
        let (plan, _) = self.plan_of(&brand, period, models.as_deref()).await?;
        let mut usage: BTreeMap<MetricKey, u64> =
            plan.quotas.iter().map(|q| (q.metric.clone(), 0)).collect();
        if let Some(models) = &models {
            usage.extend(models.quotas.iter().map(|(m, q)| (m.clone(), q.current)));
        }
        Ok(usage)
    }

    /// The summary as it stood at `cutoff` of the stream, replayed from the log (an
    /// auditor's view, never the read models).
    pub async fn summary_as_of(
        &self,
        brand: BrandId,
        period: PeriodKey,
        cutoff: Cutoff,
    ) -> Result<AsOfSummary, QueryError> {
        let stream = period_stream_id(&brand, period);
        let records = self
            .stores
            .projections
            .stream_records(UsagePeriodAggregate::TYPE, &stream)
            .await?;
        let models = as_of(&records, &brand, period, cutoff)
            .map_err(|e| QueryError::Corrupt(format!("replay of {stream}: {e}")))?;
        let basis = self.plan_of(&brand, period, models.as_ref()).await?;
        let sequence = models.as_ref().map_or(0, |m| m.sequence);
        Ok(AsOfSummary {
            summary: self.summarize(brand, period, basis, models.as_ref()),
            sequence,
        })
    }

    /// The plan a period is summarized on: the one its events snapshotted, or for a
    /// period without events (or rows stored before the plan was kept) the brand's
    /// plan today. The registry is read only then, and says whether the brand exists
    /// and since when (the instant comes with the plan only when the registry was read).
    async fn plan_of(
        &self,
        brand: &BrandId,
        period: PeriodKey,
        models: Option<&PeriodModels>,
    ) -> Result<(Arc<PlanDefinition>, Option<DateTime<Utc>>), QueryError> {
        if let Some(plan) = models.and_then(|m| m.cost.as_ref()?.plan.clone()) {
            return Ok((plan, None));
        }
        let registry = self.engine.brand_state(brand.clone()).await?;
        registry
            .and_then(|b| Some((Arc::new(b.plan_for(period)?.clone()), b.registered_at)))
            .ok_or_else(|| QueryError::UnknownBrand(brand.clone()))
    }

    fn summarize(
        &self,
        brand: BrandId,
        period: PeriodKey,
        (plan, registered_at): (Arc<PlanDefinition>, Option<DateTime<Utc>>),
        models: Option<&PeriodModels>,
    ) -> PeriodSummary {
        let empty = PeriodQuotas::new();
        let quotas = models.map_or(&empty, |m| &m.quotas);
        let mut keys: Vec<&MetricKey> = plan.quotas.iter().map(|q| &q.metric).collect();
        keys.extend(quotas.keys().filter(|m| plan.quota(m).is_none()));
        let metrics = keys
            .into_iter()
            .map(|m| metric_summary(&plan, quotas, m))
            .collect();
        let alerts = models.map_or_else(Vec::new, |m| highest_alerts(&plan, m));
        let cost = models.and_then(|m| m.cost.as_ref());
        let closed = cost.is_some_and(|c| c.invoiced);
        let (base, overage) = match cost {
            Some(c) => cost_now(c),
            None => (
                self.base_without_events(&plan, period, registered_at),
                Money::ZERO,
            ),
        };
        PeriodSummary {
            brand,
            period,
            status: status_of(period, closed, self.engine.now()),
            plan,
            metrics,
            base,
            overage,
            alerts,
        }
    }
}

/// Per metric, the highest threshold that stands, newest first.
fn highest_alerts(plan: &PlanDefinition, models: &PeriodModels) -> Vec<AlertSummary> {
    let mut highest: BTreeMap<&MetricKey, &Alert> = BTreeMap::new();
    for a in &models.alerts {
        let slot = highest.entry(&a.metric).or_insert(a);
        if a.threshold > slot.threshold {
            *slot = a;
        }
    }
    let mut alerts: Vec<AlertSummary> = highest
        .into_values()
        .map(|a| {
            let now = models
                .quotas
                .get(&a.metric)
                .map_or((a.current, Some(a.effective_limit)), |q| {
                    (q.current, q.effective_limit)
                });
            AlertSummary {
                label: plan
                    .quota(&a.metric)
                    .map_or_else(|| a.metric.to_string(), |q| q.label.clone()),
                alert: a.clone(),
                now,
            }
        })
        .collect();
    alerts.sort_by_key(|a| std::cmp::Reverse(a.alert.sequence));
    alerts
}

/// What a period with events comes to now: its base, and its overage as the metrics
/// stand (their `overageCost` sum). Once invoiced that is the invoice's overage plus the
/// adjustments made after it (late usage within the grace, corrections), so the summary,
/// finance's brand line and the invoice with its adjustments agree to the cent.
fn cost_now(c: &ledger_projections::CostEstimate) -> (Money, Money) {
    (c.base, c.overage + c.adjustment)
}

impl Ledger {
    /// The base price a period without events will be invoiced: the plan's, unless the
    /// brand never had the period (it ended before the registration) or the period
    /// has not begun (nothing may be billed for it yet, and the plan may change first).
    fn base_without_events(
        &self,
        plan: &PlanDefinition,
        period: PeriodKey,
        registered_at: Option<DateTime<Utc>>,
    ) -> Money {
        let before_registration = registered_at.is_some_and(|r| period.end() <= r);
        let not_begun = self.engine.now() < period.start();
        match before_registration || not_begun {
            true => Money::ZERO,
            false => plan.base_price_cents,
        }
    }
}

fn metric_summary(plan: &PlanDefinition, quotas: &PeriodQuotas, m: &MetricKey) -> MetricSummary {
    match quotas.get(m) {
        Some(q) => MetricSummary {
            metric: m.clone(),
            base_limit: q.base_limit,
            totals: MetricTotals {
                current: q.current,
                billable: q.billable,
                effective_limit: q.effective_limit,
                overage_units: q.overage_units,
                overage_cost: q.overage_cost,
                held: q.reserved,
            },
        },
        None => {
            let base = plan.quota(m).map(|q| q.limit);
            MetricSummary {
                metric: m.clone(),
                base_limit: base,
                totals: MetricTotals {
                    current: 0,
                    billable: 0,
                    effective_limit: base,
                    overage_units: 0,
                    overage_cost: Money::ZERO,
                    held: 0,
                },
            }
        }
    }
}

fn status_of(period: PeriodKey, closed: bool, now: DateTime<Utc>) -> PeriodStatus {
    match () {
        _ if closed => PeriodStatus::Closed,
        _ if period.contains(now) => PeriodStatus::Active,
        _ if now >= period.end() => PeriodStatus::Ended,
        _ => PeriodStatus::Upcoming,
    }
}
