//! Where a brand's notices go: `PUT|GET /brands/{brandId}/notifications`; what was
//! sent: `GET /alerts/deliveries`, `POST /alerts/deliveries/{id}/retry`.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ledger_aggregates::notifications::{
    ChannelKind, EndpointSetting, NoticeKind, NotificationSettings, WEBHOOK_SECRETS_MAX,
};
use ledger_aggregates::BrandId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::schema::{
    BrandIdSchema, ChannelSchema, DeliveriesLimitSchema, DeliveryStatusSchema, EndpointIdSchema,
    EndpointsSchema, NoticeKindsSchema, RecipientsSchema, WebhookSecretsSchema,
};
use super::{AppState, API_PREFIX};
use crate::notify::settings::check_url;
use crate::notify::{parse_webhook_secret, valid_email};
use crate::store::{DELIVERY_DEAD, DELIVERY_DELIVERED, DELIVERY_PENDING};

/// Deliveries listed at most per request.
pub const DELIVERIES_LISTED_MAX: u32 = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            &format!("{API_PREFIX}/brands/{{brand}}/notifications"),
            get(get_settings).put(put_settings),
        )
        .route(&format!("{API_PREFIX}/alerts/deliveries"), get(deliveries))
        .route(
            &format!("{API_PREFIX}/alerts/deliveries/{{id}}/retry"),
            post(retry),
        )
}

/// One endpoint as a caller writes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointBody {
    /// The brand's name for it: 1 to 32 of a-z, 0-9, `-`, `_`.
    #[schema(value_type = EndpointIdSchema)]
    pub id: String,
    /// `slack`, `zapier`, `webhook` or `email`.
    #[schema(value_type = ChannelSchema)]
    pub channel: ChannelKind,
    /// Slack, Zapier, webhooks: where to POST (https, a public host).
    pub url: Option<String>,
    /// E-mail: the recipients.
    #[serde(default)]
    #[schema(value_type = RecipientsSchema)]
    pub to: Vec<String>,
    /// Which notices: `threshold_crossed`, `threshold_resolved`, `quota_refused`,
    /// `top_up_applied`, `top_up_failed`; all when absent.
    #[schema(value_type = Option<NoticeKindsSchema>)]
    pub kinds: Option<BTreeSet<NoticeKind>>,
    /// Webhooks: one `whsec_<base64>` secret, two during a rotation. Absent on an
    /// endpoint that already has secrets: they are kept.
    #[schema(value_type = Option<WebhookSecretsSchema>)]
    pub secrets: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsBody {
    #[schema(value_type = EndpointsSchema)]
    pub endpoints: Vec<EndpointBody>,
}

/// One endpoint as answered: secrets only by fingerprint.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub id: String,
    #[schema(value_type = String)]
    pub channel: ChannelKind,
    pub url: Option<String>,
    pub to: Vec<String>,
    #[schema(value_type = Vec<String>)]
    pub kinds: BTreeSet<NoticeKind>,
    /// The first 16 hex digits of each secret's SHA-256.
    pub secret_fingerprints: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingsAnswer {
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    pub endpoints: Vec<EndpointView>,
    /// False when the settings were already so.
    pub changed: bool,
}

fn view(brand: BrandId, settings: &NotificationSettings, changed: bool) -> SettingsAnswer {
    SettingsAnswer {
        brand_id: brand,
        endpoints: settings
            .endpoints
            .iter()
            .map(|e| EndpointView {
                id: e.id.clone(),
                channel: e.channel,
                url: e.url.clone(),
                to: e.to.clone(),
                kinds: e.kinds.clone(),
                secret_fingerprints: e.secret_fingerprints.clone(),
            })
            .collect(),
        changed,
    }
}

fn fingerprint(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))[..16].to_owned()
}

