//! Top-ups bought through Stripe: `POST /topups/checkout` opens an order and its
//! Checkout Session, `POST /webhooks/stripe` takes Stripe's signed events, and
//! `GET /topups/history` lists a brand's orders and credits of a period.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ledger_aggregates::topup::TopUpStatus;
use ledger_aggregates::{BrandId, IdempotencyKey, MetricKey, PeriodKey, Quantity};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Problem};
use super::extract::{idempotency_header, one_key, ApiJson, ApiQuery, Caller};
use super::schema::{
    BrandIdSchema, IdempotencyKeySchema, MetricKeySchema, PeriodKeySchema, QuantitySchema,
    StripeEventSchema,
};
use super::{AppState, API_PREFIX};
use crate::ledger::topups::{CheckoutRequest, HistoryEntry, PaymentEffect};
use crate::stripe::event::Event;
use crate::stripe::signature;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/topups/checkout"), post(checkout))
        .route(&format!("{API_PREFIX}/topups/history"), get(history))
        .route(
            &format!("{API_PREFIX}/webhooks/stripe"),
            post(stripe_webhook),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckoutBody {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    /// A metric billed for overage (`charge`) on the brand's plan.
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    #[schema(value_type = QuantitySchema)]
    pub units: Quantity,
    /// Where Stripe sends the payer after paying; on a configured origin. Stripe fills
    /// `{CHECKOUT_SESSION_ID}` in it.
    pub success_url: Option<String>,
    /// Where Stripe sends a payer who gives up; on a configured origin.
    pub cancel_url: Option<String>,
    /// Same as the `Idempotency-Key` header.
    #[schema(value_type = Option<IdempotencyKeySchema>)]
    pub idempotency_key: Option<IdempotencyKey>,
}

/// A checkout to send the payer to.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutAnswer {
    pub checkout_url: String,
    /// `<brand>:topup:<n>`: the order, in the history and in Stripe's metadata.
    #[schema(example = "acme:topup:3")]
    pub topup_id: String,
    pub stripe_session_id: String,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    pub units: u64,
    /// Units × the plan's overage rate, rounded half up to a cent.
    pub total_price_cents: i64,
    #[schema(example = "EUR")]
    pub currency: String,
    /// When the checkout stops taking a payment.
    pub expires_at: DateTime<Utc>,
    /// True when an earlier request with the same idempotency key is answered again.
    pub replayed: bool,
}

/// Buy top-up units through Stripe Checkout.
///
/// The order is recorded (pending), then the Checkout Session created. 201 with the
/// URL to send the payer to; 200 for a replayed key. The units are credited once
/// Stripe confirms the payment (webhook or reconciliation).
#[utoipa::path(post, path = "/api/v1/usage-billing/topups/checkout", tag = "payments",
    request_body = CheckoutBody,
    params(("Idempotency-Key" = Option<IdempotencyKeySchema>, Header, description = "Same as the body's idempotencyKey")),
    responses(
        (status = 201, body = CheckoutAnswer), (status = 200, body = CheckoutAnswer, description = "replayed key"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "too many checkouts pending"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "not a charge metric, below Stripe's minimum, redirect URL off the configured origins"),
        (status = 502, body = Problem, content_type = "application/problem+json", description = "Stripe refused the session"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "Stripe not configured or unreachable"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "the brand is not registered, or the credential may not see it")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn checkout(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CheckoutBody>,
) -> Result<Response, ApiError> {
    caller.read(&body.brand_id)?;
    let key = one_key(idempotency_header(&headers)?, body.idempotency_key)?;
    let done = s
        .ledger
        .checkout(CheckoutRequest {
            brand: body.brand_id,
            metric: body.metric,
            units: body.units,
            success_url: body.success_url,
            cancel_url: body.cancel_url,
            actor: caller.0.subject.clone(),
            request_key: key.map(|k| k.to_string()),
        })
        .await?;
    let status = match done.replayed {
        true => StatusCode::OK,
        false => StatusCode::CREATED,
    };
    Ok((
        status,
        Json(CheckoutAnswer {
            checkout_url: done.checkout_url,
            topup_id: done.topup.to_string(),
            stripe_session_id: done.session,
            metric: done.order.metric,
            units: done.order.units,
            total_price_cents: done.order.price.minor(),
            currency: done.order.currency.to_string(),
            expires_at: done.order.expires_at,
            replayed: done.replayed,
        }),
    )
        .into_response())
}

/// What a delivery did, for Stripe's dashboard and the operator reading it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAnswer {
    pub received: bool,
    /// `credited`, `failed` or `unchanged`.
    pub effect: &'static str,
    pub topup_id: Option<String>,
    /// The period credited.
    #[schema(value_type = Option<PeriodKeySchema>)]
    pub period: Option<PeriodKey>,
    /// Why nothing changed.
    pub reason: Option<String>,
}

impl From<PaymentEffect> for WebhookAnswer {
    fn from(e: PaymentEffect) -> Self {
        let (effect, topup_id, period, reason) = match e {
            PaymentEffect::Credited { topup, period } => {
                ("credited", Some(topup.to_string()), Some(period), None)
            }
            PaymentEffect::Failed { topup } => ("failed", Some(topup.to_string()), None, None),
            PaymentEffect::Unchanged { reason } => ("unchanged", None, None, Some(reason)),
        };
        Self {
            received: true,
            effect,
            topup_id,
            period,
            reason,
        }
    }
}

