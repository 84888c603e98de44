//! The SQLite [`OutboxStore`]: the same tables as PostgreSQL's, times as fixed-width
//! RFC 3339 text (so text order is time order); SQLite's single writer makes a claim's
//! `UPDATE … RETURNING` exclusive without row locks.

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use ledger_projections::LogPosition;
use sqlx::Row;

use super::projection::move_checkpoint;
use super::SqliteLog;
use crate::store::rows::webhook_secrets_row;
use crate::store::{
    endpoint_key, AfterAttempt, AttemptRow, DeliveryRow, NewDelivery, OutboxStore, StoreError,
    DELIVERY_DEAD, DELIVERY_DELIVERED, DELIVERY_PENDING,
};

const DELIVERY_COLUMNS: &str = "id, notice_id, brand_id, endpoint, kind, notice, status,
       attempts, next_attempt_at, created_at";

/// Microseconds, `Z`: every stored time has the same width.
fn text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time {s}: {e}")))
}

fn delivery(row: &sqlx::sqlite::SqliteRow) -> Result<DeliveryRow, StoreError> {
    Ok(DeliveryRow {
        id: row.try_get(0)?,
        notice_id: row.try_get(1)?,
        brand_id: row.try_get(2)?,
        endpoint: row.try_get(3)?,
        kind: row.try_get(4)?,
        notice: row.try_get(5)?,
        status: row.try_get(6)?,
        attempts: row.try_get(7)?,
        next_attempt_at: time(&row.try_get::<String, _>(8)?)?,
        created_at: time(&row.try_get::<String, _>(9)?)?,
    })
}

#[async_trait]
impl OutboxStore for SqliteLog {
    async fn enqueue(
        &self,
        name: &str,
        from: LogPosition,
        to: LogPosition,
        deliveries: &[NewDelivery],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        if !move_checkpoint(&mut tx, name, from, to).await? {
            return Ok(false);
        }
        for d in deliveries {
            sqlx::query(
                "INSERT INTO deliveries (id, notice_id, brand_id, endpoint, kind, notice, status,
                                         next_attempt_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&d.id)
            .bind(&d.notice_id)
            .bind(&d.brand_id)
            .bind(&d.endpoint)
            .bind(&d.kind)
            .bind(&d.notice)
            .bind(DELIVERY_PENDING)
            .bind(text(d.next_attempt_at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
        busy: &[(String, String)],
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        // The busy endpoints as a JSON array, so the statement keeps one shape.
        let busy: Vec<String> = busy.iter().map(|(b, e)| endpoint_key(b, e)).collect();
        let rows = sqlx::query(&format!(
            "UPDATE deliveries SET next_attempt_at = ?2
              WHERE id IN (SELECT id FROM deliveries
                            WHERE status = ?4 AND next_attempt_at <= ?1
                              AND brand_id || char(31) || endpoint
                                  NOT IN (SELECT value FROM json_each(?5))
                            ORDER BY next_attempt_at LIMIT ?3)
              RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(text(now))
        .bind(text(lease_until))
        .bind(limit)
        .bind(DELIVERY_PENDING)
        .bind(serde_json::to_string(&busy).expect("strings serialize"))
        .fetch_all(self.pool())
        .await?;
        let mut out: Vec<DeliveryRow> = rows.iter().map(delivery).collect::<Result<_, _>>()?;
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn record_attempt(
        &self,
        id: &str,
        attempt: &AttemptRow,
        after: AfterAttempt,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, number, at, status_code, error, duration_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(attempt.number)
        .bind(text(attempt.at))
        .bind(attempt.status_code)
        .bind(&attempt.error)
        .bind(attempt.duration_ms)
        .execute(&mut *tx)
        .await?;
        let (status, next) = match after {
            AfterAttempt::Delivered => (DELIVERY_DELIVERED, attempt.at),
            AfterAttempt::RetryAt(at) => (DELIVERY_PENDING, at),
            AfterAttempt::Dead => (DELIVERY_DEAD, attempt.at),
        };
        sqlx::query(
            "UPDATE deliveries SET status = ?2, attempts = ?3, next_attempt_at = ?4,
                                   updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
              WHERE id = ?1",
        )
        .bind(id)
        .bind(status)
        .bind(attempt.number)
        .bind(text(next))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn deliveries(
        &self,
        brand_id: Option<&str>,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(DeliveryRow, Vec<AttemptRow>)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries
              WHERE (?1 IS NULL OR brand_id = ?1) AND (?2 IS NULL OR status = ?2)
              ORDER BY created_at DESC, id DESC LIMIT ?3"
        ))
        .bind(brand_id)
        .bind(status)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let d = delivery(row)?;
            let attempts = sqlx::query(
                "SELECT number, at, status_code, error, duration_ms
                   FROM delivery_attempts WHERE delivery_id = ?1 ORDER BY number",
            )
            .bind(&d.id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| {
                Ok(AttemptRow {
                    number: r.try_get(0)?,
                    at: time(&r.try_get::<String, _>(1)?)?,
                    status_code: r.try_get(2)?,
                    error: r.try_get(3)?,
                    duration_ms: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
            out.push((d, attempts));
        }
        Ok(out)
    }

    async fn release(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE deliveries SET next_attempt_at = ?2 WHERE id = ?1 AND status = ?3")
            .bind(id)
            .bind(text(at))
            .bind(DELIVERY_PENDING)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn revive(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE deliveries SET status = ?2, next_attempt_at = ?3 WHERE id = ?1 AND status = ?4",
        )
        .bind(id)
        .bind(DELIVERY_PENDING)
        .bind(text(now))
        .bind(DELIVERY_DEAD)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn webhook_secrets(
        &self,
        brand_ids: &[String],
    ) -> Result<Vec<(String, String, Vec<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT brand_id, endpoint, secrets FROM webhook_secrets
              WHERE brand_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(serde_json::to_string(brand_ids).expect("strings serialize"))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(webhook_secrets_row).collect()
    }

    async fn set_webhook_secrets(
        &self,
        brand_id: &str,
        secrets: &[(String, Vec<String>)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM webhook_secrets WHERE brand_id = ?1")
            .bind(brand_id)
            .execute(&mut *tx)
            .await?;
        for (endpoint, list) in secrets {
            sqlx::query(
                "INSERT INTO webhook_secrets (brand_id, endpoint, secrets) VALUES (?1, ?2, ?3)",
            )
            .bind(brand_id)
            .bind(endpoint)
            .bind(serde_json::to_string(list).expect("strings serialize"))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
