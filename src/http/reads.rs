//! Reads: the summary (seed shape), current usage, usage history and the audit trail
//! of a period's events.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ledger_aggregates::period::Severity;
use ledger_aggregates::{BrandId, MetricKey, PeriodKey, PlanDefinition};
use ledger_replay::Cutoff;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Problem};
use super::extract::{ApiPath, ApiQuery, Caller};
use super::schema::{
    BrandIdSchema, MetricKeySchema, PageLimitSchema, PeriodKeySchema, SequenceSchema,
};
use super::views::{alert_message, event_id, unit_of, AlertView, CostView, MetricView};
use super::{AppState, API_PREFIX};
use crate::ledger::summary::PeriodSummary;

/// Items of one history or audit page when the caller does not say.
pub const PAGE_ITEMS_DEFAULT: u32 = 100;
/// Items of one history or audit page at most: a page stays well under a megabyte.
pub const PAGE_ITEMS_MAX: u32 = 1_000;
pub use crate::ledger::history::HISTORY_SCAN_EVENTS_MAX;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/summary"), get(own_summary))
        .route(
            &format!("{API_PREFIX}/summary/{{brand}}"),
            get(brand_summary),
        )
        .route(
            &format!("{API_PREFIX}/brands/{{brand}}/periods/{{period}}/summary"),
            get(period_summary),
        )
        .route(&format!("{API_PREFIX}/current/{{brand}}"), get(current))
        .route(&format!("{API_PREFIX}/history/{{brand}}"), get(history))
        .route(
            &format!("{API_PREFIX}/brands/{{brand}}/periods/{{period}}/alerts"),
            get(alerts),
        )
        .route(
            &format!("{API_PREFIX}/brands/{{brand}}/periods/{{period}}/events"),
            get(audit_events),
        )
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    /// `YYYY-MM`; the current period when absent.
    #[param(value_type = PeriodKeySchema, required = false)]
    pub period: Option<PeriodKey>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryAnswer {
    /// The plan the period is billed on.
    #[schema(value_type = Object)]
    #[serde(serialize_with = "shared_plan")]
    pub plan: Arc<PlanDefinition>,
    pub summary: Summary,
}

/// Bytes reserved for a summary's JSON before it is written: a summary with its plan is a
/// few KiB, which axum's `Json` (starting at 128 bytes) reaches only after regrowing the
/// buffer several times, the most read answer paying for it on every request.
pub const SUMMARY_ANSWER_BYTES_RESERVED: usize = 8 * 1024;

impl axum::response::IntoResponse for SummaryAnswer {
    fn into_response(self) -> axum::response::Response {
        let mut body = Vec::with_capacity(SUMMARY_ANSWER_BYTES_RESERVED);
        match serde_json::to_writer(&mut body, &self) {
            Ok(()) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(e) => ApiError::Internal(format!("serializing a summary: {e}")).into_response(),
        }
    }
}

/// The plan itself: summaries share their period's plan rather than copy it.
pub(super) fn shared_plan<S: serde::Serializer>(
    plan: &Arc<PlanDefinition>,
    s: S,
) -> Result<S::Ok, S::Error> {
    plan.as_ref().serialize(s)
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    pub period: PeriodView,
    pub metrics: Vec<MetricView>,
    pub estimated_cost: CostView,
    /// Per metric, the highest threshold alert that stands (crossed, not resolved),
    /// newest first. Reading never adds any; `…/periods/{period}/alerts` has them all.
    pub alerts: Vec<AlertView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeriodView {
    #[schema(value_type = PeriodKeySchema)]
    pub key: PeriodKey,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `active` (now is in it), `ended` (over, not closed), `closed` (invoice frozen)
    /// or `upcoming`.
    pub status: &'static str,
}

/// The summary of the brand the credentials stand for.
#[utoipa::path(get, path = "/api/v1/usage-billing/summary", tag = "reads", params(PeriodQuery),
    responses((status = 200, body = SummaryAnswer),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "service credentials, or credentials that stand for no single brand (an admin's)"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "the brand is not registered, or the credential may not see it")),
    security(("bearer" = [])))]
