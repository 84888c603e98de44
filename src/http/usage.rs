//! Metering: `POST /record`, `POST /record/batch`, `POST /check-quota` and
//! `PUT /brands/{brandId}/gauges/{metric}`. Answers come from the aggregate through the
//! engine, after the commit: never stale.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ledger_aggregates::{
    BrandId, IdempotencyKey, LedgerEvent, MetricKey, PeriodCommand, PeriodKey, Quantity,
    QuotaDecision,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{idempotency_header, one_key, ApiJson, ApiPath, Caller};
use super::schema::{
    BatchEventsSchema, BrandIdSchema, IdempotencyKeySchema, MetadataSchema, MetricKeySchema,
    PeriodKeySchema, QuantitySchema,
};
use super::views::{event_id, unit_of, AlertView, DecisionView, MetricView};
use super::{AppState, API_PREFIX};
use crate::engine::{Metadata, Outcome, PeriodRequest};

/// Items of one `POST /record/batch`: a full engine batch, so a batch of items commits
/// together, and a body around 300 KB, well inside the body limit.
pub const RECORD_BATCH_ITEMS_MAX: usize = 1_000;

/// The metadata key under which the ledger stores who sent a command.
pub const ACTOR_METADATA_KEY: &str = "actor";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/record"), post(record))
        .route(&format!("{API_PREFIX}/record/batch"), post(record_batch))
        .route(&format!("{API_PREFIX}/check-quota"), post(check_quota))
        .route(
            &format!("{API_PREFIX}/brands/{{brand}}/gauges/{{metric}}"),
            put(set_gauge),
        )
}

fn one() -> Quantity {
    Quantity::new(1).expect("1 is a valid quantity")
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordBody {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    /// Units to add; 1 when absent, like the original.
    #[serde(default = "one")]
    #[schema(value_type = QuantitySchema)]
    pub value: Quantity,
    /// When the usage happened (RFC 3339); now when absent. Selects the period.
    pub occurred_at: Option<DateTime<Utc>>,
    #[schema(value_type = Option<IdempotencyKeySchema>)]
    pub idempotency_key: Option<IdempotencyKey>,
    /// A flat map of strings stored with the event (request ids, sources, tags).
    #[serde(default)]
    #[schema(value_type = MetadataSchema)]
    pub metadata: BTreeMap<String, String>,
}

/// The answer to a record: the event as stored and the metric's state after it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    /// True when an earlier request with the same idempotency key is answered again.
    pub replayed: bool,
    pub event: RecordedEvent,
    pub state: MetricView,
    /// Thresholds this usage crossed (each crossing is reported once, here and in the
    /// summary's `alerts`).
    pub alerts: Vec<AlertView>,
}

/// The original's `UsageMetric` shape, with the ledger's sequence.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordedEvent {
    pub id: String,
    pub sequence: u64,
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    pub value: u64,
    pub unit: String,
    pub timestamp: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub metadata: BTreeMap<String, String>,
}

