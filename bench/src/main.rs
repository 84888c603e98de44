//! `ledger-bench`: how fast the ledger records usage, next to what PostgreSQL can do at
//! all and to what a stock cqrs-es setup does with the same aggregate.
//!
//! Everything runs in this one process against one PostgreSQL server, each measurement
//! in a fresh database `ledger_bench_<uuid>` (dropped afterwards), so no run sees
//! another's rows, caches or bloat. Two scenarios:
//!
//! - **hot brand**: every command goes to one brand, i.e. one brand-period stream;
//! - **1,000 brands**: commands go to brands picked pseudo-randomly (a fixed hash of the
//!   command number, the same for every system) among `--brands` registered brands.
//!
//! For each scenario it measures:
//!
//! - **raw ceiling**: `--commands` realistic `UsageRecorded` rows appended with the
//!   engine's own `UNNEST` statement, 100 rows a statement, from one connection; and the
//!   same rows as single-row autocommit inserts from 8 connections;
//! - **baseline**: `CqrsFramework` + `postgres_es::PostgresEventRepository`, one
//!   `execute` per command, retried on `AggregateConflict`;
//! - **engine**: [`usage_ledger::engine::Engine`] on PostgreSQL (and with `--sqlite` on
//!   SQLite), without and with a unique idempotency key per command.
//!
//! Load is a closed loop: `--submitters` tokio tasks each send their share of the
//! commands one after the other and time each one. See `docs/performance.md`.
//!
//! The running service over HTTP is measured by `bench/http/run.sh` (wrk), not here.
//!
//! # Layout
//! - `main` (this file): the options, the order of the runs, the bench's plan and metric.
//! - [`scenario`]: hot brand and many brands, and which brand each command goes to.
//! - [`drive`]: the closed-loop driver, its latency histogram and one run's counts.
//! - [`raw`]: the raw PostgreSQL ceilings (100-row `UNNEST`, single-row autocommit).
//! - [`baseline`]: cqrs-es + postgres-es, one `execute` per command.
//! - [`engine`]: the ledger engine (and projector), wired in [`engine::wire_ledger`].
//! - [`projection`]: projector lag and replay rates over the log an engine run wrote.
//! - [`notices`]: threshold notices under full ingest: commit-to-delivery latency and
//!   the pipeline's cost to the engine's rate (`--systems notices` only).
//! - [`db`]: fresh databases, event counts, temporary directories.
//! - [`report`]: the tables and the ratios to the baseline and the ceiling.

mod baseline;
mod db;
mod drive;
mod engine;
mod notices;
mod projection;
mod raw;
mod report;
mod scenario;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use ledger_aggregates::{Catalog, MetricKey, PeriodKey, PlanDefinition, PlanId, Quantity};
use usage_ledger::store::{PostgresLog, ProjectionStore, SqliteLog};

use baseline::baseline;
use db::{Server, TempDir};
use drive::Measured;
use engine::{engine_run, Store};
use raw::{raw_batches, raw_single_rows};
use report::{load_average, print_report, thousands};
use scenario::Scenario;

/// glibc's allocator was ~13 % of the writer's CPU in a `perf` profile (many small,
/// short-lived allocations per command). Swapping in mimalloc gave no throughput change
/// measurable above this machine's run-to-run noise (docs/performance.md); it is kept as
/// the allocator built for this allocation pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The plan every benchmark brand is on: its `api_calls` quota (9,999,999, charged
/// overage) is never reached, so every command records usage and nothing is denied.
pub(crate) const BENCH_PLAN: &str = "enterprise";
pub(crate) const BENCH_METRIC: &str = "api_calls";
pub(crate) const ACTOR: &str = "ledger-bench";

#[derive(Debug, Parser)]
#[command(about = "Raw PostgreSQL ceiling, cqrs-es baseline and the ledger engine, side by side")]
pub(crate) struct Args {
    /// Server hosting the benchmark databases; the URL's database is only used to
    /// create and drop `ledger_bench_<uuid>` databases.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub(crate) database_url: String,
    /// Timed commands per scenario for the engine, and rows for the raw ceiling.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) commands: usize,
    /// Concurrent closed-loop submitters (tokio tasks).
    #[arg(long, default_value_t = 64)]
    pub(crate) submitters: usize,
    /// Brands of the multi-brand scenario.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) brands: usize,
    /// Timed commands of the cqrs-es baseline, which is far slower; rates compare per second.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) baseline_commands: usize,
    /// Untimed commands before each measurement (the multi-brand scenario also warms
    /// up with one command per brand, so every period is open before timing).
    #[arg(long, default_value_t = 300)]
    pub(crate) warmup: usize,
    /// Only these scenarios (`hot`, `brands`); all when absent.
    #[arg(long, value_delimiter = ',')]
    pub(crate) scenarios: Vec<String>,
    /// Only these systems (`raw`, `baseline`, `engine`, `projection`: the engine with
    /// the projector beside it, then replays of the log it wrote); all when absent.
    /// `notices` (never part of "all") measures threshold notices under full ingest.
    #[arg(long, value_delimiter = ',')]
    pub(crate) systems: Vec<String>,
    /// Also run the engine on SQLite (a file in a temporary directory).
    #[arg(long)]
    pub(crate) sqlite: bool,
    /// Stop starting new commands of a timed run after this many seconds. Without a
    /// bound, the baseline's hot brand (every command reloading a growing stream and
    /// losing optimistic races) takes minutes; rates are per second either way.
    #[arg(long, default_value_t = 30)]
    pub(crate) run_seconds_max: u64,
    /// Run `ANALYZE` after the warm-up, as autovacuum eventually does on a live
    /// database; by default the planner sees a table that was never analyzed.
    #[arg(long)]
    pub(crate) analyze: bool,
    /// Writer shards of the engine (`EngineConfig::writer_shards`); default: the
    /// engine's own default.
    #[arg(long)]
    pub(crate) writer_shards: Option<usize>,
    /// Rounds of the raw ceiling and the engine runs (with and without the projector),
    /// interleaved (raw, engine, engine with keys, engine with the projector, raw, …)
    /// so a drift of the machine hits them alike. The table shows each system's median
    /// round; ratios to the ceiling are the median of the per-round ratios. The
    /// single-row raw run and the baseline run once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) rounds: u32,
    /// Worker threads of the process's tokio runtime (everything runs in it: the
    /// submitters, the engine, the raw ceiling's loop). One by default: PostgreSQL
    /// runs on the same two cores, and a second worker mostly adds cross-thread
    /// wake-ups (see docs/performance.md). The service takes the same setting from
    /// tokio's `TOKIO_WORKER_THREADS`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) worker_threads: u16,
}

