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

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use cqrs_es::{Aggregate, AggregateError};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use ledger_aggregates::ids::period_stream_id;
use ledger_aggregates::period::{PeriodCommand, UsageVia};
use ledger_aggregates::{
    BrandId, Catalog, IdempotencyKey, LedgerEvent, LedgerRules, MetricKey, MetricKind,
    MetricTotals, Money, PeriodKey, PlanDefinition, PlanId, Quantity, UsagePeriodAggregate,
};
use ledger_projections::{LogRecord, ProjectedEvent, ReadModels};
use ledger_replay::Replayer;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use usage_ledger::cli::replay::scan_log;
use usage_ledger::clock::SystemClock;
use usage_ledger::engine::{Action, Engine, EngineConfig, PeriodRequest};
use usage_ledger::projector::Projector;
use usage_ledger::store::{
    EventLog, PostgresLog, ProjectionStore, SqliteLog, READ_MODELS_PROJECTOR,
};

/// glibc's allocator was ~13 % of the writer's CPU in a `perf` profile (many small,
/// short-lived allocations per command). Swapping in mimalloc gave no throughput change
/// measurable above this machine's run-to-run noise (docs/performance.md); it is kept as
/// the allocator built for this allocation pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Rows per statement of the raw ceiling: the batch size the reference numbers
/// (~166,000 rows/s) were taken with. The last statement may hold fewer.
const RAW_BATCH_ROWS_MAX: usize = 100;
/// Connections of the single-row raw insert: the issue's ~6,800 tx/s were measured with
/// 8, about what two cores keep busy while each connection waits for its commit.
const RAW_SINGLE_ROW_CONNECTIONS: usize = 8;
/// A baseline command that loses the optimistic race this many times in a row is
/// counted as failed instead of retried forever: a livelock must show up as errors,
/// not as a benchmark that never ends.
const BASELINE_CONFLICT_RETRIES_MAX: u64 = 10_000;
/// Latencies above a minute are recorded as a minute: the histogram needs a bound, and
/// anything that slow is a failure whatever its exact value.
const LATENCY_US_MAX: u64 = 60_000_000;
/// The plan every benchmark brand is on: its `api_calls` quota (9,999,999, charged
/// overage) is never reached, so every command records usage and nothing is denied.
const BENCH_PLAN: &str = "enterprise";
const BENCH_METRIC: &str = "api_calls";
const ACTOR: &str = "ledger-bench";

#[derive(Debug, Parser)]
#[command(about = "Raw PostgreSQL ceiling, cqrs-es baseline and the ledger engine, side by side")]
struct Args {
    /// Server hosting the benchmark databases; the URL's database is only used to
    /// create and drop `ledger_bench_<uuid>` databases.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Timed commands per scenario for the engine, and rows for the raw ceiling.
    #[arg(long, default_value_t = 20_000)]
    commands: usize,
    /// Concurrent closed-loop submitters (tokio tasks).
    #[arg(long, default_value_t = 64)]
    submitters: usize,
    /// Brands of the multi-brand scenario.
    #[arg(long, default_value_t = 1_000)]
    brands: usize,
    /// Timed commands of the cqrs-es baseline, which is far slower; rates compare per second.
    #[arg(long, default_value_t = 2_000)]
    baseline_commands: usize,
    /// Untimed commands before each measurement (the multi-brand scenario also warms
    /// up with one command per brand, so every period is open before timing).
    #[arg(long, default_value_t = 300)]
    warmup: usize,
    /// Only these scenarios (`hot`, `brands`); all when absent.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Only these systems (`raw`, `baseline`, `engine`, `projection`: the engine with
    /// the projector beside it, then replays of the log it wrote); all when absent.
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Also run the engine on SQLite (a file in a temporary directory).
    #[arg(long)]
    sqlite: bool,
    /// Stop starting new commands of a timed run after this many seconds. Without a
    /// bound, the baseline's hot brand (every command reloading a growing stream and
    /// losing optimistic races) takes minutes; rates are per second either way.
    #[arg(long, default_value_t = 30)]
    run_seconds_max: u64,
    /// Run `ANALYZE` after the warm-up, as autovacuum eventually does on a live
    /// database; by default the planner sees a table that was never analyzed.
    #[arg(long)]
    analyze: bool,
    /// Writer shards of the engine (`EngineConfig::writer_shards`); default: the
    /// engine's own default.
    #[arg(long)]
    writer_shards: Option<usize>,
    /// Rounds of the raw ceiling and the engine runs, interleaved (raw, engine, engine
    /// with keys, raw, …) so a drift of the machine hits both alike. The table shows
    /// each system's median round; ratios to the ceiling are the median of the
    /// per-round ratios. The single-row raw run, the baseline and the projection run
    /// once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Worker threads of the process's tokio runtime (everything runs in it: the
    /// submitters, the engine, the raw ceiling's loop). One by default: PostgreSQL
    /// runs on the same two cores, and a second worker mostly adds cross-thread
    /// wake-ups (see docs/performance.md). The service takes the same setting from
    /// tokio's `TOKIO_WORKER_THREADS`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: u16,
}

