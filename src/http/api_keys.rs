//! Admin routes for a brand's API keys: create (the key is shown once), list, revoke.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ledger_aggregates::BrandId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{unknown_brand, ApiJson, ApiPath, Caller};
use super::schema::{BrandIdSchema, KeyLabelSchema};
use super::{AppState, API_PREFIX};
use crate::auth::api_keys::{ApiKeyError, CreateApiKey, KeyLabel};
use crate::store::{ApiKeyInfo, StoreError};

pub fn router() -> Router<AppState> {
    let keys = format!("{API_PREFIX}/brands/{{brand}}/api-keys");
    Router::new()
        .route(&keys, post(create).get(list))
        .route(&format!("{keys}/{{key}}"), delete(revoke))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[schema(value_type = KeyLabelSchema)]
    pub label: String,
}

/// The answer to a creation: the only time `key` is ever sent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    pub id: Uuid,
    pub key: String,
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    pub label: String,
    pub created_at: DateTime<Utc>,
}

/// 201 with the key. The brand must be registered: a key for a typo would authenticate
/// a caller that can meter nothing.
#[utoipa::path(post, path = "/api/v1/usage-billing/brands/{brandId}/api-keys", tag = "admin",
    params(("brandId" = BrandIdSchema, Path)), request_body = CreateBody,
    responses((status = 201, body = CreatedKey, description = "the key, shown this once"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "the brand already holds the most active keys"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "invalid label")),
    security(("bearer" = [])))]
pub(crate) async fn create(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    caller.admin()?;
    let label = KeyLabel::parse(&body.label).map_err(|e| ApiError::invalid("invalid-label", e))?;
    if s.ledger.engine.brand_state(brand.clone()).await?.is_none() {
        return Err(unknown_brand(&brand));
    }
    let (info, key) = s
        .auth
        .keys()
        .create(&brand, &label, &caller.0.subject)
        .await
        .map_err(key_error)?;
    tracing::info!(key_id = %info.id, brand = %brand, by = %caller.0.subject, "API key created");
    let created = CreatedKey {
        id: info.id,
        key: key.expose().to_owned(),
        brand_id: info.brand_id,
        label: info.label,
        created_at: info.created_at,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Every key of the brand, revoked ones included, newest first; never a secret or a hash.
/// An unregistered brand is a 404, as for a creation: it has no key list to read.
#[utoipa::path(get, path = "/api/v1/usage-billing/brands/{brandId}/api-keys", tag = "admin",
    params(("brandId" = BrandIdSchema, Path)),
    responses((status = 200, body = Vec<Object>, description = "id, brandId, label, createdAt, createdBy, revokedAt"),
        (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub(crate) async fn list(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath(brand): ApiPath<BrandId>,
) -> Result<Json<Vec<ApiKeyInfo>>, ApiError> {
    caller.admin()?;
    if s.ledger.engine.brand_state(brand.clone()).await?.is_none() {
        return Err(unknown_brand(&brand));
    }
    let keys = s.auth.keys().list(&brand).await.map_err(store_error)?;
    Ok(Json(keys))
}

/// 204 once revoked; 404 for a key that is unknown, of another brand, or already revoked.
/// The revocation is effective in this process before the answer is sent.
#[utoipa::path(delete, path = "/api/v1/usage-billing/brands/{brandId}/api-keys/{keyId}", tag = "admin",
    params(("brandId" = BrandIdSchema, Path), ("keyId" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "the credential's role may not use this route")),
    security(("bearer" = [])))]
pub(crate) async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    ApiPath((brand, id)): ApiPath<(BrandId, Uuid)>,
) -> Result<StatusCode, ApiError> {
    caller.admin()?;
    match s
        .auth
        .keys()
        .revoke(&brand, id)
        .await
        .map_err(store_error)?
    {
        true => {
            tracing::info!(key_id = %id, brand = %brand, by = %caller.0.subject, "API key revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        false => Err(ApiError::not_found(format!(
            "brand {brand} has no active API key {id}"
        ))),
    }
}

fn key_error(e: ApiKeyError) -> ApiError {
    match e {
        ApiKeyError::TooManyKeys(_) => ApiError::Conflict(e.to_string()),
        ApiKeyError::NoRandomness(_) => ApiError::Internal(e.to_string()),
        ApiKeyError::Store(s) => store_error(s),
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(cause) => {
            tracing::warn!(%cause, "API key store unavailable");
            ApiError::Unavailable {
                detail: "the key store is unavailable".to_owned(),
                retry_after_s: Some(1),
            }
        }
        other => ApiError::Internal(other.to_string()),
    }
}
