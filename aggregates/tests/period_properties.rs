//! Property tests of the brand-period aggregate: random command sequences folded through
//! `decide` + `apply` keep the ledger's invariants after every command.
//!
//! The metrics are chosen to cover every shape of quota: renders_3d and ai_generations
//! (charged counters), exports_gltf (no quota: unlimited), storage_gb (charged gauge,
//! billed on its peak) and team_members (blocked gauge). Plans are starter, professional
//! and a starter with fractional rates, so the one-rounding-on-the-total rule is exercised.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use ledger_aggregates::money::cost_of;
use ledger_aggregates::period::Invoice;
use ledger_aggregates::{
    BrandId, Catalog, LedgerError, LedgerEvent, LedgerRules, MetricKey, MetricKind, Money,
    OveragePolicy, PeriodCommand, PeriodKey, PeriodOpening, PlanDefinition, PlanId, Quantity,
    QuotaDecision, Stamped, StreamCommand, UsagePeriodAggregate,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rust_decimal::Decimal;

const R3D: &str = "renders_3d";
const AI: &str = "ai_generations";
const GLTF: &str = "exports_gltf";
const STORAGE: &str = "storage_gb";
const SEATS: &str = "team_members";

/// The metrics commands are drawn from, one of each quota shape.
const METRICS: [&str; 5] = [R3D, AI, GLTF, STORAGE, SEATS];
/// The gauges among them: only these take `SetGaugeLevel`.
const GAUGES: [&str; 2] = [STORAGE, SEATS];
/// Long enough to cross every threshold and go well into overage on starter.
const OPS_LEN_MAX: usize = 60;

fn metric(key: &str) -> MetricKey {
    MetricKey::parse(key).expect("test metric keys are valid")
}

fn qty(n: u64) -> Quantity {
    Quantity::new(n).expect("strategies only draw quantities in range")
}

fn catalog_plan(id: &str) -> PlanDefinition {
    Catalog::default_catalog()
        .plan(&PlanId::parse(id).expect("valid plan id"))
        .unwrap_or_else(|| panic!("plan {id} is in the default catalog"))
        .clone()
}

/// Starter with rates that are not whole cents, so per-event rounding would drift.
fn fractional_starter() -> PlanDefinition {
    let mut plan = catalog_plan("starter");
    for quota in &mut plan.quotas {
        let rate = match quota.metric.as_str() {
            R3D => "0.5",
            AI => "0.3",
            STORAGE => "1.25",
            _ => continue,
        };
        quota.overage_rate = Some(Decimal::from_str(rate).expect("a decimal rate"));
    }
    plan
}

fn metric_kinds() -> BTreeMap<MetricKey, MetricKind> {
    Catalog::default_catalog().metric_kinds().clone()
}

fn period() -> PeriodKey {
    PeriodKey::parse("2026-11").expect("valid period")
}

/// Commands are spread over the month, one minute apart.
fn at(step: usize) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0)
        .single()
        .expect("a real instant")
        + Duration::minutes(step as i64)
}

fn open(plan: &PlanDefinition) -> Stamped {
    let opening = PeriodOpening {
        brand_id: BrandId::parse("brand_p").expect("valid brand"),
        period: period(),
        plan: plan.clone(),
        metric_kinds: metric_kinds(),
        carried_levels: BTreeMap::new(),
    };
    Stamped::new(opening, period().start())
}

/// One random command, with small numbers so limits are reached and crossed often.
#[derive(Debug, Clone)]
enum Op {
    Record {
        m: usize,
        n: u64,
    },
    Check {
        m: usize,
        n: u64,
        consume: bool,
    },
    TopUp {
        m: usize,
        units: u64,
    },
    SetLevel {
        g: usize,
        level: u64,
    },
    Adjust {
        m: usize,
        delta: i64,
    },
    /// The brand moves to plan `p` of [`PLANS`], up or down.
    ChangePlan {
        p: usize,
    },
}

/// The plans a sequence opens on and moves between.
const PLANS: [&str; 3] = ["starter", "professional", "fractional"];

