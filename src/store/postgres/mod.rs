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
/// A kept append (or log-read) connection idle longer than this is pinged before its
/// next statement.
pub const PG_APPENDER_PING_IDLE_AFTER: Duration = Duration::from_secs(1);
/// Pause before a lost listener connection is tried again.
pub const PG_LISTENER_RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Log-read connections kept between reads: the process's consumers, whose reads are
/// mostly shared, and the engine's probe of what they have not read yet. A read beyond
/// them takes one more out of the pool, closed after it.
pub const PG_LOG_READERS_KEPT_MAX: usize = 4;

pub struct PostgresLog {
    pool: PgPool,
    /// Connections taken out of the pool for appends (and the version probes of pure
    /// checks) and kept between them. A pooled connection costs two extra round trips
    /// per statement (sqlx pings it when it is acquired and again when it is returned),
    /// and both are on a caller's critical path. One connection per concurrent
    /// statement: normally two (the writer's and the prober's), `writer_shards + 1` at most.
    appenders: Kept,
    /// Connections taken out of the pool for the log reads of the consumers
    /// (`ProjectionStore::read_log`), set up once for them and kept between reads: a read
    /// is then one round trip, where a pooled one took five (ping, begin, the planner
    /// setting, the read, commit).
    log_readers: Kept,
    /// Notified after each append of this process commits (see `ProjectionStore`).
    commits: std::sync::Arc<crate::store::CommitSignal>,
    /// The log reads this process's consumers share.
    reads: crate::store::SharedReads,
    /// Set once the process listens to every process's commits (`watch_commits`).
    listening: tokio::sync::OnceCell<()>,
    /// When the tables' statistics are refreshed.
    stats: std::sync::Arc<super::stats::StatsDue>,
    /// Sets this process's name on its append connections: the commit notification an
    /// append sends carries it, so the listener skips this process's own commits, which
    /// already woke its consumers at once (migration 0007).
    origin_setting: String,
    /// This process's name in the notifications of its appends.
    origin: String,
}

/// Listen to `channel` on a connection of its own and call `wake` on every notification
/// but those whose payload is `skip_payload`, and after every reconnection (a notification may have been missed meanwhile), until
/// the pool closes. `recv` reconnects by itself after a lost connection.
async fn listen(
    pool: &PgPool,
    channel: &'static str,
    skip_payload: Option<String>,
    wake: impl Fn() + Send + 'static,
) -> Result<(), StoreError> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    tokio::spawn(async move {
        loop {
            match listener.recv().await {
                Ok(n) if skip_payload.as_deref() == Some(n.payload()) => {}
                Ok(_) => wake(),
                // The store was closed: let the listener's connection go with it.
                Err(sqlx::Error::PoolClosed) => return,
                Err(e) => {
                    tracing::warn!(channel, error = %e, "listener: reconnecting");
                    wake();
                    tokio::time::sleep(PG_LISTENER_RECONNECT_PAUSE).await;
                }
            }
        }
    });
    Ok(())
}

/// Connections taken out of the pool and kept between statements of one kind, so that
/// a statement skips the pool's two pings (when acquired, when returned) and the
/// connection keeps the session settings of its kind.
#[derive(Default)]
struct Kept {
    idle: std::sync::Mutex<Vec<(PgConnection, Instant)>>,
}

impl Kept {
    /// A kept connection, or a new one taken out of the pool and given `session`
    /// settings. One kept idle for a while is pinged first, as the pool would: the
    /// server may have closed it since, and an append failing on a dead socket could not
    /// tell its callers that nothing was written.
    async fn take(&self, pool: &PgPool, session: &[&str]) -> Result<PgConnection, StoreError> {
        let kept = self.idle.lock().expect("never held across a panic").pop();
        if let Some((mut conn, used)) = kept {
            if used.elapsed() < PG_APPENDER_PING_IDLE_AFTER || conn.ping().await.is_ok() {
                return Ok(conn);
            }
        }
        let mut conn = pool.acquire().await?.detach();
        for statement in session {
            sqlx::query(statement).execute(&mut conn).await?;
        }
        Ok(conn)
    }

    /// Keep `conn` for the next statement, unless `max` are kept already (it closes).
    fn keep(&self, conn: PgConnection, max: usize) {
        let mut idle = self.idle.lock().expect("never held across a panic");
        if idle.len() < max {
            idle.push((conn, Instant::now()));
        }
    }
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
        let origin = uuid::Uuid::new_v4().simple().to_string();
        Ok(Self {
            origin_setting: format!("SET ledger.origin = '{origin}'"),
            origin,
            pool,
            appenders: Default::default(),
            log_readers: Default::default(),
            commits: Default::default(),
            reads: Default::default(),
            listening: Default::default(),
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

    /// A kept append connection, or a new one taken out of the pool.
    async fn appender(&self) -> Result<PgConnection, StoreError> {
        self.appenders
            .take(&self.pool, &[&self.origin_setting])
            .await
    }

    fn keep_appender(&self, conn: PgConnection) {
        // One per concurrent append: at most one per writer shard and the prober.
        self.appenders.keep(conn, usize::MAX);
    }

    /// A kept log-read connection, or a new one taken out of the pool and set up for
    /// reading the log in index order (see `read_log`) on plans made once: a log read's
    /// plan is always that walk, and planning it anew (the horizon's view of the
    /// server's sessions) cost twice its execution.
    async fn log_reader(&self) -> Result<PgConnection, StoreError> {
        self.log_readers
            .take(
                &self.pool,
                &[
                    "SET enable_sort = off",
                    "SET plan_cache_mode = force_generic_plan",
                ],
            )
            .await
    }

    fn keep_log_reader(&self, conn: PgConnection) {
        self.log_readers.keep(conn, PG_LOG_READERS_KEPT_MAX);
    }

    pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(pool)
            .await
            .map_err(|e| StoreError::Unavailable(e.into()))
    }

    /// A watcher of this process's commits, of its own.
    pub fn commit_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.commits.watch()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