/// Record usage.
///
/// 201 with the stored event and the metric's state after it; 200 when an earlier
/// request with the same idempotency key is answered again.
#[utoipa::path(post, path = "/api/v1/usage-billing/record", tag = "metering",
    request_body = RecordBody,
    params(("Idempotency-Key" = Option<IdempotencyKeySchema>, Header, description = "Same as the body's idempotencyKey")),
    responses(
        (status = 201, body = Recorded), (status = 200, body = Recorded, description = "replayed key"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "quota exceeded (block)"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "the brand is not registered, or the credential may not see it")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn record(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RecordBody>,
) -> Result<Response, ApiError> {
    let key = one_key(idempotency_header(&headers)?, body.idempotency_key.clone())?;
    let (status, recorded) = record_one(&s, &caller, body, key).await?;
    Ok((status, Json(recorded)).into_response())
}

/// 201 for a new record, 200 for a replayed key.
pub(crate) async fn record_one(
    s: &AppState,
    caller: &Caller,
    body: RecordBody,
    key: Option<IdempotencyKey>,
) -> Result<(StatusCode, Recorded), ApiError> {
    caller.meter(&body.brand_id)?;
    let metadata = metadata_for(caller, body.metadata.clone())?;
    let outcome = s
        .ledger
        .engine
        .execute(PeriodRequest {
            brand: body.brand_id.clone(),
            period: None,
            command: PeriodCommand::RecordUsage {
                metric: body.metric.clone(),
                quantity: body.value,
                occurred_at: body.occurred_at,
            },
            idempotency_key: key,
            metadata: metadata.clone(),
        })
        .await?;
    let status = match outcome.replayed {
        true => StatusCode::OK,
        false => StatusCode::CREATED,
    };
    Ok((status, recorded(s, outcome, &body.metric, metadata)?))
}

/// The caller's metadata, validated, with the authenticated subject stored beside it.
pub(super) fn metadata_for(
    caller: &Caller,
    entries: BTreeMap<String, String>,
) -> Result<Metadata, ApiError> {
    if entries.contains_key(ACTOR_METADATA_KEY) {
        return Err(ApiError::invalid(
            "invalid-metadata",
            format!("metadata key {ACTOR_METADATA_KEY:?} is reserved: the ledger sets it"),
        ));
    }
    let mut metadata = Metadata::parse(entries)
        .map_err(|e| ApiError::invalid("invalid-metadata", e.to_string()))?;
    metadata.set(ACTOR_METADATA_KEY, caller.0.subject.clone());
    Ok(metadata)
}

fn recorded(
    s: &AppState,
    outcome: Outcome,
    metric: &MetricKey,
    metadata: Metadata,
) -> Result<Recorded, ApiError> {
    if outcome.refused() {
        return Err(refused(metric, outcome.decision));
    }
    let Some(first) = outcome.events.first() else {
        return Err(ApiError::Internal("a record appended no event".to_owned()));
    };
    let decision = outcome.decision.clone();
    match &first.event {
        LedgerEvent::UsageRecorded {
            quantity,
            occurred_at,
            totals,
            at,
            ..
        } => {
            let catalog = s.ledger.engine.catalog();
            let base_limit = decision.as_ref().and_then(|d| d.limit);
            let label_of = |m: &MetricKey| label(s, &decision, m);
            Ok(Recorded {
                brand_id: outcome.brand.clone(),
                period: outcome.period,
                replayed: outcome.replayed,
                event: RecordedEvent {
                    id: event_id(&outcome.brand, outcome.period, first.sequence),
                    sequence: first.sequence,
                    brand_id: outcome.brand.clone(),
                    metric: metric.clone(),
                    value: *quantity,
                    unit: unit_of(catalog, metric),
                    timestamp: *occurred_at,
                    recorded_at: *at,
                    metadata: metadata.into_map(),
                },
                state: MetricView::new(catalog, metric, base_limit, totals),
                alerts: AlertView::from_events(&outcome.events, label_of),
            })
        }
        other => Err(ApiError::Internal(format!(
            "a record appended {} first",
            other.event_type_str()
        ))),
    }
}

/// The 409 of a usage a `block` quota refused, carrying the decision.
pub(super) fn refused(metric: &MetricKey, decision: Option<QuotaDecision>) -> ApiError {
    match decision {
        Some(d) => ApiError::QuotaExceeded {
            metric: metric.to_string(),
            decision: Box::new(d),
        },
        None => ApiError::Internal("a denial without its decision".to_owned()),
    }
}

/// The original's `source` label of a check: who asked. API keys are what a brand's
/// own integrations hold; service tokens are the platform's services; admins are
/// operators and the platform's own jobs.
fn source_of(caller: &Caller) -> &'static str {
    match caller.0.role {
        crate::auth::Role::Admin => "system",
        crate::auth::Role::Service if caller.0.subject.starts_with("api-key:") => "public_api",
        crate::auth::Role::Service => "internal_api",
        crate::auth::Role::Brand => "public_api",
    }
}

/// The metric's label in the plan that decided, or its key.
pub(super) fn label(s: &AppState, decision: &Option<QuotaDecision>, metric: &MetricKey) -> String {
    decision
        .as_ref()
        .and_then(|d| s.ledger.engine.catalog().plan(&d.plan_id))
        .and_then(|p| p.quota(metric))
        .map_or_else(|| metric.to_string(), |q| q.label.clone())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// Each item is parsed on its own, so one bad item does not sink the others. Kept
    /// as text: a parsed JSON value would have dropped a duplicate key's first value,
    /// where the item's own parse refuses it as `/record` does.
    #[schema(value_type = BatchEventsSchema)]
    pub events: Vec<Box<serde_json::value::RawValue>>,
}

/// One item's result: the status and body the same item would get from `POST /record`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchItem {
    pub index: usize,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Recorded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchAnswer {
    pub accepted: usize,
    pub rejected: usize,
    pub results: Vec<BatchItem>,
}

