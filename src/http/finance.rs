//! Finance reconciliation: `GET /finance/overages?period=YYYY-MM`, every overage line
//! of a period (the charges of its invoices, and the adjustments late usage made to
//! closed ones) with their totals, beside each brand's cost. Admin only.
//!
//! The answer is read from the stored read models once the projector has caught up,
//! never recomputed: the lines come from `OverageLedger` and the brands from
//! `PeriodCost`, both folded from the same events, so `totals.charged` is the sum of
//! the brands' `overage` and `totals.adjustments` the sum of their `adjustment` (see the
//! module doc of `ledger_projections::overage`).
//!
//! A brand's `total` is what it owes for the period now: its invoice (`invoiceTotal`,
//! frozen by the close) plus the adjustments made after it. That is the summary's
//! `estimatedCost.total`, closed or not, so the two agree to the cent.
//!
//! JSON by default; `Accept: text/csv` gives the lines as an RFC 4180 CSV file for a
//! spreadsheet or an accounting import. An `Accept` that allows neither is a 406
//! ([RFC 9110 §12.5.1](https://www.rfc-editor.org/rfc/rfc9110#section-12.5.1)).

use std::cmp::Reverse;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ledger_aggregates::{BrandId, Currency, MetricKey, PeriodKey, PlanId};
use ledger_projections::{CostEstimate, FinanceLine, LineKind, OverageTotals, ReadModels};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Problem};
use super::extract::{ApiQuery, Caller};
use super::schema::{BrandIdSchema, MetricKeySchema, PeriodKeySchema, PlanIdSchema};
use super::{AppState, API_PREFIX};

/// The CSV's header row: one column per field of a JSON line, amounts in cents.
const CSV_HEADER: [&str; 6] = [
    "brand_id",
    "metric",
    "kind",
    "units_over",
    "rate",
    "amount_cents",
];

pub fn router() -> Router<AppState> {
    Router::new().route(&format!("{API_PREFIX}/finance/overages"), get(overages))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FinanceQuery {
    /// `YYYY-MM`, required: finance reconciles one period at a time. Optional here
    /// only so that a missing period is answered 422 `period-required` (the engine's
    /// kind for a close without a period), rather than the 400 of a query that does
    /// not parse.
    #[param(required = true, value_type = PeriodKeySchema)]
    pub period: Option<PeriodKey>,
}

/// One overage line, as finance bills it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinanceLineView {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    /// `charge`: on the period's invoice (or to be, while open). `adjustment`: the
    /// change since a closed invoice (late usage within the grace, corrections).
    #[schema(value_type = String, example = "charge")]
    pub kind: LineKind,
    /// Units over the effective limit; for an adjustment, the change since the close
    /// (negative when a correction lowered it).
    pub units_over: i64,
    /// Cents per unit, a JSON number (fractional cents allowed), as in the catalog and
    /// the invoices.
    #[serde(with = "ledger_aggregates::money::rate_serde")]
    #[schema(value_type = Option<f64>)]
    pub rate: Option<Decimal>,
    /// In cents, rounded once per metric on the period total; negative: a credit.
    pub amount: i64,
}

/// Sums of the lines, in cents.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinanceTotalsView {
    /// Σ `charge` lines = Σ brands' `overage`.
    pub charged: i64,
    /// Σ `adjustment` lines = Σ brands' `adjustment`.
    pub adjustments: i64,
    /// `charged + adjustments`.
    pub total: i64,
}

/// One brand's cost of the period, in cents.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinanceBrandView {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    /// The plan the period is billed on.
    #[schema(value_type = PlanIdSchema)]
    pub plan_id: PlanId,
    pub base: i64,
    /// Σ of the brand's `charge` lines; once invoiced, the invoice's overage.
    pub overage: i64,
    /// Σ of the brand's `adjustment` lines; always 0 before the close.
    pub adjustment: i64,
    /// `base + overage`: once invoiced, the invoice's total, which never moves.
    pub invoice_total: i64,
    /// `invoiceTotal + adjustment`: what the brand owes for the period now, equal to
    /// its summary's `estimatedCost.total`.
    pub total: i64,
    /// The period is closed for this brand: `base`, `overage` and `total` are frozen.
    pub invoiced: bool,
}

