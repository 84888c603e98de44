//! Extractors whose rejections are [`ApiError`]s, so every malformed request is answered
//! as problem+json, and the [`Caller`] of a request.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequest, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use ledger_aggregates::{BrandId, IdempotencyKey};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::auth::{AuthError, Principal};

/// A JSON body; syntax errors are 400, content errors 422, a wrong content type 415 and
/// an oversized body 413. Integers written as `190.0` are taken as integers
/// ([`integral_numbers`]).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(JsonRejection::from(
                axum::extract::rejection::MissingJsonContentType::default(),
            )
            .into());
        }
        let bytes = match Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge(format!(
                    "the body exceeds {} bytes",
                    state.body_bytes_max
                )))
            }
            Err(e) => return Err(ApiError::BadRequest(e.body_text())),
        };
        let bytes = integral_numbers(&bytes);
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(e) => Err(e.into()),
        }
    }
}

/// `application/json` or a `+json` type, with any parameters, as axum's `Json` takes it.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    }
}

/// Integers written with a fraction or an exponent (`190.0`, `1e3`), rewritten as plain
/// integers outside strings, so integer fields take every JSON number that is an
/// integer, as JSON Schema's `integer` (and the OpenAPI document) says they do. Only
/// values a double holds exactly (|n| ≤ 2^53) are rewritten; the rest are left to fail.
pub fn integral_numbers(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const EXACT_MAX: f64 = 9_007_199_254_740_992.0;
    let mut out: Option<Vec<u8>> = None;
    let (mut i, mut in_string, mut escaped) = (0, false, false);
    while i < body.len() {
        let b = body[i];
        if in_string {
            (in_string, escaped) = match (escaped, b) {
                (true, _) => (true, false),
                (false, b'\\') => (true, true),
                (false, b'"') => (false, false),
                _ => (true, false),
            };
        } else if b == b'"' {
            in_string = true;
        } else if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < body.len()
                && matches!(body[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            let token = &body[start..i];
            let rewritten = token
                .iter()
                .any(|c| matches!(c, b'.' | b'e' | b'E'))
                .then(|| std::str::from_utf8(token).ok()?.parse::<f64>().ok())
                .flatten()
                .filter(|n| n.fract() == 0.0 && n.abs() <= EXACT_MAX)
                .map(|n| format!("{}", n as i64));
            match (rewritten, out.as_mut()) {
                (Some(text), Some(o)) => o.extend_from_slice(text.as_bytes()),
                (Some(text), None) => {
                    let mut o = body[..start].to_vec();
                    o.extend_from_slice(text.as_bytes());
                    out = Some(o);
                }
                (None, Some(o)) => o.extend_from_slice(token),
                (None, None) => {}
            }
            continue;
        }
        if let Some(o) = out.as_mut() {
            o.push(b);
        }
        i += 1;
    }
    match out {
        Some(o) => o.into(),
        None => body.into(),
    }
}

/// An optional JSON body: a request without one (no `Content-Type`, nothing sent) is
/// `None`; one that is sent is read as [`ApiJson`] reads it.
impl<T: DeserializeOwned> OptionalFromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Option<Self>, ApiError> {
        let h = req.headers();
        let empty = h.get(header::CONTENT_TYPE).is_none()
            && h.get(header::TRANSFER_ENCODING).is_none()
            && h.get(header::CONTENT_LENGTH)
                .is_none_or(|n| n.as_bytes() == b"0");
        match empty {
            true => Ok(None),
            false => <Self as FromRequest<AppState>>::from_request(req, state)
                .await
                .map(Some),
        }
    }
}

/// Path parameters; one that does not parse is a 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query parameters; one that does not parse is a 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// The authenticated caller. A request without valid credentials never reaches a
/// handler that takes a `Caller`: it is answered 401 here.
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let authorization = header_str(&parts.headers, header::AUTHORIZATION.as_str())?;
        let api_key = header_str(&parts.headers, "x-api-key")?;
        let principal = state.auth.authenticate(authorization, api_key).await?;
        if let Some(rates) = &state.rates {
            rates.check(&principal.subject)?;
        }
        Ok(Caller(principal))
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| AuthError::Invalid(format!("the {name} header is not ASCII")).into())
        })
        .transpose()
}

/// The `Idempotency-Key` header, if any (the body's `idempotencyKey` is the other way).
pub fn idempotency_header(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut all = headers.get_all("idempotency-key").iter();
    let Some(raw) = all.next() else {
        return Ok(None);
    };
    // Which of two keys a retry would be matched on is a guess: refuse it.
    if all.next().is_some() {
        return Err(ApiError::invalid(
            "invalid-idempotency-key",
            "send one Idempotency-Key header, not several",
        ));
    }
    let raw = raw.to_str().map_err(|_| {
        ApiError::invalid("invalid-idempotency-key", "Idempotency-Key is not ASCII")
    })?;
    IdempotencyKey::parse(raw)
        .map(Some)
        .map_err(|e| ApiError::invalid("invalid-idempotency-key", e.to_string()))
}

/// One key from the header and the body: both may be given only if they agree.
pub fn one_key(
    header: Option<IdempotencyKey>,
    body: Option<IdempotencyKey>,
) -> Result<Option<IdempotencyKey>, ApiError> {
    match (header, body) {
        (Some(h), Some(b)) if h != b => Err(ApiError::invalid(
            "idempotency-key-mismatch",
            format!("the Idempotency-Key header ({h}) and the body's idempotencyKey ({b}) differ"),
        )),
        (h, b) => Ok(h.or(b)),
    }
}

/// The answer for a brand the caller may not see: word for word the answer for a brand
/// that does not exist, so tenants cannot probe for each other.
pub fn unknown_brand(brand: &BrandId) -> ApiError {
    crate::engine::EngineError::BrandNotRegistered(brand.clone()).into()
}

impl Caller {
    /// Usage and quota checks: admins, the brand itself, or a service scoped to it.
    pub fn meter(&self, brand: &BrandId) -> Result<(), ApiError> {
        match self.0.may_meter(brand) {
            true => Ok(()),
            false => Err(unknown_brand(brand)),
        }
    }

    /// Summaries, history and the audit trail: admins and the brand itself. A service
    /// scoped to the brand knows it exists, so it is told it lacks the permission.
    pub fn read(&self, brand: &BrandId) -> Result<(), ApiError> {
        if !self.0.sees(brand) {
            return Err(unknown_brand(brand));
        }
        match self.0.may_read(brand) {
            true => Ok(()),
            false => Err(ApiError::Forbidden(
                "service credentials record usage and check quotas; they cannot read".to_owned(),
            )),
        }
    }

    pub fn admin(&self) -> Result<(), ApiError> {
        match self.0.is_admin() {
            true => Ok(()),
            false => Err(ApiError::Forbidden("this route is for admins".to_owned())),
        }
    }
}