/// Every item goes to the engine at once, so the batch shares group commits; each is
/// answered on its own (200 overall, one status per item).
#[utoipa::path(post, path = "/api/v1/usage-billing/record/batch", tag = "metering",
    request_body = BatchBody,
    responses((status = 200, body = BatchAnswer), (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn record_batch(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Json<BatchAnswer>, ApiError> {
    if body.events.is_empty() || body.events.len() > RECORD_BATCH_ITEMS_MAX {
        return Err(ApiError::invalid(
            "invalid-batch",
            format!(
                "events must hold 1 to {RECORD_BATCH_ITEMS_MAX} items; got {}",
                body.events.len()
            ),
        ));
    }
    // An item that is not even an object is a malformed batch, not a bad record.
    if let Some(index) = body
        .events
        .iter()
        .position(|raw| !raw.get().trim_start().starts_with('{'))
    {
        return Err(ApiError::invalid(
            "invalid-batch",
            format!("events[{index}] is not a JSON object"),
        ));
    }
    let items = body.events.into_iter().enumerate().map(|(index, raw)| {
        let s = &s;
        let caller = &caller;
        async move {
            let result = match serde_json::from_str::<RecordBody>(raw.get()) {
                Ok(item) => {
                    let key = item.idempotency_key.clone();
                    record_one(s, caller, item, key).await
                }
                Err(e) => Err(ApiError::invalid("invalid-body", e.to_string())),
            };
            match result {
                Ok((status, recorded)) => BatchItem {
                    index,
                    status: status.as_u16(),
                    result: Some(recorded),
                    problem: None,
                },
                Err(e) => {
                    let problem = e.problem();
                    BatchItem {
                        index,
                        status: problem.status,
                        result: None,
                        problem: Some(problem),
                    }
                }
            }
        }
    });
    let results = futures::future::join_all(items).await;
    let accepted = results.iter().filter(|r| r.result.is_some()).count();
    Ok(Json(BatchAnswer {
        accepted,
        rejected: results.len() - accepted,
        results,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckBody {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    /// Units asked for; 1 when absent, like the original.
    #[serde(default = "one")]
    #[schema(value_type = QuantitySchema)]
    pub requested_amount: Quantity,
    /// Record the request if it is allowed, atomically with the decision.
    #[serde(default)]
    pub consume: bool,
    /// With `consume` only: when the usage happened (RFC 3339), which selects the
    /// period, as `POST /record`'s does. A service replaying what it served during an
    /// outage sends it so that a retry across midnight at a month's end lands in the
    /// same period, where its idempotency key is known.
    pub occurred_at: Option<DateTime<Utc>>,
    #[schema(value_type = Option<IdempotencyKeySchema>)]
    pub idempotency_key: Option<IdempotencyKey>,
    #[serde(default)]
    #[schema(value_type = MetadataSchema)]
    pub metadata: BTreeMap<String, String>,
}

/// The answer to a check: the decision, the alerts a consumption raised, and whether an
/// earlier request with the same key is answered again.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckAnswer {
    #[serde(flatten)]
    pub decision: DecisionView,
    /// Thresholds the consumption crossed (never any for a pure check). A replay answered
    /// from the log, once the key has left the engine's memory, lists none.
    pub alerts: Vec<AlertView>,
    pub replayed: bool,
}

/// The decision, with the original's fields. A consuming check that is allowed was
/// recorded before this answer, which then gives the state after it; one that is
/// refused is recorded as a denial.
#[utoipa::path(post, path = "/api/v1/usage-billing/check-quota", tag = "metering",
    request_body = CheckBody,
    responses((status = 200, body = CheckAnswer),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "the brand is not registered, or the credential may not see it")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn check_quota(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CheckBody>,
) -> Result<Json<CheckAnswer>, ApiError> {
    caller.meter(&body.brand_id)?;
    if body.occurred_at.is_some() && !body.consume {
        return Err(ApiError::invalid(
            "invalid-body",
            "occurredAt dates a consumption: send it with consume: true",
        ));
    }
    let key = one_key(idempotency_header(&headers)?, body.idempotency_key)?;
    let metadata = metadata_for(&caller, body.metadata)?;
    let started = std::time::Instant::now();
    let metric = body.metric.clone();
    let outcome = s
        .ledger
        .engine
        .execute(PeriodRequest {
            brand: body.brand_id,
            period: None,
            command: PeriodCommand::CheckQuota {
                metric: body.metric,
                requested: body.requested_amount,
                consume: body.consume,
                occurred_at: body.occurred_at,
            },
            idempotency_key: key,
            metadata,
        })
        .await?;
    let decision = outcome
        .decision
        .as_ref()
        .ok_or_else(|| ApiError::Internal("a check without a decision".to_owned()))?;
    let labels = [
        decision.plan_id.as_str(),
        metric.as_str(),
        source_of(&caller),
        if decision.allowed {
            "allowed"
        } else {
            "blocked"
        },
    ];
    s.metrics.checks.with_label_values(&labels).inc();
    s.metrics
        .check_seconds
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    Ok(Json(CheckAnswer {
        decision: decision.into(),
        alerts: AlertView::from_events(&outcome.events, |m| label(&s, &outcome.decision, m)),
        replayed: outcome.replayed,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GaugeBody {
    /// The gauge's new level (seats, GB stored); 0 allowed.
    #[schema(maximum = 1_000_000_000)]
    pub level: u64,
    #[schema(value_type = Option<IdempotencyKeySchema>)]
    pub idempotency_key: Option<IdempotencyKey>,
    /// A flat map of strings stored with the event (request ids, sources, tags).
    #[serde(default)]
    #[schema(value_type = MetadataSchema)]
    pub metadata: BTreeMap<String, String>,
}

/// The answer to a gauge level: the change as stored and the metric's state after it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GaugeAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    /// True when an earlier request with the same idempotency key is answered again.
    pub replayed: bool,
    /// The stored event's public id and sequence.
    pub id: String,
    pub sequence: u64,
    pub previous_level: u64,
    pub level: u64,
    pub state: MetricView,
    /// Thresholds the change crossed.
    pub alerts: Vec<AlertView>,
}

/// Set a gauge (`team_members`, `storage_gb`) to a level.
///
/// Lowering frees capacity at once; raising a `block` gauge above its effective limit is
/// refused (409 with the decision, the refusal recorded). Overage of a gauge is billed on
/// the period's peak level.
#[utoipa::path(put, path = "/api/v1/usage-billing/brands/{brandId}/gauges/{metric}", tag = "metering",
    params(("brandId" = BrandIdSchema, Path), ("metric" = MetricKeySchema, Path),
        ("Idempotency-Key" = Option<IdempotencyKeySchema>, Header, description = "Same as the body's idempotencyKey")),
    request_body = GaugeBody,
    responses(
        (status = 200, body = GaugeAnswer),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "above the limit of a block gauge"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "not a gauge, unknown metric, level out of range"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "the brand is not registered, or the credential may not see it")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn set_gauge(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath((brand, metric)): ApiPath<(BrandId, MetricKey)>,
    ApiJson(body): ApiJson<GaugeBody>,
) -> Result<Json<GaugeAnswer>, ApiError> {
    caller.meter(&brand)?;
    let key = one_key(idempotency_header(&headers)?, body.idempotency_key)?;
    let metadata = metadata_for(&caller, body.metadata)?;
    let outcome = s
        .ledger
        .engine
        .execute(PeriodRequest {
            brand,
            period: None,
            command: PeriodCommand::SetGaugeLevel {
                metric: metric.clone(),
                level: body.level,
            },
            idempotency_key: key,
            metadata,
        })
        .await?;
    if outcome.refused() {
        return Err(refused(&metric, outcome.decision));
    }
    let Some(first) = outcome.events.first() else {
        return Err(ApiError::Internal(
            "a gauge level appended no event".to_owned(),
        ));
    };
    match &first.event {
        LedgerEvent::GaugeLevelSet {
            previous, totals, ..
        } => {
            let catalog = s.ledger.engine.catalog();
            let base_limit = outcome.decision.as_ref().and_then(|d| d.limit);
            Ok(Json(GaugeAnswer {
                id: event_id(&outcome.brand, outcome.period, first.sequence),
                sequence: first.sequence,
                previous_level: *previous,
                level: totals.current,
                state: MetricView::new(catalog, &metric, base_limit, totals),
                alerts: AlertView::from_events(&outcome.events, |m| {
                    label(&s, &outcome.decision, m)
                }),
                brand_id: outcome.brand,
                period: outcome.period,
                replayed: outcome.replayed,
            }))
        }
        other => Err(ApiError::Internal(format!(
            "a gauge level appended {} first",
            other.event_type_str()
        ))),
    }
}
