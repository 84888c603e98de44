//! Request ids: the caller's `X-Request-Id` when it is sane, else a fresh UUID v4. The id
//! is a field of a span around the request (so every log line of the request carries
//! `request_id`), is echoed in the `X-Request-Id` answer header, and is carried by every
//! problem+json answer as `requestId`.

use std::future::Future;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header read and answered.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// The longest caller id kept: a UUID is 36, a trace id 32; longer is junk that would
/// bloat every log line of the request.
pub const REQUEST_ID_CHARS_MAX: usize = 128;

/// What the request's code may want to know about the request it runs in.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub id: String,
    /// The route template (`/api/v1/usage-billing/brands/{brandId}`), or `unmatched`.
    pub route: String,
}

tokio::task_local! {
    // A task-local rather than patching answer bodies: problems are rendered inside the
    // request's task, so reading it there costs nothing and never re-parses a body.
    static CONTEXT: RequestContext;
}

/// The context of the request this code runs in, if any.
pub fn current() -> Option<RequestContext> {
    CONTEXT.try_with(|c| c.clone()).ok()
}

/// Run `fut` as part of the request `context` (the middleware, and tests of code that
/// reads [`current`]).
pub async fn scope<F: Future>(context: RequestContext, fut: F) -> F::Output {
    CONTEXT.scope(context, fut).await
}

/// The caller's id if it is visible ASCII and at most [`REQUEST_ID_CHARS_MAX`] long.
pub fn accepted(value: Option<&HeaderValue>) -> Option<String> {
    let text = value?.to_str().ok()?;
    let sane = !text.is_empty()
        && text.len() <= REQUEST_ID_CHARS_MAX
        && text.bytes().all(|b| b.is_ascii_graphic());
    sane.then(|| text.to_owned())
}

/// The middleware: id, span, header.
pub(crate) async fn layer(req: Request, next: Next) -> Response {
    let id = accepted(req.headers().get(&REQUEST_ID_HEADER))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let span =
        tracing::info_span!("request", request_id = %id, method = %req.method(), route = %route);
    let header = HeaderValue::from_str(&id).expect("an accepted or generated id is visible ASCII");
    let context = RequestContext { id, route };
    let answered = async move {
        let res = next.run(req).await;
        // Debug only: an access log is the proxy's job, but tracing one request is ours.
        tracing::debug!(status = res.status().as_u16(), "answered");
        res
    };
    let mut res = scope(context, answered.instrument(span)).await;
    res.headers_mut().insert(REQUEST_ID_HEADER, header);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_kept() {
        let ok = HeaderValue::from_static("abc-123");
        assert_eq!(accepted(Some(&ok)).as_deref(), Some("abc-123"));
        let long = HeaderValue::from_str(&"a".repeat(REQUEST_ID_CHARS_MAX + 1)).unwrap();
        assert_eq!(accepted(Some(&long)), None);
        let max = HeaderValue::from_str(&"a".repeat(REQUEST_ID_CHARS_MAX)).unwrap();
        assert!(accepted(Some(&max)).is_some());
        for bad in ["a b", "a\tb", ""] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert_eq!(accepted(Some(&v)), None, "{bad:?}");
        }
        assert_eq!(accepted(None), None);
    }
}
