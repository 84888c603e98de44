//! The ledger's HTTP API as the guard uses it: consume quota (`POST /check-quota` with
//! `consume: true`), and hold, commit or void a reservation. Every call is bounded in
//! time, authenticated with the brand's credential, and its failures are classified
//! once, here: unavailable (retry later), refused, or rejected (the service's problem).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::RETRY_AFTER;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::credential::Credentials;
use crate::decision::{CheckAnswer, Committed, LedgerProblem, Reserved, Voided};
use crate::error::{echo, GuardError};
use crate::identity::BrandIdentity;

/// A whole ledger call, connection included. The ledger answers a consume in
/// milliseconds (one group commit); two seconds means it is in trouble, and the caller's
/// request should get its 503 rather than hang behind it.
pub const LEDGER_CALL_TIMEOUT_MS_MAX: u64 = 2_000;

/// Opening a connection to the ledger, on the same network: half a second is already
/// far past a healthy handshake, and leaves most of the call's budget to the answer.
pub const LEDGER_CONNECT_TIMEOUT_MS_MAX: u64 = 500;

/// Attempts per call. Every call carries an idempotency key, so a second attempt after a
/// failed connection or a reset mid-call (a ledger instance rolling over) cannot count
/// twice; never after a timeout, which has spent the caller's budget already.
pub const LEDGER_CALL_ATTEMPTS_MAX: u32 = 2;

/// `Retry-After` of a 503 when the ledger gave none: long enough for a restart, short
/// enough that a client does not give up on a blip.
pub const RETRY_AFTER_S_DEFAULT: u32 = 5;

/// The longest `Retry-After` passed on from the ledger; a larger one is clamped, so a
/// misconfigured ledger cannot tell clients to stay away for hours.
pub const RETRY_AFTER_S_MAX: u32 = 60;

/// The ledger's API prefix, as path segments.
const API_SEGMENTS: [&str; 3] = ["api", "v1", "usage-billing"];

/// A client of one ledger. Cheap to clone: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct LedgerClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: reqwest::Url,
    http: reqwest::Client,
    credentials: Credentials,
}