/// Stripe's events (configure this URL as a webhook endpoint in Stripe).
///
/// Authenticated by the `Stripe-Signature` header alone. 200 once the event took
/// effect, or changed nothing (a repeat, another type); 400 for a signature that does
/// not verify; 5xx when it could not be applied, so Stripe delivers it again.
#[utoipa::path(post, path = "/api/v1/usage-billing/webhooks/stripe", tag = "payments",
    request_body(content = StripeEventSchema, description = "A Stripe event, as Stripe sends it; read as bytes, for the signature", content_type = "application/json"),
    params(("Stripe-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256>")),
    responses(
        (status = 200, body = WebhookAnswer),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "signature missing, stale or wrong; body not an event"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "no webhook secret configured, or the store is unavailable"),
    ))]
pub(crate) async fn stripe_webhook(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookAnswer>, ApiError> {
    // The body limit applies before anything else: the signature is computed over it.
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(format!("the body exceeds {} bytes", s.body_bytes_max))
        }
        _ => ApiError::BadRequest(format!("the body could not be read: {e}")),
    })?;
    let secrets: Vec<&str> = s
        .ledger
        .payments
        .webhook_secrets
        .iter()
        .map(|k| k.expose())
        .collect();
    if secrets.is_empty() {
        return Err(ApiError::Unavailable {
            detail: "no Stripe webhook secret is configured (stripe.webhook_secret)".to_owned(),
            retry_after_s: None,
        });
    }
    let header = headers
        .get("stripe-signature")
        .map(|v| v.to_str().unwrap_or(""));
    let now = s.ledger.engine.now().timestamp();
    signature::verify(header, &body, &secrets, now)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Verified over the bytes as sent; read with integers taken as the document states them.
    let event: Event = serde_json::from_slice(&super::extract::integral_numbers(&body))
        .map_err(|e| ApiError::BadRequest(format!("the body is not a Stripe event: {e}")))?;
    let effect = s.ledger.apply_payment_event(&event).await?;
    tracing::info!(event = %event.id, kind = %event.kind, ?effect, "Stripe event");
    Ok(Json(effect.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    #[param(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    /// `YYYY-MM`; the current period when absent.
    #[param(value_type = PeriodKeySchema, required = false)]
    pub period: Option<PeriodKey>,
}

/// One top-up: an order bought through Stripe, or another credit of the period.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopUpEntry {
    /// The order's id; absent for grants and resets.
    pub topup_id: Option<String>,
    /// `pending`, `paid`, `failed` (orders) or `granted` (other credits).
    pub status: &'static str,
    #[schema(value_type = MetricKeySchema)]
    pub metric: MetricKey,
    pub units: u64,
    pub price_cents: i64,
    pub currency: String,
    /// The period the units were credited to.
    #[schema(value_type = Option<PeriodKeySchema>)]
    pub credited_period: Option<PeriodKey>,
    pub opened_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// When the payment completed (orders), or the credit was applied (others).
    pub paid_at: Option<DateTime<Utc>>,
    pub stripe_session_id: Option<String>,
    pub stripe_event_id: Option<String>,
    /// Why an order failed, or a credit's own reference (a grant's reason).
    pub reason: Option<String>,
    pub actor: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopUpHistoryAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    pub entries: Vec<TopUpEntry>,
}

/// A brand's top-ups of a period: orders opened in it or credited to it (pending,
/// paid, failed, with Stripe's ids), then the period's grants.
#[utoipa::path(get, path = "/api/v1/usage-billing/topups/history", tag = "payments",
    params(HistoryQuery),
    responses((status = 200, body = TopUpHistoryAnswer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn history(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<TopUpHistoryAnswer>, ApiError> {
    caller.read(&q.brand_id)?;
    let period = s.ledger.period_or_now(q.period);
    let entries = s
        .ledger
        .topup_history(q.brand_id.clone(), period)
        .await?
        .into_iter()
        .map(|e| entry(e, period))
        .collect();
    Ok(Json(TopUpHistoryAnswer {
        brand_id: q.brand_id,
        period,
        entries,
    }))
}

fn entry(e: HistoryEntry, period: PeriodKey) -> TopUpEntry {
    match e {
        HistoryEntry::Order { topup, order } => {
            let (status, credited_period, paid_at, payment, reason) = match &order.status {
                TopUpStatus::Pending => ("pending", None, None, None, None),
                TopUpStatus::Paid {
                    period,
                    paid_at,
                    payment,
                    ..
                } => ("paid", Some(*period), Some(*paid_at), Some(payment), None),
                TopUpStatus::Failed {
                    reason, payment, ..
                } => ("failed", None, None, Some(payment), Some(reason.clone())),
            };
            TopUpEntry {
                topup_id: Some(topup.to_string()),
                status,
                metric: order.metric.clone(),
                units: order.units,
                price_cents: order.price.minor(),
                currency: order.currency.to_string(),
                credited_period,
                opened_at: Some(order.opened_at),
                expires_at: Some(order.expires_at),
                paid_at,
                stripe_session_id: payment.map(|p| p.session.clone()),
                stripe_event_id: payment.map(|p| p.event.clone()),
                reason,
                actor: order.actor,
            }
        }
        HistoryEntry::Credit(t) => TopUpEntry {
            topup_id: None,
            status: "granted",
            metric: t.metric,
            units: t.units,
            price_cents: t.price.minor(),
            currency: "EUR".to_owned(),
            credited_period: Some(period),
            opened_at: None,
            expires_at: None,
            paid_at: Some(t.at),
            stripe_session_id: None,
            stripe_event_id: None,
            reason: Some(t.reference),
            actor: t.actor,
        },
    }
}
