//! The live feed over WebSocket: a ticket asked with the caller's credentials, then
//! the upgrade that presents it (browsers cannot set headers on a WebSocket).
//!
//! A ticket is held in the memory of the instance that issued it: behind a load
//! balancer, open the socket on the same instance (sticky sessions) or ask the ticket
//! from the instance you connect to. Every instance follows the whole log, so any
//! instance serves every change. `docs/observability.md`, "Live feed".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use ledger_aggregates::{BrandId, PeriodKey, PlanDefinition};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiQuery, Caller};
use super::reads::{summary_answer, Summary};
use super::schema::{
    BrandIdSchema, ConnectionHeaderSchema, LiveBrandsSchema, PeriodKeySchema, PressureSchema,
    SequenceSchema, UpgradeHeaderSchema, WebSocketKeyHeaderSchema, WebSocketVersionHeaderSchema,
};
use super::{AppState, API_PREFIX};
use crate::auth::{AuthError, Role};
use crate::live::{
    Grant, Scope, Subscription, TicketError, Update, LIVE_BUFFER_MESSAGES, LIVE_HEARTBEAT,
    LIVE_PRESSURE_PERCENT_MAX, LIVE_PRESSURE_SNAPSHOT_BRANDS_MAX, LIVE_TICKET_BRANDS_MAX,
};

/// What a connection reads into at once: clients send pongs and close frames only.
pub const LIVE_READ_BUFFER_BYTES: usize = 4 * 1024;
/// What a connection writes before flushing: one summary message is a few KiB.
pub const LIVE_WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// The largest message a client may send: it sends nothing but control frames.
pub const LIVE_CLIENT_MESSAGE_BYTES_MAX: usize = 4 * 1024;
/// How long a closing frame may take to go out to a client that stopped reading.
pub const LIVE_CLOSE_WAIT: Duration = Duration::from_secs(1);
/// WebSocket close code of a client dropped for falling behind (RFC 6455 §7.4.1: 1008,
/// policy violation) and of a peer that stopped answering pings or a server stopping
/// (1001, going away).
const CLOSE_TOO_SLOW: u16 = 1008;
const CLOSE_GOING_AWAY: u16 = 1001;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{API_PREFIX}/live/tickets"), post(ticket))
        .route(&format!("{API_PREFIX}/live"), get(live))
}

/// What a ticket opens. A brand credential sends `{}` (its own brand) or its own id.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(max_properties = 1)]
pub struct TicketBody {
    /// The brands to follow (admins: any; a brand credential: only itself).
    #[schema(value_type = Option<LiveBrandsSchema>)]
    pub brands: Option<Vec<BrandId>>,
    /// Admins: follow every brand whose highest metric percentage is at least this.
    #[schema(value_type = Option<PressureSchema>)]
    pub pressure: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketAnswer {
    /// Single use, valid 30 seconds, on the instance that issued it only.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

/// Ask for a single-use ticket to open the live feed with.
#[utoipa::path(post, path = "/api/v1/usage-billing/live/tickets", tag = "live", request_body = TicketBody,
    responses((status = 201, body = TicketAnswer),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []), ("apiKey" = [])))]
pub(crate) async fn ticket(
    State(s): State<AppState>,
    caller: Caller,
    body: Option<ApiJson<TicketBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    let scope = scope_of(&s, &caller, body).await?;
    let grant = Grant {
        subject: caller.0.subject.clone(),
        scope,
    };
    let ticket = s
        .live
        .issue(grant, s.ledger.engine.now())
        .map_err(|e| ApiError::Unavailable {
            detail: e.to_string(),
            retry_after_s: Some(5),
        })?;
    let answer = TicketAnswer {
        ticket: ticket.ticket,
        expires_at: ticket.expires_at,
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// The scope a caller may have: services none, brands themselves, admins what they ask.
async fn scope_of(s: &AppState, caller: &Caller, body: TicketBody) -> Result<Scope, ApiError> {
    let principal = &caller.0;
    if principal.role == Role::Service {
        return Err(ApiError::Forbidden(
            "service credentials record usage and check quotas; they cannot follow the live feed"
                .to_owned(),
        ));
    }
    let brands = match (body.brands, body.pressure) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "invalid-live-scope",
                "ask for brands or for pressure, not both",
            ))
        }
        (None, Some(p)) => {
            caller.admin()?;
            if p > LIVE_PRESSURE_PERCENT_MAX {
                return Err(ApiError::invalid(
                    "invalid-live-scope",
                    format!("pressure is a percentage from 0 to {LIVE_PRESSURE_PERCENT_MAX}"),
                ));
            }
            return Ok(Scope::Pressure(Decimal::from(p)));
        }
        (Some(b), None) => b,
        (None, None) if principal.is_admin() => {
            return Err(ApiError::invalid(
                "invalid-live-scope",
                "admins ask for `brands` or a `pressure` threshold",
            ))
        }
        (None, None) => principal.brands.clone(),
    };
    if brands.is_empty() || brands.len() > LIVE_TICKET_BRANDS_MAX {
        return Err(ApiError::invalid(
            "invalid-live-scope",
            format!("follow 1 to {LIVE_TICKET_BRANDS_MAX} brands"),
        ));
    }
    let period = s.ledger.period_or_now(None);
    for brand in &brands {
        caller.read(brand)?;
        // An unknown brand is answered now, as every read answers it.
        s.ledger.summary(brand.clone(), period).await?;
    }
    let mut brands = brands;
    brands.sort();
    brands.dedup();
    Ok(Scope::Brands(brands))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiveQuery {
    /// A ticket from `POST /live/tickets`, single use. Without one the answer is 401.
    #[param(value_type = String, required = true)]
    pub ticket: Option<String>,
    /// The last `sequence` received, on a single-brand feed: no snapshot is sent on
    /// connect if the brand is still there.
    #[param(value_type = SequenceSchema, required = false)]
    pub resume: Option<u64>,
}