impl LedgerClient {
    /// A client of the ledger at `base_url` (`http://host:port`, without the API prefix).
    pub fn new(base_url: &str, credentials: Credentials) -> Result<Self, GuardError> {
        let base = reqwest::Url::parse(base_url)
            .ok()
            .filter(|u| !u.cannot_be_a_base() && matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                GuardError::Misconfigured(format!("the ledger URL {base_url:?} is not http(s)"))
            })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(LEDGER_CALL_TIMEOUT_MS_MAX))
            .connect_timeout(Duration::from_millis(LEDGER_CONNECT_TIMEOUT_MS_MAX))
            .build()
            .map_err(|e| GuardError::Misconfigured(format!("the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                base,
                http,
                credentials,
            }),
        })
    }

    /// Check `amount` units of `metric` for `brand` and consume them if allowed, in one
    /// decision, dated `served_at` (RFC 3339: the ledger's `occurredAt`, which picks the
    /// period). A refusal is an `Ok` answer with `allowed: false`; `replayed` means an
    /// earlier call spent this key (this call's own retry does not count).
    pub async fn consume(
        &self,
        brand: &BrandIdentity,
        metric: &str,
        amount: u64,
        (key, served_at): (&str, &str),
        metadata: &BTreeMap<String, String>,
    ) -> Result<CheckAnswer, GuardError> {
        let body = json!({
            "brandId": brand.as_str(),
            "metric": metric,
            "requestedAmount": amount,
            "consume": true,
            "occurredAt": served_at,
            "metadata": metadata,
        });
        let sent: Sent<CheckAnswer> = self
            .post_counted(brand, &["check-quota"], &body, key)
            .await?;
        let mut answer = sent.answer;
        answer.replayed = own_retry(answer.replayed, sent.retried);
        Ok(answer)
    }

    /// Hold `amount` units for at most `ttl_s` seconds. A hold that does not fit is
    /// [`GuardError::Refused`] with the ledger's decision.
    pub async fn reserve(
        &self,
        brand: &BrandIdentity,
        metric: &str,
        amount: u64,
        ttl_s: u32,
        key: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Reserved, GuardError> {
        let body = json!({
            "brandId": brand.as_str(),
            "metric": metric,
            "amount": amount,
            "ttlSeconds": ttl_s,
            "metadata": metadata,
        });
        let answer = self
            .post_counted::<Reserved>(brand, &["reservations"], &body, key)
            .await
            .map(|sent| Reserved {
                replayed: own_retry(sent.answer.replayed, sent.retried),
                ..sent.answer
            });
        match answer {
            Err(GuardError::LedgerRejected { problem, .. })
                if problem.kind() == "quota-exceeded" && problem.decision.is_some() =>
            {
                Err(GuardError::Refused {
                    metric: metric.to_owned(),
                    amount,
                    decision: Box::new(problem.decision.expect("checked just above")),
                })
            }
            other => other,
        }
    }

    /// Count `amount` units of the hold (all of it when `None`) and release the rest.
    /// The key is derived from the hold, so a retry whose first attempt was applied gets
    /// the first answer rather than `reservation-not-held`.
    pub async fn commit(
        &self,
        brand: &BrandIdentity,
        reservation_id: &str,
        amount: Option<u64>,
    ) -> Result<Committed, GuardError> {
        let body = match amount {
            Some(n) => json!({ "amount": n }),
            None => json!({}),
        };
        let path = ["reservations", reservation_id, "commit"];
        let key = format!("guard:commit:{reservation_id}");
        self.post(brand, &path, &body, &key).await
    }

    /// Release the whole hold; nothing is counted.
    pub async fn void(
        &self,
        brand: &BrandIdentity,
        reservation_id: &str,
    ) -> Result<Voided, GuardError> {
        let path = ["reservations", reservation_id, "void"];
        let key = format!("guard:void:{reservation_id}");
        self.post(brand, &path, &json!({}), &key).await
    }

    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("checked in new: the base can be a base")
            .pop_if_empty()
            .extend(API_SEGMENTS)
            .extend(segments);
        url
    }

    async fn post<T: DeserializeOwned>(
        &self,
        brand: &BrandIdentity,
        segments: &[&str],
        body: &serde_json::Value,
        key: &str,
    ) -> Result<T, GuardError> {
        self.post_counted(brand, segments, body, key)
            .await
            .map(|sent| sent.answer)
    }

    /// [`Self::post`], saying whether the answer came to a second attempt.
    async fn post_counted<T: DeserializeOwned>(
        &self,
        brand: &BrandIdentity,
        segments: &[&str],
        body: &serde_json::Value,
        key: &str,
    ) -> Result<Sent<T>, GuardError> {
        let credential = self.inner.credentials.for_brand(brand).ok_or_else(|| {
            GuardError::Misconfigured(format!("no ledger credential for brand {brand}"))
        })?;
        let url = self.url(segments);
        let mut attempt = 1;
        loop {
            let req = credential.apply(self.inner.http.post(url.clone()).json(body));
            match req.header("idempotency-key", key).send().await {
                Ok(res) => {
                    return read(res).await.map(|answer| Sent {
                        answer,
                        retried: attempt > 1,
                    })
                }
                // Safe to send again: the key makes the ledger apply it once.
                Err(e) if attempt < LEDGER_CALL_ATTEMPTS_MAX && !e.is_timeout() => {
                    tracing::debug!(error = %e, attempt, "ledger call failed; retrying");
                    attempt += 1;
                }
                Err(e) => return Err(unavailable(&e)),
            }
        }
    }
}

/// An answer, and whether the call was sent more than once to get it.
struct Sent<T> {
    answer: T,
    retried: bool,
}

/// A `replayed` answer to this call's own second attempt means its first attempt was
/// applied (and its answer lost), not that an earlier request spent the key: the
/// caller is told `replayed` only in the second case.
fn own_retry(replayed: bool, retried: bool) -> bool {
    replayed && !retried
}

