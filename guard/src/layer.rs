//! [`Guard`], the per-service handle on the ledger, and [`RequireQuota`], the
//! `tower::Layer` a route wears. The layer decides before the handler runs, atomically:
//! the ledger checks and consumes in one decision, so concurrent requests cannot all
//! pass on the same remaining quota (the original only read, reference §7.1).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Extensions, HeaderName, Request};
use tower::{Layer, Service};

use crate::amount::AmountSource;
use crate::client::{LedgerClient, RETRY_AFTER_S_DEFAULT};
use crate::credential::Credentials;
use crate::decision::Decision;
use crate::error::GuardError;
use crate::identity::{BrandIdentity, IdentitySource};
use crate::reservation::{Reservation, ReservationSlot};
use crate::spool::{self, Spool, SpoolEntry, Unspooled, SPOOL_ENTRIES_MAX};

/// Bytes of a body the guard buffers to read an amount from it. Bodies that carry an
/// amount are small JSON commands; a megabyte is ample and bounds the memory a request
/// can make the guard hold (the ledger's own body limit).
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// The request id header whose value, when present, derives the idempotency key, so a
/// client (or proxy) retrying a request with the same id is counted once.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id used for a key: with the brand and metric it stays inside the
/// ledger's 255-character keys. A longer or non-ASCII id is ignored (a fresh key is used).
pub const REQUEST_ID_LEN_MAX: usize = 128;

/// The ledger's longest reservation: a day. A job longer than that should reserve per step.
pub const RESERVATION_TTL_S_MAX: u32 = 86_400;

/// What [`Guard::start`] needs: where the ledger is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    ledger_url: String,
    credentials: Credentials,
    spool_entries_max: usize,
}

impl GuardConfig {
    pub fn new(ledger_url: impl Into<String>, credentials: Credentials) -> Self {
        Self {
            ledger_url: ledger_url.into(),
            credentials,
            spool_entries_max: SPOOL_ENTRIES_MAX,
        }
    }

    /// A smaller (or larger) spool than [`SPOOL_ENTRIES_MAX`].
    pub fn spool_entries_max(mut self, entries: usize) -> Self {
        self.spool_entries_max = entries;
        self
    }
}

/// A service's handle on the ledger: the client, the fail-open spool and its replayer.
/// Start one per service and derive every route's layer from it. Cheap to clone; the
/// replayer stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Guard {
    inner: Arc<GuardInner>,
}

#[derive(Debug)]
struct GuardInner {
    client: LedgerClient,
    spool: Arc<Spool>,
    replayer: tokio::task::JoinHandle<()>,
}

impl Drop for GuardInner {
    fn drop(&mut self) {
        self.replayer.abort();
    }
}

impl Guard {
    /// Build the client and start the replayer (on the current tokio runtime).
    pub fn start(config: GuardConfig) -> Result<Self, GuardError> {
        let client = LedgerClient::new(&config.ledger_url, config.credentials)?;
        let spool = Spool::new(config.spool_entries_max);
        let replayer = tokio::spawn(spool::replay(spool.clone(), client.clone()));
        Ok(Self {
            inner: Arc::new(GuardInner {
                client,
                spool,
                replayer,
            }),
        })
    }

    /// The layer of a route spending `metric` (the original's `@RequireQuota({metric})`).
    pub fn require(&self, metric: &str) -> RequireQuota {
        RequireQuota::new(self, metric)
    }

    /// The ledger client, for calls a service makes itself.
    pub fn client(&self) -> &LedgerClient {
        &self.inner.client
    }

    /// The fail-open spool: its length, entries and statistics, and [`Spool::drained`]
    /// for a graceful shutdown.
    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }
}

/// The layer of one guarded route. Built with [`Guard::require`], then:
/// `.amount_field("count")` or `.amount(|parts, body| …)` (default 1 unit),
/// `.brand_from(|parts| …)` (default: the [`BrandIdentity`] extension),
/// `.fail_open()` (default fail closed), or `.reserve(ttl)` for long jobs.
#[derive(Clone)]
pub struct RequireQuota {
    config: Arc<RouteConfig>,
}

