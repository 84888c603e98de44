//! API keys: creation, listing, revocation and the per-request lookup, on PostgreSQL and
//! SQLite (table `api_keys`, migration 0002).
//!
//! A key is `ulk_` followed by 32 random bytes in unpadded base64url. Only the SHA-256 of
//! the whole key is stored: the key is shown once, to the admin who created it, and a
//! copy of the table authenticates no one. A plain hash (no salt, no slow KDF) is enough
//! because the key has 256 bits of entropy: there is no dictionary to attack.

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, SubsecRound, Utc};
use ledger_aggregates::BrandId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use super::{PostgresLog, SqliteLog, StoreError};
use crate::secret::Secret;

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
/// hundreds mean keys are being created per request, which is a leak in the making.
/// The count and the insert are two statements, so concurrent creations may overshoot
/// by a few: this is a guard against runaway scripts, not an exact quota.
pub const API_KEYS_ACTIVE_PER_BRAND_MAX: i64 = 100;
/// Rows returned by a listing, revoked keys included; the oldest are cut beyond it.
pub const API_KEYS_LISTED_MAX: i64 = 1_000;

/// What may be shown about a key: never the key, never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub brand_id: BrandId,
    pub label: String,
    pub created_at: DateTime<Utc>,
    /// Subject of the admin who created it.
    pub created_by: String,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key label: 1 to [`API_KEY_LABEL_CHARS_MAX`] characters, no control characters
/// (it is printed in listings and logs), surrounding blanks trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLabel(String);

impl KeyLabel {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s.is_empty() || s.chars().count() > API_KEY_LABEL_CHARS_MAX {
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

#[async_trait]
pub trait ApiKeyStore: Send + Sync + 'static {
    /// Create a key for `brand`. The returned secret is the only copy there will ever be.
    async fn create(
        &self,
        brand: &BrandId,
        label: &KeyLabel,
        created_by: &str,
    ) -> Result<(ApiKeyInfo, Secret), ApiKeyError>;

    /// The brand's keys, revoked ones included, newest first (at most [`API_KEYS_LISTED_MAX`]).
    async fn list(&self, brand: &BrandId) -> Result<Vec<ApiKeyInfo>, StoreError>;

    /// Revoke one of `brand`'s keys. `true` if it existed and was active until now; a key
    /// of another brand is answered like an unknown one.
    async fn revoke(&self, brand: &BrandId, id: Uuid) -> Result<bool, StoreError>;

