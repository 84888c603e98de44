//! The guard's one error type and its one mapping to HTTP. Every variant documents the
//! status a guarded route answers with; every answer is `application/problem+json`
//! (RFC 9457). A ledger failure is never answered as "quota exceeded" (the original
//! turned every error into a 403 refusal, reference §7.24).

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

use crate::decision::{Decision, LedgerProblem};

/// The `type` of the guard's problems. Not the ledger's prefix: the caller should see
/// that the platform service's guard answered, not the ledger itself.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:ledger-guard:problem:";

/// Caller input quoted in an error is cut here, so a huge value cannot flood a log line
/// or an answer (the ledger's echo cap).
const ECHO_CHARS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// 401: the request carries no authenticated brand (the service's auth layer put no
    /// `BrandIdentity` in it). The guard never falls back to the body or the query.
    #[error("the request carries no authenticated brand identity")]
    Unauthenticated,
    /// 400: the amount is read from the body, and the body is not JSON.
    #[error("{0}")]
    MalformedBody(String),
    /// 413: the body is larger than the route's buffering limit.
    #[error("the body exceeds {limit_bytes} bytes")]
    BodyTooLarge { limit_bytes: usize },
    /// 422: the amount is missing, not a whole number, or out of range.
    #[error("{0}")]
    InvalidAmount(String),
    /// 402: the brand's quota refuses the amount. Carries the ledger's decision.
    #[error("quota exceeded for {metric}: {remaining} of {effective_limit} left, {amount} asked",
        remaining = decision.remaining, effective_limit = decision.effective_limit)]
    Refused {
        metric: String,
        amount: u64,
        decision: Box<Decision>,
    },
    /// 503 with `Retry-After`: the ledger is unreachable, timed out or answered 5xx, and
    /// the route fails closed (or its spool is full). Nothing is known to be counted.
    #[error("the usage ledger is unavailable: {detail}")]
    LedgerUnavailable { detail: String, retry_after_s: u32 },
    /// 422: the request id the caller sent was used before for a different request, so
    /// its idempotency key cannot be reused (the ledger's `idempotency-key-reused`).
    #[error("{0}")]
    KeyReused(String),
    /// 502: the ledger refused the guard's own call for a reason other than a quota: a bad
    /// or revoked credential, an unknown metric, an unregistered brand. Logged; the
    /// service's configuration needs a look, the caller cannot fix it.
    #[error("the usage ledger refused the guard's call ({status} {})", problem.kind())]
    LedgerRejected {
        status: u16,
        problem: Box<LedgerProblem>,
    },
    /// 502: the ledger answered something the guard cannot read.
    #[error("the usage ledger's answer does not parse: {0}")]
    LedgerProtocol(String),
    /// 409: an earlier request with this request's id already spent its quota, so it
    /// is not served again for free (a client reusing one `X-Request-Id` would otherwise
    /// get unlimited work counted once).
    #[error("a request with this id was already served and counted; send a new X-Request-Id")]
    DuplicateRequest,
    /// 429 with `Retry-After`: the brand has as many open holds as the ledger allows; one
    /// frees up when a running job commits or voids (the ledger's `too-many-reservations`).
    #[error("too many reservations are open for this brand: {0}")]
    TooManyReservations(String),
    /// 409 (to a job settling a reservation): the hold expired; the ledger released it.
    #[error("the reservation expired: {0}")]
    ReservationExpired(String),
    /// 409 (to a job settling a reservation): already committed or voided.
    #[error("the reservation is no longer held: {0}")]
    ReservationNotHeld(String),
    /// 500: the service is wired wrongly (no credential for the brand, a handler taking a
    /// `Reservation` on a route without `.reserve`). Logged.
    #[error("the quota guard is misconfigured: {0}")]
    Misconfigured(String),
}

impl GuardError {
    /// The status a guarded route answers with.
    pub fn status(&self) -> u16 {
        match self {
            GuardError::Unauthenticated => 401,
            GuardError::MalformedBody(_) => 400,
            GuardError::BodyTooLarge { .. } => 413,
            GuardError::InvalidAmount(_) | GuardError::KeyReused(_) => 422,
            GuardError::Refused { .. } => 402,
            GuardError::TooManyReservations(_) => 429,
            GuardError::LedgerUnavailable { .. } => 503,
            GuardError::LedgerRejected { .. } | GuardError::LedgerProtocol(_) => 502,
            GuardError::DuplicateRequest
            | GuardError::ReservationExpired(_)
            | GuardError::ReservationNotHeld(_) => 409,
            GuardError::Misconfigured(_) => 500,
        }
    }