#[derive(Clone)]
struct RouteConfig {
    guard: Guard,
    metric: String,
    amount: AmountSource,
    identity: IdentitySource,
    /// Let requests through when the ledger is unavailable, spooling their usage.
    fail_open: bool,
    /// Hold instead of consuming, for this many seconds.
    reserve_ttl_s: Option<u32>,
    body_bytes_max: usize,
    request_id_header: HeaderName,
}

impl RequireQuota {
    pub fn new(guard: &Guard, metric: &str) -> Self {
        Self {
            config: Arc::new(RouteConfig {
                guard: guard.clone(),
                metric: metric.to_owned(),
                amount: AmountSource::One,
                identity: IdentitySource::Extension,
                fail_open: false,
                reserve_ttl_s: None,
                body_bytes_max: BODY_BYTES_MAX,
                request_id_header: HeaderName::from_static(REQUEST_ID_HEADER),
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut RouteConfig)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The amount is the whole number at this dot path of the JSON body (the original's
    /// `amountField`). The guard buffers the body and hands the handler the same bytes.
    pub fn amount_field(self, path: &str) -> Self {
        let amount = AmountSource::field(path);
        self.with(|c| c.amount = amount)
    }

    /// The amount is computed from the request head and the buffered body; an `Err` is
    /// answered 422 with its text.
    pub fn amount(
        self,
        f: impl Fn(&Parts, &[u8]) -> Result<u64, String> + Send + Sync + 'static,
    ) -> Self {
        self.with(|c| c.amount = AmountSource::Closure(Arc::new(f)))
    }

    /// The brand is what this closure finds in the request head (the service's own
    /// principal type, say); `None` is a 401. It never sees the body.
    pub fn brand_from(
        self,
        f: impl Fn(&Parts) -> Option<BrandIdentity> + Send + Sync + 'static,
    ) -> Self {
        self.with(|c| c.identity = IdentitySource::Closure(Arc::new(f)))
    }

    /// When the ledger is unavailable, let the request through and spool its usage for
    /// replay. For routes where serving matters more than exact enforcement.
    pub fn fail_open(self) -> Self {
        assert!(
            self.config.reserve_ttl_s.is_none(),
            "a reserving route fails closed: a hold cannot be spooled"
        );
        self.with(|c| c.fail_open = true)
    }

    /// Hold the amount for at most `ttl` (whole seconds, 1 s to a day) instead of
    /// consuming it; the handler takes the [`Reservation`] and its job commits or voids it.
    pub fn reserve(self, ttl: Duration) -> Self {
        let ttl_s = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
        assert!(
            (1..=RESERVATION_TTL_S_MAX).contains(&ttl_s) && ttl.subsec_nanos() == 0,
            "reserve({ttl:?}): whole seconds, 1 to {RESERVATION_TTL_S_MAX}"
        );
        assert!(
            !self.config.fail_open,
            "a reserving route fails closed: a hold cannot be spooled"
        );
        self.with(|c| c.reserve_ttl_s = Some(ttl_s))
    }

    /// A body limit other than [`BODY_BYTES_MAX`] for this route.
    pub fn body_bytes_max(self, bytes: usize) -> Self {
        self.with(|c| c.body_bytes_max = bytes)
    }

    /// A request id header other than [`REQUEST_ID_HEADER`].
    pub fn request_id_header(self, name: HeaderName) -> Self {
        self.with(|c| c.request_id_header = name)
    }
}

impl<S> Layer<S> for RequireQuota {
    type Service = QuotaService<S>;

    fn layer(&self, inner: S) -> QuotaService<S> {
        QuotaService {
            config: self.config.clone(),
            inner,
        }
    }
}

/// What the guard granted, in the request's extensions for the handler (the original's
/// `request.quotaCheck`, for logs and audit).
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaGrant {
    pub brand: BrandIdentity,
    pub metric: String,
    pub amount: u64,
    /// The key the consumption (or hold) was sent with.
    pub idempotency_key: String,
    /// The ledger's decision; `None` when the usage was spooled.
    pub decision: Option<Decision>,
    /// True when the ledger was unavailable and the usage waits in the spool.
    pub spooled: bool,
}

/// The metrics a request has been guarded for, so a route layered twice (a router-wide
/// layer and a route's own) spends each metric once (the original ran twice, §7.14).
#[derive(Clone, Default)]
struct GuardedMetrics(Vec<String>);

/// Record that the request is guarded for `metric`; false when it already was.
fn mark_once(extensions: &mut Extensions, metric: &str) -> bool {
    let guarded = extensions.get_or_insert_default::<GuardedMetrics>();
    if guarded.0.iter().any(|m| m == metric) {
        return false;
    }
    guarded.0.push(metric.to_owned());
    true
}

/// The service of a guarded route.
#[derive(Clone)]
pub struct QuotaService<S> {
    config: Arc<RouteConfig>,
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for QuotaService<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this request (tower's usual swap).
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(config.run(ready, req))
    }
}

impl RouteConfig {
    async fn run<S>(self: Arc<Self>, mut inner: S, req: Request<Body>) -> Result<Response, S::Error>
    where
        S: Service<Request<Body>, Response = Response>,
    {
        let (mut parts, body) = req.into_parts();
        if !mark_once(&mut parts.extensions, &self.metric) {
            return inner.call(Request::from_parts(parts, body)).await;
        }
        let (body, slot) = match self.admit(&mut parts, body).await {
            Ok(admitted) => admitted,
            Err(e) => return Ok(e.into_response()),
        };
        let res = inner.call(Request::from_parts(parts, body)).await?;
        if let Some(slot) = slot {
            settle(&slot, res.status()).await;
        }
        Ok(res)
    }

    /// Decide before the handler: identity, amount, then the ledger. On success the
    /// grant (and a reservation) are in the extensions and the body is handed back.
    async fn admit(
        &self,
        parts: &mut Parts,
        body: Body,
    ) -> Result<(Body, Option<ReservationSlot>), GuardError> {
        let brand = self
            .identity
            .resolve(parts)
            .ok_or(GuardError::Unauthenticated)?;
        let (amount, body) = self.amount_of(parts, body).await?;
        let request_id = request_id(parts, &self.request_id_header);
        let key = idempotency_key(&brand, &self.metric, request_id);
        let metadata = metadata(request_id);
        let ask = Ask {
            brand,
            amount,
            key,
            metadata,
            served_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        let slot = match self.reserve_ttl_s {
            Some(ttl_s) => Some(self.reserve(parts, ask, ttl_s).await?),
            None => {
                let grant = self.consume(ask).await?;
                parts.extensions.insert(grant);
                None
            }
        };
        Ok((body, slot))
    }

    async fn amount_of(&self, parts: &Parts, body: Body) -> Result<(u64, Body), GuardError> {
        if !self.amount.needs_body() {
            return Ok((self.amount.amount(parts, &[])?, body));
        }
        let bytes = buffer(body, self.body_bytes_max).await?;
        let amount = self.amount.amount(parts, &bytes)?;
        Ok((amount, Body::from(bytes)))
    }

    async fn consume(&self, ask: Ask) -> Result<QuotaGrant, GuardError> {
        let client = self.guard.client();
        let answer = client
            .consume(
                &ask.brand,
                &self.metric,
                ask.amount,
                (&ask.key, &ask.served_at),
                &ask.metadata,
            )
            .await;
        match answer {
            Ok(a) if !a.decision.allowed => Err(GuardError::Refused {
                metric: self.metric.clone(),
                amount: ask.amount,
                decision: Box::new(a.decision),
            }),
            // Counted for an earlier request with this id: serving it again would be free.
            // A key known with another request (a later `occurredAt`, or another body
            // of the same id) is the same case.
            Ok(a) if a.replayed => Err(GuardError::DuplicateRequest),
            Err(GuardError::KeyReused(_)) => Err(GuardError::DuplicateRequest),
            Ok(a) => Ok(self.grant(ask, Some(a.decision), false)),
            Err(e) if e.is_unavailable() && self.fail_open => self.spool(ask, e),
            Err(e) => Err(e),
        }
    }

    /// Fail open: the request goes through and its usage waits in the spool; a full
    /// spool fails this request closed.
    fn spool(&self, ask: Ask, cause: GuardError) -> Result<QuotaGrant, GuardError> {
        let spool = self.guard.spool();
        let entry = SpoolEntry {
            brand: ask.brand.clone(),
            metric: self.metric.clone(),
            amount: ask.amount,
            idempotency_key: ask.key.clone(),
            metadata: ask.metadata.clone(),
            served_at: ask.served_at.clone(),
        };
        match spool.push(entry) {
            Err(Unspooled::Duplicate) => Err(GuardError::DuplicateRequest),
            Ok(()) => {
                // Once per outage at warn level (the first entry), not once per request.
                match spool.len() {
                    1 => {
                        tracing::warn!(error = %cause, "ledger unavailable: fail-open routes spool usage")
                    }
                    n => {
                        tracing::debug!(brand = %ask.brand, metric = %self.metric, spooled = n, "usage spooled")
                    }
                }
                Ok(self.grant(ask, None, true))
            }
            Err(Unspooled::Full) => Err(GuardError::LedgerUnavailable {
                detail: format!(
                    "{cause}; the fail-open spool is full ({} entries)",
                    spool.capacity()
                ),
                retry_after_s: RETRY_AFTER_S_DEFAULT,
            }),
        }
    }

    async fn reserve(
        &self,
        parts: &mut Parts,
        ask: Ask,
        ttl_s: u32,
    ) -> Result<ReservationSlot, GuardError> {
        let client = self.guard.client();
        let reserved = client
            .reserve(
                &ask.brand,
                &self.metric,
                ask.amount,
                ttl_s,
                &ask.key,
                &ask.metadata,
            )
            .await?;
        // A hold placed for an earlier request with this id may be a running job's.
        if reserved.replayed {
            return Err(GuardError::DuplicateRequest);
        }
        let decision = reserved.decision.clone();
        let slot = ReservationSlot::new(Reservation::new(
            reserved,
            ask.brand.clone(),
            client.clone(),
        ));
        parts
            .extensions
            .insert(self.grant(ask, Some(decision), false));
        parts.extensions.insert(slot.clone());
        Ok(slot)
    }

    fn grant(&self, ask: Ask, decision: Option<Decision>, spooled: bool) -> QuotaGrant {
        QuotaGrant {
            brand: ask.brand,
            metric: self.metric.clone(),
            amount: ask.amount,
            idempotency_key: ask.key,
            decision,
            spooled,
        }
    }
}

/// One request's question to the ledger.
struct Ask {
    brand: BrandIdentity,
    amount: u64,
    key: String,
    metadata: BTreeMap<String, String>,
    /// When the request arrived (RFC 3339): the consumption and any replay of it are
    /// dated then, so both land in the same period however late the replay is.
    served_at: String,
}

/// Settle what the handler's answer says nobody else will. An answer other than 2xx
/// voids the hold, taken or not: the request failed, so no job runs for it (a handler
/// that took the handle and then failed, say on its body, would otherwise leave the hold
/// to its TTL). A 2xx whose handler did not take the handle commits it in full: the
/// work was done within the request. A 2xx whose handler took it leaves it to the job.
async fn settle(slot: &ReservationSlot, status: http::StatusCode) {
    let (reservation, taken) = slot.settle_view();
    let settled = match (status.is_success(), taken) {
        (true, true) => return,
        (true, false) => reservation.commit_all().await.map(|_| "committed"),
        (false, _) => reservation.void().await.map(|_| "voided"),
    };
    match settled {
        Ok(how) => {
            tracing::debug!(reservation = reservation.id(), how, %status, "hold settled by the guard")
        }
        // A handler that took the hold may have voided it already: nothing is held.
        Err(GuardError::ReservationNotHeld(_)) => {}
        Err(e) => tracing::warn!(reservation = reservation.id(), error = %e, %status,
            "hold not settled; the ledger releases it at its TTL"),
    }
}

/// The whole body, at most `limit` bytes.
async fn buffer(body: Body, limit: usize) -> Result<axum::body::Bytes, GuardError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        match inner.is::<http_body_util::LengthLimitError>() {
            true => GuardError::BodyTooLarge { limit_bytes: limit },
            false => GuardError::MalformedBody(format!("the body could not be read: {inner}")),
        }
    })
}

/// The caller's request id, when it is usable in a key.
fn request_id<'a>(parts: &'a Parts, header: &HeaderName) -> Option<&'a str> {
    let raw = parts.headers.get(header)?.to_str().ok()?;
    let usable = !raw.is_empty()
        && raw.len() <= REQUEST_ID_LEN_MAX
        && raw.bytes().all(|b| b.is_ascii_graphic());
    if !usable {
        tracing::debug!("request id unusable in an idempotency key; a fresh key is used");
    }
    usable.then_some(raw)
}