fn plan_named(name: &str) -> PlanDefinition {
    match name {
        "fractional" => fractional_starter(),
        other => catalog_plan(other),
    }
}

impl Op {
    fn metric_key(&self) -> &'static str {
        match self {
            Op::Record { m, .. }
            | Op::Check { m, .. }
            | Op::TopUp { m, .. }
            | Op::Adjust { m, .. } => METRICS[*m],
            Op::SetLevel { g, .. } => GAUGES[*g],
            Op::ChangePlan { .. } => R3D,
        }
    }

    fn command(&self, step: usize) -> Stamped {
        let metric = metric(self.metric_key());
        let command = match *self {
            Op::Record { n, .. } => PeriodCommand::RecordUsage {
                metric,
                quantity: qty(n),
                occurred_at: None,
            },
            Op::Check { n, consume, .. } => PeriodCommand::CheckQuota {
                metric,
                requested: qty(n),
                consume,
                occurred_at: None,
            },
            Op::TopUp { units, .. } => PeriodCommand::ApplyTopUp {
                metric,
                units: qty(units),
                price: Money::from_minor(100 * units as i64),
                reference: format!("topup-{step}"),
                actor: "billing".to_owned(),
            },
            Op::SetLevel { level, .. } => PeriodCommand::SetGaugeLevel { metric, level },
            Op::Adjust { delta, .. } => PeriodCommand::AdjustUsage {
                metric,
                delta,
                actor: "support".to_owned(),
                reason: "property test".to_owned(),
            },
            Op::ChangePlan { p } => {
                let plan = plan_named(PLANS[p]);
                return Stamped::new(StreamCommand::ApplyPlan(plan), at(step));
            }
        };
        Stamped::new(command, at(step))
    }
}

fn op() -> impl Strategy<Value = Op> {
    let m = 0..METRICS.len();
    prop_oneof![
        4 => (m.clone(), 1..=8u64).prop_map(|(m, n)| Op::Record { m, n }),
        2 => (m.clone(), 1..=8u64, any::<bool>())
            .prop_map(|(m, n, consume)| Op::Check { m, n, consume }),
        1 => (m.clone(), 1..=5u64).prop_map(|(m, units)| Op::TopUp { m, units }),
        2 => (0..GAUGES.len(), 0..=12u64).prop_map(|(g, level)| Op::SetLevel { g, level }),
        1 => (m, -4..=4i64).prop_map(|(m, delta)| Op::Adjust { m, delta }),
        1 => (0..PLANS.len()).prop_map(|p| Op::ChangePlan { p }),
    ]
}

fn plan() -> impl Strategy<Value = PlanDefinition> {
    prop_oneof![
        Just(catalog_plan("starter")),
        Just(catalog_plan("professional")),
        Just(fractional_starter()),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..=OPS_LEN_MAX)
}

/// What the test expects of each metric, kept apart from the aggregate's own state.
#[derive(Debug, Clone, Copy, Default)]
struct Model {
    current: u64,
    top_ups: u64,
    /// The overage cost earlier plans of the period left (counters: their sum;
    /// gauges: the costliest).
    settled_cost: Money,
    /// A counter's usage when the plan in force took effect.
    start: u64,
}

/// One sequence, run command by command with the checks of every step.
struct Run {
    plan: PlanDefinition,
    /// Each plan in force with the instant it took effect, the opening one first.
    segments: Vec<(PlanDefinition, DateTime<Utc>)>,
    rules: LedgerRules,
    state: UsagePeriodAggregate,
    events: Vec<LedgerEvent>,
    model: BTreeMap<&'static str, Model>,
}

impl Run {
    fn open(plan: &PlanDefinition) -> Self {
        let mut run = Self {
            plan: plan.clone(),
            segments: vec![(plan.clone(), period().start())],
            rules: LedgerRules::default(),
            state: UsagePeriodAggregate::default(),
            events: Vec::new(),
            model: METRICS.iter().map(|k| (*k, Model::default())).collect(),
        };
        let opened = run
            .state
            .decide_stamped(&open(plan), &run.rules)
            .expect("a fresh stream opens");
        run.fold(opened);
        run
    }

