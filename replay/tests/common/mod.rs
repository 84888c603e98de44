//! A log for the tests and the benchmark: the real aggregates decide every command, and
//! each event they write becomes a `LogRecord` as the store would hand it back (payload
//! and metadata as JSON text, one transaction per command). So every record is one
//! the ledger could have written, never a hand-made one.
//!
//! The benchmark example includes this file too (`#[path]`), so both read the same
//! generator.

// Each test binary uses its own part of this vocabulary.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use chrono::{DateTime, Duration, TimeDelta, Utc};
use ledger_aggregates::brand::{BRAND_EVENT_VERSION, BRAND_TYPE};
use ledger_aggregates::ids::period_stream_id;
use ledger_aggregates::period::{LEDGER_EVENT_VERSION, USAGE_PERIOD_TYPE};
use ledger_aggregates::{
    BrandAggregate, BrandCommand, BrandId, Catalog, LedgerError, LedgerRules, MetricKey,
    MetricKind, Money, PeriodCommand, PeriodKey, PeriodOpening, PlanDefinition, PlanId, Quantity,
    Stamped, StreamCommand, UsagePeriodAggregate,
};
use ledger_projections::{LogPosition, LogRecord};
use serde::Serialize;

pub static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::default_catalog);

pub fn brand(id: &str) -> BrandId {
    BrandId::parse(id).expect("test brand ids are valid")
}

pub fn metric(key: &str) -> MetricKey {
    MetricKey::parse(key).expect("test metric keys are valid")
}

pub fn period(key: &str) -> PeriodKey {
    PeriodKey::parse(key).expect("test periods are valid")
}

pub fn plan(id: &str) -> PlanDefinition {
    CATALOG
        .plan(&PlanId::parse(id).expect("valid plan id"))
        .unwrap_or_else(|| panic!("plan {id} is in the default catalog"))
        .clone()
}

fn qty(n: u64) -> Quantity {
    Quantity::new(n).expect("generated quantities are in range")
}

// --- commands -------------------------------------------------------------------------

pub fn record_at(key: &str, n: u64, at: DateTime<Utc>) -> Stamped {
    let command = PeriodCommand::RecordUsage {
        metric: metric(key),
        quantity: qty(n),
        occurred_at: None,
    };
    Stamped::new(command, at)
}

/// Usage of the period's last hour, reported an hour after its end (within the grace).
pub fn record_late(key: &str, n: u64, p: PeriodKey) -> Stamped {
    let command = PeriodCommand::RecordUsage {
        metric: metric(key),
        quantity: qty(n),
        occurred_at: Some(p.end() - Duration::hours(1)),
    };
    Stamped::new(command, p.end() + Duration::hours(1))
}

pub fn consume_at(key: &str, n: u64, at: DateTime<Utc>) -> Stamped {
    let command = PeriodCommand::CheckQuota {
        metric: metric(key),
        requested: qty(n),
        consume: true,
        occurred_at: None,
    };
    Stamped::new(command, at)
}

pub fn top_up_at(key: &str, units: u64, reference: &str, at: DateTime<Utc>) -> Stamped {
    let command = PeriodCommand::ApplyTopUp {
        metric: metric(key),
        units: qty(units),
        price: Money::from_minor(i64::try_from(units).expect("small") * 10),
        reference: reference.to_owned(),
        actor: "billing".to_owned(),
    };
    Stamped::new(command, at)
}

pub fn set_level_at(key: &str, level: u64, at: DateTime<Utc>) -> Stamped {
    let command = PeriodCommand::SetGaugeLevel {
        metric: metric(key),
        level,
    };
    Stamped::new(command, at)
}

pub fn adjust_at(key: &str, delta: i64, at: DateTime<Utc>) -> Stamped {
    let command = PeriodCommand::AdjustUsage {
        metric: metric(key),
        delta,
        actor: "support".to_owned(),
        reason: "duplicate submission".to_owned(),
    };
    Stamped::new(command, at)
}

pub fn close(p: PeriodKey) -> Stamped {
    let command = PeriodCommand::ClosePeriod {
        actor: "billing-cron".to_owned(),
        plan_at_end: None,
    };
    Stamped::new(command, p.end())
}

// --- the log --------------------------------------------------------------------------