pub(crate) async fn own_summary(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<SummaryAnswer, ApiError> {
    // A well-formed request these credentials cannot make: 403, as for a role's route.
    let brand = caller.0.own_brand().cloned().ok_or_else(|| {
        ApiError::Forbidden(
            "these credentials stand for no single brand; use /summary/{brandId}".to_owned(),
        )
    })?;
    caller.read(&brand)?;
    summary(&s, brand, q.period).await
}

/// The seed's usage summary of a brand for a period.
#[utoipa::path(get, path = "/api/v1/usage-billing/summary/{brandId}", tag = "reads",
    params(("brandId" = BrandIdSchema, Path), PeriodQuery),
    responses((status = 200, body = SummaryAnswer), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = [])))]
pub(crate) async fn brand_summary(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<SummaryAnswer, ApiError> {
    caller.read(&brand)?;
    summary(&s, brand, q.period).await
}

pub(crate) async fn summary(
    s: &AppState,
    brand: BrandId,
    period: Option<PeriodKey>,
) -> Result<SummaryAnswer, ApiError> {
    let period = s.ledger.period_or_now(period);
    let summary = s.ledger.summary(brand, period).await?;
    Ok(summary_answer(s, summary))
}

/// The wire shape of a summary (also the live feed's `summary`).
pub(crate) fn summary_answer(s: &AppState, summary: PeriodSummary) -> SummaryAnswer {
    let catalog = s.ledger.engine.catalog();
    let PeriodSummary {
        brand,
        period,
        status,
        plan,
        metrics,
        base,
        overage,
        alerts,
    } = summary;
    SummaryAnswer {
        summary: Summary {
            brand_id: brand,
            period: PeriodView {
                key: period,
                start: period.start(),
                end: period.end(),
                status: status.as_str(),
            },
            metrics: metrics
                .iter()
                .map(|m| MetricView::new(catalog, &m.metric, m.base_limit, &m.totals))
                .collect(),
            estimated_cost: CostView::new(base, overage),
            alerts: alerts
                .iter()
                .map(|a| {
                    let alert = &a.alert;
                    let key = (alert.threshold, alert.severity);
                    AlertView::new(&alert.metric, &a.label, key, a.now, alert.at)
                })
                .collect(),
        },
        plan,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(rename_all = "camelCase", parameter_in = Query)]
pub struct AsOfQuery {
    /// The summary as it stood at this point of the period's stream: a sequence
    /// (`42`: after its 42nd event) or an RFC 3339 instant (after the last event
    /// recorded by then). Absent: now, from the read models.
    #[param(value_type = String, required = false, example = "2026-11-20T12:00:00Z")]
    pub as_of: Option<String>,
}

/// Where an as-of summary stands in its stream.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AsOfView {
    /// The cutoff as asked.
    pub requested: String,
    /// The last event of the stream folded in (0: the period had no event yet).
    pub sequence: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeriodSummaryAnswer {
    #[serde(flatten)]
    pub answer: SummaryAnswer,
    /// Present when the summary was replayed as of a point of the stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<AsOfView>,
}

/// A brand-period's summary, now or as it stood at a point of its stream (replayed
/// from the log, never from the read models: an auditor's view).
#[utoipa::path(get, path = "/api/v1/usage-billing/brands/{brandId}/periods/{period}/summary",
    tag = "reads", params(("brandId" = BrandIdSchema, Path), ("period" = PeriodKeySchema, Path), AsOfQuery),
    responses((status = 200, body = PeriodSummaryAnswer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = [])))]
pub(crate) async fn period_summary(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath((brand, period)): ApiPath<(BrandId, PeriodKey)>,
    ApiQuery(q): ApiQuery<AsOfQuery>,
) -> Result<Json<PeriodSummaryAnswer>, ApiError> {
    caller.read(&brand)?;
    let Some(requested) = q.as_of else {
        let answer = summary(&s, brand, Some(period)).await?;
        return Ok(Json(PeriodSummaryAnswer {
            answer,
            as_of: None,
        }));
    };
    let cutoff: Cutoff = requested.parse().map_err(|e: ledger_replay::CutoffError| {
        ApiError::invalid("invalid-as-of", e.to_string())
    })?;
    let replayed = s.ledger.summary_as_of(brand, period, cutoff).await?;
    Ok(Json(PeriodSummaryAnswer {
        answer: summary_answer(&s, replayed.summary),
        as_of: Some(AsOfView {
            requested,
            sequence: replayed.sequence,
        }),
    }))
}

/// The original's `{brandId, usage: {metric: number}}`, with the period.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    #[schema(value_type = BTreeMap<String, u64>)]
    pub usage: BTreeMap<MetricKey, u64>,
}

