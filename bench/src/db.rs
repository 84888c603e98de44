//! The PostgreSQL server's fresh databases, event counts, temporary directories.

use std::path::PathBuf;

use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::BoxError;

/// The PostgreSQL server: creates fresh databases and drops them again.
pub(crate) struct Server {
    admin_url: String,
    /// Databases created and not yet dropped.
    created: Vec<String>,
}

impl Server {
    pub(crate) fn new(admin_url: &str) -> Self {
        Self {
            admin_url: admin_url.to_owned(),
            created: Vec::new(),
        }
    }

    /// A new empty database; returns its URL.
    pub(crate) async fn fresh(&mut self) -> Result<String, BoxError> {
        let name = format!("ledger_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        admin.close().await?;
        self.created.push(name.clone());
        Ok(with_db(&self.admin_url, &name))
    }

    pub(crate) async fn drop_last(&mut self) {
        if let Some(name) = self.created.pop() {
            self.drop_db(&name).await;
        }
    }

    pub(crate) async fn drop_all(&mut self) {
        while let Some(name) = self.created.pop() {
            self.drop_db(&name).await;
        }
    }

    async fn drop_db(&self, name: &str) {
        // FORCE: pools of finished measurements may still hold idle connections.
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let dropped = match PgConnection::connect(&self.admin_url).await {
            Ok(mut admin) => admin.execute(sql.as_str()).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = dropped {
            eprintln!("could not drop database {name}: {e}");
        }
    }
}

/// The server URL with its database replaced (query parameters kept).
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    // `postgres://user@host:port/db`: keep everything up to the first `/` after `//`.
    let authority_at = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_at..].find('/') {
        Some(slash) => &base[..authority_at + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

/// What a log holds: events, and the transactions that committed them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) events: u64,
    pub(crate) commits: Option<u64>,
}

impl Tally {
    /// What was added since `before`. Transactions never span the two counts.
    pub(crate) fn since(self, before: Tally) -> Tally {
        Tally {
            events: self.events - before.events,
            commits: self.commits.zip(before.commits).map(|(a, b)| a - b),
        }
    }
}

pub(crate) async fn tally_pg(pool: &PgPool) -> Result<Tally, BoxError> {
    let (events, commits): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT transaction_id) FROM events")
            .fetch_one(pool)
            .await?;
    Ok(Tally {
        events: events as u64,
        commits: Some(commits as u64),
    })
}

/// A directory under the system's temp dir, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> std::io::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("ledger-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
