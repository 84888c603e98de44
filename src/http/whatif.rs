//! What-if routes, on the original's paths and field names (reference §2.8–2.12, §3):
//! `POST /topups/simulate`, `GET /compare-plans/{brandId}`, `GET /projections/{brandId}`,
//! `POST /estimate`, `GET /bill/current/{brandId}`. Each reads the current period and
//! writes nothing, so the POSTs answer 200 (the original's 201 was its framework's
//! default, not a creation). Amounts are integer cents; percentages, days and rates are
//! JSON numbers for display only.
//!
//! What differs from the original, on purpose: every limit is the effective one (plan
//! limit + the period's top-ups); an estimate's cost is marginal, apart from the
//! cumulative overage and the total; a 0 % tax rate is 0 %; the recommended plan is never
//! the brand's own. The rules are in `ledger_projections::whatif`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use ledger_aggregates::{BrandId, MetricKey, OveragePolicy, PeriodKey};
use ledger_projections::whatif::{
    self as calc, Bill, Comparison, Estimate, PlanComparison, Projection, Recommendation,
    RecommendationKind, TopUpSimulation, Velocity, WhatIfError,
};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::schema::{
    BrandIdSchema, CountrySchema, MetricKeySchema, PeriodKeySchema, ProjectionDaysSchema,
    QuantitySchema, SimulatedUnitsSchema,
};
use super::views::{PolicyView, UNLIMITED_WIRE_UNITS};
use super::{AppState, API_PREFIX};
use crate::engine::echo;
use crate::ledger::whatif::{Answer, WhatIfQueryError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/topups/simulate"), post(simulate))
        .route(
            &format!("{API_PREFIX}/compare-plans/{{brand}}"),
            get(compare_plans),
        )
        .route(
            &format!("{API_PREFIX}/projections/{{brand}}"),
            get(projections),
        )
        .route(&format!("{API_PREFIX}/estimate"), post(estimate))
        .route(
            &format!("{API_PREFIX}/bill/current/{{brand}}"),
            get(current_bill),
        )
}

/// A refused question is a 422 naming what is wrong; a failed read keeps its own answer.
impl From<WhatIfQueryError> for ApiError {
    fn from(e: WhatIfQueryError) -> Self {
        match e {
            WhatIfQueryError::Query(e) => e.into(),
            WhatIfQueryError::Refused(e) => refused(e),
        }
    }
}

fn refused(e: WhatIfError) -> ApiError {
    let kind = match &e {
        WhatIfError::UnknownMetric(_) => "unknown-metric",
        WhatIfError::MetricNotInPlan { .. } => "metric-not-in-plan",
        WhatIfError::OutOfRange { .. } => "out-of-range",
        WhatIfError::UnknownCountry(_) => "unknown-country",
    };
    ApiError::invalid(kind, e.to_string())
}

/// Display figures (percentages, days, rates) as JSON numbers; never money.
fn number(d: Decimal) -> f64 {
    d.to_f64().unwrap_or_default()
}

fn policy(p: Option<OveragePolicy>) -> PolicyView {
    match p {
        Some(OveragePolicy::Block) => PolicyView::Block,
        Some(OveragePolicy::Charge) => PolicyView::Charge,
        None => PolicyView::None,
    }
}

// ---------------------------------------------------------------------------------
// POST /topups/simulate
// ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimulateBody {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    /// Units to simulate, 0 (the default, as in the original) to 100,000,000.
    #[serde(default)]
    #[schema(value_type = SimulatedUnitsSchema)]
    pub units: u64,
}

/// The original's simulation shape (reference §2.8), limits with the period's top-ups.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimulationAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    pub unit: String,
    /// The plan's limit, before top-ups.
    pub base_limit: u64,
    /// Units the period's top-ups already add.
    pub bonus_units: u64,
    pub effective_limit: u64,
    /// `effectiveLimit + units`.
    pub simulated_limit: u64,
    pub current: u64,
    /// Of the effective limit, two decimals, not capped.
    pub current_percentage: f64,
    pub simulated_percentage: f64,
    /// At the pace of the period's whole elapsed days; negative once past the limit,
    /// `null` without usage.
    pub original_days_to_limit: Option<f64>,
    pub simulated_days_to_limit: Option<f64>,
    pub regained_days: Option<f64>,
    /// What the units would cost as overage at the plan's rate; `null` for `block`.
    pub estimated_cost_cents: Option<i64>,
    pub overage_policy: PolicyView,
}