/// A key per consumption: derived from the request id when there is one (a retried
/// request is counted once), else a fresh UUID v4. Brand and metric are part of it so
/// one request id spending two metrics gives two keys.
fn idempotency_key(brand: &BrandIdentity, metric: &str, request_id: Option<&str>) -> String {
    match request_id {
        Some(id) => format!("guard:{brand}:{metric}:{id}"),
        None => format!("guard:{metric}:{}", uuid::Uuid::new_v4().simple()),
    }
}

/// Stored with the usage; the same on a replay, since the ledger compares it.
fn metadata(request_id: Option<&str>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::from([("source".to_owned(), "ledger-guard".to_owned())]);
    if let Some(id) = request_id {
        m.insert("request_id".to_owned(), id.to_owned());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_guarded_once_per_metric_however_often_the_layer_runs() {
        // Proves the double-guard defect is gone: the second layer for a metric passes
        // through, while another metric on the same request is still guarded.
        let mut ext = Extensions::new();
        assert!(mark_once(&mut ext, "api_calls"));
        assert!(!mark_once(&mut ext, "api_calls"));
        assert!(mark_once(&mut ext, "designs_created"));
        assert!(!mark_once(&mut ext, "designs_created"));
    }

    fn parts(request_id: Option<&str>) -> Parts {
        let mut b = Request::builder();
        if let Some(id) = request_id {
            b = b.header(REQUEST_ID_HEADER, id);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_request_id_derives_a_stable_key_and_its_absence_a_fresh_one() {
        // Proves a retried request (same id) reuses its key, and keyless requests never collide.
        let acme = BrandIdentity::new("acme").unwrap();
        let header = HeaderName::from_static(REQUEST_ID_HEADER);
        let p = parts(Some("req-42"));
        let id = request_id(&p, &header);
        assert_eq!(
            idempotency_key(&acme, "renders_3d", id),
            "guard:acme:renders_3d:req-42"
        );
        let none = parts(None);
        let (a, b) = (
            idempotency_key(&acme, "renders_3d", request_id(&none, &header)),
            idempotency_key(&acme, "renders_3d", request_id(&none, &header)),
        );
        assert_ne!(a, b);
        assert!(a.len() <= 255 && a.starts_with("guard:renders_3d:"));
    }

    #[test]
    fn an_unusable_request_id_is_ignored() {
        // Proves a long or spaced id cannot produce a key the ledger would refuse.
        let header = HeaderName::from_static(REQUEST_ID_HEADER);
        for bad in ["has space", &"x".repeat(REQUEST_ID_LEN_MAX + 1)] {
            assert_eq!(request_id(&parts(Some(bad)), &header), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_body_is_buffered_up_to_its_limit_and_handed_back_unchanged() {
        // Proves the handler gets the bytes the amount was read from, and the limit holds.
        let bytes = buffer(Body::from(r#"{"count":2}"#), 64).await.unwrap();
        assert_eq!(&bytes[..], br#"{"count":2}"#);
        let e = buffer(Body::from(vec![b'x'; 65]), 64).await.unwrap_err();
        assert!(
            matches!(e, GuardError::BodyTooLarge { limit_bytes: 64 }),
            "{e:?}"
        );
    }
}