    fn fold(&mut self, events: Vec<LedgerEvent>) {
        for event in events {
            self.state.apply(event.clone());
            self.events.push(event);
        }
    }

    fn quota_policy(&self, key: &str) -> Option<OveragePolicy> {
        self.plan.quota(&metric(key)).map(|q| q.overage)
    }

    fn effective_limit(&self, key: &str) -> Option<u64> {
        self.plan
            .quota(&metric(key))
            .map(|q| q.limit + self.model[key].top_ups)
    }

    fn blocks(&self, key: &str, would_be: u64) -> bool {
        self.quota_policy(key) == Some(OveragePolicy::Block)
            && self.effective_limit(key).is_some_and(|l| would_be > l)
    }

    /// Decide and fold one command, checking that the outcome is the one the rules
    /// predict from the model, then update the model.
    fn step(&mut self, op: &Op, step: usize) -> Result<(), TestCaseError> {
        let key = op.metric_key();
        let all_before = self.model.clone();
        let before = self.model[key];
        let outcome = self.state.decide_stamped(&op.command(step), &self.rules);
        match (op, &outcome) {
            (Op::Adjust { delta, .. }, _) => {
                let would_be = before.current as i64 + delta;
                let expected_error = if *delta == 0 {
                    Some("BadAdjustment")
                } else if would_be < 0 {
                    Some("BelowZero")
                } else if *delta > 0 && self.blocks(key, would_be as u64) {
                    Some("AboveBlockLimit")
                } else {
                    None
                };
                let got_error = outcome.as_ref().err().map(|e| match e {
                    LedgerError::BadAdjustment => "BadAdjustment",
                    LedgerError::BelowZero { .. } => "BelowZero",
                    LedgerError::AboveBlockLimit { .. } => "AboveBlockLimit",
                    _ => "other",
                });
                prop_assert_eq!(got_error, expected_error, "adjust {} by {}", key, delta);
                if outcome.is_ok() {
                    self.model.get_mut(key).expect("modelled").current = would_be as u64;
                }
            }
            (Op::TopUp { units, .. }, _) => {
                if self.quota_policy(key).is_none() {
                    prop_assert_eq!(&outcome, &Err(LedgerError::TopUpOnUnlimited(metric(key))));
                } else {
                    prop_assert!(outcome.is_ok(), "top-up refused: {:?}", outcome);
                    self.model.get_mut(key).expect("modelled").top_ups += units;
                }
            }
            (Op::Check { consume: false, .. }, _) => {
                prop_assert_eq!(&outcome, &Ok(Vec::new()), "a plain check writes nothing");
            }
            (Op::Record { .. } | Op::Check { .. }, _) if GAUGES.contains(&key) => {
                prop_assert_eq!(&outcome, &Err(LedgerError::GaugeIsSet(metric(key))));
            }
            (Op::ChangePlan { p }, _) => {
                prop_assert!(outcome.is_ok(), "plan change refused: {:?}", outcome);
                // The same plan again changes nothing.
                if matches!(&outcome, Ok(events) if !events.is_empty()) {
                    for key in METRICS {
                        let settled = self.expected_cost(key);
                        let m = self.model.get_mut(key).expect("modelled");
                        (m.settled_cost, m.start) = (settled, m.current);
                    }
                    self.plan = plan_named(PLANS[*p]);
                    self.segments.push((self.plan.clone(), at(step)));
                }
            }
            (Op::Record { n, .. } | Op::Check { n, .. }, Ok(events)) => {
                let denied = self.blocks(key, before.current + n);
                prop_assert_eq!(
                    matches!(events.first(), Some(LedgerEvent::UsageDenied { .. })),
                    denied,
                    "{} +{} at {}",
                    key,
                    n,
                    before.current
                );
                if denied {
                    prop_assert_eq!(events.len(), 1, "a denial is a single event");
                } else {
                    let Some(LedgerEvent::UsageRecorded { quantity, .. }) = events.first() else {
                        return Err(TestCaseError::fail(format!("no usage: {events:?}")));
                    };
                    prop_assert_eq!(*quantity, *n);
                    self.model.get_mut(key).expect("modelled").current += n;
                }
            }
            (Op::SetLevel { level, .. }, Ok(events)) => {
                let denied = *level > before.current && self.blocks(key, *level);
                match events.first() {
                    Some(LedgerEvent::UsageDenied { requested, .. }) => {
                        prop_assert!(denied, "{} to {} denied", key, level);
                        prop_assert_eq!(*requested, level - before.current);
                    }
                    Some(LedgerEvent::GaugeLevelSet {
                        previous, totals, ..
                    }) => {
                        prop_assert!(!denied, "{} to {} accepted", key, level);
                        prop_assert_eq!(*previous, before.current);
                        prop_assert_eq!(totals.current, *level);
                        self.model.get_mut(key).expect("modelled").current = *level;
                    }
                    other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                }
            }
            (_, Err(e)) => {
                return Err(TestCaseError::fail(format!("{op:?} refused: {e}")));
            }
        }
        if let Ok(events) = outcome {
            self.fold(events);
        }
        self.check_invariants(&all_before)
    }

