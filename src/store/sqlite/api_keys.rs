//! The SQLite [`ApiKeyStore`]: hashed key rows in `api_keys` (migration 0002). Ids are
//! bound as text because sqlx would bind a `Uuid` as a blob, which the STRICT text column
//! refuses.

use async_trait::async_trait;
use ledger_aggregates::BrandId;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

use super::SqliteLog;
use crate::store::rows::{api_key_info, key_id, key_time_now, new_key_info};
use crate::store::{ApiKeyInfo, ApiKeyStore, NewApiKey, StoreError, API_KEYS_LISTED_MAX};

/// Inserts nothing when the brand already holds `?7` active keys. One statement is
/// enough: SQLite takes its write lock before the count is read, so concurrent creations
/// queue and each counts the keys of those before it.
const INSERT_WITHIN_LIMIT: &str =
    "INSERT INTO api_keys (id, brand_id, label, secret_sha256, created_at, created_by)
SELECT ?1, ?2, ?3, ?4, ?5, ?6
 WHERE (SELECT count(*) FROM api_keys WHERE brand_id = ?2 AND revoked_at IS NULL) < ?7";
const LIST: &str = "SELECT id, brand_id, label, created_at, created_by, revoked_at
  FROM api_keys WHERE brand_id = ? ORDER BY created_at DESC, id DESC LIMIT ?";
const REVOKE: &str = "UPDATE api_keys SET revoked_at = ?
 WHERE id = ? AND brand_id = ? AND revoked_at IS NULL";
const FIND: &str = "SELECT id, brand_id, label, created_at, created_by, revoked_at
  FROM api_keys WHERE secret_sha256 = ? AND revoked_at IS NULL";

fn info(row: &SqliteRow) -> Result<ApiKeyInfo, StoreError> {
    api_key_info(row, key_id(&row.try_get::<String, _>(0)?)?)
}

#[async_trait]
impl ApiKeyStore for SqliteLog {
    async fn insert_within_limit(
        &self,
        key: &NewApiKey,
        active_max: i64,
    ) -> Result<Option<ApiKeyInfo>, StoreError> {
        let info = new_key_info(key);
        let inserted = sqlx::query(INSERT_WITHIN_LIMIT)
            .bind(info.id.to_string())
            .bind(key.brand_id.as_str())
            .bind(&info.label)
            .bind(&key.secret_sha256)
            .bind(info.created_at)
            .bind(&info.created_by)
            .bind(active_max)
            .execute(self.pool())
            .await
            .map_err(StoreError::from_write)?
            .rows_affected();
        Ok((inserted == 1).then_some(info))
    }

    async fn list(&self, brand: &BrandId) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let rows = sqlx::query(LIST)
            .bind(brand.as_str())
            .bind(API_KEYS_LISTED_MAX)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(info).collect()
    }

    async fn revoke(&self, brand: &BrandId, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(REVOKE)
            .bind(key_time_now())
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
        let row = sqlx::query(FIND)
            .bind(secret_sha256)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(info).transpose()
    }
}
