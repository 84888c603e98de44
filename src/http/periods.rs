//! Period close: `POST /periods/{period}/close` freezes the invoice of every registered
//! brand for a period that has ended. Admin only.
//!
//! Each brand is closed by its own `Close` command through the engine, many at once so
//! they share group commits. A brand's failure is reported beside the others' invoices,
//! never instead of them, and a retry finishes the job: a period already closed is
//! reported as such and nothing is appended for it again.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use ledger_aggregates::brand::BRAND_TYPE;
use ledger_aggregates::ids::period_stream_id;
use ledger_aggregates::period::{Invoice, InvoiceLine, USAGE_PERIOD_TYPE};
use ledger_aggregates::{
    BrandEvent, BrandId, Currency, LedgerError, LedgerEvent, MetricKey, Money, PeriodCommand,
    PeriodKey, PlanDefinition, PlanId,
};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{ApiPath, Caller};
use super::views::CostView;
use super::{AppState, API_PREFIX};
use crate::engine::{EngineError, Metadata, PeriodRequest};

/// Brands being closed at once. Enough to fill the engine's group commits many times
/// over (1,000 brands close in about 16 rounds), few enough that a close of every brand
/// never holds more than this many registry reads, connections and queue slots.
pub const CLOSE_BRANDS_IN_FLIGHT_MAX: usize = 64;

/// Registry events read per round trip. A brand's registry holds its plan changes, a
/// handful in practice: one page almost always suffices; longer ones are paged.
const REGISTRY_PAGE_EVENTS_MAX: i64 = 100;

pub fn router() -> Router<AppState> {
    Router::new().route(
        &format!("{API_PREFIX}/periods/{{period}}/close"),
        post(close_period),
    )
}

/// One invoice line: the overage of one metric, in cents.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceLineView {
    #[schema(value_type = String)]
    pub metric: MetricKey,
    pub billable_units: u64,
    /// Plan limit plus the period's top-ups.
    pub effective_limit: u64,
    pub overage_units: u64,
    /// Cents per unit, a JSON number (fractional cents allowed), as in the catalog.
    #[serde(with = "ledger_aggregates::money::rate_serde")]
    #[schema(value_type = Option<f64>)]
    pub rate: Option<Decimal>,
    /// overageUnits × rate, rounded once to the cent.
    pub amount: i64,
}

/// The frozen invoice of one brand, as `PeriodClosed` carries it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceView {
    #[schema(value_type = String)]
    pub brand_id: BrandId,
    #[schema(value_type = String)]
    pub plan_id: PlanId,
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
    pub base: i64,
    pub overage: i64,
    pub total: i64,
    /// One line per metric with overage, in metric order.
    pub lines: Vec<InvoiceLineView>,
}

impl InvoiceView {
    fn new(brand_id: BrandId, invoice: Invoice) -> Self {
        InvoiceView {
            brand_id,
            plan_id: invoice.plan_id,
            currency: invoice.currency,
            base: invoice.base.minor(),
            overage: invoice.overage.minor(),
            total: invoice.total.minor(),
            lines: invoice.lines.into_iter().map(line_view).collect(),
        }
    }
}

fn line_view(l: InvoiceLine) -> InvoiceLineView {
    InvoiceLineView {
        metric: l.metric,
        billable_units: l.billable_units,
        effective_limit: l.effective_limit,
        overage_units: l.overage_units,
        rate: l.rate,
        amount: l.amount.minor(),
    }
}

/// A brand that could not be closed, with the problem a single close would answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloseFailure {
    /// The registry's stream id (a string: it may be the very thing that is corrupt).
    pub brand_id: String,
    pub problem: Problem,
}

/// What a close did, brand by brand (every list in brand order).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloseAnswer {
    #[schema(value_type = String, example = "2026-10")]
    pub period: PeriodKey,
    /// Invoices frozen by this call.
    pub closed: Vec<InvoiceView>,
    /// Brands whose period an earlier close froze: nothing was appended for them.
    #[schema(value_type = Vec<String>)]
    pub already_closed: Vec<BrandId>,
    /// Brands registered after the period ended, with no usage in it: nothing to invoice.
    #[schema(value_type = Vec<String>)]
    pub skipped: Vec<BrandId>,
    /// Brands left open by an error; a retry closes them.
    pub failed: Vec<CloseFailure>,
    /// Sums of `closed` (this call's invoices), in cents; `usage` is always 0.
    pub totals: CostView,
}

/// What closing one brand came to.
enum Closing {
    Closed(Invoice),
    AlreadyClosed,
    Skipped,
}

/// One brand's result, under its registry stream id.
type BrandResult = (String, Result<(BrandId, Closing), ApiError>);

/// Close an ended period for every registered brand.
///
/// Status: 201 when this call froze at least one invoice, 200 when it appended nothing
/// (every brand already closed or skipped). When some brands failed, the same body is
/// answered with 503 if every failure is the store being unavailable, else 500: the
/// brands listed as closed stay closed, and a retry finishes the rest.
#[utoipa::path(post, path = "/api/v1/usage-billing/periods/{period}/close", tag = "admin",
    params(("period" = String, Path, description = "`YYYY-MM`, a period that has ended")),
    responses(
        (status = 201, body = CloseAnswer, description = "at least one invoice frozen by this call"),
        (status = 200, body = CloseAnswer, description = "nothing appended: every brand already closed or skipped"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "malformed period"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "period-not-ended"),
        (status = 500, body = CloseAnswer, description = "some brands failed (see `failed`); the others are closed"),
        (status = 503, body = CloseAnswer, description = "some brands failed because the store was unavailable; retry"),
    ),
    security(("bearer" = [])))]
