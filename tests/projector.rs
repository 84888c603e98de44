//! The projector against real PostgreSQL and real SQLite: the stored read models equal
//! a replay of the log after a random workload, after kills and redeliveries, with two
//! projectors on one database, and with a writer that commits late.

mod common;

use std::time::Duration;

use ledger_aggregates::{BrandId, MetricKey, Money, PlanId, Quantity};
use ledger_projections::{LogPosition, ReadModels};
use usage_ledger::engine::{Action, Engine, PeriodRequest};
use usage_ledger::projector::rows::{restore_all, rows_of_all};
use usage_ledger::projector::{fold_batch, Projector};
use usage_ledger::store::{ProjectionStore, READ_MODELS_PROJECTOR};

use common::{engine_on, manual_clock, TestDb};

const BRANDS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];
const PLANS: [&str; 3] = ["starter", "professional", "business"];
const METRICS: [&str; 4] = ["renders_3d", "api_calls", "ai_generations", "team_members"];
/// Enough to reach overage on `starter` (renders_3d: 10) and to cross thresholds.
const COMMANDS: usize = 300;
const CATCH_UP: Duration = Duration::from_secs(10);

/// A small deterministic generator (splitmix64), so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

fn id<T>(parse: fn(&str) -> Result<T, ledger_aggregates::ParseError>, s: &str) -> T {
    parse(s).expect("a valid id")
}

fn request(brand: &str, action: Action) -> PeriodRequest {
    PeriodRequest {
        brand: id(BrandId::parse, brand),
        period: None,
        action,
        idempotency_key: None,
        metadata: Default::default(),
    }
}

/// A random command: mostly usage, with checks that consume, top-ups, corrections,
/// gauge levels and plan changes mixed in. Refusals (a blocked quota) are part of it.
fn command(rng: &mut Rng) -> PeriodRequest {
    let brand = BRANDS[rng.next(BRANDS.len())];
    let metric = id(MetricKey::parse, METRICS[rng.next(METRICS.len())]);
    let quantity = Quantity::new(1 + rng.next(6) as u64).expect("positive");
    let action = match rng.next(10) {
        0..=4 => Action::Record {
            metric,
            quantity,
            occurred_at: None,
        },
        5 => Action::Check {
            metric,
            requested: quantity,
            consume: true,
        },
        6 => Action::TopUp {
            metric,
            units: quantity,
            price: Money::from_minor(100 * rng.next(5) as i64),
            reference: format!("order-{}", rng.next(1_000_000)),
            actor: "test".into(),
        },
        7 => Action::Adjust {
            metric,
            delta: rng.next(5) as i64 - 2,
            actor: "support".into(),
            reason: "correction".into(),
        },
        _ => Action::SetGauge {
            metric: id(MetricKey::parse, "team_members"),
            level: rng.next(60) as u64,
        },
    };
    request(brand, action)
}

async fn register_all(engine: &Engine, rng: &mut Rng) {
    for (i, brand) in BRANDS.into_iter().enumerate() {
        // The first brand starts on the smallest plan: the run reaches its overage.
        let plan = id(
            PlanId::parse,
            PLANS[if i == 0 { 0 } else { rng.next(PLANS.len()) }],
        );
        engine
            .set_plan(id(BrandId::parse, brand), plan, "admin".into())
            .await
            .expect("register");
    }
}

