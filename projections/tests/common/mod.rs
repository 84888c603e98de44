//! A ledger for the tests: the real aggregates decide every command, and each event they
//! write is appended to a log with its global position and stream sequence, as the
//! store appends it. So every "given" of a test is a history the ledger could have
//! written, never a hand-made event.

// Each test binary uses its own part of this vocabulary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::LazyLock;

use chrono::{DateTime, Duration, TimeZone, Utc};
use ledger_aggregates::{
    BrandAggregate, BrandCommand, BrandId, Catalog, LedgerError, LedgerEvent, LedgerRules,
    MetricKey, MetricKind, Money, PeriodCommand, PeriodKey, PeriodOpening, PlanDefinition, PlanId,
    Quantity, Stamped, StreamCommand, UsagePeriodAggregate,
};
use ledger_projections::{ProjectedEvent, ReadModels};
use rust_decimal::Decimal;

pub const R3D: &str = "renders_3d";
pub const AI: &str = "ai_generations";
pub const GLTF: &str = "exports_gltf";
pub const STORAGE: &str = "storage_gb";
pub const SEATS: &str = "team_members";

pub fn metric(key: &str) -> MetricKey {
    MetricKey::parse(key).expect("test metric keys are valid")
}

pub fn brand(id: &str) -> BrandId {
    BrandId::parse(id).expect("test brand ids are valid")
}

pub fn cents(n: i64) -> Money {
    Money::from_minor(n)
}

pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).expect("test decimals are valid")
}

fn qty(n: u64) -> Quantity {
    Quantity::new(n).expect("test quantities are in range")
}

pub fn nov() -> PeriodKey {
    PeriodKey::parse("2026-11").expect("valid period")
}

pub fn dec_period() -> PeriodKey {
    PeriodKey::parse("2026-12").expect("valid period")
}

/// Noon on a day of November 2026, the period most tests run in.
pub fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, d, 12, 0, 0)
        .single()
        .expect("a real November day")
}

/// `hours` after the end of `period`: inside the default 72 h grace window when small.
pub fn after_end(period: PeriodKey, hours: i64) -> DateTime<Utc> {
    period.end() + Duration::hours(hours)
}

/// Parsed once: property tests ask for plans and metrics at every step.
pub static CATALOG: LazyLock<Catalog> = LazyLock::new(Catalog::default_catalog);

pub fn plan(id: &str) -> PlanDefinition {
    CATALOG
        .plan(&PlanId::parse(id).expect("valid plan id"))
        .unwrap_or_else(|| panic!("plan {id} is in the default catalog"))
        .clone()
}

/// Starter with rates that are not whole cents (renders_3d 0.5, ai_generations 0.3,
/// storage_gb 1.25), so rounding shows.
pub fn fractional_starter() -> PlanDefinition {
    let mut plan = plan("starter");
    for quota in &mut plan.quotas {
        let rate = match quota.metric.as_str() {
            R3D => "0.5",
            AI => "0.3",
            STORAGE => "1.25",
            _ => continue,
        };
        quota.overage_rate = Some(dec(rate));
    }
    plan
}

pub fn metric_kinds() -> BTreeMap<MetricKey, MetricKind> {
    CATALOG.metric_kinds().clone()
}

// --- commands -------------------------------------------------------------------------

/// Usage of `n` units on day 10 of November.
pub fn record(key: &str, n: u64) -> Stamped {
    record_at(key, n, day(10), day(10))
}

pub fn record_at(key: &str, n: u64, occurred_at: DateTime<Utc>, at: DateTime<Utc>) -> Stamped {
    let command = PeriodCommand::RecordUsage {
        metric: metric(key),
        quantity: qty(n),
        occurred_at: Some(occurred_at),
    };
    Stamped::new(command, at)
}

/// Usage that happened on the last evening of November, reported an hour after its end.
pub fn record_late(key: &str, n: u64) -> Stamped {
    let occurred_at = nov().end() - Duration::hours(1);
    record_at(key, n, occurred_at, after_end(nov(), 1))
}

pub fn top_up(key: &str, units: u64, price: i64, reference: &str) -> Stamped {
    let command = PeriodCommand::ApplyTopUp {
        metric: metric(key),
        units: qty(units),
        price: cents(price),
        reference: reference.to_owned(),
        actor: "billing".to_owned(),
    };
    Stamped::new(command, day(11))
}

pub fn set_level(key: &str, level: u64) -> Stamped {
    let command = PeriodCommand::SetGaugeLevel {
        metric: metric(key),
        level,
    };
    Stamped::new(command, day(12))
}

pub fn adjust_at(key: &str, delta: i64, at: DateTime<Utc>) -> Stamped {
    let command = PeriodCommand::AdjustUsage {
        metric: metric(key),
        delta,
        actor: "support".to_owned(),
        reason: "test correction".to_owned(),
    };
    Stamped::new(command, at)
}

pub fn close() -> Stamped {
    let command = PeriodCommand::ClosePeriod {
        actor: "billing-cron".to_owned(),
        plan_at_end: None,
    };
    Stamped::new(command, nov().end())
}

// --- the ledger -----------------------------------------------------------------------

