//! The PostgreSQL store, for production: [`PostgresLog`] and its connections.
//!
//! # Layout
//! - this file: [`PostgresLog`]: connecting, the pool, the kept append connections, the
//!   migrations in `migrations/postgres`.
//! - [`log`]: the [`EventLog`](super::EventLog): set-based appends (`UNNEST` arrays, one
//!   statement per batch).
//! - [`projection`]: the [`ProjectionStore`](super::ProjectionStore): the log in commit
//!   order below the horizon of open transactions, the read models, LISTEN/NOTIFY.
//! - [`api_keys`]: the [`ApiKeyStore`](super::ApiKeyStore).
//! - [`outbox`]: the [`OutboxStore`](super::OutboxStore): notices to deliver, their
//!   attempts, webhook secrets.

pub mod api_keys;
pub mod log;
pub mod outbox;
pub mod projection;

use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use super::StoreError;

pub use log::INSERT_EVENTS;
pub use projection::EVENTS_CHANNEL;

/// Connections in the pool, for loads, API reads and the projector. The writer's append
/// connection is taken out of it and kept (`PostgresLog::appenders`), so the process holds
/// at most one more per writer shard. PostgreSQL on two cores gains nothing from more
/// concurrent statements.
pub const PG_POOL_CONNECTIONS_MAX: u32 = 16;
/// A request waiting longer than this for a connection fails (503 + `Retry-After`)
/// instead of piling up: with the database gone, callers hear so within a second, and
/// the pool reconnects by itself once it is back.
pub const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// A kept append connection idle longer than this is pinged before its next append.
pub const PG_APPENDER_PING_IDLE_AFTER: Duration = Duration::from_secs(1);

pub struct PostgresLog {
    pool: PgPool,
    /// Connections taken out of the pool for appends (and the version probes of pure
    /// checks) and kept between them. A pooled connection costs two extra round trips
    /// per statement (sqlx pings it when it is acquired and again when it is returned),
    /// and both are on a caller's critical path. One connection per concurrent
    /// statement: normally two (the writer's and the prober's), `writer_shards + 1` at most.
    appenders: std::sync::Mutex<Vec<(PgConnection, Instant)>>,
    /// Notified after each append of this process commits (see `ProjectionStore`).
    commits: std::sync::Arc<crate::store::CommitSignal>,
    /// When the tables' statistics are refreshed.
    stats: std::sync::Arc<super::stats::StatsDue>,
}

impl PostgresLog {
    /// Connect and run the migrations in `migrations/postgres`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let opts: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(PG_POOL_CONNECTIONS_MAX)
            .acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .connect_with(opts)
            .await?;
        Self::migrate(&pool).await?;
        Ok(Self {
            pool,
            appenders: Default::default(),
            commits: Default::default(),
            stats: Default::default(),
        })
    }

    /// Count appended rows, and refresh the tables' statistics in the background when
    /// a refresh is due (see [`super::stats`]).
    fn appended(&self, rows: usize) {
        if !self.stats.appended(rows as u64) {
            return;
        }
        let (pool, stats) = (self.pool.clone(), self.stats.clone());
        tokio::spawn(async move {
            let done = sqlx::query("ANALYZE events, snapshots, read_models")
                .execute(&pool)
                .await;
            if let Err(e) = done {
                tracing::warn!(error = %e, "refreshing the tables' statistics failed");
            }
            stats.done();
        });
    }

    /// A kept append connection, or a new one taken out of the pool. One kept idle for a
    /// while is pinged first, as the pool would: the server may have closed it since, and
    /// an append failing on a dead socket could not tell its callers that nothing was
    /// written.
    async fn appender(&self) -> Result<PgConnection, StoreError> {
        let kept = self
            .appenders
            .lock()
            .expect("never held across a panic")
            .pop();
        if let Some((mut conn, used)) = kept {
            if used.elapsed() < PG_APPENDER_PING_IDLE_AFTER || conn.ping().await.is_ok() {
                return Ok(conn);
            }
        }
        Ok(self.pool.acquire().await?.detach())
    }

    fn keep_appender(&self, conn: PgConnection) {
        self.appenders
            .lock()
            .expect("never held across a panic")
            .push((conn, Instant::now()));
    }

    pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(pool)
            .await
            .map_err(|e| StoreError::Unavailable(e.into()))
    }

    /// The signal this process's committed appends notify.
    /// A watcher of this process's commits, of its own.
    pub fn commit_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.commits.watch()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