/// Aggregates and the records they wrote.
pub struct Log {
    rules: LedgerRules,
    periods: HashMap<(BrandId, PeriodKey), UsagePeriodAggregate>,
    brands: HashMap<BrandId, BrandAggregate>,
    records: Vec<LogRecord>,
    /// Transactions committed: each command is one.
    transactions: u64,
    /// `recorded_at` of the last transaction: the commit clock never goes back.
    clock: DateTime<Utc>,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            rules: LedgerRules::default(),
            periods: HashMap::new(),
            brands: HashMap::new(),
            records: Vec::new(),
            transactions: 0,
            clock: DateTime::UNIX_EPOCH,
        }
    }
}

impl Log {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn records(&self) -> &[LogRecord] {
        &self.records
    }

    pub fn into_records(self) -> Vec<LogRecord> {
        self.records
    }

    /// The records of one brand-period stream, in sequence order.
    pub fn stream(&self, brand: &BrandId, period: PeriodKey) -> Vec<LogRecord> {
        let id = period_stream_id(brand, period);
        self.records
            .iter()
            .filter(|r| r.aggregate_type == USAGE_PERIOD_TYPE && r.aggregate_id == id)
            .cloned()
            .collect()
    }

    /// Append one transaction: `events` of one stream, each with its sequence.
    fn commit<E: Serialize>(
        &mut self,
        at: DateTime<Utc>,
        stream: (&str, String, &str),
        events: Vec<(u64, &str, E)>,
    ) {
        let (aggregate_type, aggregate_id, event_version) = stream;
        self.transactions += 1;
        self.clock = at.max(self.clock + TimeDelta::microseconds(1));
        for (sequence, event_type, event) in events {
            let position = self.records.len() as i64 + 1;
            self.records.push(LogRecord {
                at: LogPosition::new(self.transactions, position),
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: aggregate_id.clone(),
                sequence: sequence as i64,
                event_type: event_type.to_owned(),
                event_version: event_version.to_owned(),
                payload: serde_json::to_string(&event).expect("events serialize"),
                metadata: format!(r#"{{"requestId":"req-{}"}}"#, self.transactions),
                recorded_at: self.clock,
            });
        }
    }

    /// Put `brand` on `plan` in the registry (registers it the first time).
    pub fn set_plan(&mut self, brand: &BrandId, plan: &PlanDefinition, at: DateTime<Utc>) {
        let command = BrandCommand::SetPlan {
            brand_id: brand.clone(),
            plan: plan.clone(),
            actor: "admin".to_owned(),
            at,
            // The generated logs apply every change to the open period at once.
            effective: Some(ledger_aggregates::Effective::Now),
        };
        let state = self.brands.entry(brand.clone()).or_default();
        let events = state.decide(&command).expect("a brand takes any plan");
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            state.fold(&event);
            rows.push((state.version, event.event_type_str(), event));
        }
        let stream = (BRAND_TYPE, brand.to_string(), BRAND_EVENT_VERSION);
        self.commit(at, stream, rows);
    }

    /// Decide `command` on a period and append what it wrote, as one transaction; a
    /// refusal appends nothing. Answers the number of events written.
    pub fn try_decide(
        &mut self,
        brand: &BrandId,
        period: PeriodKey,
        command: &Stamped,
    ) -> Result<usize, LedgerError> {
        let state = self.periods.entry((brand.clone(), period)).or_default();
        let events = state.decide_stamped(command, &self.rules)?;
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            state.fold(&event);
            rows.push((state.version, event.event_type_str(), event));
        }
        let written = rows.len();
        let stream = (
            USAGE_PERIOD_TYPE,
            period_stream_id(brand, period),
            LEDGER_EVENT_VERSION,
        );
        self.commit(command.at, stream, rows);
        Ok(written)
    }

    /// Decide `command`, which the test expects accepted.
    pub fn decide(&mut self, brand: &BrandId, period: PeriodKey, command: Stamped) {
        if let Err(e) = self.try_decide(brand, period, &command) {
            panic!("{command:?} refused: {e}");
        }
    }

    /// Open `period` of `brand` on `plan`, carrying the gauge levels of the brand's
    /// previous period.
    pub fn open(&mut self, brand: &BrandId, period: PeriodKey, plan: &PlanDefinition) {
        let carried_levels = self
            .periods
            .get(&(brand.clone(), period.prev()))
            .map(UsagePeriodAggregate::gauge_levels)
            .unwrap_or_default();
        let opening = PeriodOpening {
            brand_id: brand.clone(),
            period,
            plan: plan.clone(),
            metric_kinds: metric_kinds(),
            carried_levels,
        };
        self.decide(brand, period, Stamped::new(opening, period.start()));
    }

    /// Move `brand` to `plan` in the registry and in its open `period`.
    pub fn change_plan(
        &mut self,
        brand: &BrandId,
        period: PeriodKey,
        plan: &PlanDefinition,
        at: DateTime<Utc>,
    ) {
        self.set_plan(brand, plan, at);
        let command = Stamped::new(StreamCommand::ApplyPlan(plan.clone()), at);
        self.decide(brand, period, command);
    }
}

