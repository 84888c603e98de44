//! The brand whose quota a request spends: the caller's authenticated identity, never
//! anything the caller writes in the body or the query (the original let `body.brandId`
//! choose, reference §7.21).

use std::fmt;
use std::sync::Arc;

use http::request::Parts;

/// The ledger's limit on a brand id: longer ones are refused there, so here too.
const BRAND_ID_LEN_MAX: usize = 64;

/// The brand a request is authenticated as. The service's own authentication middleware
/// inserts it into the request's extensions once it has verified the caller; the guard
/// reads it from there and from nowhere else (unless the route names a closure).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BrandIdentity(String);

/// A brand id the ledger would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "brand id {0:?} must be 1 to 64 characters of [A-Za-z0-9_.-], starting with a letter or digit"
)]
pub struct InvalidBrand(pub String);

impl BrandIdentity {
    /// The ledger's rule for brand ids, checked when the identity is made so a bad one
    /// is the service's 401 rather than the ledger's 422 on every request.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidBrand> {
        let id = id.into();
        let first_ok = id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        let rest_ok = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        match id.len() <= BRAND_ID_LEN_MAX && first_ok && rest_ok {
            true => Ok(Self(id)),
            false => Err(InvalidBrand(id)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BrandIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A closure finding the identity in a request head.
pub(crate) type IdentityFn = dyn Fn(&Parts) -> Option<BrandIdentity> + Send + Sync;

/// Where a route finds the identity.
#[derive(Clone)]
pub(crate) enum IdentitySource {
    /// A [`BrandIdentity`] in the request's extensions (the default).
    Extension,
    /// A closure over the request head, for services whose auth layer stores its own
    /// principal type. It sees headers and extensions, never the body.
    Closure(Arc<IdentityFn>),
}

impl IdentitySource {
    pub(crate) fn resolve(&self, parts: &Parts) -> Option<BrandIdentity> {
        match self {
            IdentitySource::Extension => parts.extensions.get::<BrandIdentity>().cloned(),
            IdentitySource::Closure(f) => f(parts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_with(identity: Option<&str>) -> Parts {
        let mut req = http::Request::builder()
            .uri("/render/3d?brandId=mallory")
            .header("x-brand-id", "mallory")
            .body(())
            .unwrap();
        if let Some(b) = identity {
            req.extensions_mut().insert(BrandIdentity::new(b).unwrap());
        }
        req.into_parts().0
    }

    #[test]
    fn the_identity_comes_from_the_extensions_and_not_from_the_query_or_headers() {
        // Proves a caller cannot name the brand: only what the auth layer inserted counts.
        let source = IdentitySource::Extension;
        assert_eq!(
            source.resolve(&parts_with(Some("acme"))),
            Some(BrandIdentity::new("acme").unwrap())
        );
        assert_eq!(source.resolve(&parts_with(None)), None);
    }

    #[test]
    fn a_closure_can_derive_the_identity_from_the_services_own_principal() {
        // Proves `brand_from` sees the request head: here a principal of the service's own type.
        #[derive(Clone)]
        struct Principal(&'static str);
        let source = IdentitySource::Closure(Arc::new(|p: &Parts| {
            p.extensions
                .get::<Principal>()
                .and_then(|x| BrandIdentity::new(x.0).ok())
        }));
        let mut parts = parts_with(None);
        parts.extensions.insert(Principal("globex"));
        assert_eq!(source.resolve(&parts).unwrap().as_str(), "globex");
    }

    #[test]
    fn brand_ids_follow_the_ledgers_rule() {
        // Proves an id the ledger would refuse is refused when the identity is made.
        assert!(BrandIdentity::new("acme-01.eu_west").is_ok());
        for bad in ["", "-acme", "acme corp", "ac/me", &"a".repeat(65)] {
            assert!(BrandIdentity::new(bad).is_err(), "{bad:?}");
        }
    }
}
