//! Test harness: a fresh database per test, on real PostgreSQL and real SQLite.
#![allow(dead_code)]

pub mod workload;

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use ledger_aggregates::Catalog;
use sqlx::postgres::PgPoolOptions;
use sqlx::Executor;
use usage_ledger::clock::{Clock, ManualClock};
use usage_ledger::engine::{Engine, EngineConfig};
use usage_ledger::store::{EventLog, PostgresLog, ProjectionStore, SqliteLog};
use usage_ledger::tail::projector::{Projector, ReadModelsConfig};
use usage_ledger::tail::watermark::Watermarks;
use usage_ledger::tail::TailError;

/// The server that hosts per-test databases. CI sets `DATABASE_URL`; locally the
/// machine's default server is used.
const PG_DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub enum Backend {
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
    Sqlite {
        dir: tempfile::TempDir,
    },
}

pub struct TestDb {
    pub backend: Backend,
}

fn pg_admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| PG_DEFAULT_URL.to_owned())
}

fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("a PostgreSQL URL ends with /<database>");
    format!("{base}/{db}")
}

impl TestDb {
    /// A fresh, empty PostgreSQL database. Without a reachable server the test fails in
    /// CI (`CI=true`) and is skipped with a message elsewhere.
    pub async fn postgres() -> Option<TestDb> {
        let admin_url = pg_admin_url();
        let admin = match PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url)
            .await
        {
            Ok(p) => p,
            Err(e) if std::env::var("CI").is_err() => {
                eprintln!(
                    "SKIPPED: PostgreSQL unreachable at {admin_url}: {e} (install it, see README)"
                );
                return None;
            }
            Err(e) => panic!("PostgreSQL must be reachable in CI at {admin_url}: {e}"),
        };
        let name = format!("ledger_t_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        admin.close().await;
        let url = with_db(&admin_url, &name);
        Some(TestDb {
            backend: Backend::Postgres {
                admin_url,
                name,
                url,
            },
        })
    }

    pub fn sqlite() -> TestDb {
        TestDb {
            backend: Backend::Sqlite {
                dir: tempfile::tempdir().expect("temp dir"),
            },
        }
    }

    /// A new connection pool (and migrations) on this database: a second "process".
    pub async fn log(&self) -> Arc<dyn EventLog> {
        match &self.backend {
            Backend::Postgres { url, .. } => {
                Arc::new(PostgresLog::connect(url).await.expect("connect pg"))
            }
            Backend::Sqlite { dir } => {
                Arc::new(SqliteLog::open_in(dir.path()).await.expect("open sqlite"))
            }
        }
    }

    /// A new connection pool on this database, as the log and as the projection store
    /// (one object: an in-process projector wakes on this log's appends).
    pub async fn stores(&self) -> (Arc<dyn EventLog>, Arc<dyn ProjectionStore>) {
        match &self.backend {
            Backend::Postgres { url, .. } => {
                let db = Arc::new(PostgresLog::connect(url).await.expect("connect pg"));
                (db.clone(), db)
            }
            Backend::Sqlite { dir } => {
                let db = Arc::new(SqliteLog::open_in(dir.path()).await.expect("open sqlite"));
                (db.clone(), db)
            }
        }
    }

    pub fn pg_url(&self) -> Option<&str> {
        match &self.backend {
            Backend::Postgres { url, .. } => Some(url),
            Backend::Sqlite { .. } => None,
        }
    }

    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        match &self.backend {
            Backend::Sqlite { dir } => Some(dir.path().join("ledger.db")),
            Backend::Postgres { .. } => None,
        }
    }

    /// Drop the PostgreSQL database (the SQLite directory goes with the guard).
    pub async fn cleanup(self) {
        if let Backend::Postgres {
            admin_url, name, ..
        } = &self.backend
        {
            if let Ok(admin) = PgPoolOptions::new()
                .max_connections(1)
                .connect(admin_url)
                .await
            {
                let _ = admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await;
            }
        }
    }
}

/// Mid-November 2026, a fixed instant so tests know their period.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 15, 12, 0, 0).unwrap()
}

pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(t0()))
}

/// An engine with the default configuration on a new connection to `db`, and its log.
pub async fn engine(db: &TestDb) -> (Engine, Arc<dyn EventLog>) {
    let log = db.log().await;
    let clock: Arc<dyn Clock> = manual_clock();
    (engine_on(log.clone(), clock, EngineConfig::default()), log)
}

/// [`engine`], with the consumer that tells its writers what the log holds, as the
/// service runs it.
#[allow(dead_code)]
pub async fn engine_following(db: &TestDb) -> (Engine, usage_ledger::tail::Tail) {
    let (log, projections) = db.stores().await;
    let engine = engine_on(log, manual_clock(), EngineConfig::default());
    let caches = usage_ledger::tail::caches::follow(&engine, projections)
        .await
        .expect("the log is followed");
    (engine, caches)
}

/// The read models' consumer on `store`, with its own watermarks and default limits.
#[allow(dead_code)]
pub async fn projector(store: Arc<dyn ProjectionStore>) -> Result<Projector, TailError> {
    Projector::start(
        store,
        Arc::new(Watermarks::new()),
        ReadModelsConfig::default(),
    )
    .await
}

/// How many events the period stream `id` holds.
pub async fn stream_len(log: &Arc<dyn EventLog>, id: &str) -> usize {
    log.read_stream("usage_period", id, 0, 1_000_000)
        .await
        .unwrap()
        .len()
}

pub fn engine_on(log: Arc<dyn EventLog>, clock: Arc<dyn Clock>, config: EngineConfig) -> Engine {
    Engine::start(log, Arc::new(Catalog::default_catalog()), clock, config)
}

/// The default catalog with the business plan's renders_3d blocked at 50: the default
/// blocks only a gauge (team_members), and consumes are of counters.
#[allow(dead_code)]
pub fn blocking_renders_toml() -> String {
    const CHARGED: &str =
        r#"{ metric = "renders_3d", limit = 200, overage = "charge", overage_rate = 60 }"#;
    const BLOCKED: &str = r#"{ metric = "renders_3d", limit = 50, overage = "block" }"#;
    let default = include_str!("../../aggregates/catalog/default.toml");
    assert!(
        default.contains(CHARGED),
        "business renders_3d moved in the catalog"
    );
    default.replace(CHARGED, BLOCKED)
}

/// An engine on `db` with [`blocking_renders_toml`]'s catalog.
#[allow(dead_code)]
pub async fn blocking_engine(db: &TestDb) -> (Engine, Arc<dyn EventLog>) {
    let log = db.log().await;
    let catalog = Catalog::from_toml(&blocking_renders_toml()).expect("the catalog parses");
    let engine = Engine::start(
        log.clone(),
        Arc::new(catalog),
        manual_clock(),
        EngineConfig::default(),
    );
    (engine, log)
}

/// Runs a test body on both stores: `on_both_stores!(name, body_fn)` makes
/// `name::postgres` and `name::sqlite`.
#[macro_export]
macro_rules! on_both_stores {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::common::TestDb::postgres().await else {
                    return;
                };
                $body(&db).await;
                db.cleanup().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::common::TestDb::sqlite();
                $body(&db).await;
            }
        }
    };
}
