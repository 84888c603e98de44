//! Holds for long jobs: `POST /reservations`, `POST /reservations/{id}/commit`,
//! `POST /reservations/{id}/void`. A hold counts against a `block` limit in every
//! decision until it is committed (as usage), voided, or expires by itself.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ledger_aggregates::{
    BrandId, HoldTtl, IdempotencyKey, LedgerEvent, MetricKey, PeriodCommand, PeriodKey, Quantity,
    ReservationId,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{idempotency_header, one_key, ApiJson, ApiPath, Caller};
use super::schema::{
    BrandIdSchema, HoldTtlSchema, IdempotencyKeySchema, MetadataSchema, MetricKeySchema,
    PeriodKeySchema, QuantitySchema, ReservationIdSchema,
};
use super::usage::{label, metadata_for, refused};
use super::views::{AlertView, DecisionView, MetricView};
use super::{AppState, API_PREFIX};
use crate::engine::{Outcome, PeriodRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/reservations"), post(reserve))
        .route(
            &format!("{API_PREFIX}/reservations/{{id}}/commit"),
            post(commit),
        )
        .route(
            &format!("{API_PREFIX}/reservations/{{id}}/void"),
            post(void),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReserveBody {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    /// A counter (`renders_3d`); gauges are set, never held.
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    #[schema(value_type = QuantitySchema)]
    pub amount: Quantity,
    /// How long the hold lives unless committed or voided, 1 to 86,400 s.
    #[schema(value_type = HoldTtlSchema)]
    pub ttl_seconds: HoldTtl,
    #[schema(value_type = Option<IdempotencyKeySchema>)]
    pub idempotency_key: Option<IdempotencyKey>,
    /// A flat map of strings stored with the event (job ids, sources).
    #[serde(default)]
    #[schema(value_type = MetadataSchema)]
    pub metadata: BTreeMap<String, String>,
}

/// Where a hold stands.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HoldStatus {
    Held,
    Committed,
    Voided,
}

/// A hold as placed: its id, until when it holds, and the decision with it counted.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// `<brand>:<period>:<number>`: what commit and void take.
    #[schema(example = "acme:2026-12:7")]
    pub reservation_id: String,
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    pub amount: u64,
    pub expires_at: DateTime<Utc>,
    pub status: HoldStatus,
    /// True when an earlier request with the same idempotency key is answered again.
    pub replayed: bool,
    /// The metric once the hold is placed: `reserved` includes it, `remaining` leaves
    /// it out; nothing is consumed or charged until the commit.
    #[serde(flatten)]
    pub decision: DecisionView,
}