    /// The short, stable name in the problem `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            GuardError::Unauthenticated => "unauthenticated",
            GuardError::MalformedBody(_) => "bad-request",
            GuardError::BodyTooLarge { .. } => "payload-too-large",
            GuardError::InvalidAmount(_) => "invalid-amount",
            GuardError::KeyReused(_) => "idempotency-key-reused",
            GuardError::Refused { .. } => "quota-exceeded",
            GuardError::TooManyReservations(_) => "too-many-reservations",
            GuardError::DuplicateRequest => "duplicate-request",
            GuardError::LedgerUnavailable { .. } => "ledger-unavailable",
            GuardError::LedgerRejected { .. } => "ledger-rejected",
            GuardError::LedgerProtocol(_) => "ledger-protocol",
            GuardError::ReservationExpired(_) => "reservation-expired",
            GuardError::ReservationNotHeld(_) => "reservation-not-held",
            GuardError::Misconfigured(_) => "internal",
        }
    }

    /// Whether a fail-open route may let the request through: only when the ledger could
    /// not be asked or could not answer, never for a refusal or a ledger 4xx.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, GuardError::LedgerUnavailable { .. })
    }

    /// The problem document, as sent.
    pub fn problem(&self) -> Problem {
        let status = StatusCode::from_u16(self.status()).expect("the statuses above are valid");
        let detail = match self {
            // The caller cannot act on the service's wiring; operators read the log.
            GuardError::Misconfigured(_) => {
                "an internal error occurred; it has been logged".to_owned()
            }
            GuardError::LedgerRejected { .. } | GuardError::LedgerProtocol(_) => {
                "the usage ledger refused this service's call; it has been logged".to_owned()
            }
            // The cause names the ledger's address: logged, not sent.
            GuardError::LedgerUnavailable { retry_after_s, .. } => format!(
                "the usage ledger is unavailable, so this request was not served; \
                 retry in {retry_after_s} s"
            ),
            other => other.to_string(),
        };
        let (metric, decision) = match self {
            GuardError::Refused {
                metric, decision, ..
            } => (Some(metric.clone()), Some(decision.as_ref().clone())),
            _ => (None, None),
        };
        Problem {
            r#type: format!("{PROBLEM_TYPE_PREFIX}{}", self.kind()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            metric,
            decision,
        }
    }

    /// Log what the answer hides or what operators watch.
    fn log(&self) {
        match self {
            GuardError::LedgerUnavailable { detail, .. } => {
                tracing::warn!(%detail, "usage ledger unavailable")
            }
            GuardError::LedgerRejected { status, problem } => tracing::error!(
                status, kind = problem.kind(), detail = %problem.detail,
                "usage ledger refused the guard's call"
            ),
            GuardError::LedgerProtocol(cause) => {
                tracing::error!(%cause, "usage ledger answer unreadable")
            }
            GuardError::Misconfigured(cause) => {
                tracing::error!(%cause, "quota guard misconfigured")
            }
            _ => {}
        }
    }
}

/// An RFC 9457 problem document. `metric` and `decision` are extension members carried
/// by `quota-exceeded`, so the caller sees the limit it hit.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Problem {
    pub r#type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

impl IntoResponse for GuardError {
    fn into_response(self) -> Response {
        self.log();
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).expect("a valid status");
        let mut res = (status, axum::Json(problem)).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            GuardError::LedgerUnavailable { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            GuardError::TooManyReservations(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(crate::client::RETRY_AFTER_S_DEFAULT),
                );
            }
            _ => {}
        }
        res
    }
}

/// At most [`ECHO_CHARS_MAX`] characters of caller input, then an ellipsis.
pub(crate) fn echo(input: &str) -> String {
    match input.char_indices().nth(ECHO_CHARS_MAX) {
        Some((cut, _)) => format!("{}…", &input[..cut]),
        None => input.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_outage_is_a_503_with_retry_after_never_a_refusal() {
        // Proves the original's defect is gone: an outage is not "quota exceeded".
        let res = GuardError::LedgerUnavailable {
            detail: "connection refused".to_owned(),
            retry_after_s: 5,
        }
        .into_response();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn an_outages_cause_stays_in_the_log() {
        // Proves the 503 does not tell the caller where the ledger lives.
        let p = GuardError::LedgerUnavailable {
            detail: "error sending request for url (http://10.0.0.7:3333/…)".to_owned(),
            retry_after_s: 5,
        }
        .problem();
        assert!(!p.detail.contains("10.0.0.7"), "{}", p.detail);
        assert!(p.detail.contains("retry in 5 s"), "{}", p.detail);
    }

    #[test]
    fn a_ledger_rejection_hides_its_cause_from_the_caller() {
        // Proves a bad credential's details reach the log, not the caller.
        let e = GuardError::LedgerRejected {
            status: 401,
            problem: Box::new(LedgerProblem {
                r#type: "urn:usage-ledger:problem:unauthenticated".to_owned(),
                title: "Unauthorized".to_owned(),
                status: 401,
                detail: "unknown API key ulk_1234".to_owned(),
                decision: None,
            }),
        };
        let p = e.problem();
        assert_eq!(p.status, 502);
        assert_eq!(p.r#type, "urn:ledger-guard:problem:ledger-rejected");
        assert!(!p.detail.contains("ulk_"), "{}", p.detail);
    }

    #[test]
    fn echoes_are_capped() {
        // Proves a long input is cut to the cap plus an ellipsis.
        assert_eq!(echo("short"), "short");
        assert_eq!(echo(&"x".repeat(100)).chars().count(), ECHO_CHARS_MAX + 1);
    }
}
