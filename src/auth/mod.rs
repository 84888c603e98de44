//! Who is calling: bearer JWTs and per-brand API keys, resolved to a [`Principal`].
//!
//! # Layout
//! - this file: [`Principal`], its access rules, [`AuthError`] and [`Authenticator`].
//! - [`api_keys`]: API keys: their shape, secret and hash, labels, the per-brand limit,
//!   and creating one on any key store.
//! - [`jwt`]: bearer tokens: verification with the pinned algorithm, minting.
//! - [`key_cache`]: the bounded cache of API key lookups, cleared by revocations.
//! - [`keys`]: the verifier's key material: configured, or the development secret.
//!
//! The HTTP layer asks the [`Authenticator`] for the principal of a request and then
//! asks the principal what it may do; no handler looks at claims itself. API key rows
//! are kept by a [`crate::store::ApiKeyStore`], which sees only their hashes.

pub mod api_keys;
pub mod jwt;
pub mod key_cache;
pub mod keys;

use std::sync::Arc;

use ledger_aggregates::BrandId;

pub use jwt::{Jwt, JwtAlgorithm, JwtError, JwtKey, TokenTtl};

use self::api_keys::{hash_key, looks_like_key, API_KEY_PREFIX};
use crate::store::ApiKeyStore;

/// The three roles of the ledger. Tokens name one; API keys always act as `service`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Operators: every route, every brand.
    Admin,
    /// A tenant's users: reads and usage of their own brand only.
    Brand,
    /// API callers: record usage and check quotas for the brands they are scoped to.
    Service,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who, for the audit trail: the token's `sub`, or `api-key:<id>`.
    pub subject: String,
    pub role: Role,
    /// The brands a `brand` or `service` principal may touch (empty for admins).
    pub brands: Vec<BrandId>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// May this caller see anything of `brand` at all? A caller who may not is answered
    /// exactly as if the brand did not exist, so tenants cannot probe for each other.
    pub fn sees(&self, brand: &BrandId) -> bool {
        self.is_admin() || self.brands.contains(brand)
    }

    /// May this caller record usage and check quotas for `brand`?
    pub fn may_meter(&self, brand: &BrandId) -> bool {
        self.sees(brand)
    }

    /// May this caller read summaries, history and the audit trail of `brand`?
    /// Service principals meter but do not read.
    pub fn may_read(&self, brand: &BrandId) -> bool {
        self.role != Role::Service && self.sees(brand)
    }

    /// The one brand a principal stands for, for routes that take the brand from the
    /// token (`GET /summary`).
    pub fn own_brand(&self) -> Option<&BrandId> {
        match self.brands.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// Why a request is not authenticated. Every variant is a 401 except `Unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send `Authorization: Bearer <token>` or `X-Api-Key`")]
    Missing,
    #[error("invalid credentials: {0}")]
    Invalid(String),
    /// The key store could not be asked (a 503, never a silent accept or a 401).
    #[error("credential store unavailable: {0}")]
    Unavailable(String),
}

/// A credential longer than this is refused unread. Real tokens and keys are well under
/// 2 KiB; 8 KiB is the header size most proxies accept.
pub const CREDENTIAL_BYTES_MAX: usize = 8 * 1024;

/// Resolves the credentials of a request to a [`Principal`]. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    jwt: Jwt,
    /// The key store behind the lookup cache: revocations made through it clear the cache.
    keys: Arc<dyn ApiKeyStore>,
    cache: Arc<key_cache::CachedKeys>,
}

impl Authenticator {
    /// `keys` is the raw store; the authenticator puts its bounded cache in front of it,
    /// and [`Authenticator::keys`] hands out the cached one, so that admin revocations
    /// through it take effect at once.
    pub fn new(jwt: Jwt, keys: Arc<dyn ApiKeyStore>) -> Self {
        let cache = Arc::new(key_cache::CachedKeys::new(keys));
        let keys: Arc<dyn ApiKeyStore> = cache.clone();
        Self {
            inner: Arc::new(Inner { jwt, keys, cache }),
        }
    }

    /// Clear the key cache whenever any process revokes a key, where the store can say
    /// so (PostgreSQL); the service calls it once at start.
    pub async fn follow_revocations(&self) -> Result<(), crate::store::StoreError> {
        self.inner.cache.follow().await
    }

    /// The API key store for the admin routes (create, list, revoke).
    pub fn keys(&self) -> &Arc<dyn ApiKeyStore> {
        &self.inner.keys
    }

    /// The token verifier, which also mints when a signing key is configured.
    pub fn jwt(&self) -> &Jwt {
        &self.inner.jwt
    }

    /// The principal of a request, from the raw `Authorization` and `X-Api-Key` header
    /// values. `Bearer <jwt>` is verified as a token; an API key is accepted in
    /// `X-Api-Key` or as `Bearer <key>` (recognised by its `ulk_` prefix).
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
    ) -> Result<Principal, AuthError> {
        match (authorization, api_key) {
            (None, None) => Err(AuthError::Missing),
            (Some(_), Some(_)) => Err(AuthError::Invalid(
                "send either `Authorization` or `X-Api-Key`, not both".to_owned(),
            )),
            (None, Some(key)) => self.by_key(bounded(key.trim())?).await,
            (Some(header), None) => {
                let credential = bearer(header)?;
                if credential.starts_with(API_KEY_PREFIX) {
                    self.by_key(credential).await
                } else {
                    self.inner.jwt.verify(credential)
                }
            }
        }
    }

    async fn by_key(&self, key: &str) -> Result<Principal, AuthError> {
        if !looks_like_key(key) {
            return Err(AuthError::Invalid(format!(
                "malformed API key: expected `{API_KEY_PREFIX}` followed by 43 base64url characters"
            )));
        }
        let found = self
            .inner
            .keys
            .find_active_by_hash(&hash_key(key))
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let info =
            found.ok_or_else(|| AuthError::Invalid("unknown or revoked API key".to_owned()))?;
        Ok(Principal {
            subject: format!("api-key:{}", info.id),
            role: Role::Service,
            brands: vec![info.brand_id],
        })
    }
}

fn bounded(credential: &str) -> Result<&str, AuthError> {
    if credential.is_empty() {
        return Err(AuthError::Invalid("empty credentials".to_owned()));
    }
    if credential.len() > CREDENTIAL_BYTES_MAX {
        return Err(AuthError::Invalid(format!(
            "credentials longer than {CREDENTIAL_BYTES_MAX} bytes"
        )));
    }
    Ok(credential)
}

/// The credential of an `Authorization: Bearer <credential>` header. The scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer(header: &str) -> Result<&str, AuthError> {
    let header = bounded(header.trim())?;
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid(format!(
            "unsupported authorization scheme `{scheme}`: use `Bearer`"
        )));
    }
    bounded(rest.trim())
}