impl Args {
    /// When a timed run that starts now stops starting commands.
    fn deadline(&self) -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(self.run_seconds_max))
    }

    /// The label of a system, marked when its tables were analyzed.
    fn label(&self, system: String) -> String {
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
            if first && wants(&args.systems, "projection") {
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

fn wants(filter: &[String], name: &str) -> bool {
    filter.is_empty() || filter.iter().any(|f| name.starts_with(f.as_str()))
}

// ---------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------

struct Scenario {
    /// `hot` or `brands`, for `--scenarios`.
    key: &'static str,
    /// Shown in the tables.
    title: String,
    brands: Vec<BrandId>,
    /// The period every command lands in: the current one, as the engine stamps `now`.
    period: PeriodKey,
}

impl Scenario {
    fn selected(args: &Args, period: PeriodKey) -> Result<Vec<Scenario>, BoxError> {
        let hot = Scenario {
            key: "hot",
            title: "hot brand".into(),
            brands: vec![BrandId::parse("bench-hot")?],
            period,
        };
        let many = Scenario {
            key: "brands",
            title: format!("{} brands", thousands(args.brands as f64)),
            brands: (0..args.brands.max(1))
                .map(|i| BrandId::parse(&format!("brand-{i:05}")))
                .collect::<Result<_, _>>()?,
            period,
        };
        Ok([hot, many]
            .into_iter()
            .filter(|s| wants(&args.scenarios, s.key))
            .collect())
    }

    /// The brand of the `i`-th command: a fixed pseudo-random pick, so every system
    /// sees the same sequence of brands and submitters collide as they would in life.
    fn brand_index(&self, i: usize) -> usize {
        (splitmix64(i as u64) % self.brands.len() as u64) as usize
    }

    /// Warm-up commands: the first touches every brand once (opening every period),
    /// then `warmup` more.
    fn warmup_commands(&self, warmup: usize) -> usize {
        if self.brands.len() == 1 {
            warmup
        } else {
            self.brands.len() + warmup
        }
    }

    fn warmup_brand_index(&self, i: usize) -> usize {
        if i < self.brands.len() {
            i
        } else {
            self.brand_index(i)
        }
    }

    fn stream_id(&self, brand: usize) -> String {
        period_stream_id(&self.brands[brand], self.period)
    }
}

/// A well-mixed 64-bit hash (Steele et al., SplitMix64), enough to spread brands.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------

struct Measured {
    scenario: String,
    system: String,
    run: Run,
    /// Events (rows) appended during the timed part, counted in the database.
    events: u64,
    /// Transactions those events were committed in (PostgreSQL only: SQLite rows carry
    /// no transaction id). Events per commit is the group-commit batch size.
    commits: Option<u64>,
    /// Optimistic-concurrency conflicts (baseline only).
    conflicts: Option<u64>,
    /// Printed under the table: what a latency sample is, checks that failed, …
    remarks: Vec<String>,
    /// Events/s of every round of this system, in the order they ran (empty until
    /// the rounds are gathered).
    rounds: Vec<f64>,
}

impl Measured {
    fn ops_per_s(&self) -> f64 {
        self.run.ops as f64 / self.run.elapsed.as_secs_f64()
    }
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.run.elapsed.as_secs_f64()
    }
    fn latency_ms(&self, q: f64) -> f64 {
        self.run.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// One closed-loop run.
struct Run {
    /// Commands (or rows) completed, failed ones included.
    ops: u64,
    /// Commands (or rows) asked for: more than `ops` when the deadline stopped the run.
    planned: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    conflicts: u64,
    errors: u64,
    first_error: Option<String>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("bounds 1..60 s at 3 digits are valid")
}

/// Run `ops` operations from `submitters` tasks, each sending its share (every
/// `submitters`-th index) one after the other and timing each. After `deadline` no
/// new operation starts. `op` returns the number of conflicts it retried through.
async fn drive<F, Fut>(ops: usize, submitters: usize, deadline: Option<Instant>, op: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send + 'static,
{
    let op = Arc::new(op);
    let submitters = submitters.clamp(1, ops.max(1));
    let start = Instant::now();
    let tasks: Vec<_> = (0..submitters)
        .map(|s| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut run = Run {
                    ops: 0,
                    planned: 0,
                    elapsed: Duration::ZERO,
                    latency_us: histogram(),
                    conflicts: 0,
                    errors: 0,
                    first_error: None,
                };
                for i in (s..ops).step_by(submitters) {
                    let t = Instant::now();
                    if deadline.is_some_and(|d| t >= d) {
                        break;
                    }
                    match op(i).await {
                        Ok(c) => run.conflicts += c,
                        Err(e) => {
                            run.errors += 1;
                            run.first_error.get_or_insert(e);
                        }
                    }
                    run.latency_us
                        .saturating_record(t.elapsed().as_micros() as u64);
                    run.ops += 1;
                }
                run
            })
        })
        .collect();
    let mut total = Run {
        ops: 0,
        planned: ops as u64,
        elapsed: Duration::ZERO,
        latency_us: histogram(),
        conflicts: 0,
        errors: 0,
        first_error: None,
    };
    for task in tasks {
        let run = task.await.expect("submitter tasks do not panic");
        total.ops += run.ops;
        total.conflicts += run.conflicts;
        total.errors += run.errors;
        total
            .latency_us
            .add(&run.latency_us)
            .expect("histograms share their bounds");
        if total.first_error.is_none() {
            total.first_error = run.first_error;
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Fail the benchmark on the first error of an untimed setup step.
fn setup_ok(what: &str, run: &Run) -> Result<(), BoxError> {
    match &run.first_error {
        None => Ok(()),
        Some(e) => Err(format!("{what}: {} of {} failed, first: {e}", run.errors, run.ops).into()),
    }
}

// ---------------------------------------------------------------------------------
// Raw ceiling
// ---------------------------------------------------------------------------------

/// The engine's own append statement, shared so the ceiling can never drift from it.
use usage_ledger::store::postgres::INSERT_EVENTS;

/// The statement of postgres-es, one row, in autocommit.
const INSERT_EVENT: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload, metadata)
VALUES ($1, $2, $3, $4, $5, $6::json, $7::json)";

/// One prepared row of the raw ceiling.
struct RawRow {
    aggregate_id: String,
    sequence: i64,
    payload: String,
}

/// `n` rows spread over the scenario's streams like its commands, each stream's
/// sequences counting 1, 2, … so the primary key never conflicts. Payloads are real
/// serialized `UsageRecorded` events, running totals included.
fn raw_rows(scenario: &Scenario, n: usize) -> Vec<RawRow> {
    let mut next: Vec<u64> = vec![0; scenario.brands.len()];
    (0..n)
        .map(|i| {
            let b = scenario.brand_index(i);
            next[b] += 1;
            RawRow {
                aggregate_id: scenario.stream_id(b),
                sequence: next[b] as i64,
                payload: usage_payload(next[b]),
            }
        })
        .collect()
}

fn usage_payload(current: u64) -> String {
    let now = Utc::now();
    let event = LedgerEvent::UsageRecorded {
        metric: metric(),
        quantity: 1,
        via: UsageVia::Record,
        occurred_at: now,
        after_close: false,
        marginal_cost: Money::ZERO,
        totals: MetricTotals {
            current,
            billable: current,
            effective_limit: Some(9_999_999),
            overage_units: 0,
            overage_cost: Money::ZERO,
        },
        at: now,
    };
    serde_json::to_string(&event).expect("events always serialize")
}

async fn raw_batches(url: &str, scenario: &Scenario, args: &Args) -> Result<Measured, BoxError> {
    // Migrations through the real store, so the table is exactly the engine's.
    let pool = PostgresLog::connect(url).await?.pool().clone();
    // Warm-up rows come first in each stream, whole batches of them.
    let warm = args.warmup.div_ceil(RAW_BATCH_ROWS_MAX);
    let rows = Arc::new(raw_rows(
        scenario,
        warm * RAW_BATCH_ROWS_MAX + args.commands,
    ));
    let conn = Arc::new(tokio::sync::Mutex::new(PgConnection::connect(url).await?));
    // One submitter: sequential statements on one connection, the ceiling of one writer.
    let batch_op = |first: usize| {
        let (rows, conn) = (rows.clone(), conn.clone());
        move |b: usize| {
            let (rows, conn) = (rows.clone(), conn.clone());
            async move {
                let start = first + b * RAW_BATCH_ROWS_MAX;
                let chunk = &rows[start..(start + RAW_BATCH_ROWS_MAX).min(rows.len())];
                let mut conn = conn.lock().await;
                insert_batch(&mut conn, chunk)
                    .await
                    .map(|_| 0)
                    .map_err(|e| e.to_string())
            }
        }
    };
    setup_ok("raw: warm-up", &drive(warm, 1, None, batch_op(0)).await)?;
    let before = tally_pg(&pool).await?;
    let batches = args.commands.div_ceil(RAW_BATCH_ROWS_MAX);
    let first = warm * RAW_BATCH_ROWS_MAX;
    let run = drive(batches, 1, args.deadline(), batch_op(first)).await;
    let tally = tally_pg(&pool).await?.since(before);
    pool.close().await;
    Ok(Measured {
        scenario: scenario.title.clone(),
        system: format!("raw ceiling: {RAW_BATCH_ROWS_MAX}-row UNNEST, 1 conn"),
        // Rows, not statements: the ceiling is compared with events per second.
        run: Run {
            ops: tally.events,
            planned: args.commands as u64,
            ..run
        },
        events: tally.events,
        commits: tally.commits,
        conflicts: None,
        remarks: vec!["latency per 100-row statement".into()],
        rounds: Vec::new(),
    })
}

async fn insert_batch(conn: &mut PgConnection, chunk: &[RawRow]) -> Result<(), sqlx::Error> {
    let n = chunk.len();
    sqlx::query(INSERT_EVENTS)
        .bind(vec![UsagePeriodAggregate::TYPE; n])
        .bind(
            chunk
                .iter()
                .map(|r| r.aggregate_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.sequence).collect::<Vec<_>>())
        .bind(vec!["UsageRecorded"; n])
        .bind(vec!["1"; n])
        .bind(chunk.iter().map(|r| r.payload.as_str()).collect::<Vec<_>>())
        .bind(vec!["{}"; n])
        .bind(vec![None::<&str>; n])
        .bind(vec![None::<&str>; n])
        .execute(conn)
        .await?;
    Ok(())
}

async fn raw_single_rows(
    url: &str,
    scenario: &Scenario,
    args: &Args,
) -> Result<Measured, BoxError> {
    let pool = PostgresLog::connect(url).await?.pool().clone();
    let warm = args.warmup;
    let rows = Arc::new(raw_rows(scenario, warm + args.commands));
    let mut conns = Vec::with_capacity(RAW_SINGLE_ROW_CONNECTIONS);
    for _ in 0..RAW_SINGLE_ROW_CONNECTIONS {
        conns.push(tokio::sync::Mutex::new(PgConnection::connect(url).await?));
    }
    let conns = Arc::new(conns);
    // Submitter s owns connection s: with exactly as many submitters as connections
    // the locks are never contended, they only hand out the connection.
    let row_op = |first: usize| {
        let (rows, conns) = (rows.clone(), conns.clone());
        move |i: usize| {
            let (rows, conns) = (rows.clone(), conns.clone());
            async move {
                let r = &rows[first + i];
                let mut conn = conns[i % RAW_SINGLE_ROW_CONNECTIONS].lock().await;
                sqlx::query(INSERT_EVENT)
                    .bind(UsagePeriodAggregate::TYPE)
                    .bind(&r.aggregate_id)
                    .bind(r.sequence)
                    .bind("UsageRecorded")
                    .bind("1")
                    .bind(&r.payload)
                    .bind("{}")
                    .execute(&mut *conn)
                    .await
                    .map(|_| 0)
                    .map_err(|e| e.to_string())
            }
        }
    };
    let warm_run = drive(warm, RAW_SINGLE_ROW_CONNECTIONS, None, row_op(0)).await;
    setup_ok("raw: warm-up", &warm_run)?;
    let before = tally_pg(&pool).await?;
    let run = drive(
        args.commands,
        RAW_SINGLE_ROW_CONNECTIONS,
        args.deadline(),
        row_op(warm),
    )
    .await;
    let tally = tally_pg(&pool).await?.since(before);
    pool.close().await;
    Ok(Measured {
        scenario: scenario.title.clone(),
        system: format!("raw: single-row autocommit, {RAW_SINGLE_ROW_CONNECTIONS} conns"),
        run,
        events: tally.events,
        commits: tally.commits,
        conflicts: None,
        remarks: Vec::new(),
        rounds: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------
// Baseline: cqrs-es + postgres-es
// ---------------------------------------------------------------------------------

async fn baseline(url: &str, scenario: &Scenario, args: &Args) -> Result<Measured, BoxError> {
    // Our migrations: postgres-es writes its seven columns, the rest take defaults.
    let log = PostgresLog::connect(url).await?;
    let pool = log.pool().clone();
    let cqrs = Arc::new(postgres_es::postgres_cqrs::<UsagePeriodAggregate>(
        pool.clone(),
        vec![],
        LedgerRules::default(),
    ));
    let catalog = Catalog::default_catalog();
    let plan = bench_plan(&catalog)?;
    let kinds: BTreeMap<MetricKey, MetricKind> =
        catalog.metrics().map(|m| (m.key.clone(), m.kind)).collect();

    // Untimed: open every period, as the engine does on a brand's first command.
    let ids: Arc<Vec<String>> = Arc::new(
        (0..scenario.brands.len())
            .map(|b| scenario.stream_id(b))
            .collect(),
    );
    let brands = Arc::new(scenario.brands.clone());
    let period = scenario.period;
    let open = {
        let (cqrs, ids) = (cqrs.clone(), ids.clone());
        drive(ids.len(), args.submitters, None, move |b| {
            let (cqrs, ids) = (cqrs.clone(), ids.clone());
            let command = PeriodCommand::OpenPeriod {
                brand_id: brands[b].clone(),
                period,
                plan: plan.clone(),
                metric_kinds: kinds.clone(),
                carried_levels: BTreeMap::new(),
                at: Utc::now(),
            };
            async move { execute_retrying(&cqrs, &ids[b], command).await }
        })
        .await
    };
    setup_ok("baseline: opening periods", &open)?;

    let record = |index: fn(&Scenario, usize) -> usize, count: usize| {
        let brand_of: Vec<usize> = (0..count).map(|i| index(scenario, i)).collect();
        let (cqrs, ids) = (cqrs.clone(), ids.clone());
        move |i: usize| {
            let (cqrs, ids) = (cqrs.clone(), ids.clone());
            let id = brand_of[i];
            let now = Utc::now();
            let command = PeriodCommand::RecordUsage {
                metric: metric(),
                quantity: one(),
                occurred_at: now,
                at: now,
            };
            async move { execute_retrying(&cqrs, &ids[id], command).await }
        }
    };
    // The baseline keeps nothing in memory and its periods are open already: one
    // command per submitter warms the connections. A longer warm-up would only
    // lengthen the hot stream every later command reloads.
    let warm = args.submitters;
    let warm_run = drive(
        warm,
        args.submitters,
        None,
        record(Scenario::warmup_brand_index, warm),
    )
    .await;
    setup_ok("baseline: warm-up", &warm_run)?;
    if args.analyze {
        pool.execute("ANALYZE").await?;
    }
    let before = tally_pg(&pool).await?;
    let n = args.baseline_commands;
    let run = drive(
        n,
        args.submitters,
        args.deadline(),
        record(Scenario::brand_index, n),
    )
    .await;
    let tally = tally_pg(&pool).await?.since(before);
    pool.close().await;
    Ok(Measured {
        scenario: scenario.title.clone(),
        system: args.label("baseline: cqrs-es + postgres-es".into()),
        conflicts: Some(run.conflicts),
        run,
        events: tally.events,
        commits: tally.commits,
        remarks: Vec::new(),
        rounds: Vec::new(),
    })
}

/// One `execute`, retried on optimistic-lock conflicts; returns how many there were.
async fn execute_retrying(
    cqrs: &postgres_es::PostgresCqrs<UsagePeriodAggregate>,
    id: &str,
    command: PeriodCommand,
) -> Result<u64, String> {
    let mut conflicts = 0;
    loop {
        match cqrs.execute(id, command.clone()).await {
            Ok(()) => return Ok(conflicts),
            Err(AggregateError::AggregateConflict) if conflicts < BASELINE_CONFLICT_RETRIES_MAX => {
                conflicts += 1;
            }
            Err(e) => return Err(format!("{id}: {e} (after {conflicts} conflicts)")),
        }
    }
}

// ---------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------

/// The pool to count events with, whichever store the engine runs on.
enum Store {
    Postgres(PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Store {
    fn name(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "PostgreSQL",
            Store::Sqlite(_) => "SQLite",
        }
    }

    /// Fresh statistics for the planner, as autovacuum would gather on a live database.
    async fn analyze(&self) -> Result<(), BoxError> {
        match self {
            Store::Postgres(pool) => pool.execute("ANALYZE").await.map(drop)?,
            Store::Sqlite(pool) => pool.execute("ANALYZE").await.map(drop)?,
        }
        Ok(())
    }

    /// Close the log's connections (clones share them) before its database is dropped.
    async fn close(&self) {
        match self {
            Store::Postgres(pool) => pool.close().await,
            Store::Sqlite(pool) => pool.close().await,
        }
    }

    async fn tally(&self) -> Result<Tally, BoxError> {
        Ok(match self {
            Store::Postgres(pool) => tally_pg(pool).await?,
            Store::Sqlite(pool) => {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
                    .fetch_one(pool)
                    .await?;
                Tally {
                    events: n as u64,
                    commits: None,
                }
            }
        })
    }
}

async fn engine_run(
    log: Arc<dyn EventLog>,
    store: Store,
    scenario: &Scenario,
    args: &Args,
    keyed: bool,
    projection: Option<Arc<dyn ProjectionStore>>,
) -> Result<Measured, BoxError> {
    // With a projection store, the projector runs beside the engine, as in the service.
    let projector = match &projection {
        Some(store) => Some(Projector::start(store.clone(), READ_MODELS_PROJECTOR).await?),
        None => None,
    };
    let catalog = Catalog::default_catalog();
    let plan = bench_plan(&catalog)?.id;
    let engine = Engine::start(
        log.clone(),
        Arc::new(catalog),
        Arc::new(SystemClock),
        EngineConfig {
            writer_shards: args
                .writer_shards
                .unwrap_or(EngineConfig::default().writer_shards),
            ..EngineConfig::default()
        },
    );
    let brands = Arc::new(scenario.brands.clone());

    // Untimed: register every brand, then warm up (every period opened and cached).
    let register = {
        let (engine, brands) = (engine.clone(), brands.clone());
        drive(brands.len(), args.submitters, None, move |b| {
            let (engine, brand, plan) = (engine.clone(), brands[b].clone(), plan.clone());
            async move {
                engine
                    .set_plan(brand, plan, ACTOR.into())
                    .await
                    .map(|_| 0)
                    .map_err(|e| e.to_string())
            }
        })
        .await
    };
    setup_ok("engine: registering brands", &register)?;

    let warmup = scenario.warmup_commands(args.warmup);
    let record = |index: fn(&Scenario, usize) -> usize, count: usize, key_prefix: &'static str| {
        let brand_of: Vec<usize> = (0..count).map(|i| index(scenario, i)).collect();
        let (engine, brands) = (engine.clone(), brands.clone());
        move |i: usize| {
            let engine = engine.clone();
            let key = keyed.then(|| {
                IdempotencyKey::parse(&format!("{key_prefix}-{i}")).expect("ascii without spaces")
            });
            let req = PeriodRequest {
                brand: brands[brand_of[i]].clone(),
                period: None,
                action: Action::Record {
                    metric: metric(),
                    quantity: one(),
                    occurred_at: None,
                },
                idempotency_key: key,
                metadata: Default::default(),
            };
            async move {
                engine
                    .execute(req)
                    .await
                    .map(|_| 0)
                    .map_err(|e| e.to_string())
            }
        }
    };
    let warm = drive(
        warmup,
        args.submitters,
        None,
        record(Scenario::warmup_brand_index, warmup, "warm"),
    )
    .await;
    setup_ok("engine: warm-up", &warm)?;
    if args.analyze {
        store.analyze().await?;
    }
    if let Some(p) = &projector {
        p.catch_up(PROJECTOR_CATCH_UP_MAX).await;
        p.reset_lag();
    }
    let before = store.tally().await?;
    let run = drive(
        args.commands,
        args.submitters,
        args.deadline(),
        record(Scenario::brand_index, args.commands, "run"),
    )
    .await;
    let tally = store.tally().await?.since(before);
    let mut remarks = Vec::new();

    // The ledger must have counted every unit exactly once, or the numbers mean nothing.
    let mut total = 0;
    for brand in brands.iter() {
        let state = engine.period_state(brand.clone(), scenario.period).await?;
        total += state
            .and_then(|s| s.metric(&metric()).map(|m| m.current))
            .unwrap_or(0);
    }
    let expected = (warmup as u64 - warm.errors) + (run.ops - run.errors);
    if total != expected {
        remarks.push(format!(
            "SUSPICIOUS: the engine counted {total} api_calls, expected {expected}"
        ));
    }
    // The raw ceiling's payloads are built to match the engine's; show that they do.
    let stored = log
        .read_stream(UsagePeriodAggregate::TYPE, &scenario.stream_id(0), 1, 1)
        .await?;
    if let (Some(e), Store::Postgres(_), false) = (stored.first(), &store, keyed) {
        remarks.push(format!(
            "a stored {} payload is {} bytes, a raw-ceiling one {}",
            e.event_type,
            e.payload.len(),
            usage_payload(e.sequence as u64).len()
        ));
    }
    if let (Some(p), Some(projection)) = (&projector, projection) {
        remarks.extend(projection_remarks(p, projection).await?);
    }
    store.close().await;
    Ok(Measured {
        scenario: scenario.title.clone(),
        system: args.label(format!(
            "engine{}: {}{}",
            if projector.is_some() {
                " + projector"
            } else {
                ""
            },
            store.name(),
            if keyed { " + idempotency key" } else { "" }
        )),
        run,
        events: tally.events,
        commits: tally.commits,
        conflicts: None,
        remarks,
        rounds: Vec::new(),
    })
}

/// How long the projector may take to fold what the timed run left behind.
const PROJECTOR_CATCH_UP_MAX: Duration = Duration::from_secs(120);
/// Event-to-read-model lag the issue asks for, at p99, while the engine runs flat out.
const TARGET_LAG_P99_MS_MAX: u64 = 100;
/// Replay rates the issue asks for: folding in memory, and reading PostgreSQL too.
const TARGET_FOLD_EVENTS_PER_S_MIN: f64 = 1_000_000.0;
const TARGET_PG_REPLAY_EVENTS_PER_S_MIN: f64 = 200_000.0;
/// Replays of the same log per measurement; the median is reported.
const REPLAY_REPEATS: usize = 3;

/// The projector's lag over the timed run, then replay rates over the log the run
/// wrote: from PostgreSQL (read, decode, fold), from records in memory (decode, fold)
/// and from decoded events (fold alone).
async fn projection_remarks(
    projector: &Projector,
    store: Arc<dyn ProjectionStore>,
) -> Result<Vec<String>, BoxError> {
    let caught_up = projector.catch_up(PROJECTOR_CATCH_UP_MAX).await;
    let status = projector.status();
    projector.abort();
    let lag = status.lag_ms;
    let mut out = vec![format!(
        "projector lag over the timed run: p50 {} ms, p99 {} ms, max {} ms over {} events{} \
         (target p99 < {TARGET_LAG_P99_MS_MAX} ms: {})",
        lag.p50,
        lag.p99,
        lag.max,
        lag.samples,
        if caught_up { "" } else { ", NOT caught up" },
        verdict(caught_up && lag.p99 < TARGET_LAG_P99_MS_MAX)
    )];
    let hidden = ProgressBar::hidden();
    let median = |mut rates: Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let mut from_pg = Vec::new();
    let mut records = Vec::new();
    for _ in 0..REPLAY_REPEATS {
        let started = Instant::now();
        let mut replayer = Replayer::new();
        let report = scan_log(store.clone(), None, &hidden, |page| {
            Ok(replayer.apply_all(page)?)
        })
        .await?;
        from_pg.push(report.events as f64 / started.elapsed().as_secs_f64());
    }
    let mut read_only = Vec::new();
    for _ in 0..REPLAY_REPEATS {
        let started = Instant::now();
        let report = scan_log(store.clone(), None, &hidden, |_| Ok(())).await?;
        read_only.push(report.events as f64 / started.elapsed().as_secs_f64());
    }
    scan_log(store, None, &hidden, |page| {
        records.extend_from_slice(page);
        Ok(())
    })
    .await?;
    let mut decode_fold = Vec::new();
    let mut fold = Vec::new();
    let events: Vec<ProjectedEvent> = records
        .iter()
        .map(LogRecord::decode)
        .collect::<Result<_, _>>()?;
    for _ in 0..REPLAY_REPEATS {
        let started = Instant::now();
        Replayer::new().apply_all(&records)?;
        decode_fold.push(records.len() as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let mut models = ReadModels::new();
        for e in &events {
            models.apply(e);
        }
        fold.push(events.len() as f64 / started.elapsed().as_secs_f64());
        std::hint::black_box(&models);
    }
    let (from_pg, decode_fold, fold) = (median(from_pg), median(decode_fold), median(fold));
    out.push(format!(
        "replay of the {} events from PostgreSQL (read, decode, fold): {} events/s \
         (target >= {}: {}); reading alone {} events/s",
        records.len(),
        thousands(from_pg),
        thousands(TARGET_PG_REPLAY_EVENTS_PER_S_MIN),
        verdict(from_pg >= TARGET_PG_REPLAY_EVENTS_PER_S_MIN),
        thousands(median(read_only))
    ));
    out.push(format!(
        "replay in memory: fold {} events/s (target >= {}: {}); decode + fold {} events/s",
        thousands(fold),
        thousands(TARGET_FOLD_EVENTS_PER_S_MIN),
        verdict(fold >= TARGET_FOLD_EVENTS_PER_S_MIN),
        thousands(decode_fold)
    ));
    Ok(out)
}

fn bench_plan(catalog: &Catalog) -> Result<PlanDefinition, BoxError> {
    catalog
        .plan(&PlanId::parse(BENCH_PLAN)?)
        .cloned()
        .ok_or_else(|| format!("the catalog has no plan {BENCH_PLAN}").into())
}

fn metric() -> MetricKey {
    MetricKey::parse(BENCH_METRIC).expect("a valid metric key literal")
}

fn one() -> Quantity {
    Quantity::new(1).expect("1 is a valid quantity")
}

// ---------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------

/// The PostgreSQL server: creates fresh databases and drops them again.
struct Server {
    admin_url: String,
    /// Databases created and not yet dropped.
    created: Vec<String>,
}

impl Server {
    fn new(admin_url: &str) -> Self {
        Self {
            admin_url: admin_url.to_owned(),
            created: Vec::new(),
        }
    }

    /// A new empty database; returns its URL.
    async fn fresh(&mut self) -> Result<String, BoxError> {
        let name = format!("ledger_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        admin.close().await?;
        self.created.push(name.clone());
        Ok(with_db(&self.admin_url, &name))
    }

    async fn drop_last(&mut self) {
        if let Some(name) = self.created.pop() {
            self.drop_db(&name).await;
        }
    }

    async fn drop_all(&mut self) {
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
struct Tally {
    events: u64,
    commits: Option<u64>,
}

impl Tally {
    /// What was added since `before`. Transactions never span the two counts.
    fn since(self, before: Tally) -> Tally {
        Tally {
            events: self.events - before.events,
            commits: self.commits.zip(before.commits).map(|(a, b)| a - b),
        }
    }
}

async fn tally_pg(pool: &PgPool) -> Result<Tally, BoxError> {
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
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
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

// ---------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------

/// Targets of the issue: engine throughput as a multiple of the baseline, per scenario,
/// and as a share of the raw 100-row ceiling.
const TARGET_HOT_VS_BASELINE_MIN: f64 = 100.0;
const TARGET_BRANDS_VS_BASELINE_MIN: f64 = 10.0;
const TARGET_VS_RAW_MIN: f64 = 0.5;

const HEADERS: [&str; 12] = [
    "scenario",
    "system",
    "ops",
    "s",
    "ops/s",
    "events/s",
    "events/commit",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "conflicts",
    "errors",
];

fn cells(m: &Measured) -> [String; 12] {
    [
        m.scenario.clone(),
        m.system.clone(),
        m.run.ops.to_string(),
        format!("{:.2}", m.run.elapsed.as_secs_f64()),
        thousands(m.ops_per_s()),
        thousands(m.events_per_s()),
        m.commits
            .filter(|c| *c > 0)
            .map_or("-".into(), |c| format!("{:.1}", m.events as f64 / c as f64)),
        format!("{:.2}", m.latency_ms(0.5)),
        format!("{:.2}", m.latency_ms(0.99)),
        format!("{:.2}", m.latency_ms(0.999)),
        m.conflicts.map_or("-".into(), |c| c.to_string()),
        m.run.errors.to_string(),
    ]
}

fn print_report(args: &Args, results: &[Measured]) {
    let rows: Vec<[String; 12]> = results.iter().map(cells).collect();
    println!();
    println!(
        "ledger-bench: {} submitters (closed loop) on {} runtime worker thread(s), {} commands per engine run, \
         {} per baseline run, {} rows per raw run, each run stopped after {} s, {}; load average at the end {}",
        args.submitters,
        args.worker_threads,
        args.commands,
        args.baseline_commands,
        args.commands,
        args.run_seconds_max,
        if args.analyze { "ANALYZE after warm-up" } else { "tables never analyzed" },
        load_average()
    );
    println!();
    print_plain(&rows);
    for m in results {
        if m.run.ops < m.run.planned {
            println!(
                "  ({}, {}: stopped at --run-seconds-max, {} of {} done)",
                m.scenario, m.system, m.run.ops, m.run.planned
            );
        }
        for remark in &m.remarks {
            println!("  ({}, {}: {remark})", m.scenario, m.system);
        }
        if let Some(e) = &m.run.first_error {
            println!("  ({}, {}: first error: {e})", m.scenario, m.system);
        }
    }
    let ratios = ratios(results);
    println!();
    for line in &ratios {
        println!("{line}");
    }
    println!();
    println!("Markdown:");
    println!();
    print_markdown(&rows);
    println!();
    for line in &ratios {
        println!("- {line}");
    }
}

fn print_plain(rows: &[[String; 12]]) {
    let mut widths = HEADERS.map(str::len);
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                // Text columns left-aligned, numbers right-aligned.
                if i < 2 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(&HEADERS.map(String::from)));
    println!(
        "{}",
        "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
    );
    for row in rows {
        println!("{}", line(row));
    }
}

fn print_markdown(rows: &[[String; 12]]) {
    println!("| {} |", HEADERS.join(" | "));
    let align: Vec<&str> = (0..HEADERS.len())
        .map(|i| if i < 2 { "---" } else { "---:" })
        .collect();
    println!("| {} |", align.join(" | "));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
}

fn ratios(results: &[Measured]) -> Vec<String> {
    let find = |scenario: &str, system: &str| {
        results
            .iter()
            .find(|m| m.scenario == scenario && m.system.starts_with(system))
    };
    let mut scenarios: Vec<&str> = Vec::new();
    for m in results {
        if !scenarios.contains(&m.scenario.as_str()) {
            scenarios.push(&m.scenario);
        }
    }
    let mut out = Vec::new();
    for scenario in scenarios {
        let baseline = find(scenario, "baseline");
        let raw = find(scenario, "raw ceiling");
        let target = if scenario == "hot brand" {
            TARGET_HOT_VS_BASELINE_MIN
        } else {
            TARGET_BRANDS_VS_BASELINE_MIN
        };
        for engine in results
            .iter()
            .filter(|m| m.scenario == scenario && m.system.starts_with("engine"))
        {
            if let Some(b) = baseline {
                let r = engine.ops_per_s() / b.ops_per_s();
                out.push(format!(
                    "{scenario}: {} / baseline = {r:.1}x (target >= {target}x: {})",
                    engine.system,
                    verdict(r >= target)
                ));
            }
            if let Some(raw) = raw {
                let (r, spread) = ratio_to_ceiling(engine, raw);
                out.push(format!(
                    "{scenario}: {} / raw {RAW_BATCH_ROWS_MAX}-row ceiling = {:.0} %{spread} (target >= {:.0} %: {})",
                    engine.system,
                    100.0 * r,
                    100.0 * TARGET_VS_RAW_MIN,
                    verdict(r >= TARGET_VS_RAW_MIN)
                ));
            }
        }
    }
    out
}

/// Engine events/s over the ceiling's: the median of the per-round ratios (each round
/// ran both one after the other), with their range; the plain ratio for one round.
fn ratio_to_ceiling(engine: &Measured, raw: &Measured) -> (f64, String) {
    if engine.rounds.len() < 2 || engine.rounds.len() != raw.rounds.len() {
        return (engine.events_per_s() / raw.events_per_s(), String::new());
    }
    let mut r: Vec<f64> = engine
        .rounds
        .iter()
        .zip(&raw.rounds)
        .map(|(e, c)| e / c)
        .collect();
    r.sort_by(f64::total_cmp);
    let spread = format!(
        " (median of {} rounds, {:.0}-{:.0} %)",
        r.len(),
        100.0 * r[0],
        100.0 * r[r.len() - 1]
    );
    (r[r.len() / 2], spread)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The 1-, 5- and 15-minute load averages: other work on the machine skews every number.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `12345.6` as `12,346`: rates are read, not parsed.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