/// The live feed: upgrades to a WebSocket of `usage.quota.summary` text messages, a
/// snapshot of each brand in scope first, then one per brand per committed change.
#[utoipa::path(get, path = "/api/v1/usage-billing/live", tag = "live",
    params(LiveQuery,
        ("Upgrade" = UpgradeHeaderSchema, Header), ("Connection" = ConnectionHeaderSchema, Header),
        ("Sec-WebSocket-Version" = WebSocketVersionHeaderSchema, Header),
        ("Sec-WebSocket-Key" = WebSocketKeyHeaderSchema, Header)),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "not a WebSocket upgrade, or a malformed query"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "no ticket, or one that is unknown, used or expired"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "resume on a feed of several brands"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn live(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<LiveQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let refused =
        || ApiError::Unauthenticated(AuthError::Invalid(TicketError::Invalid.to_string()));
    let Some(ticket) = q.ticket else {
        return Err(refused());
    };
    let upgrade = upgrade
        .map_err(|e| ApiError::BadRequest(format!("this route upgrades to a WebSocket: {e}")))?;
    let Some(slot) = s.live.reserve_connection() else {
        return Err(ApiError::Unavailable {
            detail: "too many live connections on this instance".to_owned(),
            retry_after_s: Some(5),
        });
    };
    let grant = s
        .live
        .redeem(&ticket, s.ledger.engine.now())
        .map_err(|_| refused())?;
    if q.resume.is_some() && !matches!(&grant.scope, Scope::Brands(b) if b.len() == 1) {
        // A rule of the ticket's scope, which the query alone does not show: 422, not 400.
        return Err(ApiError::invalid(
            "invalid-resume",
            "resume applies to a single-brand feed",
        ));
    }
    tracing::debug!(subject = %grant.subject, scope = ?grant.scope, "live feed opened");
    // A client only answers pings: small buffers keep an idle connection cheap (the
    // defaults reserve 128 KiB to read each).
    let upgrade = upgrade
        .read_buffer_size(LIVE_READ_BUFFER_BYTES)
        .write_buffer_size(LIVE_WRITE_BUFFER_BYTES)
        .max_message_size(LIVE_CLIENT_MESSAGE_BYTES_MAX)
        .max_frame_size(LIVE_CLIENT_MESSAGE_BYTES_MAX);
    Ok(upgrade.on_upgrade(move |socket| async move {
        let sub = s.live.subscribe(slot, grant.scope);
        Connection::new(s, socket, sub).serve(q.resume).await;
    }))
}

/// The message of one brand-period's summary.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveMessage {
    /// Always `usage.quota.summary`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[schema(value_type = BrandIdSchema)]
    pub brand_id: BrandId,
    #[schema(value_type = PeriodKeySchema)]
    pub period: PeriodKey,
    #[schema(value_type = Object)]
    #[serde(serialize_with = "super::reads::shared_plan")]
    pub plan: std::sync::Arc<PlanDefinition>,
    /// What `GET /summary/{brandId}` answers under `summary`.
    pub summary: Summary,
    /// The last sequence of the brand-period stream the summary holds.
    pub sequence: u64,
}

