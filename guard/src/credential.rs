//! How the guard authenticates to the ledger: an API key (which acts as `service` for
//! its one brand) or a bearer JWT (a service token may list several brands), chosen per
//! brand so a service serving many brands can hold one key each.

use std::fmt;
use std::sync::Arc;

use crate::identity::BrandIdentity;

/// One credential for the ledger. Its secret never appears in `Debug` output, so
/// logging a configuration cannot leak it.
#[derive(Clone)]
pub enum Credential {
    /// Sent as `X-Api-Key`.
    ApiKey(String),
    /// Sent as `Authorization: Bearer …`.
    Bearer(String),
}

impl Credential {
    pub fn api_key(key: impl Into<String>) -> Self {
        Credential::ApiKey(key.into())
    }

    pub fn bearer(token: impl Into<String>) -> Self {
        Credential::Bearer(token.into())
    }

    pub(crate) fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Credential::ApiKey(key) => req.header("x-api-key", key),
            Credential::Bearer(token) => req.bearer_auth(token),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::ApiKey(_) => f.write_str("ApiKey([redacted])"),
            Credential::Bearer(_) => f.write_str("Bearer([redacted])"),
        }
    }
}

type CredentialFn = dyn Fn(&BrandIdentity) -> Option<Credential> + Send + Sync;

/// The credential to use for each brand. A brand without one is a configuration error
/// of the service (answered 500 and logged), not a refusal.
#[derive(Clone)]
pub struct Credentials(Arc<CredentialFn>);

impl Credentials {
    /// The same credential for every brand: a service JWT listing the brands the service
    /// serves, or an API key when the service serves one brand only.
    pub fn one(credential: Credential) -> Self {
        Credentials(Arc::new(move |_| Some(credential.clone())))
    }

    /// A credential chosen per brand, e.g. from a map of API keys.
    pub fn per_brand(
        f: impl Fn(&BrandIdentity) -> Option<Credential> + Send + Sync + 'static,
    ) -> Self {
        Credentials(Arc::new(f))
    }

    pub(crate) fn for_brand(&self, brand: &BrandIdentity) -> Option<Credential> {
        (self.0)(brand)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_never_shows_its_secret_in_debug_output() {
        // Proves configuration dumps and error logs cannot leak a key or a token.
        let key = format!("{:?}", Credential::api_key("ulk_secret"));
        let jwt = format!("{:?}", Credential::bearer("eyJsecret"));
        assert!(
            !key.contains("secret") && !jwt.contains("secret"),
            "{key} {jwt}"
        );
    }

    #[test]
    fn credentials_per_brand_answer_none_for_a_brand_without_one() {
        // Proves the per-brand closure decides, and an unknown brand has no credential.
        let creds = Credentials::per_brand(|b| {
            (b.as_str() == "acme").then(|| Credential::api_key("ulk_acme"))
        });
        assert!(creds
            .for_brand(&BrandIdentity::new("acme").unwrap())
            .is_some());
        assert!(creds
            .for_brand(&BrandIdentity::new("globex").unwrap())
            .is_none());
    }
}