// --- a busy log -----------------------------------------------------------------------

/// SplitMix64: a fixed seed gives the same log on every machine, with no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }
}

const TIERS: [&str; 3] = ["starter", "professional", "business"];
/// Counters with a quota on every tier, and one without (`bandwidth_gb`: unlimited).
const COUNTERS: [&str; 6] = [
    "designs_created",
    "renders_2d",
    "renders_3d",
    "ai_generations",
    "api_calls",
    "bandwidth_gb",
];

/// How large one usage report of `key` is: enough for the small quotas to cross their
/// thresholds and go into overage within a period, not so much that every one does.
fn usage_size(rng: &mut Rng, key: &str) -> u64 {
    match key {
        "api_calls" => rng.between(1, 400),
        "bandwidth_gb" => rng.between(1, 50),
        _ => rng.between(1, 4),
    }
}

/// A log like production's: `brands` brands spread over the plan tiers, `periods`
/// months from September 2026, and per month and brand `steps` commands interleaved
/// across brands in time order. The commands are usage records and consuming quota
/// checks (threshold crossings, overage), gauge levels (storage carried over between
/// months, seats denied above a `block` limit), top-ups, corrections (some refused
/// below zero), a plan upgrade for every fifth brand from the second month, each
/// month's close, and late usage after the close for every fourth brand.
pub fn busy_log(brands: usize, periods: usize, steps: usize, seed: u64) -> Log {
    let mut rng = Rng::new(seed);
    let mut log = Log::new();
    let ids: Vec<BrandId> = (0..brands)
        .map(|i| brand(&format!("brand-{i:05}")))
        .collect();
    let mut tiers: Vec<usize> = (0..brands).map(|i| i % TIERS.len()).collect();
    let mut p = period("2026-09");
    for (i, b) in ids.iter().enumerate() {
        log.set_plan(b, &plan(TIERS[tiers[i]]), p.start());
    }
    for month in 0..periods {
        for (i, b) in ids.iter().enumerate() {
            log.open(b, p, &plan(TIERS[tiers[i]]));
        }
        // Commands are spread evenly over the month, strictly inside it.
        let span_s = (p.end() - p.start()).num_seconds() - 2;
        let total = (steps * brands).max(1) as i64;
        for step in 0..steps {
            for (i, b) in ids.iter().enumerate() {
                let at =
                    p.start() + Duration::seconds(1 + (step * brands + i) as i64 * span_s / total);
                let upgrade =
                    month > 0 && step == steps / 2 && i % 5 == 0 && tiers[i] + 1 < TIERS.len();
                if upgrade {
                    tiers[i] += 1;
                    log.change_plan(b, p, &plan(TIERS[tiers[i]]), at);
                    continue;
                }
                let command = random_command(&mut rng, at, step);
                // Refusals (a correction below zero) append nothing, as in the service.
                let _ = log.try_decide(b, p, &command);
            }
        }
        for b in &ids {
            log.decide(b, p, close(p));
        }
        for b in ids.iter().step_by(4) {
            log.decide(b, p, record_late("renders_3d", 2, p));
        }
        p = p.next();
    }
    log
}

fn random_command(rng: &mut Rng, at: DateTime<Utc>, step: usize) -> Stamped {
    let roll = rng.between(0, 99);
    let counter = *rng.pick(&COUNTERS);
    match roll {
        0..=59 => record_at(counter, usage_size(rng, counter), at),
        60..=71 => consume_at(counter, usage_size(rng, counter), at),
        72..=81 => set_level_at("storage_gb", rng.between(0, 120), at),
        82..=86 => set_level_at("team_members", rng.between(1, 12), at),
        87..=93 => {
            let key = *rng.pick(&COUNTERS[..5]);
            top_up_at(key, rng.between(5, 50), &format!("order-{step}"), at)
        }
        _ => adjust_at(counter, -(rng.between(1, 3) as i64), at),
    }
}

/// Every catalog metric with its kind, as the engine hands them to `OpenPeriod`.
fn metric_kinds() -> BTreeMap<MetricKey, MetricKind> {
    CATALOG.metric_kinds().clone()
}