fn render(s: &AppState, update: &Update) -> String {
    let answer = summary_answer(s, update.summary.clone());
    let message = LiveMessage {
        kind: "usage.quota.summary",
        brand_id: update.summary.brand.clone(),
        period: update.summary.period,
        plan: answer.plan,
        summary: answer.summary,
        sequence: update.sequence,
    };
    serde_json::to_string(&message).expect("a live message serializes")
}

/// Why a connection ended.
enum End {
    Gone,
    Close(u16, String),
}

struct Connection {
    s: AppState,
    socket: WebSocket,
    sub: Subscription,
    /// The sequence last sent per brand-period: an update the snapshot already holds
    /// is not sent again.
    sent: HashMap<(BrandId, PeriodKey), u64>,
}

impl Connection {
    fn new(s: AppState, socket: WebSocket, sub: Subscription) -> Self {
        Self {
            s,
            socket,
            sub,
            sent: HashMap::new(),
        }
    }

    async fn serve(mut self, resume: Option<u64>) {
        let end = match self.snapshot(resume).await {
            Ok(()) => self.follow().await,
            Err(end) => end,
        };
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let close = self.socket.send(Message::Close(Some(frame)));
            let _ = tokio::time::timeout(LIVE_CLOSE_WAIT, close).await;
        }
    }

    /// A summary of every brand in scope, unless the client resumes where it stands.
    async fn snapshot(&mut self, resume: Option<u64>) -> Result<(), End> {
        let s = self.s.clone();
        let ledger = &s.ledger;
        let period = ledger.period_or_now(None);
        let brands = match self.sub.scope() {
            Scope::Brands(brands) => brands.clone(),
            Scope::Pressure(threshold) => crate::live::pressed(
                ledger,
                period,
                *threshold,
                LIVE_PRESSURE_SNAPSHOT_BRANDS_MAX,
            )
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no pressure snapshot");
                Vec::new()
            }),
        };
        for brand in brands {
            let summary = match ledger.summary_sequenced(brand.clone(), period).await {
                Ok(summary) => summary,
                Err(e) => {
                    tracing::warn!(%brand, error = %e, "no live snapshot");
                    continue;
                }
            };
            if resume == Some(summary.sequence) {
                self.sent.insert((brand, period), summary.sequence);
                continue;
            }
            let update = Arc::new(Update::new(summary.summary, summary.sequence));
            self.send(&update).await?;
        }
        self.s
            .live
            .metrics
            .last_snapshot
            .set(Utc::now().timestamp());
        Ok(())
    }

    /// Updates, heartbeats and the client's frames until one side ends.
    async fn follow(&mut self) -> End {
        let mut heartbeat = tokio::time::interval(LIVE_HEARTBEAT);
        heartbeat.tick().await;
        let mut answered = true;
        let mut closing = self.s.live.closing();
        loop {
            tokio::select! {
                update = self.sub.updates.recv() => {
                    let Some(update) = update else { return End::Gone };
                    if let Err(end) = self.send(&update).await {
                        return end;
                    }
                }
                () = self.sub.kicked.notified() => return too_slow(),
                _ = heartbeat.tick() => {
                    if !answered {
                        return End::Close(CLOSE_GOING_AWAY, "no answer to the last ping".to_owned());
                    }
                    answered = false;
                    if self.socket.send(Message::Ping(Default::default())).await.is_err() {
                        return End::Gone;
                    }
                }
                frame = self.socket.recv() => match frame {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::Gone,
                    Some(Ok(_)) => answered = true,
                },
                _ = closing.changed() => return End::Close(CLOSE_GOING_AWAY, "the server is stopping".to_owned()),
            }
        }
    }

    /// Send `update` unless the client has it already; a kick while the socket is
    /// blocked ends the connection.
    async fn send(&mut self, update: &Arc<Update>) -> Result<(), End> {
        let key = (update.brand().clone(), update.period());
        if self
            .sent
            .get(&key)
            .is_some_and(|&seq| seq >= update.sequence)
        {
            return Ok(());
        }
        let text = update.text(|u| render(&self.s, u));
        let sent = tokio::select! {
            sent = self.socket.send(Message::Text(text.to_string().into())) => sent,
            () = self.sub.kicked.notified() => return Err(too_slow()),
        };
        if sent.is_err() {
            self.s.live.metrics.broadcast_failures.inc();
            return Err(End::Gone);
        }
        self.sent.insert(key, update.sequence);
        Ok(())
    }
}

/// A client dropped for falling behind, told why (a close reason is under 123 bytes).
fn too_slow() -> End {
    let reason = format!("fell behind: more than {LIVE_BUFFER_MESSAGES} messages waiting");
    End::Close(CLOSE_TOO_SLOW, reason)
}
