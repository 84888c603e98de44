//! Admin routes: register a brand or change its plan, grant credit by hand.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ledger_aggregates::{
    BrandId, Effective, IdempotencyKey, LedgerEvent, MetricKey, Money, PeriodCommand, PlanId,
    Quantity,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{idempotency_header, one_key, ApiJson, ApiPath, Caller};
use super::schema::{
    BrandIdSchema, EffectiveSchema, GrantReasonSchema, IdempotencyKeySchema, MetricKeySchema,
    PeriodKeySchema, PlanIdSchema, QuantitySchema,
};
use super::views::{event_id, MetricView};
use super::{AppState, API_PREFIX};
use crate::engine::{Metadata, PeriodRequest, PlanChange};
use crate::tail::TailStatus;

/// A grant's reason is a sentence for the audit trail, not a document.
pub const GRANT_REASON_CHARS_MAX: usize = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/brands/{{brand}}"), put(set_plan))
        .route(&format!("{API_PREFIX}/topups/grant"), post(grant))
        .route(&format!("{API_PREFIX}/projector"), get(projector_status))
}

/// Where the read models stand: the last event their consumer holds, events taken in,
/// lag (event commit to the consumer holding it, ms) and last error.
#[utoipa::path(get, path = "/api/v1/usage-billing/projector", tag = "admin",
    responses((status = 200, body = TailStatus),
        (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn projector_status(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<TailStatus>, ApiError> {
    caller.admin()?;
    Ok(Json(s.ledger.projector.status()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    #[schema(value_type = PlanIdSchema)]
    pub plan: PlanId,
    /// `now` or `next_period`. Absent: an upgrade (a base price at least the current
    /// one's) takes effect now, a downgrade at the next period.
    #[schema(value_type = Option<EffectiveSchema>)]
    pub effective: Option<Effective>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PlanIdSchema)]
    pub plan: PlanId,
    /// True when this call registered the brand.
    pub registered: bool,
    /// False when the brand was already on this plan (nothing was appended).
    pub changed: bool,
    /// The open period the new plan took effect in, if any.
    #[schema(value_type = Option<PeriodKeySchema>)]
    pub applied_to: Option<ledger_aggregates::PeriodKey>,
    /// The first period on the new plan when it does not take effect at once (a
    /// downgrade, by default).
    #[schema(value_type = Option<PeriodKeySchema>)]
    pub effective_from: Option<ledger_aggregates::PeriodKey>,
}

/// 201 when the brand is new, 200 otherwise. Idempotent: the same plan twice changes
/// nothing the second time.
#[utoipa::path(put, path = "/api/v1/usage-billing/brands/{brandId}", tag = "admin",
    params(("brandId" = BrandIdSchema, Path)), request_body = PlanBody,
    responses((status = 201, body = PlanAnswer, description = "registered"), (status = 200, body = PlanAnswer),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn set_plan(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
    ApiJson(body): ApiJson<PlanBody>,
) -> Result<Response, ApiError> {
    caller.admin()?;
    let PlanChange {
        brand,
        plan,
        registered,
        changed,
        applied_to,
        effective_from,
    } = s
        .ledger
        .engine
        .change_plan(brand, body.plan, caller.0.subject.clone(), body.effective)
        .await?;
    let status = match registered {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    Ok((
        status,
        Json(PlanAnswer {
            brand_id: brand,
            plan,
            registered,
            changed,
            applied_to,
            effective_from,
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantBody {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    #[schema(value_type = QuantitySchema)]
    pub units: Quantity,
    /// Why, for the audit trail: not blank.
    #[schema(value_type = GrantReasonSchema)]
    pub reason: String,
    #[schema(value_type = Option<IdempotencyKeySchema>)]
    pub idempotency_key: Option<IdempotencyKey>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantAnswer {
    pub id: String,
    pub sequence: u64,
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: ledger_aggregates::PeriodKey,
    pub replayed: bool,
    pub state: MetricView,
}

/// A free credit for the current period, with who granted it and why. 201, or 200 for
/// a replayed idempotency key.
#[utoipa::path(post, path = "/api/v1/usage-billing/topups/grant", tag = "admin",
    request_body = GrantBody,
    responses((status = 201, body = GrantAnswer), (status = 200, body = GrantAnswer, description = "replayed key"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "the brand is not registered, or the credential may not see it"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "the period is closed")),
    security(("bearer" = [])))]
pub(crate) async fn grant(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<Response, ApiError> {
    caller.admin()?;
    let reason = body.reason.trim();
    // The bound is on what was sent, as the OpenAPI document's `maxLength` states it.
    if reason.is_empty() || body.reason.chars().count() > GRANT_REASON_CHARS_MAX {
        return Err(ApiError::invalid(
            "invalid-reason",
            format!("reason must be 1 to {GRANT_REASON_CHARS_MAX} characters"),
        ));
    }
    let key = one_key(idempotency_header(&headers)?, body.idempotency_key)?;
    let outcome = s
        .ledger
        .engine
        .execute(PeriodRequest {
            brand: body.brand_id.clone(),
            period: None,
            command: PeriodCommand::ApplyTopUp {
                metric: body.metric.clone(),
                units: body.units,
                price: Money::ZERO,
                reference: format!("grant: {reason}"),
                actor: caller.0.subject.clone(),
            },
            idempotency_key: key,
            metadata: Metadata::default(),
        })
        .await?;
    let Some(first) = outcome.events.first() else {
        return Err(ApiError::Internal("a grant appended no event".to_owned()));
    };
    let LedgerEvent::TopUpApplied { totals, .. } = &first.event else {
        return Err(ApiError::Internal(format!(
            "a grant appended {} first",
            first.event.event_type_str()
        )));
    };
    let state = s
        .ledger
        .engine
        .period_state(outcome.brand.clone(), outcome.period)
        .await?;
    let base = state
        .as_ref()
        .and_then(|a| a.plan())
        .and_then(|p| p.quota(&body.metric))
        .map(|q| q.limit);
    let status = match outcome.replayed {
        true => StatusCode::OK,
        false => StatusCode::CREATED,
    };
    Ok((
        status,
        Json(GrantAnswer {
            id: event_id(&outcome.brand, outcome.period, first.sequence),
            sequence: first.sequence,
            brand_id: outcome.brand,
            period: outcome.period,
            replayed: outcome.replayed,
            // From the event itself, so a replayed grant answers what the grant did.
            state: MetricView::new(s.ledger.engine.catalog(), &body.metric, base, totals),
        }),
    )
        .into_response())
}
