//! The ledger engine under the same load, on PostgreSQL or SQLite, optionally with the
//! projector beside it as in the service.

use std::sync::Arc;

use cqrs_es::Aggregate;
use ledger_aggregates::PeriodCommand;
use ledger_aggregates::{Catalog, IdempotencyKey, UsagePeriodAggregate};
use sqlx::{Executor, PgPool};
use usage_ledger::clock::SystemClock;
use usage_ledger::engine::{Engine, EngineConfig, PeriodRequest};
use usage_ledger::store::{EventLog, ProjectionStore};
use usage_ledger::tail::projector::Projector;
use usage_ledger::tail::Tail;

use crate::db::{tally_pg, Tally};
use crate::drive::{drive, setup_ok, Measured};
use crate::projection::{projection_remarks, PROJECTOR_CATCH_UP_MAX};
use crate::raw::usage_payload;
use crate::scenario::Scenario;
use crate::{bench_plan, metric, one, Args, BoxError, ACTOR};

/// The pool to count events with, whichever store the engine runs on.
pub(crate) enum Store {
    Postgres(PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Store {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "PostgreSQL",
            Store::Sqlite(_) => "SQLite",
        }
    }

    /// Fresh statistics for the planner, as autovacuum would gather on a live database.
    pub(crate) async fn analyze(&self) -> Result<(), BoxError> {
        match self {
            Store::Postgres(pool) => pool.execute("ANALYZE").await.map(drop)?,
            Store::Sqlite(pool) => pool.execute("ANALYZE").await.map(drop)?,
        }
        Ok(())
    }

    /// Close the log's connections (clones share them) before its database is dropped.
    pub(crate) async fn close(&self) {
        match self {
            Store::Postgres(pool) => pool.close().await,
            Store::Sqlite(pool) => pool.close().await,
        }
    }

    pub(crate) async fn tally(&self) -> Result<Tally, BoxError> {
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

/// What an engine run drives: the engine, and the projector when one runs beside it,
/// with the consumer that tells the engine's caches what the log holds.
pub(crate) struct Ledger {
    pub(crate) engine: Engine,
    pub(crate) projector: Option<Projector>,
    pub(crate) caches: Option<Tail>,
}

/// The one place the bench wires the ledger: the engine on `log` and, given a
/// projection store, the projector beside it in the same process, as the service runs
/// them. Everything else in the bench only drives what this returns.
pub(crate) async fn wire_ledger(
    log: Arc<dyn EventLog>,
    projection: Option<Arc<dyn ProjectionStore>>,
    catalog: Catalog,
    args: &Args,
) -> Result<Ledger, BoxError> {
    let engine = Engine::start(
        log,
        Arc::new(catalog),
        Arc::new(SystemClock),
        EngineConfig {
            writer_shards: args
                .writer_shards
                .unwrap_or(EngineConfig::default().writer_shards),
            ..EngineConfig::default()
        },
    );
    let (projector, caches) = match projection {
        Some(store) => (
            Some(Projector::follow(store.clone(), &engine, Default::default()).await?),
            Some(usage_ledger::tail::caches::follow(&engine, store).await?),
        ),
        None => (None, None),
    };
    Ok(Ledger {
        engine,
        projector,
        caches,
    })
}

pub(crate) async fn engine_run(
    log: Arc<dyn EventLog>,
    store: Store,
    scenario: &Scenario,
    args: &Args,
    keyed: bool,
    projection: Option<Arc<dyn ProjectionStore>>,
) -> Result<Measured, BoxError> {
    let catalog = Catalog::default_catalog();
    let plan = bench_plan(&catalog)?.id;
    let Ledger {
        engine,
        projector,
        caches: _caches,
    } = wire_ledger(log.clone(), projection.clone(), catalog, args).await?;
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
                command: PeriodCommand::RecordUsage {
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