/// Simulate a top-up: what `units` more would do to the limit, the percentage and the
/// days left at the period's pace. Writes nothing.
#[utoipa::path(post, path = "/api/v1/usage-billing/topups/simulate", tag = "what-if",
    request_body = SimulateBody,
    responses((status = 200, body = SimulationAnswer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "unknown metric, metric not in the plan, units out of range"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = [])))]
pub(crate) async fn simulate(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SimulateBody>,
) -> Result<Json<SimulationAnswer>, ApiError> {
    caller.read(&body.brand_id)?;
    let Answer { period, value } = s
        .ledger
        .simulate_top_up(body.brand_id.clone(), &body.metric, body.units)
        .await?;
    Ok(Json(simulation_answer(body.brand_id, period, value)))
}

fn simulation_answer(brand: BrandId, period: PeriodKey, s: TopUpSimulation) -> SimulationAnswer {
    SimulationAnswer {
        brand_id: brand,
        period,
        metric: s.metric,
        unit: s.unit,
        base_limit: s.base_limit,
        bonus_units: s.bonus_units,
        effective_limit: s.effective_limit,
        simulated_limit: s.simulated_limit,
        current: s.current,
        current_percentage: number(s.current_percentage),
        simulated_percentage: number(s.simulated_percentage),
        original_days_to_limit: s.original_days_to_limit.map(number),
        simulated_days_to_limit: s.simulated_days_to_limit.map(number),
        regained_days: s.regained_days.map(number),
        estimated_cost_cents: s.estimated_cost.map(|m| m.minor()),
        overage_policy: policy(Some(s.overage_policy)),
    }
}

// ---------------------------------------------------------------------------------
// GET /compare-plans/{brandId}
// ---------------------------------------------------------------------------------

/// One plan priced on the period's usage (the original's `PlanComparison` fields).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanComparisonView {
    #[schema(value_type = String)]
    pub plan: String,
    pub name: String,
    pub base_price: i64,
    /// Overage of `charge` quotas against the plan's limits plus the period's top-ups.
    pub estimated_overage: i64,
    pub total: i64,
    /// The original's name for what is the extra cost over the cheapest plan (never a
    /// saving); kept for compatibility, equal to `extraCostVsCheapest`.
    pub savings: i64,
    /// `total` minus the cheapest plan's total.
    pub extra_cost_vs_cheapest: i64,
    /// The plan the period is billed on.
    pub current: bool,
    /// Metrics above a `block` limit of this plan: it would have refused part of the usage.
    #[schema(value_type = Vec<String>)]
    pub blocked_metrics: Vec<MetricKey>,
    /// The original's wording: best value, acceptable, significantly more expensive.
    pub recommendation: String,
}

/// The plan to move to, never the brand's own.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecommendedPlanView {
    /// `not-needed` (no metric at 85 % nor in overage), `upgrade` (the first higher tier
    /// with every metric below 90 %), `upgrade-still-tense` (every higher tier would be
    /// tense: the top tier) or `top-tier` (the brand is on it: no plan to offer).
    #[schema(example = "upgrade")]
    pub status: &'static str,
    /// `null` unless an upgrade is recommended.
    pub plan: Option<String>,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompareAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    /// The plan the period is billed on.
    pub plan: String,
    /// Every catalog plan as if it had run the whole period, cheapest first. The
    /// original answered this list bare; it is a field here so the recommendation can
    /// stand beside it.
    pub comparisons: Vec<PlanComparisonView>,
    pub recommended_plan: RecommendedPlanView,
}

/// The catalog's plans priced on the current period's usage and top-ups, cheapest
/// first, and the recommended plan.
#[utoipa::path(get, path = "/api/v1/usage-billing/compare-plans/{brandId}", tag = "what-if",
    params(("brandId" = BrandIdSchema, Path)),
    responses((status = 200, body = CompareAnswer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = [])))]
