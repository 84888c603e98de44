//! Period close: `POST /periods/{period}/close` freezes the invoice of every registered
//! brand for a period that has ended (see `ledger::close`). Admin only. Each brand's
//! result is answered beside the others', its failure as the problem a single close
//! would answer.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ledger_aggregates::period::{Invoice, InvoiceLine};
use ledger_aggregates::{BrandId, Currency, MetricKey, Money, PeriodKey, PlanId};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{ApiPath, Caller};
use super::schema::{BrandIdSchema, MetricKeySchema, PeriodKeySchema, PlanIdSchema};
use super::views::CostView;
use super::{AppState, API_PREFIX};
use crate::ledger::close::{BrandClosing, Closing};

pub use crate::ledger::close::CLOSE_BRANDS_IN_FLIGHT_MAX;

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
    #[schema(value_type = MetricKeySchema)]
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
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PlanIdSchema)]
    pub plan_id: PlanId,
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
    /// The sum of `baseLines`.
    pub base: i64,
    /// One line per plan in force during the period, its base price prorated by the
    /// time it was in force (half up to a cent).
    pub base_lines: Vec<BaseLineView>,
    pub overage: i64,
    pub total: i64,
    /// One line per metric with overage, in metric order.
    pub lines: Vec<InvoiceLineView>,
}

/// A plan and the part of the period it was billed for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BaseLineView {
    #[schema(value_type = PlanIdSchema)]
    pub plan_id: PlanId,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub amount: i64,
}

impl InvoiceView {
    fn new(brand_id: BrandId, invoice: Invoice) -> Self {
        InvoiceView {
            brand_id,
            plan_id: invoice.plan_id,
            currency: invoice.currency,
            base: invoice.base.minor(),
            base_lines: invoice
                .base_lines
                .into_iter()
                .map(|l| BaseLineView {
                    plan_id: l.plan_id,
                    from: l.from,
                    to: l.to,
                    amount: l.amount.minor(),
                })
                .collect(),
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
    #[schema(value_type = PeriodKeySchema)]
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

/// Close an ended period for every registered brand.
///
/// Status: 201 when this call froze at least one invoice, 200 when it appended nothing
/// (every brand already closed or skipped). When some brands failed, the same body is
/// answered with 503 if every failure is the store being unavailable, else 500: the
/// brands listed as closed stay closed, and a retry finishes the rest.
#[utoipa::path(post, path = "/api/v1/usage-billing/periods/{period}/close", tag = "admin",
    params(("period" = PeriodKeySchema, Path, description = "`YYYY-MM`, a period that has ended")),
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
    let results = s
        .ledger
        .close_period(period, caller.0.subject.as_str())
        .await?;
    let answer = report(period, results);
    Ok((status_of(&answer), Json(answer)).into_response())
}

fn report(period: PeriodKey, results: Vec<BrandClosing>) -> CloseAnswer {
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
                let e = ApiError::from(e);
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