/// Sums of `brands`, in cents.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FinanceBrandTotalsView {
    pub base: i64,
    pub overage: i64,
    pub adjustment: i64,
    pub invoice_total: i64,
    pub total: i64,
}

/// A period's overage lines and every brand's cost.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OveragesAnswer {
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
    /// By brand, then metric, a charge before an adjustment.
    pub lines: Vec<FinanceLineView>,
    pub totals: FinanceTotalsView,
    /// Every brand with events in the period, in brand order.
    pub brands: Vec<FinanceBrandView>,
    pub brand_totals: FinanceBrandTotalsView,
}

/// What the caller accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// The overage lines of a period for finance, as JSON or (with `Accept: text/csv`) CSV.
///
/// A period without events answers empty lines and zero totals.
#[utoipa::path(get, path = "/api/v1/usage-billing/finance/overages", tag = "finance",
    params(FinanceQuery),
    responses(
        (status = 200, description = "the period's lines, totals and brands", content(
            (OveragesAnswer = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "malformed period"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 406, body = Problem, content_type = "application/problem+json", description = "`Accept` allows neither JSON nor CSV"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "period-required"),
    ),
    security(("bearer" = [])))]
pub(crate) async fn overages(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<FinanceQuery>,
) -> Result<Response, ApiError> {
    caller.admin()?;
    let period = q.period.ok_or_else(|| {
        ApiError::invalid("period-required", "`period` is required: ?period=YYYY-MM")
    })?;
    let format = negotiate(&headers)?;
    let answer = reconcile(&s, period).await?;
    Ok(match format {
        Format::Json => Json(answer).into_response(),
        Format::Csv => csv_response(&answer),
    })
}

/// Every stored row of the period, restored into one `ReadModels`, once the projector
/// holds every acknowledged write. That is one row per brand with events in the
/// period, all of them: the totals need every brand, as the close does.
async fn reconcile(s: &AppState, period: PeriodKey) -> Result<OveragesAnswer, ApiError> {
    let models = s.ledger.models_in_period(period).await?;
    answer_of(s.ledger.engine.catalog().currency, period, &models)
}

/// The answer the models give for `period`. `currency` is the catalog's: every brand's
/// cost must be in it, since amounts of two currencies cannot be summed.
fn answer_of(
    currency: Currency,
    period: PeriodKey,
    models: &ReadModels,
) -> Result<OveragesAnswer, ApiError> {
    let costs: Vec<(&BrandId, &CostEstimate)> = models.period_cost.in_period(period).collect();
    if let Some((brand, c)) = costs.iter().find(|(_, c)| c.currency != currency) {
        return Err(ApiError::Internal(format!(
            "{brand} {period} is billed in {} but the catalog in {currency}",
            c.currency
        )));
    }
    let brands: Vec<FinanceBrandView> = costs.iter().map(|(b, c)| brand_view(b, c)).collect();
    let sum = |f: fn(&FinanceBrandView) -> i64| brands.iter().map(f).sum::<i64>();
    let brand_totals = FinanceBrandTotalsView {
        base: sum(|b| b.base),
        overage: sum(|b| b.overage),
        adjustment: sum(|b| b.adjustment),
        invoice_total: sum(|b| b.invoice_total),
        total: sum(|b| b.total),
    };
    Ok(OveragesAnswer {
        period,
        currency,
        lines: models
            .overage_ledger
            .lines(period)
            .into_iter()
            .map(line_view)
            .collect(),
        totals: totals_view(models.overage_ledger.totals(period)),
        brands,
        brand_totals,
    })
}

fn line_view(l: FinanceLine) -> FinanceLineView {
    FinanceLineView {
        brand_id: l.brand,
        metric: l.metric,
        kind: l.kind,
        units_over: l.units,
        rate: l.rate,
        amount: l.amount.minor(),
    }
}