pub(crate) async fn compare_plans(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
) -> Result<Json<CompareAnswer>, ApiError> {
    caller.read(&brand)?;
    let Answer { period, value } = s.ledger.compare_plans(brand.clone()).await?;
    let Comparison {
        plan,
        plans,
        recommendation,
    } = value;
    Ok(Json(CompareAnswer {
        brand_id: brand,
        period,
        plan: plan.to_string(),
        comparisons: plans.into_iter().map(comparison_view).collect(),
        recommended_plan: recommendation_view(recommendation),
    }))
}

fn comparison_view(c: PlanComparison) -> PlanComparisonView {
    PlanComparisonView {
        plan: c.plan.to_string(),
        name: c.name,
        base_price: c.base_price.minor(),
        estimated_overage: c.estimated_overage.minor(),
        total: c.total.minor(),
        savings: c.extra_cost_vs_cheapest.minor(),
        extra_cost_vs_cheapest: c.extra_cost_vs_cheapest.minor(),
        current: c.current,
        blocked_metrics: c.blocked_metrics,
        recommendation: c.verdict.text().to_owned(),
    }
}

fn recommendation_view(r: Recommendation) -> RecommendedPlanView {
    RecommendedPlanView {
        status: match r.kind {
            RecommendationKind::NotNeeded => "not-needed",
            RecommendationKind::Upgrade => "upgrade",
            RecommendationKind::UpgradeStillTense => "upgrade-still-tense",
            RecommendationKind::TopTier => "top-tier",
        },
        plan: r.plan.map(|p| p.to_string()),
        message: r.message,
    }
}

// ---------------------------------------------------------------------------------
// GET /projections/{brandId}?days=
// ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectionQuery {
    /// The month length the original's figures assume, 1 to 366; 30 when absent. The
    /// per-metric velocity always runs to the period's own end.
    #[param(value_type = ProjectionDaysSchema, required = false)]
    pub days: Option<u32>,
}

/// One metric's pace over the period's whole elapsed UTC days.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VelocityView {
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    pub label: String,
    pub unit: String,
    pub current: u64,
    /// The effective limit (plan limit + top-ups).
    pub limit: u64,
    /// Units per day; 0 for a gauge (a level stands until changed).
    pub daily_rate: f64,
    /// At this pace by the period's end (a gauge: its peak level).
    pub projected_units: u64,
    pub projected_percentage: f64,
    /// `null` when the limit is never reached at this pace; negative once past it.
    pub days_to_limit: Option<f64>,
    /// `ok` below 90 %, `warning` from 90 %, `critical` from 105 % projected.
    #[schema(example = "warning")]
    pub status: &'static str,
    /// "Stable", "Sous tension" or "Action immédiate".
    #[schema(example = "Sous tension")]
    pub status_label: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    pub days: u32,
    /// Whole UTC days of the period gone by, at least 1.
    pub elapsed_days: u32,
    pub period_days: u32,
    /// Overage cost so far per elapsed day, in cents (the original divided by the whole
    /// month's days).
    pub current_daily: i64,
    /// The period's base plus `projectedOverage`.
    pub projected_monthly: i64,
    /// Overage of `charge` quotas for `days` days at the period's pace.
    pub projected_overage: i64,
    pub recommendations: Vec<String>,
    /// Per quota, highest projected percentage first.
    pub velocity: Vec<VelocityView>,
}

/// The current period's pace: the original's projection figures over `days` days, and
/// per metric where the pace takes it by the period's end.
#[utoipa::path(get, path = "/api/v1/usage-billing/projections/{brandId}", tag = "what-if",
    params(("brandId" = BrandIdSchema, Path), ProjectionQuery),
    responses((status = 200, body = ProjectionAnswer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "days out of range"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = [])))]
pub(crate) async fn projections(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
    ApiQuery(q): ApiQuery<ProjectionQuery>,
) -> Result<Json<ProjectionAnswer>, ApiError> {
    caller.read(&brand)?;
    let days = q.days.unwrap_or(calc::PROJECTION_DAYS_DEFAULT);
    let Answer { period, value } = s.ledger.project(brand.clone(), days).await?;
    Ok(Json(projection_answer(brand, period, value)))
}

