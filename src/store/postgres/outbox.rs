//! The PostgreSQL [`OutboxStore`]: deliveries enqueued with the notices consumer's
//! checkpoint (compare and set), claimed for a lease with `FOR UPDATE SKIP LOCKED`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger_projections::LogPosition;
use sqlx::Row;

use super::projection::{as_read_model_writer, move_checkpoint};
use super::PostgresLog;
use crate::store::rows::webhook_secrets_row;
use crate::store::{
    endpoint_key, AfterAttempt, AttemptRow, DeliveryRow, NewDelivery, OutboxStore, StoreError,
    DELIVERY_DEAD, DELIVERY_DELIVERED, DELIVERY_PENDING,
};

const DELIVERY_COLUMNS: &str = "id, notice_id, brand_id, endpoint, kind, notice::text, status,
       attempts, next_attempt_at, created_at";

fn delivery(row: &sqlx::postgres::PgRow) -> Result<DeliveryRow, StoreError> {
    Ok(DeliveryRow {
        id: row.try_get(0)?,
        notice_id: row.try_get(1)?,
        brand_id: row.try_get(2)?,
        endpoint: row.try_get(3)?,
        kind: row.try_get(4)?,
        notice: row.try_get(5)?,
        status: row.try_get(6)?,
        attempts: i64::from(row.try_get::<i32, _>(7)?),
        next_attempt_at: row.try_get(8)?,
        created_at: row.try_get(9)?,
    })
}

#[async_trait]
impl OutboxStore for PostgresLog {
    async fn enqueue(
        &self,
        name: &str,
        from: LogPosition,
        to: LogPosition,
        deliveries: &[NewDelivery],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        // Writes no event: the log's horizon passes over it, as over read-model writes.
        as_read_model_writer(&mut tx).await?;
        if !move_checkpoint(&mut tx, name, from, to).await? {
            return Ok(false);
        }
        if !deliveries.is_empty() {
            let col = |f: fn(&NewDelivery) -> &str| deliveries.iter().map(f).collect::<Vec<&str>>();
            let due: Vec<DateTime<Utc>> = deliveries.iter().map(|d| d.next_attempt_at).collect();
            sqlx::query(
                "INSERT INTO deliveries (id, notice_id, brand_id, endpoint, kind, notice, status,
                                         next_attempt_at)
                 SELECT id, notice_id, brand_id, endpoint, kind, notice::json, $7, due
                   FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $8::timestamptz[])
                        AS d(id, notice_id, brand_id, endpoint, kind, notice, due)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(col(|d| &d.id))
            .bind(col(|d| &d.notice_id))
            .bind(col(|d| &d.brand_id))
            .bind(col(|d| &d.endpoint))
            .bind(col(|d| &d.kind))
            .bind(col(|d| &d.notice))
            .bind(DELIVERY_PENDING)
            .bind(due)
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
        let busy: Vec<String> = busy.iter().map(|(b, e)| endpoint_key(b, e)).collect();
        let rows = sqlx::query(&format!(
            "UPDATE deliveries SET next_attempt_at = $2, updated_at = now()
              WHERE id IN (SELECT id FROM deliveries
                            WHERE status = $4 AND next_attempt_at <= $1
                              AND brand_id || chr(31) || endpoint <> ALL($5)
                            ORDER BY next_attempt_at LIMIT $3
                            FOR UPDATE SKIP LOCKED)
              RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .bind(DELIVERY_PENDING)
        .bind(&busy)
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
        as_read_model_writer(&mut tx).await?;
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, number, at, status_code, error, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(attempt.number as i32)
        .bind(attempt.at)
        .bind(attempt.status_code.map(|c| c as i32))
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
            "UPDATE deliveries SET status = $2, attempts = $3, next_attempt_at = $4,
                                   updated_at = now()
              WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(attempt.number as i32)
        .bind(next)
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
              WHERE ($1::text IS NULL OR brand_id = $1) AND ($2::text IS NULL OR status = $2)
              ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(brand_id)
        .bind(status)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        let found: Vec<DeliveryRow> = rows.iter().map(delivery).collect::<Result<_, _>>()?;
        let ids: Vec<&str> = found.iter().map(|d| d.id.as_str()).collect();
        let attempts = sqlx::query(
            "SELECT delivery_id, number, at, status_code, error, duration_ms
               FROM delivery_attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, number",
        )
        .bind(&ids)
        .fetch_all(self.pool())
        .await?;
        let mut out: Vec<(DeliveryRow, Vec<AttemptRow>)> =
            found.into_iter().map(|d| (d, Vec::new())).collect();
        for row in &attempts {
            let id: String = row.try_get(0)?;
            let attempt = AttemptRow {
                number: i64::from(row.try_get::<i32, _>(1)?),
                at: row.try_get(2)?,
                status_code: row.try_get::<Option<i32>, _>(3)?.map(i64::from),
                error: row.try_get(4)?,
                duration_ms: row.try_get(5)?,
            };
            if let Some((_, list)) = out.iter_mut().find(|(d, _)| d.id == id) {
                list.push(attempt);
            }
        }
        Ok(out)
    }

    async fn release(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE deliveries SET next_attempt_at = $2 WHERE id = $1 AND status = $3")
            .bind(id)
            .bind(at)
            .bind(DELIVERY_PENDING)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn revive(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE deliveries SET status = $2, next_attempt_at = $3, updated_at = now()
              WHERE id = $1 AND status = $4",
        )
        .bind(id)
        .bind(DELIVERY_PENDING)
        .bind(now)
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
            "SELECT brand_id, endpoint, secrets::text FROM webhook_secrets WHERE brand_id = ANY($1)",
        )
        .bind(brand_ids)
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
        as_read_model_writer(&mut tx).await?;
        sqlx::query("DELETE FROM webhook_secrets WHERE brand_id = $1")
            .bind(brand_id)
            .execute(&mut *tx)
            .await?;
        for (endpoint, list) in secrets {
            sqlx::query("INSERT INTO webhook_secrets (brand_id, endpoint, secrets) VALUES ($1, $2, $3::json)")
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
