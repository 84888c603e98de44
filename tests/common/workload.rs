//! A seeded random workload through the engine, and the replay the stored read
//! models are compared with: shared by the projector and replay tests.

use ledger_aggregates::{BrandId, MetricKey, Money, PeriodCommand, PlanId, Quantity};
use ledger_projections::{LogPosition, ReadModels};
use usage_ledger::engine::{Engine, PeriodRequest};
use usage_ledger::store::{ProjectionStore, READ_MODELS_PROJECTOR};
use usage_ledger::tail::rows::{restore_all, rows_of_all};

pub const BRANDS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];
pub const PLANS: [&str; 3] = ["starter", "professional", "business"];
/// Counters: gauges (`team_members`) take levels, below.
pub const METRICS: [&str; 4] = ["renders_3d", "api_calls", "ai_generations", "renders_2d"];
/// Enough to reach overage on `starter` (renders_3d: 10) and to cross thresholds.
pub const COMMANDS: usize = 300;

/// A small deterministic generator (splitmix64), so a failing run can be repeated.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

pub fn id<T>(parse: fn(&str) -> Result<T, ledger_aggregates::ParseError>, s: &str) -> T {
    parse(s).expect("a valid id")
}

pub fn request(brand: &str, command: PeriodCommand) -> PeriodRequest {
    PeriodRequest {
        brand: id(BrandId::parse, brand),
        period: None,
        command,
        idempotency_key: None,
        metadata: Default::default(),
    }
}

/// A random command: mostly usage, with checks that consume, top-ups, corrections,
/// gauge levels and plan changes mixed in. Refusals (a blocked quota) are part of it.
pub fn command(rng: &mut Rng) -> PeriodRequest {
    let brand = BRANDS[rng.next(BRANDS.len())];
    let metric = id(MetricKey::parse, METRICS[rng.next(METRICS.len())]);
    let quantity = Quantity::new(1 + rng.next(6) as u64).expect("positive");
    let command = match rng.next(10) {
        0..=4 => PeriodCommand::RecordUsage {
            metric,
            quantity,
            occurred_at: None,
        },
        5 => PeriodCommand::CheckQuota {
            metric,
            requested: quantity,
            consume: true,
            occurred_at: None,
        },
        6 => PeriodCommand::ApplyTopUp {
            metric,
            units: quantity,
            price: Money::from_minor(100 * rng.next(5) as i64),
            reference: format!("order-{}", rng.next(1_000_000)),
            actor: "test".into(),
        },
        7 => PeriodCommand::AdjustUsage {
            metric,
            delta: rng.next(5) as i64 - 2,
            actor: "support".into(),
            reason: "correction".into(),
        },
        _ => PeriodCommand::SetGaugeLevel {
            metric: id(MetricKey::parse, "team_members"),
            level: rng.next(60) as u64,
        },
    };
    request(brand, command)
}

pub async fn register_all(engine: &Engine, rng: &mut Rng) {
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

/// `commands` random commands from 8 concurrent submitters, plan changes included.
pub async fn workload(engine: &Engine, seed: u64, commands: usize) {
    let mut rng = Rng(seed);
    register_all(engine, &mut rng).await;
    let mut tasks = Vec::new();
    for lane in 0..8u64 {
        let engine = engine.clone();
        let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(lane + 1));
        tasks.push(tokio::spawn(async move {
            for _ in 0..commands / 8 {
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
pub async fn replay(store: &dyn ProjectionStore, until: Option<LogPosition>) -> ReadModels {
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

pub async fn stored(store: &dyn ProjectionStore) -> (LogPosition, ReadModels) {
    let (at, rows) = store
        .snapshot_models(READ_MODELS_PROJECTOR)
        .await
        .expect("snapshot");
    (at, restore_all(&rows).expect("stored rows parse"))
}

#[track_caller]
pub fn assert_same(stored: &ReadModels, replayed: &ReadModels) {
    let diff = stored.diff(replayed);
    assert!(
        diff.is_empty(),
        "stored models differ from a replay:\n{diff}"
    );
    assert_eq!(stored, replayed);
}