fn projection_answer(brand: BrandId, period: PeriodKey, p: Projection) -> ProjectionAnswer {
    ProjectionAnswer {
        brand_id: brand,
        period,
        days: p.days,
        elapsed_days: p.elapsed_days,
        period_days: p.period_days,
        current_daily: p.current_daily.minor(),
        projected_monthly: p.projected_monthly.minor(),
        projected_overage: p.projected_overage.minor(),
        recommendations: p.recommendations,
        velocity: p.velocity.into_iter().map(velocity_view).collect(),
    }
}

fn velocity_view(v: Velocity) -> VelocityView {
    VelocityView {
        metric: v.metric,
        label: v.label,
        unit: v.unit,
        current: v.current,
        limit: v.effective_limit,
        daily_rate: number(v.daily_rate),
        projected_units: v.projected_units,
        projected_percentage: number(v.projected_percentage),
        days_to_limit: v.days_to_limit.map(number),
        status: match v.status {
            calc::VelocityStatus::Ok => "ok",
            calc::VelocityStatus::Warning => "warning",
            calc::VelocityStatus::Critical => "critical",
        },
        status_label: v.status.label(),
    }
}

// ---------------------------------------------------------------------------------
// POST /estimate
// ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EstimateBody {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    /// Units more, 1 (the default) to 1,000,000,000; for a gauge, how much it would rise.
    #[schema(value_type = Option<QuantitySchema>)]
    pub quantity: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EstimateAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    pub quantity: u64,
    pub current: u64,
    /// The plan's limit; 999999 when unlimited (as the original).
    pub limit: u64,
    /// Plan limit + top-ups; 999999 when unlimited.
    pub effective_limit: u64,
    pub unlimited: bool,
    pub overage_policy: PolicyView,
    /// False when a `block` quota would refuse the units (holds count).
    pub allowed: bool,
    /// Usage after would stand above the effective limit.
    pub will_exceed: bool,
    /// Units of `quantity` above the effective limit that are not overage already.
    pub overage_amount: u64,
    /// The marginal cost of these units alone, in cents (the original answered the
    /// cumulative overage here).
    pub estimated_cost: i64,
    /// The metric's overage cost so far.
    pub current_overage_cost: i64,
    /// The metric's overage cost with these units.
    pub cumulative_overage_cost: i64,
    /// The period's total so far, before tax (the summary's `estimatedCost.total`).
    pub current_total: i64,
    /// `currentTotal + estimatedCost`, before tax: the original added an untaxed cost to
    /// a taxed total that already held the overage.
    pub total_after: i64,
}

/// What `quantity` more units of a metric would cost this period: the marginal cost,
/// apart from the cumulative overage and the total. Writes nothing.
#[utoipa::path(post, path = "/api/v1/usage-billing/estimate", tag = "what-if",
    request_body = EstimateBody,
    responses((status = 200, body = EstimateAnswer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "unknown metric, quantity out of range"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = [])))]
pub(crate) async fn estimate(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<EstimateBody>,
) -> Result<Json<EstimateAnswer>, ApiError> {
    caller.read(&body.brand_id)?;
    let quantity = body.quantity.unwrap_or(1);
    let Answer { period, value } = s
        .ledger
        .estimate(body.brand_id.clone(), &body.metric, quantity)
        .await?;
    Ok(Json(estimate_answer(body.brand_id, period, value)))
}

fn estimate_answer(brand: BrandId, period: PeriodKey, e: Estimate) -> EstimateAnswer {
    let units = |v: Option<u64>| v.unwrap_or(UNLIMITED_WIRE_UNITS);
    EstimateAnswer {
        brand_id: brand,
        period,
        metric: e.metric,
        quantity: e.quantity,
        current: e.current,
        limit: units(e.base_limit),
        effective_limit: units(e.effective_limit),
        unlimited: e.effective_limit.is_none(),
        overage_policy: policy(e.overage_policy),
        allowed: e.allowed,
        will_exceed: e.will_exceed,
        overage_amount: e.new_overage_units,
        estimated_cost: e.marginal_cost.minor(),
        current_overage_cost: e.overage_cost_before.minor(),
        cumulative_overage_cost: e.overage_cost_after.minor(),
        current_total: e.total_before.minor(),
        total_after: e.total_after.minor(),
    }
}