    /// The invariants that hold after every command.
    fn check_invariants(
        &self,
        before: &BTreeMap<&'static str, Model>,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.state.version, self.events.len() as u64);
        for key in METRICS {
            self.check_metric(key, before[key].current)?;
        }
        Ok(())
    }

    /// The overage cost of `key` as the rules give it, from the model: under the plan in
    /// force, a counter pays for what it used above the limit since the plan took effect,
    /// a gauge for its peak above the limit; earlier plans' overage stays.
    fn expected_cost(&self, key: &'static str) -> Money {
        let m = metric(key);
        let state = self.state.metric(&m).cloned().unwrap_or_default();
        let model = self.model[key];
        let above = |units: u64, limit: u64| units.saturating_sub(limit);
        let now = match self.plan.quota(&m) {
            Some(q) if q.overage == OveragePolicy::Charge => {
                let limit = q.limit + model.top_ups;
                let units = match GAUGES.contains(&key) {
                    true => above(state.peak.max(state.current), limit),
                    false => above(state.current, limit).saturating_sub(above(model.start, limit)),
                };
                cost_of(units, q.overage_rate.expect("charge quotas have a rate"))
            }
            _ => Money::ZERO,
        };
        match GAUGES.contains(&key) {
            true => now.max(model.settled_cost),
            false => now + model.settled_cost,
        }
    }

