//! The one HTTP error type. Every failure a handler can meet becomes an [`ApiError`],
//! and every [`ApiError`] is answered as `application/problem+json` (RFC 9457) with the
//! status its variant documents. Internal causes are logged, never sent.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ledger_aggregates::topup::TopUpError;
use ledger_aggregates::{BrandError, LedgerError, QuotaDecision};
use serde::Serialize;

use super::views::DecisionView;
use crate::auth::AuthError;
use crate::engine::EngineError;
use crate::ledger::topups::TopUpFailure;
use crate::stripe::client::StripeError;

/// The `type` of our problems: a stable URN per kind, so clients can branch on it
/// without parsing prose.
const PROBLEM_TYPE_PREFIX: &str = "urn:usage-ledger:problem:";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or a path/query parameter does not parse.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no credentials, or credentials that do not verify.
    #[error(transparent)]
    Unauthenticated(AuthError),
    /// 403: authenticated, but the role may not use this route.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource, or one the caller may not see (the two are answered alike).
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not with this method; axum adds the `Allow` header
    /// listing the methods it has (RFC 9110 §15.5.6).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 406: the `Accept` header allows none of the formats the route answers in.
    #[error("{0}")]
    NotAcceptable(String),
    /// 409: the request is valid but the ledger's state refuses it (a correction below
    /// zero, a brand's key list full).
    #[error("{0}")]
    Conflict(String),
    /// 409: the period's state refuses the request, with a type of its own a client can
    /// branch on: `period-not-ended` (a close before the period's end), `period-closed`
    /// (a change to a frozen invoice), `reservation-expired` and `reservation-not-held`
    /// (a commit or void of a hold that ended), `too-many-reservations`.
    #[error("{detail}")]
    PeriodState { kind: &'static str, detail: String },
    /// 409: a `block` quota refused the usage. The refusal itself is in the log.
    #[error("quota exceeded for {metric}")]
    QuotaExceeded {
        metric: String,
        decision: Box<QuotaDecision>,
    },
    /// 413: the body is larger than the named limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 415: the body is not sent as `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed JSON whose content is invalid (wrong type, missing field, out of
    /// range, unknown metric or plan, idempotency key reused with another payload).
    #[error("{detail}")]
    Invalid { kind: &'static str, detail: String },
    /// 502: a service the ledger calls (Stripe) refused what the ledger sent it.
    #[error("{0}")]
    BadGateway(String),
    /// 503: overloaded (retry shortly) or the store is unreachable.
    #[error("{detail}")]
    Unavailable {
        detail: String,
        retry_after_s: Option<u32>,
    },
    /// 429: this credential's request rate is spent; `Retry-After` says when to come back.
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after_s: u64 },
    /// 500: a defect or a corrupt log. Logged with its cause, answered opaquely.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(kind: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Invalid {
            kind,
            detail: detail.into(),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError::NotFound(detail.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(AuthError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::Conflict(_)
            | ApiError::PeriodState { .. }
            | ApiError::QuotaExceeded { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The short, stable name in the problem `type`.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Unauthenticated(AuthError::Unavailable(_)) => "unavailable",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed(_) => "method-not-allowed",
            ApiError::NotAcceptable(_) => "not-acceptable",
            ApiError::Conflict(_) => "conflict",
            ApiError::PeriodState { kind, .. } => kind,
            ApiError::QuotaExceeded { .. } => "quota-exceeded",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::Invalid { kind, .. } => kind,
            ApiError::BadGateway(_) => "payment-provider-refused",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::TooManyRequests { .. } => "rate-limited",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The problem document of this error, as sent.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = match self {
            ApiError::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        Problem {
            r#type: format!("{PROBLEM_TYPE_PREFIX}{}", self.kind()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            decision: match self {
                ApiError::QuotaExceeded { decision, .. } => Some(decision.as_ref().into()),
                _ => None,
            },
            request_id: super::request_id::current().map(|c| c.id),
        }
    }
}

/// An RFC 9457 problem document. `decision` is an extension member carried by
/// `quota-exceeded` so the caller sees the limit it hit; `requestId`, one carried by
/// every answer to a request, names the request in the service's logs.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Problem {
    pub r#type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionView>,
    /// The request's `X-Request-Id`, as in the answer header and the logs.
    #[serde(rename = "requestId", default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ApiError {
    /// Log what the problem document hides (internal causes) or what operators watch
    /// (outages). Called for every answer, and for per-item errors reported inside a larger answer.
    pub fn log(&self) {
        match self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                crate::telemetry::report_internal(cause, self.status().as_u16());
            }
            ApiError::Unavailable { detail, .. } => tracing::warn!(%detail, "unavailable"),
            ApiError::Unauthenticated(AuthError::Unavailable(cause)) => {
                tracing::warn!(%cause, "credential store unavailable")
            }
            _ => {}
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let problem = self.problem();
        let mut res = (self.status(), axum::Json(problem)).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::Unauthenticated(AuthError::Missing | AuthError::Invalid(_)) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable {
                retry_after_s: Some(s),
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*s));
            }
            ApiError::TooManyRequests { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            _ => {}
        }
        res
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Unauthenticated(e)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use crate::store::StoreError;
        match e {
            EngineError::Overloaded => ApiError::Unavailable {
                detail: e.to_string(),
                retry_after_s: Some(1),
            },
            EngineError::Stopped => ApiError::Unavailable {
                detail: e.to_string(),
                retry_after_s: Some(5),
            },
            EngineError::BrandNotRegistered(_) => ApiError::NotFound(e.to_string()),
            EngineError::BeforeRegistration(_) => {
                ApiError::invalid("before-registration", e.to_string())
            }
            EngineError::UnknownMetric(_) => ApiError::invalid("unknown-metric", e.to_string()),
            EngineError::UnknownPlan(_) => ApiError::invalid("unknown-plan", e.to_string()),
            EngineError::InFuture { .. } => ApiError::invalid("in-future", e.to_string()),
            EngineError::PeriodRequired => ApiError::invalid("period-required", e.to_string()),
            EngineError::NotEnded { .. } => ApiError::PeriodState {
                kind: "period-not-ended",
                detail: e.to_string(),
            },
            EngineError::KeyReuse(_) => ApiError::invalid("idempotency-key-reused", e.to_string()),
            EngineError::Ledger(l) => l.into(),
            EngineError::Brand(BrandError::TopUp(t)) => {
                let detail = t.to_string();
                match t {
                    TopUpError::Unknown(_) => ApiError::NotFound(detail),
                    TopUpError::TooManyPending | TopUpError::TooManyUnfinished => {
                        ApiError::PeriodState {
                            kind: "too-many-topups",
                            detail,
                        }
                    }
                    TopUpError::KeyReuse(_) => ApiError::invalid("idempotency-key-reused", detail),
                }
            }
            EngineError::Brand(BrandError::Settings(s)) => {
                ApiError::invalid("invalid-notifications", s.to_string())
            }
            EngineError::Brand(b) => ApiError::Internal(b.to_string()),
            EngineError::Store(s) => match s.as_ref() {
                StoreError::Unavailable(_) => ApiError::Unavailable {
                    detail: "the event store is unavailable; the command may or may not have \
                             been applied: retry with the same idempotency key"
                        .to_owned(),
                    retry_after_s: Some(1),
                },
                StoreError::Conflict(_) | StoreError::Corrupt(_) => {
                    ApiError::Internal(s.to_string())
                }
            },
        }
    }
}