/// Aggregates and the log they wrote.
#[derive(Default)]
pub struct Ledger {
    rules: LedgerRules,
    periods: BTreeMap<(BrandId, PeriodKey), UsagePeriodAggregate>,
    brands: BTreeMap<BrandId, BrandAggregate>,
    log: Vec<ProjectedEvent>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn log(&self) -> &[ProjectedEvent] {
        &self.log
    }

    /// The models a fold of the whole log gives.
    pub fn models(&self) -> ReadModels {
        ReadModels::replay(&self.log)
    }

    pub fn period(&self, brand_id: &str, period: PeriodKey) -> &UsagePeriodAggregate {
        self.periods
            .get(&(brand(brand_id), period))
            .unwrap_or_else(|| panic!("{brand_id} {period} was opened"))
    }

    fn next_position(&self) -> i64 {
        self.log.len() as i64 + 1
    }

    /// Put `brand_id` on `plan` in the registry (registers it the first time).
    pub fn set_plan(&mut self, brand_id: &str, plan: &PlanDefinition) -> Vec<ProjectedEvent> {
        let b = brand(brand_id);
        let command = BrandCommand::SetPlan {
            brand_id: b.clone(),
            plan: plan.clone(),
            actor: "admin".to_owned(),
            at: day(1),
            // The generated logs apply every change to the open period at once.
            effective: Some(ledger_aggregates::Effective::Now),
        };
        let state = self.brands.entry(b.clone()).or_default();
        let events = state.decide(&command).expect("a brand takes any plan");
        let mut appended = Vec::new();
        for event in events {
            state.fold(&event);
            let position = self.log.len() as i64 + 1 + appended.len() as i64;
            appended.push(ProjectedEvent::brand(
                position,
                state.version,
                b.clone(),
                event,
            ));
        }
        self.log.extend(appended.iter().cloned());
        appended
    }

    /// Open `period` of `brand_id` on `plan`, with gauge levels carried over.
    pub fn open(
        &mut self,
        brand_id: &str,
        period: PeriodKey,
        plan: &PlanDefinition,
        carried: &[(&str, u64)],
    ) -> Vec<ProjectedEvent> {
        let opening = PeriodOpening {
            brand_id: brand(brand_id),
            period,
            plan: plan.clone(),
            metric_kinds: metric_kinds(),
            carried_levels: carried.iter().map(|(k, v)| (metric(k), *v)).collect(),
        };
        self.try_decide(brand_id, period, Stamped::new(opening, period.start()))
            .expect("a new period opens")
    }

    /// Register `brand_id` on the catalog plan `plan_id` and open November on it.
    pub fn register(&mut self, brand_id: &str, plan_id: &str) -> &mut Self {
        self.register_on(brand_id, &plan(plan_id))
    }

    pub fn register_on(&mut self, brand_id: &str, plan: &PlanDefinition) -> &mut Self {
        self.set_plan(brand_id, plan);
        self.open(brand_id, nov(), plan, &[]);
        self
    }

    /// Decide `command` on a period and append what it wrote; a refusal appends nothing.
    pub fn try_decide(
        &mut self,
        brand_id: &str,
        period: PeriodKey,
        command: Stamped,
    ) -> Result<Vec<ProjectedEvent>, LedgerError> {
        let b = brand(brand_id);
        let first_position = self.next_position();
        let state = self.periods.entry((b.clone(), period)).or_default();
        let events = state.decide_stamped(&command, &self.rules)?;
        let mut appended = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            state.fold(&event);
            appended.push(ProjectedEvent::period(
                first_position + i as i64,
                state.version,
                b.clone(),
                period,
                event,
            ));
        }
        self.log.extend(appended.iter().cloned());
        Ok(appended)
    }

    /// Decide `command` on November of `brand_id`; the test expects it accepted.
    pub fn decide(&mut self, brand_id: &str, command: Stamped) -> Vec<ProjectedEvent> {
        let what = format!("{command:?}");
        self.try_decide(brand_id, nov(), command)
            .unwrap_or_else(|e| panic!("{what} refused: {e}"))
    }

    /// Several commands on November of `brand_id`, each expected accepted.
    pub fn run(&mut self, brand_id: &str, commands: Vec<Stamped>) -> &mut Self {
        for command in commands {
            self.decide(brand_id, command);
        }
        self
    }

    /// Move `brand_id` to `plan` in the registry and in its open November.
    pub fn change_plan(&mut self, brand_id: &str, plan: &PlanDefinition) -> &mut Self {
        self.set_plan(brand_id, plan);
        self.decide(
            brand_id,
            Stamped::new(StreamCommand::ApplyPlan(plan.clone()), day(15)),
        );
        self
    }
}

/// The invoice a `PeriodClosed` among `events` carries.
pub fn invoice_of(events: &[ProjectedEvent]) -> ledger_aggregates::period::Invoice {
    events
        .iter()
        .find_map(|e| match e.as_period() {
            Some((_, _, LedgerEvent::PeriodClosed { invoice, .. })) => Some(invoice.clone()),
            _ => None,
        })
        .expect("the events close the period")
}
