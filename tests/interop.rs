//! Interop: streams written by the engine load into the same aggregate state through
//! the stock cqrs-es repositories (`postgres-es`, `sqlite-es`), so any cqrs-es tool
//! can read our log.

mod common;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, EventStore};
use ledger_aggregates::{
    BrandAggregate, BrandId, MetricKey, PeriodCommand, PeriodKey, PlanId, Quantity,
    UsagePeriodAggregate,
};
use usage_ledger::engine::{Engine, EngineConfig, PeriodRequest};

/// A workload touching every kind of event the engine writes in one period.
async fn write_a_varied_stream(e: &Engine) {
    let brand = BrandId::parse("acme").unwrap();
    let m = |s: &str| MetricKey::parse(s).unwrap();
    let q = |n: u64| Quantity::new(n).unwrap();
    e.set_plan(
        brand.clone(),
        PlanId::parse("starter").unwrap(),
        "test".into(),
    )
    .await
    .unwrap();
    let commands = vec![
        PeriodCommand::RecordUsage {
            metric: m("renders_3d"),
            quantity: q(12),
            occurred_at: None,
        },
        PeriodCommand::CheckQuota {
            metric: m("renders_3d"),
            requested: q(3),
            consume: true,
            occurred_at: None,
        },
        PeriodCommand::SetGaugeLevel {
            metric: m("team_members"),
            level: 3,
        },
        PeriodCommand::SetGaugeLevel {
            metric: m("team_members"),
            level: 4,
        }, // denied
        PeriodCommand::SetGaugeLevel {
            metric: m("storage_gb"),
            level: 7,
        },
        PeriodCommand::ApplyTopUp {
            metric: m("renders_3d"),
            units: q(5),
            price: ledger_aggregates::Money::from_minor(500),
            reference: "manual-1".into(),
            actor: "admin".into(),
        },
        PeriodCommand::AdjustUsage {
            metric: m("renders_3d"),
            delta: -2,
            actor: "support".into(),
            reason: "duplicate".into(),
        },
    ];
    for command in commands {
        e.execute(PeriodRequest {
            brand: brand.clone(),
            period: None,
            command,
            idempotency_key: None,
            metadata: Default::default(),
        })
        .await
        .unwrap();
    }
    e.set_plan(brand, PlanId::parse("professional").unwrap(), "test".into())
        .await
        .unwrap();
}

async fn load_with<R, A>(repo: R, id: &str) -> A
where
    R: cqrs_es::persist::PersistedEventRepository,
    A: Aggregate,
{
    let store = PersistedEventStore::<R, A>::new_event_store(repo);
    let mut ctx = store
        .load_aggregate(id)
        .await
        .unwrap_or_else(|e| panic!("load {id}: {e}"));
    std::mem::take(ctx.aggregate())
}

async fn engine_states(e: &Engine) -> (UsagePeriodAggregate, BrandAggregate) {
    let brand = BrandId::parse("acme").unwrap();
    let period = e
        .period_state(brand.clone(), PeriodKey::parse("2026-11").unwrap())
        .await
        .unwrap()
        .unwrap();
    let registry = e.brand_state(brand).await.unwrap().unwrap();
    (period, registry)
}

// Proves postgres_es::PostgresEventRepository rebuilds exactly the engine's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_es_loads_the_engines_streams_into_the_same_state() {
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let e = common::engine_on(
        db.log().await,
        common::manual_clock(),
        EngineConfig::default(),
    );
    write_a_varied_stream(&e).await;
    let (period, registry) = engine_states(&e).await;
    assert!(
        period.version >= 8,
        "the workload wrote a varied stream ({})",
        period.version
    );
    let pool = sqlx::PgPool::connect(db.pg_url().unwrap()).await.unwrap();
    let loaded: UsagePeriodAggregate = load_with(
        postgres_es::PostgresEventRepository::new(pool.clone()),
        "acme:2026-11",
    )
    .await;
    assert_eq!(loaded, period);
    let loaded: BrandAggregate =
        load_with(postgres_es::PostgresEventRepository::new(pool), "acme").await;
    assert_eq!(loaded, registry);
    db.cleanup().await;
}

// Proves sqlite_es::SqliteEventRepository rebuilds exactly the engine's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_es_loads_the_engines_streams_into_the_same_state() {
    let db = common::TestDb::sqlite();
    let e = common::engine_on(
        db.log().await,
        common::manual_clock(),
        EngineConfig::default(),
    );
    write_a_varied_stream(&e).await;
    let (period, registry) = engine_states(&e).await;
    let url = format!("sqlite://{}", db.sqlite_path().unwrap().display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let loaded: UsagePeriodAggregate = load_with(
        sqlite_es::SqliteEventRepository::new(pool.clone()),
        "acme:2026-11",
    )
    .await;
    assert_eq!(loaded, period);
    let loaded: BrandAggregate =
        load_with(sqlite_es::SqliteEventRepository::new(pool), "acme").await;
    assert_eq!(loaded, registry);
}