    /// `before` is the metric's usage before the last command.
    fn check_metric(&self, key: &'static str, before: u64) -> Result<(), TestCaseError> {
        let m = metric(key);
        let state = self.state.metric(&m).cloned().unwrap_or_default();
        let model = self.model[key];
        let quota = self.plan.quota(&m);

        // The running total is what was accepted, corrections included.
        prop_assert_eq!(state.current, model.current, "{} current", key);
        prop_assert_eq!(state.top_up_units, model.top_ups, "{} top-ups", key);
        if !GAUGES.contains(&key) {
            let accepted: i64 = self
                .events_of(key)
                .map(|e| match e {
                    LedgerEvent::UsageRecorded { quantity, .. } => *quantity as i64,
                    LedgerEvent::UsageAdjusted { delta, .. } => *delta,
                    _ => 0,
                })
                .sum();
            prop_assert_eq!(state.current as i64, accepted, "{} sum of events", key);
        }
        prop_assert!(state.peak >= state.current, "{} peak below level", key);

        // A blocked metric never rises above its limit plus top-ups (a downgrade may
        // leave it above a lower one; then it only comes down).
        if quota.is_some_and(|q| q.overage == OveragePolicy::Block) && state.current > before {
            let limit = self.effective_limit(key).expect("block has a limit");
            prop_assert!(
                state.current <= limit,
                "{} rose to {} > {}",
                key,
                state.current,
                limit
            );
        }

        // Each threshold alternates, crossed then resolved: it crosses only when
        // reached, and resolves only once it no longer holds.
        let mut active = BTreeSet::new();
        for event in self.events_of(key) {
            match event {
                LedgerEvent::ThresholdCrossed {
                    threshold,
                    current,
                    effective_limit,
                    ..
                } => {
                    prop_assert!(active.insert(*threshold), "{} {} twice", key, threshold);
                    prop_assert!(reached(*current, *effective_limit, *threshold));
                }
                LedgerEvent::ThresholdResolved {
                    threshold,
                    current,
                    effective_limit,
                    ..
                } => {
                    prop_assert!(active.remove(threshold), "{} {} not active", key, threshold);
                    prop_assert!(effective_limit.is_none_or(|l| !reached(*current, l, *threshold)));
                }
                _ => {}
            }
        }
        let state_fired: BTreeSet<u8> = state.fired.iter().copied().collect();
        prop_assert_eq!(state_fired.len(), state.fired.len(), "{} fired list", key);
        prop_assert_eq!(&state_fired, &active);
        // And the alerts that stand are exactly the thresholds usage reaches now.
        let reached_now: BTreeSet<u8> = match (quota, self.effective_limit(key)) {
            (Some(q), Some(limit)) => q
                .notification_thresholds
                .iter()
                .copied()
                .filter(|t| reached(state.current, limit, *t))
                .collect(),
            _ => BTreeSet::new(),
        };
        prop_assert_eq!(active, reached_now, "{} active alerts", key);

        // The overage cost is the cost of the overage units, recomputed from scratch.
        let _ = model;
        prop_assert_eq!(
            state.overage_cost,
            self.expected_cost(key),
            "{} overage cost",
            key
        );

        // And each event's marginal cost is exactly the change it made to that total,
        // so the marginals add up to it (a plan change moves it without a marginal).
        let mut running = Money::ZERO;
        for event in &self.events {
            match event {
                LedgerEvent::UsageRecorded {
                    metric: e,
                    marginal_cost,
                    totals,
                    ..
                }
                | LedgerEvent::GaugeLevelSet {
                    metric: e,
                    marginal_cost,
                    totals,
                    ..
                }
                | LedgerEvent::UsageAdjusted {
                    metric: e,
                    marginal_cost,
                    totals,
                    ..
                }
                | LedgerEvent::TopUpApplied {
                    metric: e,
                    marginal_cost,
                    totals,
                    ..
                } if *e == m => {
                    prop_assert_eq!(
                        running + *marginal_cost,
                        totals.overage_cost,
                        "{} marginal",
                        key
                    );
                    running = totals.overage_cost;
                }
                LedgerEvent::PlanApplied { totals, .. } => {
                    running = totals.get(&m).map_or(running, |t| t.overage_cost);
                }
                _ => {}
            }
        }
        prop_assert_eq!(running, state.overage_cost, "{} sum of marginals", key);
        Ok(())
    }

    fn events_of(&self, key: &str) -> impl Iterator<Item = &LedgerEvent> {
        let m = metric(key);
        self.events
            .iter()
            .filter(move |e| event_metric(e) == Some(&m))
    }

    fn close(&mut self) -> Result<Invoice, TestCaseError> {
        let command = PeriodCommand::ClosePeriod {
            actor: "billing-cron".to_owned(),
            plan_at_end: None,
        };
        let events = self
            .state
            .decide(&command, period().end(), &self.rules)
            .map_err(|e| TestCaseError::fail(format!("close refused: {e}")))?;
        let Some(LedgerEvent::PeriodClosed { invoice, .. }) = events.first().cloned() else {
            return Err(TestCaseError::fail(format!("no invoice: {events:?}")));
        };
        self.fold(events);
        Ok(invoice)
    }
}

