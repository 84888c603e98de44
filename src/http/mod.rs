//! HTTP: the only module that speaks axum. One router per resource, merged here.
//!
//! # Layout
//! - [`error`]: the one error type and its problem+json answers.
//! - [`extract`]: body, path and query extractors that answer problem+json, and the caller.
//! - [`views`]: response shapes shared by several routes.
//! - `usage`: record, record/batch, check-quota, gauge levels.
//! - `reservations`: holds for long jobs: reserve, commit, void.
//! - `reads`: summary, current, history, the audit trail.
//! - `admin`: brand plans and manual credit grants.
//! - `periods`: closing an ended period: every brand's invoice frozen.
//! - `finance`: a period's overage lines (charges, adjustments) and totals, JSON or CSV.
//! - `api_keys`: per-brand API keys.
//! - `plans`: the catalog.
//! - `whatif`: what-if answers: top-up simulation, plan comparison, projections, estimate, bill.
//! - `openapi`: the OpenAPI document generated from the handlers.

pub mod error;
pub mod extract;
pub mod views;

mod admin;
mod api_keys;
mod finance;
mod openapi;
mod periods;
mod plans;
mod reads;
mod reservations;
mod usage;
mod whatif;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::Authenticator;
use crate::engine::echo;
use crate::ledger::Ledger;
use error::ApiError;

pub use openapi::{ApiDoc, OPENAPI_PATH};
pub use periods::CLOSE_BRANDS_IN_FLIGHT_MAX;
pub use reads::{HISTORY_SCAN_EVENTS_MAX, PAGE_ITEMS_MAX};
pub use usage::RECORD_BATCH_ITEMS_MAX;

/// The original's prefix (`/api/v1` global prefix + `usage-billing` controller).
pub const API_PREFIX: &str = "/api/v1/usage-billing";

#[derive(Clone)]
pub struct AppState {
    /// The application layer every handler calls.
    pub ledger: Ledger,
    pub auth: Authenticator,
    /// Request bodies above this many bytes are refused with 413.
    pub body_bytes_max: usize,
}

pub fn router(state: AppState) -> Router {
    let body_bytes_max = state.body_bytes_max;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(openapi::OPENAPI_PATH, get(openapi::openapi_json))
        .merge(plans::router())
        .merge(usage::router())
        .merge(reservations::router())
        .merge(reads::router())
        .merge(admin::router())
        .merge(periods::router())
        .merge(finance::router())
        .merge(api_keys::router())
        .merge(whatif::router())
        // After every route: it applies to the routes registered before it.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(state)
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the event store answers.
async fn readyz(State(s): State<AppState>) -> Response {
    match s.ledger.stores.log.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness probe failed");
            (StatusCode::SERVICE_UNAVAILABLE, "event store unreachable").into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// A known route asked with a method it does not have. Axum sets `Allow` on the answer.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} does not answer {}; the Allow header lists the methods it does",
        echo(uri.path()),
        echo(method.as_str())
    ))
}
