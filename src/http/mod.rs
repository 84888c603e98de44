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
//! - `notifications`: where a brand's notices go; the deliveries and their attempts.
//! - `live`: the live feed: tickets, and the WebSocket of committed summaries.
//! - `topups`: top-ups bought through Stripe Checkout, Stripe's webhook, the history.
//! - `whatif`: what-if answers: top-up simulation, plan comparison, projections, estimate, bill.
//! - `openapi`: the OpenAPI document generated from the handlers.
//! - `schema`: the document's schemas of the domain's newtypes and named limits.
//! - `metrics`: `GET /metrics` (Prometheus text) and the middleware counting requests.
//! - [`request_id`]: `X-Request-Id`: taken or made, in the request's span, echoed.
//! - [`rate`]: per-credential request rate limits (429).
//! - [`server`]: the connection loop: header and idle timeouts, the connection cap, the drain.

pub mod error;
pub mod extract;
pub mod server;
pub mod views;

mod admin;
mod api_keys;
mod finance;
mod live;
mod metrics;
mod notifications;
mod openapi;
mod periods;
mod plans;
pub mod rate;
mod reads;
pub mod request_id;
mod reservations;
mod schema;
mod topups;
mod usage;
mod whatif;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
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

/// What every handler reads, shared: extracting `State` clones it once per request,
/// and a clone of the fields themselves (dozens of reference counts) was ~8 % of the
/// service's CPU under `GET /healthz` (`perf`).
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(std::sync::Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    /// The application layer every handler calls.
    pub ledger: Ledger,
    pub auth: Authenticator,
    /// Request bodies above this many bytes are refused with 413.
    pub body_bytes_max: usize,
    /// A request not answered within this gets a 503; `close` gets the longer one.
    pub request_timeout: std::time::Duration,
    pub close_timeout: std::time::Duration,
    /// Set when shutdown begins: readiness answers 503 so load balancers move away
    /// while requests in flight finish.
    pub draining: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The bearer token of `GET /metrics`; without one, an admin credential is needed.
    pub metrics_token: Option<crate::secret::Secret>,
    /// Brands shown in per-brand gauges at most.
    pub brand_series_max: usize,
    /// Per-credential request rates; `None`: unlimited.
    pub rates: Option<std::sync::Arc<rate::CredentialRates>>,
    /// Which receivers brands may configure for their notices.
    pub url_rules: crate::notify::settings::UrlRules,
    /// Wakes the notices' dispatcher (a dead letter revived).
    pub dispatch: std::sync::Arc<tokio::sync::Notify>,
    /// The log consumers besides the read models', for their lag in `/metrics`.
    pub consumers: Vec<(&'static str, crate::tail::Tail)>,
    /// The live feed's tickets and connections, fed by its log consumer.
    pub live: std::sync::Arc<crate::live::Hub>,
}

pub fn router(state: AppState) -> Router {
    let body_bytes_max = state.body_bytes_max;
    let (request, close) = (state.request_timeout, state.close_timeout);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route(openapi::OPENAPI_PATH, get(openapi::openapi_json))
        .merge(plans::router())
        .merge(usage::router())
        .merge(reservations::router())
        .merge(reads::router())
        .merge(admin::router())
        .merge(finance::router())
        .merge(api_keys::router())
        .merge(whatif::router())
        .merge(topups::router())
        .merge(notifications::router())
        .merge(live::router())
        // A layer applies to the routes registered before it: the close, which freezes
        // every brand's invoice in one request, gets its own longer bound.
        .layer(from_fn_with_state(request, bounded))
        .merge(periods::router().layer(from_fn_with_state(close, bounded)))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(from_fn_with_state(state.metrics.clone(), metrics::count))
        .layer(DefaultBodyLimit::max(body_bytes_max))
        // Outermost, so the timeout's and the fallbacks' problems carry the id too.
        .layer(from_fn(request_id::layer))
        .with_state(state)
}

/// Answer 503 when a request (its body read included) takes longer than `bound`: a
/// client trickling its body, or a store that stopped answering, does not hold a
/// connection and a task for ever.
async fn bounded(
    State(bound): State<std::time::Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(bound, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::Unavailable {
            detail: format!(
                "the request did not complete within {} ms; a write may or may not have been \
                 applied: retry with the same idempotency key",
                bound.as_millis()
            ),
            retry_after_s: Some(1),
        }
        .into_response(),
    }
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the event store answers.
async fn readyz(State(s): State<AppState>) -> Response {
    if s.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
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
