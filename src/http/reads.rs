//! Reads: the summary (seed shape), current usage, usage history and the audit trail
//! of a period's events.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use ledger_aggregates::period::Crossing;
use ledger_aggregates::{
    BrandId, LedgerEvent, MetricKey, MetricTotals, Money, PeriodKey, PlanDefinition,
    UsagePeriodAggregate,
};
use ledger_projections::{PeriodModels, PeriodQuotas};
use ledger_replay::{as_of, Cutoff};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Problem};
use super::extract::{unknown_brand, ApiPath, ApiQuery, Caller};
use super::views::{event_id, unit_of, AlertView, CostView, MetricView};
use super::{AppState, API_PREFIX};
use crate::projector::{models_from_row, CATCH_UP_WAIT_MAX};
use crate::store::StoredEvent;

/// Items of one history or audit page when the caller does not say.
pub const PAGE_ITEMS_DEFAULT: u32 = 100;
/// Items of one history or audit page at most: a page stays well under a megabyte.
pub const PAGE_ITEMS_MAX: u32 = 1_000;
/// Events a history request reads back at most while filtering by metric. Beyond this,
/// the page is returned short with `truncated`: a read never scans a hot stream whole.
pub const HISTORY_SCAN_EVENTS_MAX: usize = 10_000;

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
            &format!("{API_PREFIX}/brands/{{brand}}/periods/{{period}}/events"),
            get(audit_events),
        )
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PeriodQuery {
    /// `YYYY-MM`; the current period when absent.
    #[param(value_type = Option<String>, example = "2026-11")]
    pub period: Option<PeriodKey>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryAnswer {
    /// The plan the period is billed on.
    #[schema(value_type = Object)]
    pub plan: PlanDefinition,
    pub summary: Summary,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    #[schema(value_type = String)]
    pub brand_id: BrandId,
    pub period: PeriodView,
    pub metrics: Vec<MetricView>,
    pub estimated_cost: CostView,
    /// Threshold crossings of the period, newest first. Reading never adds any.
    pub alerts: Vec<AlertView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeriodView {
    #[schema(value_type = String, example = "2026-11")]
    pub key: PeriodKey,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `active` (now is in it), `ended` (over, not closed), `closed` (invoice frozen)
    /// or `upcoming`.
    pub status: &'static str,
}

/// The summary of the brand the credentials stand for.
#[utoipa::path(get, path = "/api/v1/usage-billing/summary", tag = "reads", params(PeriodQuery),
    responses((status = 200, body = SummaryAnswer), (status = 400, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn own_summary(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<SummaryAnswer>, ApiError> {
    let brand = caller.0.own_brand().cloned().ok_or_else(|| {
        ApiError::BadRequest(
            "these credentials stand for no single brand; use /summary/{brandId}".to_owned(),
        )
    })?;
    caller.read(&brand)?;
    summary(&s, brand, q.period).await.map(Json)
}

/// The seed's usage summary of a brand for a period.
#[utoipa::path(get, path = "/api/v1/usage-billing/summary/{brandId}", tag = "reads",
    params(("brandId" = String, Path), PeriodQuery),
    responses((status = 200, body = SummaryAnswer), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn brand_summary(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<SummaryAnswer>, ApiError> {
    caller.read(&brand)?;
    summary(&s, brand, q.period).await.map(Json)
}

/// Routes that read the log directly only need the brand to exist (else a 404).
async fn registered(s: &AppState, brand: &BrandId) -> Result<(), ApiError> {
    match s.engine.brand_state(brand.clone()).await? {
        Some(_) => Ok(()),
        None => Err(unknown_brand(brand)),
    }
}

/// The plan a brand is on today. An unregistered brand is a 404.
async fn brand_plan(s: &AppState, brand: &BrandId) -> Result<PlanDefinition, ApiError> {
    let registry = s.engine.brand_state(brand.clone()).await?;
    registry
        .and_then(|b| b.plan)
        .ok_or_else(|| unknown_brand(brand))
}

/// The stored read models of a brand-period (`None` while it has no events), once the
/// projector holds every write acknowledged before this read; past
/// [`CATCH_UP_WAIT_MAX`] the models answer as they are, and the lag is logged.
pub(crate) async fn stored_period(
    s: &AppState,
    brand: &BrandId,
    period: PeriodKey,
) -> Result<Option<PeriodModels>, ApiError> {
    caught_up(s).await;
    let rows = s
        .projections
        .load_models(&[(brand.to_string(), period.to_string())])
        .await?;
    match rows.first() {
        Some(row) => Ok(Some(models_from_row(row)?.2)),
        None => Ok(None),
    }
}

/// Wait for the projector to hold every acknowledged write, bounded.
pub(crate) async fn caught_up(s: &AppState) {
    if !s.projector.catch_up(CATCH_UP_WAIT_MAX).await {
        tracing::warn!(status = ?s.projector.status(), "read models are behind the log");
    }
}

pub(crate) async fn summary(
    s: &AppState,
    brand: BrandId,
    period: Option<PeriodKey>,
) -> Result<SummaryAnswer, ApiError> {
    let period = period.unwrap_or_else(|| PeriodKey::containing(s.engine.now()));
    let plan = brand_plan(s, &brand).await?;
    let models = stored_period(s, &brand, period).await?;
    Ok(summary_of(s, brand, period, plan, models.as_ref()))
}

/// The summary a brand-period's read models give. `plan` is the brand's plan today,
/// shown while the period has no events; once it has, the plan it runs on is the one
/// its events name.
pub(crate) fn summary_of(
    s: &AppState,
    brand: BrandId,
    period: PeriodKey,
    today: PlanDefinition,
    models: Option<&PeriodModels>,
) -> SummaryAnswer {
    let now = s.engine.now();
    let plan = models
        .and_then(|m| m.cost.as_ref())
        .and_then(|c| s.engine.catalog().plan(&c.plan_id).cloned())
        .unwrap_or(today);
    let empty = PeriodQuotas::new();
    let quotas = models.map_or(&empty, |m| &m.quotas);
    // Plan quotas in catalog order, then metrics without a quota that saw usage.
    let mut keys: Vec<&MetricKey> = plan.quotas.iter().map(|q| &q.metric).collect();
    keys.extend(quotas.keys().filter(|m| plan.quota(m).is_none()));
    let metrics: Vec<MetricView> = keys
        .into_iter()
        .map(|m| {
            let (base, totals) = match quotas.get(m) {
                Some(q) => (
                    q.base_limit,
                    MetricTotals {
                        current: q.current,
                        billable: q.billable,
                        effective_limit: q.effective_limit,
                        overage_units: q.overage_units,
                        overage_cost: q.overage_cost,
                    },
                ),
                None => {
                    let base = plan.quota(m).map(|q| q.limit);
                    (
                        base,
                        MetricTotals {
                            current: 0,
                            billable: 0,
                            effective_limit: base,
                            overage_units: 0,
                            overage_cost: Money::ZERO,
                        },
                    )
                }
            };
            MetricView::new(s.engine.catalog(), m, base, &totals)
        })
        .collect();
    let label = |m: &MetricKey| {
        plan.quota(m)
            .map_or_else(|| m.to_string(), |q| q.label.clone())
    };
    // Newest first; the timeline is in log order.
    let alerts: Vec<AlertView> = models
        .map_or(&[][..], |m| &m.alerts[..])
        .iter()
        .rev()
        .map(|a| {
            let crossing = Crossing {
                threshold: a.threshold,
                severity: a.severity,
                percentage: a.percentage,
                at: a.at,
            };
            AlertView::new(&a.metric, &label(&a.metric), &crossing)
        })
        .collect();
    let cost = models.and_then(|m| m.cost.as_ref());
    let closed = cost.is_some_and(|c| c.invoiced);
    let status = match () {
        _ if closed => "closed",
        _ if period.contains(now) => "active",
        _ if now >= period.end() => "ended",
        _ => "upcoming",
    };
    let estimated_cost = match cost {
        Some(c) => CostView::new(c.base, c.overage),
        None => CostView::new(plan.base_price_cents, Money::ZERO),
    };
    SummaryAnswer {
        summary: Summary {
            brand_id: brand,
            period: PeriodView {
                key: period,
                start: period.start(),
                end: period.end(),
                status,
            },
            metrics,
            estimated_cost,
            alerts,
        },
        plan,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(rename_all = "camelCase")]
pub struct AsOfQuery {
    /// The summary as it stood at this point of the period's stream: a sequence
    /// (`42`: after its 42nd event) or an RFC 3339 instant (after the last event
    /// recorded by then). Absent: now, from the read models.
    #[param(value_type = Option<String>, example = "2026-11-20T12:00:00Z")]
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
    tag = "reads", params(("brandId" = String, Path), ("period" = String, Path), AsOfQuery),
    responses((status = 200, body = PeriodSummaryAnswer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")),
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
    let plan = brand_plan(&s, &brand).await?;
    let stream = ledger_aggregates::ids::period_stream_id(&brand, period);
    let records = s
        .projections
        .stream_records(UsagePeriodAggregate::TYPE, &stream)
        .await?;
    let models = as_of(&records, &brand, period, cutoff)
        .map_err(|e| ApiError::Internal(format!("replay of {stream}: {e}")))?;
    let sequence = models.as_ref().map_or(0, |m| m.sequence);
    Ok(Json(PeriodSummaryAnswer {
        answer: summary_of(&s, brand, period, plan, models.as_ref()),
        as_of: Some(AsOfView {
            requested,
            sequence,
        }),
    }))
}

/// The original's `{brandId, usage: {metric: number}}`, with the period.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentAnswer {
    #[schema(value_type = String)]
    pub brand_id: BrandId,
    #[schema(value_type = String)]
    pub period: PeriodKey,
    #[schema(value_type = BTreeMap<String, u64>)]
    pub usage: BTreeMap<MetricKey, u64>,
}

/// Current usage per metric (`{brandId, usage: {metric: number}}`).
#[utoipa::path(get, path = "/api/v1/usage-billing/current/{brandId}", tag = "reads",
    params(("brandId" = String, Path), PeriodQuery),
    responses((status = 200, body = CurrentAnswer), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn current(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<CurrentAnswer>, ApiError> {
    caller.read(&brand)?;
    let period = q
        .period
        .unwrap_or_else(|| PeriodKey::containing(s.engine.now()));
    let plan = brand_plan(&s, &brand).await?;
    let mut usage: BTreeMap<MetricKey, u64> =
        plan.quotas.iter().map(|q| (q.metric.clone(), 0)).collect();
    if let Some(models) = stored_period(&s, &brand, period).await? {
        usage.extend(models.quotas.iter().map(|(m, q)| (m.clone(), q.current)));
    }
    Ok(Json(CurrentAnswer {
        brand_id: brand,
        period,
        usage,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Only this metric.
    #[param(value_type = Option<String>)]
    pub metric: Option<MetricKey>,
    /// Entries, 1 to 1,000 (default 100).
    pub limit: Option<u32>,
    /// `YYYY-MM`; the current period when absent.
    #[param(value_type = Option<String>)]
    pub period: Option<PeriodKey>,
}

/// One change of usage, newest first: the original's `UsageMetric` row, plus how the
/// change came about.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub id: String,
    pub sequence: u64,
    #[schema(value_type = String)]
    pub brand_id: BrandId,
    #[schema(value_type = String)]
    pub metric: MetricKey,
    /// `recorded`, `adjusted` (signed correction) or `gauge_set` (absolute level).
    pub kind: &'static str,
    /// Units recorded, the signed delta, or the new level.
    pub value: i64,
    pub unit: String,
    pub timestamp: DateTime<Utc>,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryAnswer {
    #[schema(value_type = String)]
    pub brand_id: BrandId,
    #[schema(value_type = String)]
    pub period: PeriodKey,
    pub entries: Vec<HistoryEntry>,
    /// True when the scan limit stopped the search before `limit` entries were found.
    pub truncated: bool,
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

/// Usage changes of a period, newest first.
#[utoipa::path(get, path = "/api/v1/usage-billing/history/{brandId}", tag = "reads",
    params(("brandId" = String, Path), HistoryQuery),
    responses((status = 200, body = HistoryAnswer), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn history(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryAnswer>, ApiError> {
    caller.read(&brand)?;
    let limit = page_limit(q.limit)? as usize;
    let period = q
        .period
        .unwrap_or_else(|| PeriodKey::containing(s.engine.now()));
    registered(&s, &brand).await?;
    let id = ledger_aggregates::ids::period_stream_id(&brand, period);
    let mut entries = Vec::new();
    let mut before = i64::MAX;
    let mut scanned = 0;
    while entries.len() < limit && scanned < HISTORY_SCAN_EVENTS_MAX {
        let page = s
            .log
            .read_stream_back(UsagePeriodAggregate::TYPE, &id, before, limit as i64)
            .await?;
        let Some(last) = page.last() else { break };
        before = last.sequence;
        scanned += page.len();
        for stored in &page {
            if let Some(e) = history_entry(&s, &brand, period, stored)? {
                if q.metric.as_ref().is_none_or(|m| *m == e.metric) && entries.len() < limit {
                    entries.push(e);
                }
            }
        }
    }
    Ok(Json(HistoryAnswer {
        brand_id: brand,
        period,
        truncated: entries.len() < limit && scanned >= HISTORY_SCAN_EVENTS_MAX,
        entries,
    }))
}

fn decode(stored: &StoredEvent) -> Result<LedgerEvent, ApiError> {
    serde_json::from_str(&stored.payload).map_err(|e| {
        ApiError::Internal(format!(
            "event {}#{} does not decode: {e}",
            stored.aggregate_id, stored.sequence
        ))
    })
}

fn history_entry(
    s: &AppState,
    brand: &BrandId,
    period: PeriodKey,
    stored: &StoredEvent,
) -> Result<Option<HistoryEntry>, ApiError> {
    let (metric, kind, value, timestamp) = match decode(stored)? {
        LedgerEvent::UsageRecorded {
            metric,
            quantity,
            occurred_at,
            ..
        } => (metric, "recorded", quantity as i64, occurred_at),
        LedgerEvent::UsageAdjusted {
            metric, delta, at, ..
        } => (metric, "adjusted", delta, at),
        LedgerEvent::GaugeLevelSet {
            metric, totals, at, ..
        } => (metric, "gauge_set", totals.current as i64, at),
        _ => return Ok(None),
    };
    let unit = unit_of(s.engine.catalog(), &metric);
    Ok(Some(HistoryEntry {
        id: event_id(brand, period, stored.sequence as u64),
        sequence: stored.sequence as u64,
        brand_id: brand.clone(),
        metric,
        kind,
        value,
        unit,
        timestamp,
        metadata: serde_json::from_str(&stored.metadata).unwrap_or(serde_json::Value::Null),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(rename_all = "camelCase")]
pub struct AuditQuery {
    pub after_sequence: Option<u64>,
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
    #[schema(value_type = String)]
    pub brand_id: BrandId,
    #[schema(value_type = String)]
    pub period: PeriodKey,
    pub events: Vec<AuditEvent>,
    /// Pass as `afterSequence` for the next page; absent on the last page.
    pub next_after_sequence: Option<u64>,
}

/// The audit trail: a period's events exactly as stored, in sequence order.
#[utoipa::path(get, path = "/api/v1/usage-billing/brands/{brandId}/periods/{period}/events", tag = "reads",
    params(("brandId" = String, Path), ("period" = String, Path, example = "2026-11"), AuditQuery),
    responses((status = 200, body = AuditAnswer), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn audit_events(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath((brand, period)): ApiPath<(BrandId, PeriodKey)>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditAnswer>, ApiError> {
    caller.read(&brand)?;
    let limit = page_limit(q.limit)?;
    registered(&s, &brand).await?;
    let after = q.after_sequence.unwrap_or(0);
    let id = ledger_aggregates::ids::period_stream_id(&brand, period);
    let rows = s
        .log
        .read_stream(
            UsagePeriodAggregate::TYPE,
            &id,
            i64::try_from(after).unwrap_or(i64::MAX),
            i64::from(limit),
        )
        .await?;
    let full = rows.len() == limit as usize;
    let events: Vec<AuditEvent> = rows
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
        next_after_sequence: if full {
            events.last().map(|e| e.sequence)
        } else {
            None
        },
        events,
    }))
}
