//! The plan catalog: `GET /plans`, `GET /plans/{plan}`. Public: prices are no secret.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ledger_aggregates::{PlanDefinition, PlanId};

use super::error::{ApiError, Problem};
use super::extract::ApiPath;
use super::schema::PlanIdSchema;
use super::{AppState, API_PREFIX};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/plans"), get(list_plans))
        .route(&format!("{API_PREFIX}/plans/{{plan}}"), get(get_plan))
}

/// The catalog's plans in tier order.
#[utoipa::path(get, path = "/api/v1/usage-billing/plans", tag = "plans",
    responses((status = 200, body = Vec<Object>)))]
pub(crate) async fn list_plans(State(s): State<AppState>) -> Json<Vec<PlanDefinition>> {
    Json(s.ledger.engine.catalog().plans().to_vec())
}

/// An unknown plan is a 404, never the original's silent fallback to `starter`.
#[utoipa::path(get, path = "/api/v1/usage-billing/plans/{plan}", tag = "plans",
    params(("plan" = PlanIdSchema, Path)),
    responses((status = 200, body = Object), (status = 404, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_plan(
    State(s): State<AppState>,
    ApiPath(plan): ApiPath<String>,
) -> Result<Json<PlanDefinition>, ApiError> {
    PlanId::parse(&plan)
        .ok()
        .and_then(|id| s.ledger.engine.catalog().plan(&id).cloned())
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no plan named {plan:?} in the catalog")))
}
