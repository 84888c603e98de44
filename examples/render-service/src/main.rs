//! Run the example service in front of a ledger. Configuration from the environment:
//!
//! - `RENDER_BIND` (default `127.0.0.1:4000`): where it listens.
//! - `LEDGER_URL` (default `http://127.0.0.1:3333`): the ledger.
//! - `RENDER_LEDGER_TOKEN`: a ledger JWT (role `service`) listing the brands served, or
//!   `RENDER_LEDGER_KEYS` = `brand=apikey,…`: one ledger API key per brand.
//! - `RENDER_CALLERS` = `token=brand,…`: this service's own callers.

use std::time::Duration;

use ledger_guard::{BrandIdentity, Credential, Credentials, Guard, GuardConfig};
use render_service::{router, Callers};

/// How long a shutdown waits for the fail-open spool to reach the ledger: what is still
/// spooled after it is lost, and logged.
const SHUTDOWN_DRAIN_S_MAX: u64 = 10;

fn pairs(var: &str) -> Result<Vec<(String, String)>, String> {
    let raw = std::env::var(var).unwrap_or_default();
    raw.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(a, b)| (a.trim().to_owned(), b.trim().to_owned()))
                .ok_or_else(|| format!("{var}: {p:?} is not name=value"))
        })
        .collect()
}

fn credentials() -> Result<Credentials, String> {
    if let Ok(token) = std::env::var("RENDER_LEDGER_TOKEN") {
        return Ok(Credentials::one(Credential::bearer(token)));
    }
    let keys: std::collections::HashMap<String, String> =
        pairs("RENDER_LEDGER_KEYS")?.into_iter().collect();
    if keys.is_empty() {
        return Err("set RENDER_LEDGER_TOKEN or RENDER_LEDGER_KEYS".to_owned());
    }
    Ok(Credentials::per_brand(move |brand| {
        keys.get(brand.as_str()).cloned().map(Credential::api_key)
    }))
}

fn callers() -> Result<Callers, String> {
    let callers = pairs("RENDER_CALLERS")?
        .into_iter()
        .map(|(token, brand)| BrandIdentity::new(brand).map(|b| (token, b)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(Callers::new(callers))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let bind = std::env::var("RENDER_BIND").unwrap_or_else(|_| "127.0.0.1:4000".to_owned());
    let ledger = std::env::var("LEDGER_URL").unwrap_or_else(|_| "http://127.0.0.1:3333".to_owned());
    let guard =
        Guard::start(GuardConfig::new(&ledger, credentials()?)).map_err(|e| e.to_string())?;
    let app = router(&guard, callers()?);
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    tracing::info!(%bind, %ledger, "render service listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())?;
    if !guard
        .spool()
        .drained(Duration::from_secs(SHUTDOWN_DRAIN_S_MAX))
        .await
    {
        tracing::error!(
            entries = guard.spool().len(),
            "spooled usage lost at shutdown"
        );
    }
    Ok(())
}
