//! API keys as credentials: their shape, their secret, its hash, and how many a brand
//! may hold. The store keeps the rows ([`ApiKeyStore`]); everything that decides about a
//! key is here, once for both backends.
//!
//! A key is `ulk_` followed by 32 random bytes in unpadded base64url. Only the SHA-256 of
//! the whole key is stored: the key is shown once, to the admin who created it, and a
//! copy of the table authenticates no one. A plain hash (no salt, no slow KDF) is enough
//! because the key has 256 bits of entropy: there is no dictionary to attack.

use async_trait::async_trait;
use base64::Engine as _;
use ledger_aggregates::BrandId;
use sha2::{Digest, Sha256};

use crate::secret::Secret;
use crate::store::{ApiKeyInfo, ApiKeyStore, NewApiKey, StoreError};

/// Every key starts with this, so a key sent as `Authorization: Bearer <key>` is told
/// apart from a JWT, and secret scanners can recognise a leaked one.
pub const API_KEY_PREFIX: &str = "ulk_";
/// 256 bits: as strong as the HS256 signing secret, and beyond guessing.
pub const API_KEY_SECRET_BYTES: usize = 32;
/// Length of the base64url text of [`API_KEY_SECRET_BYTES`] (no padding).
const API_KEY_SECRET_CHARS: usize = 43;
/// A label names a key for humans; a page of prose is a mistake.
pub const API_KEY_LABEL_CHARS_MAX: usize = 100;
/// Active keys per brand. One per calling service and environment is the expected use;
/// hundreds mean keys are being created per request, which is a leak in the making. The
/// store counts and inserts in one atomic step, so concurrent creations cannot pass it.
pub const API_KEYS_ACTIVE_PER_BRAND_MAX: i64 = 100;

/// A key label: 1 to [`API_KEY_LABEL_CHARS_MAX`] characters as sent, not all blank, no
/// control characters (it is printed in listings and logs), surrounding blanks trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLabel(String);

impl KeyLabel {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        // The bound is on what was sent, as the OpenAPI document's `maxLength` states it.
        if s.is_empty() || raw.chars().count() > API_KEY_LABEL_CHARS_MAX {
            return Err(format!(
                "label must be 1 to {API_KEY_LABEL_CHARS_MAX} characters"
            ));
        }
        if s.chars().any(char::is_control) {
            return Err("label must not contain control characters".to_owned());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error(
        "brand {0} already has {API_KEYS_ACTIVE_PER_BRAND_MAX} active API keys: revoke unused ones first"
    )]
    TooManyKeys(BrandId),
    /// The operating system could not provide random bytes for the key.
    #[error("no randomness for a new key: {0}")]
    NoRandomness(getrandom::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creating a key, for every key store (the cached one included): the store only offers
/// the atomic "insert unless the brand is full"; the secret, its hash and the limit are
/// decided here.
#[async_trait]
pub trait CreateApiKey {
    /// Create a key for `brand`. The returned secret is the only copy there will ever be.
    async fn create(
        &self,
        brand: &BrandId,
        label: &KeyLabel,
        created_by: &str,
    ) -> Result<(ApiKeyInfo, Secret), ApiKeyError>;
}

#[async_trait]
impl<S: ApiKeyStore + ?Sized> CreateApiKey for S {
    async fn create(
        &self,
        brand: &BrandId,
        label: &KeyLabel,
        created_by: &str,
    ) -> Result<(ApiKeyInfo, Secret), ApiKeyError> {
        let key = generate_key()?;
        let row = NewApiKey {
            brand_id: brand.clone(),
            label: label.as_str().to_owned(),
            secret_sha256: hash_key(key.expose()),
            created_by: created_by.to_owned(),
        };
        match self
            .insert_within_limit(&row, API_KEYS_ACTIVE_PER_BRAND_MAX)
            .await?
        {
            Some(info) => Ok((info, key)),
            None => Err(ApiKeyError::TooManyKeys(brand.clone())),
        }
    }
}

/// A new key: the prefix and 32 bytes from the operating system's CSPRNG.
pub fn generate_key() -> Result<Secret, ApiKeyError> {
    let mut bytes = [0u8; API_KEY_SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(ApiKeyError::NoRandomness)?;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    Ok(Secret::new(format!("{API_KEY_PREFIX}{encoded}")))
}

/// Does this credential have the shape of one of our keys? Checked before hashing so a
/// malformed one is refused with a precise reason and never reaches the store.
pub fn looks_like_key(candidate: &str) -> bool {
    candidate.strip_prefix(API_KEY_PREFIX).is_some_and(|rest| {
        rest.len() == API_KEY_SECRET_CHARS
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Hex SHA-256 of the whole key, as stored in `secret_sha256`.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_prefix_the_shape_and_differ() {
        // Proves a new key is recognised by its own shape check and is never repeated.
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert!(looks_like_key(a.expose()), "{}", a.expose().len());
        assert!(looks_like_key(b.expose()));
        assert_ne!(a.expose(), b.expose());
        assert!(!looks_like_key("ulk_short"));
        assert!(!looks_like_key(&a.expose().replacen("ulk_", "xyz_", 1)));
    }

    #[test]
    fn labels_are_trimmed_bounded_and_printable() {
        // Proves the label newtype refuses empty, oversized and control-character labels.
        assert_eq!(KeyLabel::parse("  ci  ").unwrap().as_str(), "ci");
        assert!(KeyLabel::parse("   ").is_err());
        assert!(KeyLabel::parse(&"x".repeat(API_KEY_LABEL_CHARS_MAX + 1)).is_err());
        let padded = format!(" {} ", "x".repeat(API_KEY_LABEL_CHARS_MAX - 1));
        assert!(
            KeyLabel::parse(&padded).is_err(),
            "the bound counts the blanks sent"
        );
        assert!(KeyLabel::parse("a\nb").is_err());
    }
}