/// `current` is at least `t` % of `limit`, in exact integers; any use reaches a zero limit.
fn reached(current: u64, limit: u64, t: u8) -> bool {
    match limit {
        0 => current > 0,
        l => u128::from(current) * 100 >= u128::from(t) * u128::from(l),
    }
}

fn event_metric(event: &LedgerEvent) -> Option<&MetricKey> {
    match event {
        LedgerEvent::UsageRecorded { metric, .. }
        | LedgerEvent::UsageDenied { metric, .. }
        | LedgerEvent::GaugeLevelSet { metric, .. }
        | LedgerEvent::UsageAdjusted { metric, .. }
        | LedgerEvent::TopUpApplied { metric, .. }
        | LedgerEvent::ThresholdCrossed { metric, .. }
        | LedgerEvent::ThresholdResolved { metric, .. }
        | LedgerEvent::QuotaReserved { metric, .. }
        | LedgerEvent::HoldReleased { metric, .. } => Some(metric),
        LedgerEvent::PeriodOpened { .. }
        | LedgerEvent::PlanApplied { .. }
        | LedgerEvent::PeriodClosed { .. } => None,
    }
}

fn run_all(plan: &PlanDefinition, ops: &[Op]) -> Result<Run, TestCaseError> {
    let mut run = Run::open(plan);
    for (step, op) in ops.iter().enumerate() {
        run.step(op, step)?;
    }
    Ok(run)
}

fn replay(events: &[LedgerEvent]) -> UsagePeriodAggregate {
    let mut aggregate = UsagePeriodAggregate::default();
    for event in events {
        aggregate.apply(event.clone());
    }
    aggregate
}

