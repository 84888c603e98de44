//! The SQLite store, embedded by default: [`SqliteLog`], one file under the data directory.
//!
//! # Layout
//! - this file: [`SqliteLog`]: opening the file (WAL, full sync), the pool, the
//!   migrations in `migrations/sqlite`.
//! - [`log`]: the [`EventLog`](super::EventLog): multi-row inserts in one transaction, key
//!   lists passed as one JSON parameter.
//! - [`projection`]: the [`ProjectionStore`](super::ProjectionStore): the log in
//!   `position` order (one writer, so commit order), the read models and their checkpoint.
//! - [`api_keys`]: the [`ApiKeyStore`](super::ApiKeyStore).
//! - [`outbox`]: the [`OutboxStore`](super::OutboxStore): notices to deliver, their
//!   attempts, webhook secrets.

pub mod api_keys;
pub mod log;
pub mod outbox;
pub mod projection;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::StoreError;

pub use log::SQLITE_INSERT_ROWS_MAX;

/// Readers share the file through WAL; SQLite has one writer whatever the pool size.
pub const SQLITE_POOL_CONNECTIONS_MAX: u32 = 8;
/// How long a statement waits for SQLite's write lock before failing.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteLog {
    pool: SqlitePool,
    /// Notified after each append of this process commits (see `ProjectionStore`).
    commits: std::sync::Arc<crate::store::CommitSignal>,
    /// The log reads this process's consumers share.
    reads: crate::store::SharedReads,
    /// When the tables' statistics are refreshed.
    stats: std::sync::Arc<super::stats::StatsDue>,
}

impl SqliteLog {
    /// Open (creating if needed) `<dir>/ledger.db` and run `migrations/sqlite`.
    pub async fn open_in(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
        Self::open(&dir.join("ledger.db").to_string_lossy()).await
    }

    pub async fn open(path: &str) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged, even on power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_POOL_CONNECTIONS_MAX)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(e.into()))?;
        Ok(Self {
            pool,
            commits: Default::default(),
            reads: Default::default(),
            stats: Default::default(),
        })
    }

    /// Count appended rows, and refresh the statistics in the background when a refresh
    /// is due (see [`super::stats`]). `analysis_limit` bounds the rows ANALYZE reads per
    /// index, so the write lock it takes is short whatever the file's size.
    pub(super) fn appended(&self, rows: usize) {
        if !self.stats.appended(rows as u64) {
            return;
        }
        let (pool, stats) = (self.pool.clone(), self.stats.clone());
        tokio::spawn(async move {
            let done = async {
                let mut conn = pool.acquire().await?;
                sqlx::query("PRAGMA analysis_limit = 1000")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("ANALYZE").execute(&mut *conn).await
            }
            .await;
            if let Err(e) = done {
                tracing::warn!(error = %e, "refreshing the statistics failed");
            }
            stats.done();
        });
    }

    /// The signal this process's committed appends notify.
    /// A watcher of this process's commits, of its own.
    pub fn commit_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.commits.watch()
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}