impl From<TopUpFailure> for ApiError {
    fn from(e: TopUpFailure) -> Self {
        let detail = e.to_string();
        match e {
            TopUpFailure::NotConfigured(_) => ApiError::Unavailable {
                detail,
                retry_after_s: None,
            },
            TopUpFailure::NotCharged { .. } => ApiError::invalid("not-for-sale", detail),
            TopUpFailure::NotInPlan { .. } => ApiError::invalid("metric-not-in-plan", detail),
            TopUpFailure::BelowMinimum { .. } | TopUpFailure::AboveMaximum { .. } => {
                ApiError::invalid("amount-out-of-range", detail)
            }
            TopUpFailure::Redirect { .. } => ApiError::invalid("redirect-not-allowed", detail),
            TopUpFailure::Stripe(StripeError::Refused { .. }) => ApiError::BadGateway(detail),
            TopUpFailure::Stripe(StripeError::Unavailable(_)) => ApiError::Unavailable {
                detail,
                retry_after_s: Some(5),
            },
            TopUpFailure::Query(q) => q.into(),
            TopUpFailure::Engine(en) => en.into(),
        }
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        let detail = e.to_string();
        match e {
            LedgerError::TooLate { .. } => ApiError::invalid("too-late", detail),
            LedgerError::Closed(_) => ApiError::PeriodState {
                kind: "period-closed",
                detail,
            },
            LedgerError::WrongPeriod { .. } => ApiError::invalid("wrong-period", detail),
            LedgerError::UnknownMetric(_) => ApiError::invalid("unknown-metric", detail),
            LedgerError::NotAGauge { .. } => ApiError::invalid("not-a-gauge", detail),
            LedgerError::GaugeIsSet(metric) => ApiError::invalid(
                "gauge-is-set",
                format!(
                    "{metric} is a gauge: set its level with \
                     PUT {}/brands/{{brandId}}/gauges/{metric}",
                    super::API_PREFIX
                ),
            ),
            LedgerError::BelowZero { .. } | LedgerError::AboveBlockLimit { .. } => {
                ApiError::Conflict(detail)
            }
            LedgerError::BadAdjustment | LedgerError::BadLevel => {
                ApiError::invalid("out-of-range", detail)
            }
            LedgerError::TopUpOnUnlimited(_) => ApiError::invalid("unlimited-metric", detail),
            LedgerError::UnknownHold(_) => ApiError::NotFound(detail),
            LedgerError::HoldNotHeld(_) => ApiError::PeriodState {
                kind: "reservation-not-held",
                detail,
            },
            LedgerError::HoldExpired { .. } => ApiError::PeriodState {
                kind: "reservation-expired",
                detail,
            },
            LedgerError::TooManyHolds => ApiError::PeriodState {
                kind: "too-many-reservations",
                detail,
            },
            LedgerError::CommitAboveHold { .. } => ApiError::invalid("above-reservation", detail),
            // The engine opens periods itself; seeing these is a defect.
            LedgerError::NotOpened | LedgerError::AlreadyOpened => ApiError::Internal(detail),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::BadRequest(format!("malformed JSON: {}", e.body_text()))
            }
            JsonRejection::JsonDataError(e) => ApiError::invalid("invalid-body", e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "send the body as `Content-Type: application/json`".to_owned(),
            ),
            // `ApiJson` answers this one itself, with the configured limit in the text.
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the body exceeds the configured limit".to_owned())
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<crate::store::StoreError> for ApiError {
    /// Reads of the projections store fail like the engine's reads of the log.
    fn from(e: crate::store::StoreError) -> Self {
        EngineError::from(e).into()
    }
}

impl From<crate::tail::RowError> for ApiError {
    /// A stored read model that does not parse: a defect or a hand edit, which
    /// `usage-ledger replay verify` names and `replay rebuild` repairs.
    fn from(e: crate::tail::RowError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<crate::ledger::QueryError> for ApiError {
    fn from(e: crate::ledger::QueryError) -> Self {
        use crate::ledger::QueryError;
        use crate::tail::TailError;
        match e {
            QueryError::UnknownBrand(brand) => EngineError::BrandNotRegistered(brand).into(),
            QueryError::Engine(e) => e.into(),
            QueryError::Store(e) | QueryError::ReadModels(TailError::Store(e)) => e.into(),
            QueryError::ReadModels(e) => ApiError::Internal(e.to_string()),
            QueryError::Corrupt(detail) => ApiError::Internal(detail),
        }
    }
}