fn totals_view(t: OverageTotals) -> FinanceTotalsView {
    FinanceTotalsView {
        charged: t.charged.minor(),
        adjustments: t.adjustments.minor(),
        total: t.total.minor(),
    }
}

fn brand_view(brand: &BrandId, c: &CostEstimate) -> FinanceBrandView {
    FinanceBrandView {
        brand_id: brand.clone(),
        plan_id: c.plan_id.clone(),
        base: c.base.minor(),
        overage: c.overage.minor(),
        adjustment: c.adjustment.minor(),
        invoice_total: c.total.minor(),
        total: (c.total + c.adjustment).minor(),
        invoiced: c.invoiced,
    }
}

// --- Content negotiation ----------------------------------------------------------------

/// The formats we answer in, our preference first (it breaks ties).
const OFFERED: [(Format, &str, &str); 2] = [
    (Format::Json, "application", "json"),
    (Format::Csv, "text", "csv"),
];

/// The format `Accept` prefers: JSON when it is absent or empty. Each format takes the
/// quality of the most specific range that matches it (RFC 9110 §12.5.1), and the best
/// quality wins, then the most specific match (`text/csv, */*` asks for CSV), then our
/// preference. A quality of 0 refuses a format.
fn negotiate(headers: &HeaderMap) -> Result<Format, ApiError> {
    let values = headers.get_all(header::ACCEPT);
    if values
        .iter()
        .all(|v| v.as_bytes().iter().all(u8::is_ascii_whitespace))
    {
        return Ok(Format::Json);
    }
    let mut ranges = Vec::new();
    for value in values {
        let text = value.to_str().map_err(|_| not_acceptable())?;
        ranges.extend(text.split(',').filter_map(media_range));
    }
    OFFERED
        .iter()
        .enumerate()
        .filter_map(|(preference, (format, kind, sub))| {
            let (specificity, quality) = ranges
                .iter()
                .filter_map(|r| r.matches(kind, sub).map(|s| (s, r.quality)))
                .max_by_key(|(s, _)| *s)?;
            (quality > 0).then_some(((quality, specificity, Reverse(preference)), *format))
        })
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, format)| format)
        .ok_or_else(not_acceptable)
}

fn not_acceptable() -> ApiError {
    ApiError::NotAcceptable(
        "this route answers `application/json` or `text/csv`; the Accept header allows neither"
            .to_owned(),
    )
}

/// One media range of `Accept`, lower-cased: `type/subtype` and its quality.
struct MediaRange {
    kind: String,
    sub: String,
    /// Thousandths: `q=0.5` is 500, no `q` is 1000.
    quality: u16,
}

impl MediaRange {
    /// How specifically this range names `kind/sub` (2 exact, 1 `kind/*`, 0 `*/*`), or
    /// `None` when it does not.
    fn matches(&self, kind: &str, sub: &str) -> Option<u8> {
        match (self.kind.as_str(), self.sub.as_str()) {
            ("*", "*") => Some(0),
            (k, "*") if k == kind => Some(1),
            (k, s) if k == kind && s == sub => Some(2),
            _ => None,
        }
    }
}

/// Parse one comma-separated element of `Accept`; one that does not parse is ignored,
/// as if the client had not sent it.
fn media_range(element: &str) -> Option<MediaRange> {
    let mut parts = element.split(';');
    let (kind, sub) = parts.next()?.trim().split_once('/')?;
    let (kind, sub) = (kind.trim(), sub.trim());
    if kind.is_empty() || sub.is_empty() || (kind == "*" && sub != "*") {
        return None;
    }
    let mut quality = 1000;
    for param in parts {
        if let Some((name, value)) = param.split_once('=') {
            if name.trim().eq_ignore_ascii_case("q") {
                quality = qvalue(value.trim())?;
            }
        }
    }
    Some(MediaRange {
        kind: kind.to_ascii_lowercase(),
        sub: sub.to_ascii_lowercase(),
        quality,
    })
}