    /// The active key whose secret hashes to `secret_sha256` (see [`hash_key`]).
    async fn find_active_by_hash(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<ApiKeyInfo>, StoreError>;
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

/// Timestamps keep microseconds, the precision of PostgreSQL's `timestamptz`, so what a
/// creation returns equals what a listing reads back on either store.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn new_info(brand: &BrandId, label: &KeyLabel, created_by: &str) -> ApiKeyInfo {
    ApiKeyInfo {
        id: Uuid::new_v4(),
        brand_id: brand.clone(),
        label: label.as_str().to_owned(),
        created_at: now(),
        created_by: created_by.to_owned(),
        revoked_at: None,
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("api_keys: {what}"))
}

const COUNT_ACTIVE_PG: &str =
    "SELECT count(*) FROM api_keys WHERE brand_id = $1 AND revoked_at IS NULL";
const INSERT_PG: &str =
    "INSERT INTO api_keys (id, brand_id, label, secret_sha256, created_at, created_by)
VALUES ($1, $2, $3, $4, $5, $6)";
const LIST_PG: &str = "SELECT id, brand_id, label, created_at, created_by, revoked_at
  FROM api_keys WHERE brand_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2";
const REVOKE_PG: &str = "UPDATE api_keys SET revoked_at = $3
 WHERE id = $1 AND brand_id = $2 AND revoked_at IS NULL";
const FIND_PG: &str = "SELECT id, brand_id, label, created_at, created_by, revoked_at
  FROM api_keys WHERE secret_sha256 = $1 AND revoked_at IS NULL";

fn pg_info(row: &sqlx::postgres::PgRow) -> Result<ApiKeyInfo, StoreError> {
    let brand: String = row.try_get("brand_id")?;
    Ok(ApiKeyInfo {
        id: row.try_get("id")?,
        brand_id: BrandId::parse(&brand).map_err(corrupt)?,
        label: row.try_get("label")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

#[async_trait]
impl ApiKeyStore for PostgresLog {
    async fn create(
        &self,
        brand: &BrandId,
        label: &KeyLabel,
        created_by: &str,
    ) -> Result<(ApiKeyInfo, Secret), ApiKeyError> {
        let active: i64 = sqlx::query_scalar(COUNT_ACTIVE_PG)
            .bind(brand.as_str())
            .fetch_one(self.pool())
            .await
            .map_err(StoreError::from)?;
        if active >= API_KEYS_ACTIVE_PER_BRAND_MAX {
            return Err(ApiKeyError::TooManyKeys(brand.clone()));
        }
        let (info, key) = (new_info(brand, label, created_by), generate_key()?);
        sqlx::query(INSERT_PG)
            .bind(info.id)
            .bind(brand.as_str())
            .bind(&info.label)
            .bind(hash_key(key.expose()))
            .bind(info.created_at)
            .bind(&info.created_by)
            .execute(self.pool())
            .await
            .map_err(StoreError::from_write)?;
        Ok((info, key))
    }

    async fn list(&self, brand: &BrandId) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let rows = sqlx::query(LIST_PG)
            .bind(brand.as_str())
            .bind(API_KEYS_LISTED_MAX)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(pg_info).collect()
    }

    async fn revoke(&self, brand: &BrandId, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(REVOKE_PG)
            .bind(id)
            .bind(brand.as_str())
            .bind(now())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn find_active_by_hash(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<ApiKeyInfo>, StoreError> {
        let row = sqlx::query(FIND_PG)
            .bind(secret_sha256)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(pg_info).transpose()
    }
}

// SQLite: the same statements with `?` parameters. Ids are bound as text because sqlx
// would bind a `Uuid` as a blob, which the STRICT text column refuses.
const COUNT_ACTIVE_SQLITE: &str =
    "SELECT count(*) FROM api_keys WHERE brand_id = ? AND revoked_at IS NULL";
const INSERT_SQLITE: &str =
    "INSERT INTO api_keys (id, brand_id, label, secret_sha256, created_at, created_by)
VALUES (?, ?, ?, ?, ?, ?)";
const LIST_SQLITE: &str = "SELECT id, brand_id, label, created_at, created_by, revoked_at
  FROM api_keys WHERE brand_id = ? ORDER BY created_at DESC, id DESC LIMIT ?";
const REVOKE_SQLITE: &str = "UPDATE api_keys SET revoked_at = ?
 WHERE id = ? AND brand_id = ? AND revoked_at IS NULL";
const FIND_SQLITE: &str = "SELECT id, brand_id, label, created_at, created_by, revoked_at
  FROM api_keys WHERE secret_sha256 = ? AND revoked_at IS NULL";

fn sqlite_info(row: &sqlx::sqlite::SqliteRow) -> Result<ApiKeyInfo, StoreError> {
    let id: String = row.try_get("id")?;
    let brand: String = row.try_get("brand_id")?;
    Ok(ApiKeyInfo {
        id: Uuid::parse_str(&id).map_err(corrupt)?,
        brand_id: BrandId::parse(&brand).map_err(corrupt)?,
        label: row.try_get("label")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

#[async_trait]
impl ApiKeyStore for SqliteLog {
    async fn create(
        &self,
        brand: &BrandId,
        label: &KeyLabel,
        created_by: &str,
    ) -> Result<(ApiKeyInfo, Secret), ApiKeyError> {
        let active: i64 = sqlx::query_scalar(COUNT_ACTIVE_SQLITE)
            .bind(brand.as_str())
            .fetch_one(self.pool())
            .await
            .map_err(StoreError::from)?;
        if active >= API_KEYS_ACTIVE_PER_BRAND_MAX {
            return Err(ApiKeyError::TooManyKeys(brand.clone()));
        }
        let (info, key) = (new_info(brand, label, created_by), generate_key()?);
        sqlx::query(INSERT_SQLITE)
            .bind(info.id.to_string())
            .bind(brand.as_str())
            .bind(&info.label)
            .bind(hash_key(key.expose()))
            .bind(info.created_at)
            .bind(&info.created_by)
            .execute(self.pool())
            .await
            .map_err(StoreError::from_write)?;
        Ok((info, key))
    }

    async fn list(&self, brand: &BrandId) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let rows = sqlx::query(LIST_SQLITE)
            .bind(brand.as_str())
            .bind(API_KEYS_LISTED_MAX)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(sqlite_info).collect()
    }

    async fn revoke(&self, brand: &BrandId, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(REVOKE_SQLITE)
            .bind(now())
            .bind(id.to_string())
            .bind(brand.as_str())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn find_active_by_hash(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<ApiKeyInfo>, StoreError> {
        let row = sqlx::query(FIND_SQLITE)
            .bind(secret_sha256)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(sqlite_info).transpose()
    }
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
        assert!(KeyLabel::parse("a\nb").is_err());
    }
}