/// Current usage per metric (`{brandId, usage: {metric: number}}`).
#[utoipa::path(get, path = "/api/v1/usage-billing/current/{brandId}", tag = "reads",
    params(("brandId" = BrandIdSchema, Path), PeriodQuery),
    responses((status = 200, body = CurrentAnswer), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = [])))]
pub(crate) async fn current(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<CurrentAnswer>, ApiError> {
    caller.read(&brand)?;
    let period = s.ledger.period_or_now(q.period);
    let usage = s.ledger.current(brand.clone(), period).await?;
    Ok(Json(CurrentAnswer {
        brand_id: brand,
        period,
        usage,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only this metric.
    #[param(value_type = MetricKeySchema, required = false)]
    pub metric: Option<MetricKey>,
    /// Entries, 1 to 1,000 (default 100).
    #[param(value_type = PageLimitSchema, required = false)]
    pub limit: Option<u32>,
    /// `YYYY-MM`; the current period when absent.
    #[param(value_type = PeriodKeySchema, required = false)]
    pub period: Option<PeriodKey>,
    /// Only entries older than this sequence: the previous page's `nextBefore`.
    #[param(value_type = SequenceSchema, required = false)]
    pub before: Option<u64>,
}

/// One change of usage, newest first: the original's `UsageMetric` row, plus how the
/// change came about.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub id: String,
    pub sequence: u64,
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    /// `recorded`, `adjusted` (signed correction), `gauge_set` (absolute level) or
    /// `top_up` (units credited to the effective limit).
    pub kind: &'static str,
    /// Units recorded, the signed delta, the new level, or the units credited.
    pub value: i64,
    pub unit: String,
    pub timestamp: DateTime<Utc>,
    /// Who made a correction or a top-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Why a correction was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The purchase or grant a top-up comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    pub entries: Vec<HistoryEntry>,
    /// True when the scan limit stopped the search before `limit` entries were found.
    pub truncated: bool,
    /// Pass as `before` for the next, older page; absent once the period's first event
    /// was read. A page is never empty while older entries exist.
    pub next_before: Option<u64>,
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(PAGE_ITEMS_DEFAULT) {
        n @ 1..=PAGE_ITEMS_MAX => Ok(n),
        n => Err(ApiError::invalid(
            "invalid-limit",
            format!("limit must be 1 to {PAGE_ITEMS_MAX}; got {n}"),
        )),
    }
}

/// Usage changes of a period, newest first, paged backwards with `before`.
#[utoipa::path(get, path = "/api/v1/usage-billing/history/{brandId}", tag = "reads",
    params(("brandId" = BrandIdSchema, Path), HistoryQuery),
    responses((status = 200, body = HistoryAnswer), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "limit out of range")),
    security(("bearer" = [])))]
pub(crate) async fn history(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryAnswer>, ApiError> {
    caller.read(&brand)?;
    let limit = page_limit(q.limit)? as usize;
    let period = s.ledger.period_or_now(q.period);
    let page = s
        .ledger
        .history(&brand, period, q.metric.as_ref(), q.before, limit)
        .await?;
    let catalog = s.ledger.engine.catalog();
    let entries = page
        .entries
        .into_iter()
        .map(|c| HistoryEntry {
            id: event_id(&brand, period, c.sequence),
            sequence: c.sequence,
            brand_id: brand.clone(),
            unit: unit_of(catalog, &c.metric),
            metric: c.metric,
            kind: c.kind.as_str(),
            value: c.value,
            timestamp: c.at,
            actor: c.actor,
            reason: c.reason,
            reference: c.reference,
            metadata: serde_json::from_str(&c.metadata).unwrap_or(serde_json::Value::Null),
        })
        .collect();
    Ok(Json(HistoryAnswer {
        brand_id: brand,
        period,
        entries,
        truncated: page.truncated,
        next_before: page.next_before,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// Entries, 1 to 1,000 (default 100).
    #[param(value_type = PageLimitSchema, required = false)]
    pub limit: Option<u32>,
    /// Only entries older than this sequence: the previous page's `nextBefore`.
    #[param(value_type = SequenceSchema, required = false)]
    pub before: Option<u64>,
}

/// One crossing or resolution of a threshold.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertEntry {
    pub id: String,
    pub sequence: u64,
    /// `crossed` or `resolved`.
    pub kind: &'static str,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    pub threshold: u8,
    #[schema(value_type = String, example = "critical")]
    pub severity: Severity,
    /// current / effective limit × 100 at that moment, two decimals, not capped.
    pub percentage: f64,
    /// `"<label> à <pct>% du quota"`, the percentage rounded half up.
    pub message: String,
    pub current: u64,
    /// `null` when a plan without a quota for the metric resolved it.
    pub effective_limit: Option<u64>,
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertsAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    /// Newest first.
    pub entries: Vec<AlertEntry>,
    /// True when the scan limit stopped the search before `limit` entries were found.
    pub truncated: bool,
    /// Pass as `before` for the next, older page; absent once the period's first event
    /// was read.
    pub next_before: Option<u64>,
}

/// The alert timeline of a period: every threshold crossing and resolution, newest
/// first, read from the log and paged backwards with `before`.
#[utoipa::path(get, path = "/api/v1/usage-billing/brands/{brandId}/periods/{period}/alerts", tag = "reads",
    params(("brandId" = BrandIdSchema, Path), ("period" = PeriodKeySchema, Path), AlertsQuery),
    responses((status = 200, body = AlertsAnswer), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "limit out of range")),
    security(("bearer" = [])))]
