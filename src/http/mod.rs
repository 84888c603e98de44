//! HTTP: the only module that speaks axum. One router per resource, merged here.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ledger_aggregates::{PlanDefinition, PlanId};

use crate::engine::Engine;
use crate::store::EventLog;

/// The original's prefix (`/api/v1` global prefix + `usage-billing` controller).
pub const API_PREFIX: &str = "/api/v1/usage-billing";

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub log: Arc<dyn EventLog>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(&format!("{API_PREFIX}/plans"), get(list_plans))
        .route(&format!("{API_PREFIX}/plans/{{plan}}"), get(get_plan))
        .with_state(state)
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the event store answers.
async fn readyz(State(s): State<AppState>) -> Response {
    match s.log.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness probe failed");
            (StatusCode::SERVICE_UNAVAILABLE, "event store unreachable").into_response()
        }
    }
}

async fn list_plans(State(s): State<AppState>) -> Json<Vec<PlanDefinition>> {
    Json(s.engine.catalog().plans().to_vec())
}

/// An unknown plan is a 404, never the original's silent fallback to `starter`.
async fn get_plan(State(s): State<AppState>, Path(plan): Path<String>) -> Response {
    let found = PlanId::parse(&plan)
        .ok()
        .and_then(|id| s.engine.catalog().plan(&id).cloned());
    match found {
        Some(p) => Json(p).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [("content-type", "application/problem+json")],
            Json(serde_json::json!({
                "type": "about:blank",
                "title": "Unknown plan",
                "status": 404,
                "detail": format!("no plan named {plan:?} in the catalog"),
            })),
        )
            .into_response(),
    }
}