/// Hold quota for a long job.
///
/// 201 with the hold; 200 for a replayed key; 409 `quota-exceeded` with the decision
/// when it does not fit under a `block` limit (the refusal is recorded).
#[utoipa::path(post, path = "/api/v1/usage-billing/reservations", tag = "metering",
    request_body = ReserveBody,
    params(("Idempotency-Key" = Option<IdempotencyKeySchema>, Header, description = "Same as the body's idempotencyKey")),
    responses(
        (status = 201, body = Reservation), (status = 200, body = Reservation, description = "replayed key"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "does not fit (block), or too many open holds"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "gauge, unknown metric, TTL out of range"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "the brand is not registered, or the credential may not see it")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn reserve(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ReserveBody>,
) -> Result<Response, ApiError> {
    caller.meter(&body.brand_id)?;
    let key = one_key(idempotency_header(&headers)?, body.idempotency_key)?;
    let metadata = metadata_for(&caller, body.metadata)?;
    let outcome = s
        .ledger
        .engine
        .execute(PeriodRequest {
            brand: body.brand_id,
            period: None,
            command: PeriodCommand::Reserve {
                metric: body.metric.clone(),
                amount: body.amount,
                ttl: body.ttl_seconds,
            },
            idempotency_key: key,
            metadata,
        })
        .await?;
    if outcome.refused() {
        return Err(refused(&body.metric, outcome.decision));
    }
    let first = first_event(&outcome, "a hold")?;
    match first {
        LedgerEvent::QuotaReserved {
            hold,
            metric,
            amount,
            expires_at,
            ..
        } => {
            let status = match outcome.replayed {
                true => StatusCode::OK,
                false => StatusCode::CREATED,
            };
            let reservation = Reservation {
                reservation_id: id_of(&outcome, *hold).to_string(),
                brand_id: outcome.brand.clone(),
                period: outcome.period,
                metric: metric.clone(),
                amount: *amount,
                expires_at: *expires_at,
                status: HoldStatus::Held,
                replayed: outcome.replayed,
                decision: decision_of(&outcome)?,
            };
            Ok((status, Json(reservation)).into_response())
        }
        other => Err(unexpected("a hold", other)),
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitBody {
    /// Units the job used, at most the held amount; all of it when absent.
    #[schema(value_type = Option<QuantitySchema>)]
    pub amount: Option<Quantity>,
    #[schema(value_type = Option<IdempotencyKeySchema>)]
    pub idempotency_key: Option<IdempotencyKey>,
    #[serde(default)]
    #[schema(value_type = MetadataSchema)]
    pub metadata: BTreeMap<String, String>,
}

/// A committed hold: the usage it recorded and the decision after it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Committed {
    pub reservation_id: String,
    pub status: HoldStatus,
    /// Units recorded as usage.
    pub committed: u64,
    /// Units held and given back without usage (held − committed).
    pub released: u64,
    pub replayed: bool,
    /// Thresholds the committed usage crossed.
    pub alerts: Vec<AlertView>,
    #[serde(flatten)]
    pub decision: DecisionView,
}

/// Record what a job used and release its hold.
///
/// 200 with the usage as a decision (consumed); 409 `reservation-expired` after its
/// time to live, `reservation-not-held` once committed or voided; 404 for a hold never
/// placed.
#[utoipa::path(post, path = "/api/v1/usage-billing/reservations/{id}/commit", tag = "metering",
    params(("id" = ReservationIdSchema, Path),
        ("Idempotency-Key" = Option<IdempotencyKeySchema>, Header, description = "Same as the body's idempotencyKey")),
    request_body(content = CommitBody, description = "optional: an empty body commits the whole hold"),
    responses(
        (status = 200, body = Committed),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "expired, or no longer held"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "more than held"),
    ),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn commit(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(id): ApiPath<ReservationId>,
    body: Option<ApiJson<CommitBody>>,
) -> Result<Json<Committed>, ApiError> {
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    let command = PeriodCommand::CommitHold {
        hold: id.number,
        amount: body.amount,
    };
    let outcome = on_hold(
        &s,
        &caller,
        &headers,
        &id,
        (body.idempotency_key, body.metadata),
        command,
    )
    .await?;
    match first_event(&outcome, "a commit")? {
        LedgerEvent::UsageRecorded {
            quantity,
            hold: Some(hold),
            ..
        } => Ok(Json(Committed {
            reservation_id: id.to_string(),
            status: HoldStatus::Committed,
            committed: *quantity,
            released: hold.held.saturating_sub(*quantity),
            replayed: outcome.replayed,
            alerts: AlertView::from_events(&outcome.events, |m| label(&s, &outcome.decision, m)),
            decision: decision_of(&outcome)?,
        })),
        other => Err(unexpected("a commit", other)),
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VoidBody {
    #[schema(value_type = Option<IdempotencyKeySchema>)]
    pub idempotency_key: Option<IdempotencyKey>,
    #[serde(default)]
    #[schema(value_type = MetadataSchema)]
    pub metadata: BTreeMap<String, String>,
}

/// A voided hold: what it gave back and the metric after it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Voided {
    pub reservation_id: String,
    pub status: HoldStatus,
    pub released: u64,
    pub replayed: bool,
    pub state: MetricView,
}

/// Release a hold without recording usage (the job failed or was cancelled).
///
/// 200; the same 409s and 404 as a commit.
#[utoipa::path(post, path = "/api/v1/usage-billing/reservations/{id}/void", tag = "metering",
    params(("id" = ReservationIdSchema, Path),
        ("Idempotency-Key" = Option<IdempotencyKeySchema>, Header, description = "Same as the body's idempotencyKey")),
    request_body(content = VoidBody, description = "optional"),
    responses(
        (status = 200, body = Voided),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "expired, or no longer held"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "idempotency key reused or mismatched, invalid metadata")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn void(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(id): ApiPath<ReservationId>,
    body: Option<ApiJson<VoidBody>>,
) -> Result<Json<Voided>, ApiError> {
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    let command = PeriodCommand::VoidHold { hold: id.number };
    let outcome = on_hold(
        &s,
        &caller,
        &headers,
        &id,
        (body.idempotency_key, body.metadata),
        command,
    )
    .await?;
    match first_event(&outcome, "a void")? {
        LedgerEvent::HoldReleased {
            metric,
            amount,
            totals,
            ..
        } => {
            let catalog = s.ledger.engine.catalog();
            let plan = s
                .ledger
                .engine
                .period_state(id.brand.clone(), id.period)
                .await?
                .and_then(|p| p.plan().cloned());
            let base_limit = plan.and_then(|p| p.quota(metric).map(|q| q.limit));
            Ok(Json(Voided {
                reservation_id: id.to_string(),
                status: HoldStatus::Voided,
                released: *amount,
                replayed: outcome.replayed,
                state: MetricView::new(catalog, metric, base_limit, totals),
            }))
        }
        other => Err(unexpected("a void", other)),
    }
}

/// Run a commit or void of the hold `id` for `caller`, with the request's key and
/// metadata.
async fn on_hold(
    s: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    id: &ReservationId,
    (key, metadata): (Option<IdempotencyKey>, BTreeMap<String, String>),
    command: PeriodCommand,
) -> Result<Outcome, ApiError> {
    caller.meter(&id.brand)?;
    let key = one_key(idempotency_header(headers)?, key)?;
    let metadata = metadata_for(caller, metadata)?;
    let outcome = s
        .ledger
        .engine
        .execute(PeriodRequest {
            brand: id.brand.clone(),
            period: Some(id.period),
            command,
            idempotency_key: key,
            metadata,
        })
        .await?;
    Ok(outcome)
}

fn id_of(outcome: &Outcome, number: u64) -> ReservationId {
    ReservationId {
        brand: outcome.brand.clone(),
        period: outcome.period,
        number,
    }
}

fn first_event<'a>(outcome: &'a Outcome, what: &str) -> Result<&'a LedgerEvent, ApiError> {
    outcome
        .events
        .first()
        .map(|c| &c.event)
        .ok_or_else(|| ApiError::Internal(format!("{what} appended no event")))
}

fn decision_of(outcome: &Outcome) -> Result<DecisionView, ApiError> {
    outcome
        .decision
        .as_ref()
        .map(DecisionView::from)
        .ok_or_else(|| ApiError::Internal("a hold without its decision".to_owned()))
}

fn unexpected(what: &str, event: &LedgerEvent) -> ApiError {
    ApiError::Internal(format!("{what} appended {} first", event.event_type_str()))
}