pub(crate) async fn alerts(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath((brand, period)): ApiPath<(BrandId, PeriodKey)>,
    ApiQuery(q): ApiQuery<AlertsQuery>,
) -> Result<Json<AlertsAnswer>, ApiError> {
    caller.read(&brand)?;
    let limit = page_limit(q.limit)? as usize;
    let page = s
        .ledger
        .alert_timeline(&brand, period, q.before, limit)
        .await?;
    // Labels from the catalog: an alert's metric keeps its label across plans.
    let catalog = s.ledger.engine.catalog();
    let label = |m: &MetricKey| {
        catalog
            .metric(m)
            .map_or_else(|| m.to_string(), |d| d.label.clone())
    };
    let entries = page
        .entries
        .into_iter()
        .map(|c| AlertEntry {
            id: event_id(&brand, period, c.sequence),
            sequence: c.sequence,
            kind: c.kind.as_str(),
            message: alert_message(&label(&c.metric), c.current, c.effective_limit),
            metric: c.metric,
            threshold: c.threshold,
            severity: c.severity,
            percentage: c.percentage.to_f64().unwrap_or_default(),
            current: c.current,
            effective_limit: c.effective_limit,
            timestamp: c.at,
        })
        .collect();
    Ok(Json(AlertsAnswer {
        brand_id: brand,
        period,
        entries,
        truncated: page.truncated,
        next_before: page.next_before,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(rename_all = "camelCase", parameter_in = Query)]
pub struct AuditQuery {
    /// Only events after this sequence: the previous page's `nextAfterSequence`.
    #[param(value_type = SequenceSchema, required = false)]
    pub after_sequence: Option<u64>,
    /// Events, 1 to 1,000 (default 100).
    #[param(value_type = PageLimitSchema, required = false)]
    pub limit: Option<u32>,
}

/// One stored event, as an auditor reads it: the payload exactly as stored.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub sequence: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    pub events: Vec<AuditEvent>,
    /// Pass as `afterSequence` for the next page; absent on the last page.
    pub next_after_sequence: Option<u64>,
}

/// The audit trail: a period's events exactly as stored, in sequence order.
#[utoipa::path(get, path = "/api/v1/usage-billing/brands/{brandId}/periods/{period}/events", tag = "reads",
    params(("brandId" = BrandIdSchema, Path), ("period" = PeriodKeySchema, Path), AuditQuery),
    responses((status = 200, body = AuditAnswer), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "limit out of range")),
    security(("bearer" = [])))]
pub(crate) async fn audit_events(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath((brand, period)): ApiPath<(BrandId, PeriodKey)>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditAnswer>, ApiError> {
    caller.read(&brand)?;
    let limit = page_limit(q.limit)?;
    let page = s
        .ledger
        .audit_trail(&brand, period, q.after_sequence.unwrap_or(0), limit)
        .await?;
    let events: Vec<AuditEvent> = page
        .events
        .into_iter()
        .map(|r| {
            Ok(AuditEvent {
                sequence: r.sequence as u64,
                payload: serde_json::from_str(&r.payload)
                    .map_err(|e| ApiError::Internal(format!("stored payload is not JSON: {e}")))?,
                metadata: serde_json::from_str(&r.metadata).unwrap_or(serde_json::Value::Null),
                event_type: r.event_type,
                version: r.event_version,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(AuditAnswer {
        brand_id: brand,
        period,
        next_after_sequence: page.next_after,
        events,
    }))
}
