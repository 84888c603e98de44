//! An example platform service guarded by `ledger-guard`: the original's render
//! controller (`POST /render/3d` with `@RequireQuota({metric: 'renders_3d', amountField:
//! 'count'})`), a long render job on a reservation, and a public API route that spends
//! `api_calls` and stays up during a ledger outage. `docs/guard.md` walks through it.
//!
//! # Layout
//!
//! - `auth`: the service's own authentication: a bearer token per caller, mapped to the
//!   brand it acts for, inserted as the guard's `BrandIdentity`.
//! - `jobs`: the render jobs of `POST /render/3d/jobs`, each settling its reservation.
//! - this file: [`router`], the routes and which guard each wears.

mod auth;
mod jobs;

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Json, Router};
use ledger_guard::{BrandIdentity, Guard, QuotaGrant, Reservation};
use serde::Deserialize;
use serde_json::json;

pub use auth::Callers;
pub use jobs::{JobSpec, JobStatus, Jobs, JobsFull, JOBS_MAX, JOB_DURATION_MS_MAX};

/// How long a render job's hold lasts: longer than any job this service runs
/// ([`JOB_DURATION_MS_MAX`]), so only a crashed job leaves it to expire.
pub const RENDER_JOB_HOLD: Duration = Duration::from_secs(600);

/// The service's routes, each guarded as the original's controller was, without its
/// defects: the brand is the caller's, never `body.brandId`.
pub fn router(guard: &Guard, callers: Callers) -> Router {
    let renders = Router::new()
        // Fail closed: a render costs real compute, and is refused while the ledger cannot say.
        .route(
            "/render/3d",
            post(render_3d).layer(guard.require("renders_3d").amount_field("count")),
        )
        .route(
            "/render/3d/jobs",
            post(start_job).layer(
                guard
                    .require("renders_3d")
                    .amount_field("count")
                    .reserve(RENDER_JOB_HOLD),
            ),
        )
        .route("/render/3d/jobs/{id}", get(job_status))
        .with_state(Jobs::new());
    // The public API counts every call, router-wide; a route that also names `api_calls`
    // (as the original's controller and method both did) still spends one per call.
    // Fail open: listing designs during a ledger blip matters more than an exact count,
    // and the spool replays the count once the ledger answers.
    let public_api = Router::new()
        .route(
            "/api/designs",
            get(list_designs).layer(guard.require("api_calls").fail_open()),
        )
        // `route_layer`: only requests that match a route spend (a 404 costs nothing).
        .route_layer(guard.require("api_calls").fail_open());
    Router::new()
        .merge(renders)
        .merge(public_api)
        .route("/healthz", get(|| async { "ok" }))
        .layer(middleware::from_fn_with_state(callers, auth::authenticate))
}

#[derive(Debug, Deserialize)]
struct RenderBody {
    /// Renders asked for; the guard has already spent exactly this many.
    count: u64,
    #[serde(default)]
    scene: Option<String>,
}

/// The renders themselves are out of scope: the answer says what was granted.
async fn render_3d(
    Extension(grant): Extension<QuotaGrant>,
    Json(body): Json<RenderBody>,
) -> Response {
    let remaining = grant.decision.as_ref().map(|d| d.remaining);
    let answer = json!({
        "brand": grant.brand.as_str(),
        "renders": body.count,
        "scene": body.scene,
        "spooled": grant.spooled,
        "remaining": remaining,
    });
    (StatusCode::CREATED, Json(answer)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobBody {
    count: u64,
    /// The job renders this many frames, then fails (a demonstration of a partial
    /// commit); all of them when absent; 0 voids the hold.
    #[serde(default)]
    succeed: Option<u64>,
    /// How long the job runs, at most [`JOB_DURATION_MS_MAX`].
    #[serde(default)]
    duration_ms: u64,
}

/// Take the hold and hand it to the job; 202 with the job's id. A full job table is a
/// 503 without taking the reservation, so the guard voids the hold.
async fn start_job(
    State(jobs): State<Jobs>,
    Extension(brand): Extension<BrandIdentity>,
    reservation: Reservation,
    Json(body): Json<JobBody>,
) -> Response {
    let spec = JobSpec {
        brand,
        frames: body.count,
        succeed: body.succeed.unwrap_or(body.count).min(body.count),
        duration: Duration::from_millis(body.duration_ms.min(JOB_DURATION_MS_MAX)),
    };
    let reservation_id = reservation.id().to_owned();
    match jobs.start(spec, reservation) {
        Ok(id) => (
            StatusCode::ACCEPTED,
            Json(json!({ "jobId": id, "reservationId": reservation_id, "held": body.count })),
        )
            .into_response(),
        // Not 2xx: the guard voids the hold this handler took, so nothing is counted.
        Err(JobsFull) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "too many jobs running; retry later" })),
        )
            .into_response(),
    }
}

async fn job_status(
    State(jobs): State<Jobs>,
    brand: Option<Extension<BrandIdentity>>,
    Path(id): Path<String>,
) -> Response {
    let Some(Extension(brand)) = brand else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match jobs.status(&brand, &id) {
        Some(status) => Json(status).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn list_designs(Extension(grant): Extension<QuotaGrant>) -> Json<serde_json::Value> {
    Json(json!({ "brand": grant.brand.as_str(), "designs": [], "spooled": grant.spooled }))
}
