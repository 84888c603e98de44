//! `usage-ledger`: the service binary.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use ledger_aggregates::Catalog;
use tracing_subscriber::EnvFilter;
use usage_ledger::clock::SystemClock;
use usage_ledger::config::{ServeConfig, StoreConfig};
use usage_ledger::engine::{Engine, EngineConfig};
use usage_ledger::http::{router, AppState};
use usage_ledger::store::{EventLog, PostgresLog, SqliteLog};

#[derive(Parser)]
#[command(
    name = "usage-ledger",
    version,
    about = "Event-sourced usage ledger: quotas, credits, alerts and overage cost"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve(ServeConfig),
    /// Create or upgrade the event store schema, then exit.
    Migrate(StoreConfig),
    /// Print the plan catalog as JSON.
    Plans(StoreConfig),
}

/// `usage-ledger` with no subcommand serves with flags from the environment only.
#[derive(Parser)]
struct DefaultServe {
    #[command(flatten)]
    cfg: ServeConfig,
}

/// glibc's allocator was ~13 % of the writer's CPU in a `perf` profile (many small,
/// short-lived allocations per command). Swapping in mimalloc gave no throughput change
/// measurable above this machine's run-to-run noise (docs/performance.md); it is kept as
/// the allocator built for this allocation pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Failure = Box<dyn std::error::Error + Send + Sync>;

async fn open_store(cfg: &StoreConfig) -> Result<Arc<dyn EventLog>, Failure> {
    Ok(match &cfg.database_url {
        Some(url) => Arc::new(PostgresLog::connect(url).await?),
        None => Arc::new(SqliteLog::open_in(&cfg.data_dir).await?),
    })
}

fn load_catalog(cfg: &StoreConfig) -> Result<Catalog, Failure> {
    Ok(match &cfg.catalog_path {
        Some(path) => Catalog::from_toml(&std::fs::read_to_string(path)?)?,
        None => Catalog::default_catalog(),
    })
}

async fn serve(cfg: ServeConfig) -> Result<(), Failure> {
    let catalog = Arc::new(load_catalog(&cfg.store)?);
    let engine_cfg = EngineConfig::default();
    tracing::info!(bind = %cfg.bind, store = %cfg.store, catalog_version = %catalog.version,
        batch_commands_max = engine_cfg.batch_commands_max, queue_commands_max = engine_cfg.queue_commands_max,
        "starting usage-ledger");
    let log = open_store(&cfg.store).await?;
    let engine = Engine::start(log.clone(), catalog, Arc::new(SystemClock), engine_cfg);
    let listener = tokio::net::TcpListener::bind(cfg.bind).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(AppState { engine, log }))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        None => serve(DefaultServe::parse_from(["usage-ledger"]).cfg).await,
        Some(Command::Serve(cfg)) => serve(cfg).await,
        Some(Command::Migrate(cfg)) => {
            open_store(&cfg).await?;
            println!("event store is up to date ({cfg})");
            Ok(())
        }
        Some(Command::Plans(cfg)) => {
            println!(
                "{}",
                serde_json::to_string_pretty(load_catalog(&cfg)?.plans())?
            );
            Ok(())
        }
    }
}