pub(crate) async fn close_period(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(period): ApiPath<PeriodKey>,
) -> Result<Response, ApiError> {
    caller.admin()?;
    // Refused once here, rather than by every brand's command one by one.
    s.engine.check_ended(period)?;
    let brands = s.log.stream_ids(BRAND_TYPE).await?;
    let actor = caller.0.subject.as_str();
    let mut results: Vec<BrandResult> = futures::stream::iter(brands)
        .map(|id| {
            let s = &s;
            async move {
                let result = close_brand(s, &id, period, actor).await;
                (id, result)
            }
        })
        .buffer_unordered(CLOSE_BRANDS_IN_FLIGHT_MAX)
        .collect()
        .await;
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let answer = report(period, results);
    Ok((status_of(&answer), Json(answer)).into_response())
}

/// Close one brand's period: open it on the plan the brand ended the period on if it
/// never was, then freeze its invoice.
async fn close_brand(
    s: &AppState,
    id: &str,
    period: PeriodKey,
    actor: &str,
) -> Result<(BrandId, Closing), ApiError> {
    let brand = BrandId::parse(id)
        .map_err(|e| ApiError::Internal(format!("brand registry stream {id:?}: {e}")))?;
    let plan_at_end = plan_at(s, &brand, period.end()).await?;
    // Registered only after the period ended: it owes nothing for it, unless it
    // reported late usage into it (within the grace), which must be invoiced.
    if plan_at_end.is_none() && !has_events(s, &brand, period).await? {
        return Ok((brand, Closing::Skipped));
    }
    let closing = s
        .engine
        .execute(PeriodRequest {
            brand: brand.clone(),
            period: Some(period),
            command: PeriodCommand::ClosePeriod {
                actor: actor.to_owned(),
                plan_at_end: plan_at_end.map(Box::new),
            },
            idempotency_key: None,
            metadata: Metadata::default(),
        })
        .await;
    let outcome = match closing {
        Ok(outcome) => outcome,
        Err(EngineError::Ledger(LedgerError::Closed(_))) => {
            return Ok((brand, Closing::AlreadyClosed))
        }
        Err(e) => return Err(e.into()),
    };
    outcome
        .events
        .into_iter()
        .find_map(|c| match c.event {
            LedgerEvent::PeriodClosed { invoice, .. } => Some(Closing::Closed(invoice)),
            _ => None,
        })
        .map(|closing| (brand, closing))
        .ok_or_else(|| ApiError::Internal(format!("closing {id} {period} appended no invoice")))
}

/// The plan `brand` was on when `end` came, from its registry events: `None` when it
/// registered at or after `end`. Read from the log because the registry aggregate keeps
/// only today's plan.
async fn plan_at(
    s: &AppState,
    brand: &BrandId,
    end: DateTime<Utc>,
) -> Result<Option<PlanDefinition>, ApiError> {
    let mut plan = None;
    let mut after = 0;
    loop {
        let page = s
            .log
            .read_stream(BRAND_TYPE, brand.as_str(), after, REGISTRY_PAGE_EVENTS_MAX)
            .await?;
        for stored in &page {
            let event: BrandEvent = serde_json::from_str(&stored.payload).map_err(|e| {
                ApiError::Internal(format!("registry event {brand}#{}: {e}", stored.sequence))
            })?;
            let (next, at) = match event {
                BrandEvent::BrandRegistered { plan, at, .. }
                | BrandEvent::PlanChanged { plan, at, .. } => (plan, at),
            };
            if at >= end {
                return Ok(plan);
            }
            plan = Some(next);
        }
        match page.last() {
            Some(last) if page.len() as i64 == REGISTRY_PAGE_EVENTS_MAX => after = last.sequence,
            _ => return Ok(plan),
        }
    }
}

/// Whether the brand's period stream holds any event: one primary-key probe.
async fn has_events(s: &AppState, brand: &BrandId, period: PeriodKey) -> Result<bool, ApiError> {
    let id = period_stream_id(brand, period);
    let version = s.log.stream_version(USAGE_PERIOD_TYPE, &id).await?;
    Ok(version > 0)
}

fn report(period: PeriodKey, results: Vec<BrandResult>) -> CloseAnswer {
    let mut answer = CloseAnswer {
        period,
        closed: Vec::new(),
        already_closed: Vec::new(),
        skipped: Vec::new(),
        failed: Vec::new(),
        totals: CostView::new(Money::ZERO, Money::ZERO),
    };
    let (mut base, mut overage) = (Money::ZERO, Money::ZERO);
    for (id, result) in results {
        match result {
            Ok((brand, Closing::Closed(invoice))) => {
                base = base + invoice.base;
                overage = overage + invoice.overage;
                answer.closed.push(InvoiceView::new(brand, invoice));
            }
            Ok((brand, Closing::AlreadyClosed)) => answer.already_closed.push(brand),
            Ok((brand, Closing::Skipped)) => answer.skipped.push(brand),
            Err(e) => {
                e.log();
                answer.failed.push(CloseFailure {
                    brand_id: id,
                    problem: e.problem(),
                });
            }
        }
    }
    answer.totals = CostView::new(base, overage);
    answer
}

/// 201 when something was appended, 200 when nothing was; with failures, 503 when all of
/// them are worth retrying as is (the store was unavailable), else 500.
fn status_of(answer: &CloseAnswer) -> StatusCode {
    let unavailable = StatusCode::SERVICE_UNAVAILABLE.as_u16();
    match () {
        _ if answer.failed.is_empty() && answer.closed.is_empty() => StatusCode::OK,
        _ if answer.failed.is_empty() => StatusCode::CREATED,
        _ if answer
            .failed
            .iter()
            .all(|f| f.problem.status == unavailable) =>
        {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