impl Args {
    /// When a timed run that starts now stops starting commands.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(self.run_seconds_max))
    }

    /// The label of a system, marked when its tables were analyzed.
    pub(crate) fn label(&self, system: String) -> String {
        if self.analyze {
            format!("{system}, analyzed")
        } else {
            system
        }
    }
}

fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build()?
        .block_on(async {
            let mut server = Server::new(&args.database_url);
            let result = run(&args, &mut server).await;
            // Databases of a failed run are dropped too: the bench leaves nothing behind.
            server.drop_all().await;
            let results = result?;
            print_report(&args, &results);
            Ok(())
        })
}

async fn run(args: &Args, server: &mut Server) -> Result<Vec<Measured>, BoxError> {
    let period = PeriodKey::containing(Utc::now());
    eprintln!(
        "ledger-bench: {} commands ({} baseline), {} submitters, {} brands, warm-up {}, period {period}, load average {}",
        args.commands, args.baseline_commands, args.submitters, args.brands, args.warmup, load_average()
    );
    let mut results = Vec::new();
    for scenario in Scenario::selected(args, period)? {
        // Every round of each system, in the order systems first ran.
        let mut series: Vec<Vec<Measured>> = Vec::new();
        let mut add = |m: Measured| match series.iter_mut().find(|s| s[0].system == m.system) {
            Some(s) => s.push(m),
            None => series.push(vec![m]),
        };
        for round in 0..args.rounds {
            let first = round == 0;
            if wants(&args.systems, "raw") {
                let url = server.fresh().await?;
                add(raw_batches(&url, &scenario, args).await?);
                server.drop_last().await;
                if first {
                    let url = server.fresh().await?;
                    add(raw_single_rows(&url, &scenario, args).await?);
                    server.drop_last().await;
                }
            }
            if first && wants(&args.systems, "baseline") {
                let url = server.fresh().await?;
                add(baseline(&url, &scenario, args).await?);
                server.drop_last().await;
            }
            if wants(&args.systems, "engine") {
                for keyed in [false, true] {
                    let url = server.fresh().await?;
                    let log = Arc::new(PostgresLog::connect(&url).await?);
                    let store = Store::Postgres(log.pool().clone());
                    add(engine_run(log, store, &scenario, args, keyed, None).await?);
                    server.drop_last().await;
                }
                if args.sqlite {
                    for keyed in [false, true] {
                        let dir = TempDir::new()?;
                        let log = Arc::new(SqliteLog::open_in(&dir.0).await?);
                        let store = Store::Sqlite(log.pool().clone());
                        add(engine_run(log, store, &scenario, args, keyed, None).await?);
                    }
                }
            }
            if wants(&args.systems, "projection") {
                let url = server.fresh().await?;
                let log = Arc::new(PostgresLog::connect(&url).await?);
                let store = Store::Postgres(log.pool().clone());
                let projection: Arc<dyn ProjectionStore> = log.clone();
                add(engine_run(log, store, &scenario, args, false, Some(projection)).await?);
                server.drop_last().await;
            }
        }
        results.extend(series.into_iter().map(median_round));
    }
    if args.systems.iter().any(|s| s == "notices") {
        notices::notices_run(server, args).await?;
    }
    Ok(results)
}

/// The round with the median event rate, carrying every round's rate.
fn median_round(mut rounds: Vec<Measured>) -> Measured {
    let rates: Vec<f64> = rounds.iter().map(Measured::events_per_s).collect();
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&a, &b| rates[a].total_cmp(&rates[b]));
    let mut m = rounds.swap_remove(order[order.len() / 2]);
    if rates.len() > 1 {
        m.remarks.push(format!(
            "median of {} rounds; events/s by round: {}",
            rates.len(),
            rates
                .iter()
                .map(|r| thousands(*r))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    m.rounds = rates;
    m
}

pub(crate) fn wants(filter: &[String], name: &str) -> bool {
    filter.is_empty() || filter.iter().any(|f| name.starts_with(f.as_str()))
}

pub(crate) fn bench_plan(catalog: &Catalog) -> Result<PlanDefinition, BoxError> {
    catalog
        .plan(&PlanId::parse(BENCH_PLAN)?)
        .cloned()
        .ok_or_else(|| format!("the catalog has no plan {BENCH_PLAN}").into())
}

pub(crate) fn metric() -> MetricKey {
    MetricKey::parse(BENCH_METRIC).expect("a valid metric key literal")
}

pub(crate) fn one() -> Quantity {
    Quantity::new(1).expect("1 is a valid quantity")
}
