//! The service's own authentication, as any platform service has one: here a bearer
//! token per caller, each acting for one brand. It inserts the guard's `BrandIdentity`;
//! the guard trusts that and nothing the caller writes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ledger_guard::BrandIdentity;

/// The callers this service knows: token → brand.
#[derive(Clone, Default)]
pub struct Callers(Arc<HashMap<String, BrandIdentity>>);

impl Callers {
    pub fn new(tokens: impl IntoIterator<Item = (String, BrandIdentity)>) -> Self {
        Self(Arc::new(tokens.into_iter().collect()))
    }
}

/// A known token inserts its brand; an unknown one is a 401 here; no token passes on
/// anonymous (a guarded route answers it 401, a public one serves it).
pub async fn authenticate(
    State(callers): State<Callers>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = token {
        match callers.0.get(token) {
            Some(brand) => {
                req.extensions_mut().insert(brand.clone());
            }
            None => return (StatusCode::UNAUTHORIZED, "unknown token").into_response(),
        }
    }
    next.run(req).await
}