proptest! {
    #[test]
    fn prop_every_command_keeps_the_ledger_invariants(plan in plan(), ops in ops()) {
        // Totals, block limits, thresholds, costs and version hold after each command.
        run_all(&plan, &ops)?;
    }

    #[test]
    fn prop_the_invoice_bills_exactly_the_overage_costs_of_the_state(
        plan in plan(),
        ops in ops(),
    ) {
        // Closing bills each charged metric's running overage cost, nothing more.
        let mut run = run_all(&plan, &ops)?;
        let costs: BTreeMap<MetricKey, Money> = run
            .state
            .metrics
            .iter()
            .filter(|(_, s)| s.overage_cost > Money::ZERO)
            .map(|(k, s)| (k.clone(), s.overage_cost))
            .collect();
        let invoice = run.close()?;
        let lines: BTreeMap<MetricKey, Money> = invoice
            .lines
            .iter()
            .map(|l| (l.metric.clone(), l.amount))
            .collect();
        prop_assert_eq!(&lines, &costs);
        let overage: Money = costs.values().copied().sum();
        prop_assert_eq!(invoice.overage, overage);
        // Each plan's base price, prorated by the seconds it was in force, half up.
        let whole = Decimal::from((period().end() - period().start()).num_seconds());
        let ends = run.segments.iter().skip(1).map(|(_, at)| *at).chain([period().end()]);
        let base: Money = run
            .segments
            .iter()
            .zip(ends)
            .map(|((plan, from), to)| {
                let share = Decimal::from(plan.base_price_cents.minor())
                    * Decimal::from((to - *from).num_seconds())
                    / whole;
                let cents = share.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
                Money::from_minor(i64::try_from(cents.mantissa()).expect("cents fit"))
            })
            .sum();
        prop_assert_eq!(invoice.base, base);
        prop_assert_eq!(invoice.base_lines.len(), run.segments.len());
        prop_assert_eq!(invoice.total, base + overage);
        prop_assert_eq!(run.state.version, run.events.len() as u64);
    }

    #[test]
    fn prop_replaying_the_events_rebuilds_an_identical_state(plan in plan(), ops in ops()) {
        // State is a pure fold of the stream: a replica rebuilt from events is equal.
        let run = run_all(&plan, &ops)?;
        prop_assert_eq!(replay(&run.events), run.state);
    }

    #[test]
    fn prop_handling_through_cqrs_es_writes_the_events_decide_returns(
        plan in plan(),
        ops in ops(),
    ) {
        // The cqrs-es `handle` path and the engine's `decide` path are the same decision.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        let rules = LedgerRules::default();
        let mut handled = UsagePeriodAggregate::default();
        let mut decided = UsagePeriodAggregate::default();
        let commands = std::iter::once(open(&plan))
            .chain(ops.iter().enumerate().map(|(i, op)| op.command(i)));
        for command in commands {
            let expected = decided.decide_stamped(&command, &rules);
            let sink = EventSink::<UsagePeriodAggregate>::default();
            let result = runtime.block_on(handled.handle(command, &rules, &sink));
            let written = runtime.block_on(sink.collect());
            match expected {
                Ok(events) => {
                    prop_assert_eq!(result, Ok(()));
                    prop_assert_eq!(&written, &events);
                    for event in events {
                        decided.apply(event);
                    }
                }
                Err(e) => {
                    prop_assert_eq!(result, Err(e));
                    prop_assert!(written.is_empty());
                }
            }
            prop_assert_eq!(&handled, &decided);
        }
    }

    #[test]
    fn prop_every_event_and_the_aggregate_round_trip_through_json(
        plan in plan(),
        ops in ops(),
    ) {
        // What is stored as JSON reads back as the same fact and the same snapshot.
        let mut run = run_all(&plan, &ops)?;
        run.close()?;
        let mut read_back = Vec::with_capacity(run.events.len());
        for event in &run.events {
            let json = serde_json::to_string(event).expect("events serialize");
            let back: LedgerEvent = serde_json::from_str(&json)
                .map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
            prop_assert_eq!(&back, event);
            read_back.push(back);
        }
        prop_assert_eq!(replay(&read_back), run.state.clone());
        let snapshot = serde_json::to_value(&run.state).expect("the aggregate serializes");
        let restored: UsagePeriodAggregate = serde_json::from_value(snapshot)
            .map_err(|e| TestCaseError::fail(format!("snapshot: {e}")))?;
        prop_assert_eq!(restored, run.state);
    }

    #[test]
    fn prop_a_stored_usage_decision_answers_what_the_live_command_answered(
        plan in plan(),
        ops in ops(),
    ) {
        // Idempotent replays: `decision_of` on the written event equals what `evaluate`
        // predicted before it, moved to the state after the consumption when allowed.
        let mut run = Run::open(&plan);
        for (step, op) in ops.iter().enumerate() {
            let key = op.metric_key();
            let n = match op {
                _ if GAUGES.contains(&key) => None,
                Op::Record { n, .. } | Op::Check { n, consume: true, .. } => Some(*n),
                _ => None,
            };
            if let Some(n) = n {
                let live = run
                    .state
                    .evaluate(&metric(key), qty(n), op.command(step).at)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let events = run
                    .state
                    .decide_stamped(&op.command(step), &run.rules)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let current_plan = run.state.plan().expect("open").clone();
                let stored = UsagePeriodAggregate::decision_of(&events[0], &current_plan);
                let expected = match live.allowed {
                    true => QuotaDecision {
                        consumed: true,
                        current: live.current + n,
                        remaining: live.effective_limit.map(|l| l.saturating_sub(live.current + n)),
                        ..live
                    },
                    false => live,
                };
                prop_assert_eq!(stored, Some(expected), "{} +{}", key, n);
            }
            run.step(op, step)?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Holds: a random mix of records, holds, commits, voids and expiries.
// ---------------------------------------------------------------------------------------

/// One step of a hold sequence on blocked renders (limit 10 on starter). Time moves
/// `wait_s` before each step, so holds run out while others are placed and committed.
#[derive(Debug, Clone)]
enum HoldOp {
    Record {
        n: u64,
    },
    Reserve {
        n: u64,
        ttl_s: u64,
    },
    /// Commit the `i`-th hold placed so far (modulo), `amount` of it or all.
    Commit {
        i: usize,
        amount: Option<u64>,
    },
    Void {
        i: usize,
    },
    Expire,
}

fn hold_op() -> impl Strategy<Value = (HoldOp, i64)> {
    let op = prop_oneof![
        2 => (1..=4u64).prop_map(|n| HoldOp::Record { n }),
        4 => (1..=6u64, 30..=600u64).prop_map(|(n, ttl_s)| HoldOp::Reserve { n, ttl_s }),
        3 => (0..8usize, prop::option::of(1..=6u64))
            .prop_map(|(i, amount)| HoldOp::Commit { i, amount }),
        1 => (0..8usize).prop_map(|i| HoldOp::Void { i }),
        1 => Just(HoldOp::Expire),
    ];
    (op, 0..=240i64)
}

fn blocked_starter() -> PlanDefinition {
    let mut plan = catalog_plan("starter");
    for q in plan.quotas.iter_mut().filter(|q| q.metric.as_str() == R3D) {
        q.overage = OveragePolicy::Block;
        q.overage_rate = None;
    }
    plan
}

proptest! {
    #[test]
    fn prop_holds_never_let_a_blocked_metric_exceed_its_limit(
        ops in prop::collection::vec(hold_op(), 0..=OPS_LEN_MAX),
    ) {
        // Whatever the mix, usage plus what is still held stays within the limit; the
        // total is exactly what was recorded plus what was committed; every hold ends
        // at most once; and the state is the fold of its events.
        let plan = blocked_starter();
        let rules = LedgerRules::default();
        let limit = plan.quota(&metric(R3D)).expect("renders have a quota").limit;
        let mut state = UsagePeriodAggregate::default();
        let mut events = state.decide_stamped(&open(&plan), &rules).expect("opens");
        events.iter().for_each(|e| state.fold(e));
        let mut now = at(0);
        let mut placed: Vec<u64> = Vec::new();
        let mut expected_current = 0u64;
        for (op, wait_s) in ops {
            now += Duration::seconds(wait_s);
            let command = match op {
                HoldOp::Record { n } => PeriodCommand::RecordUsage {
                    metric: metric(R3D),
                    quantity: qty(n),
                    occurred_at: None,
                },
                HoldOp::Reserve { n, ttl_s } => PeriodCommand::Reserve {
                    metric: metric(R3D),
                    amount: qty(n),
                    ttl: ledger_aggregates::HoldTtl::new(ttl_s).expect("in range"),
                },
                HoldOp::Commit { i, amount } if !placed.is_empty() => PeriodCommand::CommitHold {
                    hold: placed[i % placed.len()],
                    amount: amount.map(qty),
                },
                HoldOp::Void { i } if !placed.is_empty() => PeriodCommand::VoidHold {
                    hold: placed[i % placed.len()],
                },
                _ => PeriodCommand::ExpireHolds,
            };
            let Ok(decided) = state.decide(&command, now, &rules) else {
                continue;
            };
            for e in &decided {
                match e {
                    LedgerEvent::UsageRecorded { quantity, .. } => expected_current += quantity,
                    LedgerEvent::QuotaReserved { hold, .. } => placed.push(*hold),
                    _ => {}
                }
                state.fold(e);
            }
            events.extend(decided);
            let s = state.metric(&metric(R3D)).cloned().unwrap_or_default();
            let held_now = state.held_at(&metric(R3D), now);
            prop_assert!(s.current + held_now <= limit, "{} + {} held > {}", s.current, held_now, limit);
            prop_assert_eq!(s.current, expected_current);
            let open: u64 = state.holds.values().map(|h| h.amount).sum();
            prop_assert_eq!(s.held, open, "held is the sum of the open holds");
        }
        let mut ended = BTreeSet::new();
        for e in &events {
            let hold = match e {
                LedgerEvent::UsageRecorded { hold: Some(h), .. } => h.number,
                LedgerEvent::HoldReleased { hold, .. } => *hold,
                _ => continue,
            };
            prop_assert!(ended.insert(hold), "hold {} ended twice", hold);
        }
        prop_assert_eq!(replay(&events), state);
    }
}