/// Replace where the brand's notices go.
///
/// Every URL must be https on a public host (unless configured otherwise), every
/// recipient an address, every webhook secret `whsec_<base64>`; 422 names the first
/// that is not. Settings are an event of the brand's registry; webhook secrets are kept
/// by the store and answered only as fingerprints.
#[utoipa::path(put, path = "/api/v1/usage-billing/brands/{brandId}/notifications", tag = "alerts",
    params(("brandId" = BrandIdSchema, Path)),
    request_body = SettingsBody,
    responses((status = 200, body = SettingsAnswer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "a private or non-https URL, a bad address or secret, too many endpoints"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn put_settings(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
    ApiJson(body): ApiJson<SettingsBody>,
) -> Result<Json<SettingsAnswer>, ApiError> {
    caller.read(&brand)?;
    let bad = |id: &str, reason: String| {
        ApiError::invalid(
            "invalid-notifications",
            format!("endpoint {}: {reason}", crate::engine::echo(id)),
        )
    };
    let existing = s
        .ledger
        .stores
        .outbox
        .webhook_secrets(&[brand.to_string()])
        .await?;
    let mut secrets: Vec<(String, Vec<String>)> = Vec::new();
    let mut endpoints = Vec::with_capacity(body.endpoints.len());
    if body.endpoints.len() > ledger_aggregates::notifications::ENDPOINTS_PER_BRAND_MAX {
        return Err(ApiError::invalid(
            "invalid-notifications",
            format!(
                "at most {} endpoints per brand",
                ledger_aggregates::notifications::ENDPOINTS_PER_BRAND_MAX
            ),
        ));
    }
    for e in body.endpoints {
        if let Some(url) = &e.url {
            check_url(url, s.url_rules).map_err(|r| bad(&e.id, format!("url {r}")))?;
        }
        if let Some(to) = e.to.iter().find(|a| !valid_email(a)) {
            return Err(bad(
                &e.id,
                format!("{} is not an e-mail address", crate::engine::echo(to)),
            ));
        }
        let kept = existing
            .iter()
            .find(|(_, id, _)| *id == e.id)
            .map(|(_, _, s)| s.clone());
        let own = match (e.channel, e.secrets, kept) {
            (ChannelKind::Webhook, Some(given), _) => {
                if given.is_empty() || given.len() > WEBHOOK_SECRETS_MAX {
                    return Err(bad(
                        &e.id,
                        format!("give 1 to {WEBHOOK_SECRETS_MAX} secrets"),
                    ));
                }
                for secret in &given {
                    parse_webhook_secret(secret).map_err(|r| bad(&e.id, format!("secret: {r}")))?;
                }
                given
            }
            (ChannelKind::Webhook, None, Some(kept)) => kept,
            (ChannelKind::Webhook, None, None) => {
                return Err(bad(&e.id, "a webhook needs a secret (whsec_…)".to_owned()))
            }
            (_, Some(_), _) => return Err(bad(&e.id, "only webhooks take secrets".to_owned())),
            (_, None, _) => Vec::new(),
        };
        let fingerprints = own.iter().map(|s| fingerprint(s)).collect();
        if !own.is_empty() {
            secrets.push((e.id.clone(), own));
        }
        endpoints.push(EndpointSetting {
            id: e.id,
            channel: e.channel,
            url: e.url,
            to: e.to,
            kinds: e
                .kinds
                .unwrap_or_else(|| NoticeKind::ALL.into_iter().collect()),
            secret_fingerprints: fingerprints,
        });
    }
    let settings = NotificationSettings { endpoints };
    settings
        .check()
        .map_err(|e| ApiError::invalid("invalid-notifications", e.to_string()))?;
    if s.ledger.engine.brand_state(brand.clone()).await?.is_none() {
        return Err(super::extract::unknown_brand(&brand));
    }
    // The secrets first: once the settings name an endpoint, the dispatcher finds them.
    s.ledger
        .stores
        .outbox
        .set_webhook_secrets(brand.as_str(), &secrets)
        .await?;
    let changed = s
        .ledger
        .engine
        .set_notifications(brand.clone(), settings.clone(), caller.0.subject.clone())
        .await?;
    Ok(Json(view(brand, &settings, changed)))
}

/// Where the brand's notices go (secrets as fingerprints).
#[utoipa::path(get, path = "/api/v1/usage-billing/brands/{brandId}/notifications", tag = "alerts",
    params(("brandId" = BrandIdSchema, Path)),
    responses((status = 200, body = SettingsAnswer),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn get_settings(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
) -> Result<Json<SettingsAnswer>, ApiError> {
    caller.read(&brand)?;
    let registry = s
        .ledger
        .engine
        .brand_state(brand.clone())
        .await?
        .filter(|b| b.is_registered())
        .ok_or_else(|| super::extract::unknown_brand(&brand))?;
    Ok(Json(view(brand, &registry.notifications, false)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Required for a brand's own credential; an admin may list every brand's.
    #[param(value_type = BrandIdSchema, required = false)]
    pub brand_id: Option<BrandId>,
    /// `pending`, `delivered` or `dead`.
    #[param(value_type = DeliveryStatusSchema, required = false)]
    pub status: Option<String>,
    /// 1 to 500 (default 100).
    #[param(value_type = DeliveriesLimitSchema, required = false)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub number: i64,
    pub at: DateTime<Utc>,
    /// The HTTP status, or the SMTP reply code; absent when nothing answered.
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    /// Stable across attempts: receivers deduplicate on it (`webhook-id`, `X-Notice-Id`).
    pub id: String,
    pub notice_id: String,
    pub brand_id: String,
    pub endpoint: String,
    pub kind: String,
    pub status: String,
    pub attempts: Vec<AttemptView>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveriesAnswer {
    pub deliveries: Vec<DeliveryView>,
}

/// Deliveries of notices, newest first, each with every attempt.
#[utoipa::path(get, path = "/api/v1/usage-billing/alerts/deliveries", tag = "alerts",
    params(DeliveriesQuery),
    responses((status = 200, body = DeliveriesAnswer),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "the brand is not registered, or the credential may not see it")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn deliveries(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<DeliveriesAnswer>, ApiError> {
    match &q.brand_id {
        Some(b) => caller.read(b)?,
        None => caller.admin()?,
    }
    if let Some(st) = &q.status {
        if ![DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_DEAD].contains(&st.as_str()) {
            return Err(ApiError::invalid(
                "invalid-status",
                "status must be pending, delivered or dead",
            ));
        }
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=DELIVERIES_LISTED_MAX).contains(&limit) {
        return Err(ApiError::invalid(
            "out-of-range",
            format!("limit must be 1 to {DELIVERIES_LISTED_MAX}"),
        ));
    }
    let rows = s
        .ledger
        .stores
        .outbox
        .deliveries(
            q.brand_id.as_ref().map(BrandId::as_str),
            q.status.as_deref(),
            limit.into(),
        )
        .await?;
    Ok(Json(DeliveriesAnswer {
        deliveries: rows
            .into_iter()
            .map(|(d, attempts)| DeliveryView {
                next_attempt_at: crate::notify::dispatch::next_attempt(&d),
                id: d.id,
                notice_id: d.notice_id,
                brand_id: d.brand_id,
                endpoint: d.endpoint,
                kind: d.kind,
                status: d.status,
                attempts: attempts
                    .into_iter()
                    .map(|a| AttemptView {
                        number: a.number,
                        at: a.at,
                        status_code: a.status_code,
                        error: a.error,
                        duration_ms: a.duration_ms,
                    })
                    .collect(),
                created_at: d.created_at,
            })
            .collect(),
    }))
}

/// Send a dead-lettered delivery again (its attempts start a new round).
#[utoipa::path(post, path = "/api/v1/usage-billing/alerts/deliveries/{id}/retry", tag = "alerts",
    params(("id" = String, Path)),
    responses((status = 202, description = "due again now"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "no dead-lettered delivery with this id"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = [])))]
pub(crate) async fn retry(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.admin()?;
    if !s
        .ledger
        .stores
        .outbox
        .revive(&id, s.ledger.engine.now())
        .await?
    {
        return Err(ApiError::not_found(format!(
            "no dead-lettered delivery {}",
            crate::engine::echo(&id)
        )));
    }
    s.dispatch.notify_one();
    Ok(StatusCode::ACCEPTED.into_response())
}