fn unavailable(e: &reqwest::Error) -> GuardError {
    let what = match (e.is_timeout(), e.is_connect()) {
        (true, _) => "the call timed out",
        (false, true) => "no connection",
        _ => "the call failed",
    };
    GuardError::LedgerUnavailable {
        detail: format!("{what}: {e}"),
        retry_after_s: RETRY_AFTER_S_DEFAULT,
    }
}

/// Classify the ledger's answer: 2xx parsed, 5xx (and 408/429) unavailable, other 4xx
/// by their problem type.
async fn read<T: DeserializeOwned>(res: reqwest::Response) -> Result<T, GuardError> {
    let status = res.status().as_u16();
    let retry_after_s = res
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u32>().ok())
        .map_or(RETRY_AFTER_S_DEFAULT, |s| s.min(RETRY_AFTER_S_MAX));
    let bytes = res.bytes().await.map_err(|e| unavailable(&e))?;
    match status {
        200..=299 => serde_json::from_slice(&bytes)
            .map_err(|e| GuardError::LedgerProtocol(format!("a {status} answer: {e}"))),
        408 | 429 | 500..=599 => Err(GuardError::LedgerUnavailable {
            detail: format!("the ledger answered {status}"),
            retry_after_s,
        }),
        _ => Err(refusal(status, problem_of(status, &bytes))),
    }
}

fn problem_of(status: u16, bytes: &[u8]) -> LedgerProblem {
    serde_json::from_slice(bytes).unwrap_or_else(|_| LedgerProblem {
        r#type: String::new(),
        title: String::new(),
        status,
        detail: echo(&String::from_utf8_lossy(bytes)),
        decision: None,
    })
}

fn refusal(status: u16, problem: LedgerProblem) -> GuardError {
    match problem.kind() {
        "idempotency-key-reused" => GuardError::KeyReused(
            "this request's id was used before for a different request; send a new X-Request-Id"
                .to_owned(),
        ),
        "reservation-expired" => GuardError::ReservationExpired(problem.detail),
        "reservation-not-held" => GuardError::ReservationNotHeld(problem.detail),
        "too-many-reservations" => GuardError::TooManyReservations(problem.detail),
        _ => GuardError::LedgerRejected {
            status,
            problem: Box::new(problem),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Credential;

    fn client(base: &str) -> LedgerClient {
        LedgerClient::new(base, Credentials::one(Credential::api_key("k"))).unwrap()
    }

    #[test]
    fn urls_carry_the_prefix_and_encode_an_opaque_reservation_id() {
        // Proves a reservation id cannot break out of its path segment.
        let c = client("http://ledger:3333/");
        assert_eq!(
            c.url(&["reservations", "r/1?x", "commit"]).as_str(),
            "http://ledger:3333/api/v1/usage-billing/reservations/r%2F1%3Fx/commit"
        );
    }

    #[test]
    fn a_base_url_that_is_not_http_is_a_configuration_error() {
        // Proves a typo in the ledger URL fails at start-up, not on the first request.
        for bad in ["ledger:3333", "mailto:x@y", "not a url"] {
            assert!(
                LedgerClient::new(bad, Credentials::one(Credential::api_key("k"))).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn ledger_problems_are_classified_by_their_type() {
        // Proves a refused credential is not mistaken for a refusal of quota.
        let p = |kind: &str| LedgerProblem {
            r#type: format!("urn:usage-ledger:problem:{kind}"),
            title: String::new(),
            status: 409,
            detail: "d".to_owned(),
            decision: None,
        };
        assert!(matches!(
            refusal(422, p("idempotency-key-reused")),
            GuardError::KeyReused(_)
        ));
        assert!(matches!(
            refusal(409, p("reservation-expired")),
            GuardError::ReservationExpired(_)
        ));
        assert!(matches!(
            refusal(401, p("unauthenticated")),
            GuardError::LedgerRejected { status: 401, .. }
        ));
    }
}