/// An RFC 9110 `qvalue` (`0` to `1`, at most three decimals) in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

// --- CSV ----------------------------------------------------------------------------------

fn csv_response(answer: &OveragesAnswer) -> Response {
    let disposition = format!("attachment; filename=\"overages-{}.csv\"", answer.period);
    let disposition = HeaderValue::from_str(&disposition)
        .expect("a period key is ASCII digits and a dash: a valid header value");
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        csv_of(answer),
    )
        .into_response()
}

/// The lines as RFC 4180 CSV (CRLF line ends): the header, one row per line, and a
/// `TOTAL` row with `totals.total`.
fn csv_of(answer: &OveragesAnswer) -> String {
    let mut out = String::new();
    csv_row(&mut out, &CSV_HEADER);
    for l in &answer.lines {
        let kind = match l.kind {
            LineKind::Charge => "charge",
            LineKind::Adjustment => "adjustment",
        };
        // The exact decimal, never the float of the JSON: `0.5`, `100`.
        let rate = l
            .rate
            .map(|r| r.normalize().to_string())
            .unwrap_or_default();
        csv_row(
            &mut out,
            &[
                l.brand_id.as_str(),
                l.metric.as_str(),
                kind,
                &l.units_over.to_string(),
                &rate,
                &l.amount.to_string(),
            ],
        );
    }
    let total = answer.totals.total.to_string();
    csv_row(&mut out, &["TOTAL", "", "", "", "", &total]);
    out
}

fn csv_row(out: &mut String, fields: &[&str]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, field);
    }
    out.push_str("\r\n");
}

/// A field quoted when it holds a comma, a quote or a line break, its quotes doubled
/// (RFC 4180 §2.6–2.7). Brand ids and metric keys never do today; the export stays
/// valid if that changes.
fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&str]) -> Result<Format, ApiError> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        negotiate(&headers)
    }

    #[test]
    fn accept_picks_the_best_quality_then_the_most_specific_range() {
        assert_eq!(accept(&[]).unwrap(), Format::Json);
        assert_eq!(accept(&[""]).unwrap(), Format::Json);
        assert_eq!(accept(&["*/*"]).unwrap(), Format::Json);
        assert_eq!(accept(&["application/json"]).unwrap(), Format::Json);
        assert_eq!(accept(&["text/csv"]).unwrap(), Format::Csv);
        assert_eq!(accept(&["TEXT/CSV; charset=utf-8"]).unwrap(), Format::Csv);
        assert_eq!(accept(&["text/*"]).unwrap(), Format::Csv);
        assert_eq!(accept(&["text/csv, */*"]).unwrap(), Format::Csv);
        assert_eq!(
            accept(&["text/csv;q=0.5, application/json"]).unwrap(),
            Format::Json
        );
        assert_eq!(accept(&["*/*;q=0.1", "text/csv"]).unwrap(), Format::Csv);
        assert_eq!(accept(&["*/*, application/json;q=0"]).unwrap(), Format::Csv);
    }

    #[test]
    fn accept_that_allows_neither_format_is_refused() {
        for refused in [
            &["application/xml"][..],
            &["text/html, application/xml;q=0.9"],
            &["text/csv;q=0, application/json;q=0.000"],
            &["*/*;q=0"],
            &["not a media type"],
            &["text/csv;q=2"],
        ] {
            assert!(
                matches!(accept(refused), Err(ApiError::NotAcceptable(_))),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn qvalues_parse_to_thousandths() {
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.125"), Some(125));
        assert_eq!(qvalue("0"), Some(0));
        for bad in ["1.5", "0.1234", "2", "-0", ".5", "0.x", ""] {
            assert_eq!(qvalue(bad), None, "{bad}");
        }
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        let mut out = String::new();
        csv_row(&mut out, &["plain", "a,b", "say \"hi\"", "two\nlines", ""]);
        assert_eq!(out, "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\r\n");
    }
}