/// `COMMANDS` random commands from 8 concurrent submitters, plan changes included.
async fn workload(engine: &Engine, seed: u64) {
    let mut rng = Rng(seed);
    register_all(engine, &mut rng).await;
    let mut tasks = Vec::new();
    for lane in 0..8u64 {
        let engine = engine.clone();
        let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(lane + 1));
        tasks.push(tokio::spawn(async move {
            for _ in 0..COMMANDS / 8 {
                if rng.next(40) == 0 {
                    let brand = id(BrandId::parse, BRANDS[rng.next(BRANDS.len())]);
                    let plan = id(PlanId::parse, PLANS[rng.next(PLANS.len())]);
                    engine.set_plan(brand, plan, "admin".into()).await.ok();
                } else {
                    // Refused commands are part of the workload: they append nothing, or
                    // a recorded refusal.
                    let _ = engine.execute(command(&mut rng)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("submitter");
    }
}

/// The models a fold of the whole log gives, restricted to brand-period streams (what
/// the store keeps).
async fn replay(store: &dyn ProjectionStore, until: Option<LogPosition>) -> ReadModels {
    let mut models = ReadModels::new();
    let mut after = LogPosition::START;
    loop {
        let page = store.read_log(after, until, 1_000).await.expect("read log");
        let Some(last) = page.last() else { break };
        after = last.at;
        for record in &page {
            models.apply(&record.decode().expect("decodes"));
        }
    }
    restore_all(&rows_of_all(&models)).expect("rows round trip")
}

async fn stored(store: &dyn ProjectionStore) -> (LogPosition, ReadModels) {
    let (at, rows) = store
        .snapshot_models(READ_MODELS_PROJECTOR)
        .await
        .expect("snapshot");
    (at, restore_all(&rows).expect("stored rows parse"))
}

#[track_caller]
fn assert_same(stored: &ReadModels, replayed: &ReadModels) {
    let diff = stored.diff(replayed);
    assert!(
        diff.is_empty(),
        "stored models differ from a replay:\n{diff}"
    );
    assert_eq!(stored, replayed);
}

async fn models_equal_a_replay_after_a_random_workload(db: &TestDb) {
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    let projector = Projector::start(store.clone(), READ_MODELS_PROJECTOR)
        .await
        .expect("start");
    workload(&engine, 7).await;
    assert!(projector.catch_up(CATCH_UP).await, "caught up");
    let (at, models) = stored(store.as_ref()).await;
    let replayed = replay(store.as_ref(), None).await;
    assert!(at > LogPosition::START, "{:?}", projector.status());
    assert!(
        replayed.periods().count() == BRANDS.len(),
        "every brand used"
    );
    assert!(
        replayed
            .overage_ledger
            .iter()
            .any(|(_, p)| p.totals().total > Money::ZERO),
        "the workload reaches overage: {:#?}",
        replayed.quota_summary
    );
    assert_same(&models, &replayed);
    let status = projector.status();
    assert_eq!(status.checkpoint, at);
    assert!(status.last_error.is_none(), "{status:?}");
    assert!(status.lag_ms.samples > 0);
}
on_both_stores!(
    models_equal_a_replay_after_a_random_workload,
    models_equal_a_replay_after_a_random_workload
);

async fn a_batch_folded_but_not_checkpointed_is_not_counted_twice(db: &TestDb) {
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    workload(&engine, 11).await;
    // The state a crash leaves when rows are written and the checkpoint is not: the
    // first half of the log folded into the rows, the checkpoint still at the start.
    let head = store
        .read_log(LogPosition::START, None, 10_000)
        .await
        .unwrap();
    let half = &head[..head.len() / 2];
    let rows = fold_batch(store.as_ref(), half).await.expect("fold");
    store
        .replace_models(READ_MODELS_PROJECTOR, LogPosition::START, &rows)
        .await
        .expect("write rows only");
    // Restarted, the projector reads the first half again.
    let projector = Projector::start(store.clone(), READ_MODELS_PROJECTOR)
        .await
        .expect("start");
    assert!(projector.catch_up(CATCH_UP).await);
    let (_, models) = stored(store.as_ref()).await;
    assert_same(&models, &replay(store.as_ref(), None).await);
}
on_both_stores!(
    a_batch_folded_but_not_checkpointed_is_not_counted_twice,
    a_batch_folded_but_not_checkpointed_is_not_counted_twice
);

async fn projectors_killed_mid_run_and_a_rival_end_with_a_replay(db: &TestDb) {
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    let load = {
        let engine = engine.clone();
        tokio::spawn(async move { workload(&engine, 23).await })
    };
    // Projectors started and killed while the workload runs (a kill drops the batch's
    // transaction wherever it is), and a rival projector on its own connection pool.
    let (_, rival_store) = db.stores().await;
    let rival = Projector::start(rival_store, READ_MODELS_PROJECTOR)
        .await
        .expect("rival");
    for _ in 0..5 {
        let p = Projector::start(store.clone(), READ_MODELS_PROJECTOR)
            .await
            .expect("start");
        tokio::time::sleep(Duration::from_millis(30)).await;
        p.abort();
    }
    load.await.expect("workload");
    let last = Projector::start(store.clone(), READ_MODELS_PROJECTOR)
        .await
        .expect("restart");
    assert!(last.catch_up(CATCH_UP).await);
    assert!(rival.catch_up(CATCH_UP).await);
    let (_, models) = stored(store.as_ref()).await;
    assert_same(&models, &replay(store.as_ref(), None).await);
}
on_both_stores!(
    projectors_killed_mid_run_and_a_rival_end_with_a_replay,
    projectors_killed_mid_run_and_a_rival_end_with_a_replay
);

/// PostgreSQL: identity values are drawn before commit, so an event written by a
/// transaction that commits after later ones has a lower `position` than events
/// already projected. It must still be projected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_late_is_projected() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    let projector = Projector::start(store.clone(), READ_MODELS_PROJECTOR)
        .await
        .expect("start");
    let record = |brand: &str| {
        request(
            brand,
            Action::Record {
                metric: id(MetricKey::parse, "renders_3d"),
                quantity: Quantity::new(3).unwrap(),
                occurred_at: None,
            },
        )
    };
    for brand in ["source", "other"] {
        engine
            .set_plan(
                id(BrandId::parse, brand),
                id(PlanId::parse, "starter"),
                "admin".into(),
            )
            .await
            .unwrap();
        engine.execute(record(brand)).await.unwrap();
    }
    assert!(projector.catch_up(CATCH_UP).await);

    // A writer takes its transaction id and a position, then stalls.
    let pool = sqlx::PgPool::connect(db.pg_url().unwrap()).await.unwrap();
    let mut late = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT aggregate_type, 'late:2026-11', sequence, event_type, event_version,
                replace(payload::text, '\"source\"', '\"late\"')::json, metadata
           FROM events WHERE aggregate_id = 'source:2026-11' ORDER BY sequence",
    )
    .execute(&mut *late)
    .await
    .unwrap();
    // Others commit after it started, with higher positions, and are acknowledged.
    for _ in 0..3 {
        engine.execute(record("other")).await.unwrap();
    }
    projector.catch_up(Duration::from_millis(300)).await;
    let (_, before) = stored(store.as_ref()).await;
    assert!(
        before
            .quota_summary
            .period(
                &id(BrandId::parse, "late"),
                ledger_aggregates::PeriodKey::containing(common::t0())
            )
            .is_none(),
        "not committed yet"
    );
    late.commit().await.unwrap();
    assert!(projector.catch_up(CATCH_UP).await);
    let (_, after) = stored(store.as_ref()).await;
    let late_rows = after
        .quota_summary
        .period(
            &id(BrandId::parse, "late"),
            ledger_aggregates::PeriodKey::containing(common::t0()),
        )
        .unwrap_or_else(|| {
            panic!(
                "the late writer's events are projected: {:?}",
                projector.status()
            )
        });
    assert_eq!(late_rows[&id(MetricKey::parse, "renders_3d")].current, 3);
    let other = after
        .quota_summary
        .period(
            &id(BrandId::parse, "other"),
            ledger_aggregates::PeriodKey::containing(common::t0()),
        )
        .unwrap();
    assert_eq!(other[&id(MetricKey::parse, "renders_3d")].current, 12);
    assert_same(&after, &replay(store.as_ref(), None).await);
    db.cleanup().await;
}
