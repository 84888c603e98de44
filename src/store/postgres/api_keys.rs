//! The PostgreSQL [`ApiKeyStore`]: hashed key rows in `api_keys` (migration 0002).

use async_trait::async_trait;
use ledger_aggregates::BrandId;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::PostgresLog;
use crate::store::rows::{api_key_info, key_time_now, new_key_info};
use crate::store::{ApiKeyInfo, ApiKeyStore, NewApiKey, StoreError, API_KEYS_LISTED_MAX};

/// Creations for one brand wait here for each other until the first commits, so the count
/// of the insert that follows sees every key committed before it: under READ COMMITTED
/// each statement reads a fresh snapshot, but two counts racing without the lock would
/// both see room for one more. The lock is the brand's hash, in a key space of its own.
const LOCK_BRAND: &str = "SELECT pg_advisory_xact_lock(hashtextextended('api_keys:' || $1, 0))";
/// Inserts nothing when the brand already holds `$7` active keys.
const INSERT_WITHIN_LIMIT: &str =
    "INSERT INTO api_keys (id, brand_id, label, secret_sha256, created_at, created_by)
SELECT $1, $2, $3, $4, $5, $6
 WHERE (SELECT count(*) FROM api_keys WHERE brand_id = $2 AND revoked_at IS NULL) < $7";
const LIST: &str = "SELECT id, brand_id, label, created_at, created_by, revoked_at
  FROM api_keys WHERE brand_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2";
/// The revocation and its notice in one statement: the notice is delivered when the
/// revocation commits, to every process listening (their key caches).
const REVOKE: &str = "WITH revoked AS (
    UPDATE api_keys SET revoked_at = $3
     WHERE id = $1 AND brand_id = $2 AND revoked_at IS NULL
 RETURNING id)
 SELECT pg_notify('ledger_api_key_revocations', id::text) FROM revoked";
/// The channel of revocation notices.
pub const REVOCATIONS_CHANNEL: &str = "ledger_api_key_revocations";
const FIND: &str = "SELECT id, brand_id, label, created_at, created_by, revoked_at
  FROM api_keys WHERE secret_sha256 = $1 AND revoked_at IS NULL";

fn info(row: &PgRow) -> Result<ApiKeyInfo, StoreError> {
    api_key_info(row, row.try_get(0)?)
}

#[async_trait]
impl ApiKeyStore for PostgresLog {
    async fn insert_within_limit(
        &self,
        key: &NewApiKey,
        active_max: i64,
    ) -> Result<Option<ApiKeyInfo>, StoreError> {
        let info = new_key_info(key);
        let mut tx = self.pool().begin().await?;
        sqlx::query(LOCK_BRAND)
            .bind(key.brand_id.as_str())
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(INSERT_WITHIN_LIMIT)
            .bind(info.id)
            .bind(key.brand_id.as_str())
            .bind(&info.label)
            .bind(&key.secret_sha256)
            .bind(info.created_at)
            .bind(&info.created_by)
            .bind(active_max)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from_write)?
            .rows_affected();
        tx.commit().await?;
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
            .bind(id)
            .bind(brand.as_str())
            .bind(key_time_now())
            .fetch_all(self.pool())
            .await?;
        Ok(done.len() == 1)
    }

    async fn watch_revocations(
        &self,
    ) -> Result<Option<std::sync::Arc<tokio::sync::Notify>>, StoreError> {
        let signal = std::sync::Arc::new(tokio::sync::Notify::new());
        let forward = signal.clone();
        // A revocation missed while reconnecting is covered: a reconnection wakes too,
        // and the cache is cleared anyway.
        super::listen(self.pool(), REVOCATIONS_CHANNEL, None, move || {
            forward.notify_one()
        })
        .await?;
        Ok(Some(signal))
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
