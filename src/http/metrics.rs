//! `GET /metrics`: the Prometheus text format, for a scrape with the configured bearer
//! token (`metrics.token`) or, without one, an admin credential. Also the middleware
//! counting every request by route template, method and status.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::extract::Caller;
use super::AppState;
use crate::auth::AuthError;
use crate::metrics::Sampled;

/// The content type of the text exposition format, version 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long a scrape waits for the read models to fold what was committed before it: the
/// per-brand gauges then show every write the scrape follows, and a stalled consumer
/// delays a scrape by this much at most (it then shows what memory holds).
const SCRAPE_CATCH_UP_MAX: std::time::Duration = std::time::Duration::from_millis(500);

pub(crate) async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = allowed(&s, &headers).await {
        return e.into_response();
    }
    s.ledger.projector.catch_up(SCRAPE_CATCH_UP_MAX).await;
    let status = s.ledger.projector.status();
    let period = ledger_aggregates::PeriodKey::containing(s.ledger.engine.now());
    let (brands, brands_untracked) = s.ledger.projector.recent(period, s.brand_series_max);
    let sampled = Sampled {
        queued: s.ledger.engine.queued(),
        queue_capacity: s.ledger.engine.config().queue_commands_max,
        consumers: std::iter::once(("read_models", status.lag_ms.p99, status.events_projected))
            .chain(s.consumers.iter().map(|(name, tail)| {
                let st = tail.status();
                (*name, st.lag_ms.p99, st.events_projected)
            }))
            .collect(),
        read_model_waits: s.ledger.projector.reads_waited(),
        probes: s.ledger.engine.probe_counts().snapshot(),
        brands,
        brands_untracked,
    };
    let body = s.metrics.render(sampled);
    let mut res = body.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    res
}

/// The scrape token when one is configured, else an admin.
async fn allowed(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &s.metrics_token else {
        let mut parts = axum::http::Request::new(()).into_parts().0;
        parts.headers = headers.clone();
        let caller = <Caller as axum::extract::FromRequestParts<AppState>>::from_request_parts(
            &mut parts, s,
        )
        .await?;
        return caller.admin();
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match sent {
        Some(sent) if same(sent.as_bytes(), token.expose().as_bytes()) => Ok(()),
        Some(_) => Err(AuthError::Invalid("wrong metrics token".to_owned()).into()),
        None => Err(AuthError::Missing.into()),
    }
}

/// Equal in time independent of where they differ, so the token cannot be guessed a
/// byte at a time.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Count and time every request by its route template (never the raw path: ids in
/// paths would make one series per brand).
pub(crate) async fn count(
    State(metrics): State<std::sync::Arc<crate::metrics::Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    // A shared string: cloning it copies no text.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", |p| p.as_str());
    let method = req.method().clone();
    let started = Instant::now();
    let res = next.run(req).await;
    metrics
        .http_seconds
        .with_label_values(&[route, method.as_str()])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .with_label_values(&[route, method.as_str(), res.status().as_str()])
        .inc();
    res
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"abcd"));
    }
}
