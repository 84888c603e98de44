//! Service configuration: command-line flags with environment fallbacks. Every default
//! is stated with its reason; the resolved configuration is printed at start-up with
//! secrets redacted.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// The original served on 3333; callers and dashboards keep that port.
pub const DEFAULT_BIND: &str = "127.0.0.1:3333";

#[derive(Args, Clone)]
pub struct StoreConfig {
    /// PostgreSQL URL. Without it the embedded SQLite store in `--data-dir` is used.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory of the embedded SQLite store (`ledger.db`).
    #[arg(long, env = "LEDGER_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// A plan catalog TOML file replacing the embedded default catalog.
    #[arg(long, env = "LEDGER_CATALOG_PATH")]
    pub catalog_path: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct ServeConfig {
    #[command(flatten)]
    pub store: StoreConfig,
    /// Address to listen on.
    #[arg(long, env = "LEDGER_BIND", default_value = DEFAULT_BIND)]
    pub bind: SocketAddr,
}

/// Hide the password of a database URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.database_url {
            Some(url) => write!(f, "store=postgres url={}", redact_url(url))?,
            None => write!(
                f,
                "store=sqlite path={}",
                self.data_dir.join("ledger.db").display()
            )?,
        }
        match &self.catalog_path {
            Some(p) => write!(f, " catalog={}", p.display()),
            None => write!(f, " catalog=embedded"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_never_reach_the_log() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