// ---------------------------------------------------------------------------------
// GET /bill/current/{brandId}?country=
// ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BillQuery {
    /// ISO 3166 alpha-2 country whose VAT applies (FR, BE, DE, ES, IT, UK or GB, US);
    /// FR when absent. The ledger keeps no country per brand, so the caller says it.
    #[param(value_type = CountrySchema, required = false)]
    pub country: Option<String>,
}

/// One quota of the bill (the original's breakdown line, plus `baseLimit`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillLineView {
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    /// Billable units (a gauge's peak level).
    pub quantity: u64,
    pub base_limit: u64,
    /// The effective limit: plan limit + top-ups (the original used the plan's alone).
    pub limit: u64,
    pub overage: u64,
    /// Cents per overage unit; `null` for `block`.
    pub unit_price: Option<f64>,
    pub cost: i64,
}

/// The original's `CalculatedBill` (reference §2.11), amounts in cents.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    pub plan: String,
    pub currency: String,
    pub country: String,
    /// 0.2 for 20 %; a 0 rate is 0.
    pub tax_rate: f64,
    /// The period's base price (prorated over plan changes), as the summary shows it.
    pub base_price: i64,
    /// Always empty: plans have no per-unit price besides overage.
    #[schema(value_type = Object)]
    pub usage_costs: BTreeMap<String, i64>,
    pub total_usage_cost: i64,
    /// Per metric with an overage cost.
    #[schema(value_type = Object)]
    pub overage_costs: BTreeMap<String, i64>,
    /// The summary's `estimatedCost.overage`, to the cent.
    pub total_overage_cost: i64,
    /// `basePrice + totalUsageCost + totalOverageCost`: the summary's `estimatedCost.total`.
    pub subtotal: i64,
    /// `subtotal × taxRate`, half up.
    pub tax: i64,
    pub total: i64,
    pub breakdown: Vec<BillLineView>,
}

/// The current period's bill so far with tax, on the effective limits.
#[utoipa::path(get, path = "/api/v1/usage-billing/bill/current/{brandId}", tag = "what-if",
    params(("brandId" = BrandIdSchema, Path), BillQuery),
    responses((status = 200, body = BillAnswer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "no tax rate for the country"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = [])))]
pub(crate) async fn current_bill(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
    ApiQuery(q): ApiQuery<BillQuery>,
) -> Result<Json<BillAnswer>, ApiError> {
    caller.read(&brand)?;
    let country = q.country.map_or_else(
        || calc::DEFAULT_TAX_COUNTRY.to_owned(),
        |c| c.to_ascii_uppercase(),
    );
    if calc::tax_rate(&country).is_none() {
        // Refused before any read, quoting at most the echo limit of the input.
        return Err(refused(WhatIfError::UnknownCountry(
            echo(&country).into_owned(),
        )));
    }
    let bill = s.ledger.current_bill(brand.clone(), &country).await?;
    Ok(Json(bill_answer(brand, bill.value)))
}

fn bill_answer(brand: BrandId, b: Bill) -> BillAnswer {
    let by_name = |m: BTreeMap<MetricKey, ledger_aggregates::Money>| {
        m.into_iter()
            .map(|(k, v)| (k.to_string(), v.minor()))
            .collect()
    };
    BillAnswer {
        brand_id: brand,
        period: b.period,
        plan: b.plan.to_string(),
        currency: b.currency.to_string(),
        country: b.country,
        tax_rate: number(b.tax_rate),
        base_price: b.base_price.minor(),
        usage_costs: by_name(b.usage_costs),
        total_usage_cost: b.total_usage_cost.minor(),
        overage_costs: by_name(b.overage_costs),
        total_overage_cost: b.total_overage_cost.minor(),
        subtotal: b.subtotal.minor(),
        tax: b.tax.minor(),
        total: b.total.minor(),
        breakdown: b
            .breakdown
            .into_iter()
            .map(|l| BillLineView {
                metric: l.metric,
                quantity: l.quantity,
                base_limit: l.base_limit,
                limit: l.limit,
                overage: l.overage,
                unit_price: l.unit_price.map(number),
                cost: l.cost.minor(),
            })
            .collect(),
    }
}
