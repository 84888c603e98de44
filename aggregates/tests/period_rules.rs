//! Given/when/then tests of the brand-period and brand aggregates: one test per rule.
//!
//! Plans come from the embedded default catalog (starter: renders_3d 10 at 100 cents,
//! renders_2d 100 at 20, ai_generations 20 at 75, designs_created 50 at 50, storage_gb 5
//! at 50 billed on the peak, team_members 3 blocked; exports_gltf has no quota). Short
//! histories are written out as events; long ones are produced by deciding commands
//! (`history`), so the "given" is always a history the aggregate could have written.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::test::{AggregateTestExecutor, TestFramework};
use cqrs_es::{Aggregate, DomainEvent};
use ledger_aggregates::brand::BRAND_EVENT_VERSION;
use ledger_aggregates::hold::{HoldTtl, Release, OPEN_HOLDS_MAX};
use ledger_aggregates::ids::QUANTITY_MAX;
use ledger_aggregates::period::{
    BaseLine, HoldCommit, Invoice, InvoiceLine, Severity, UsageVia, LATE_USAGE_GRACE_HOURS_DEFAULT,
    LEDGER_EVENT_VERSION,
};
use ledger_aggregates::{
    BeforeRegistration, BrandAggregate, BrandCommand, BrandError, BrandEvent, BrandId, Catalog,
    Currency, Effective, LedgerError, LedgerEvent, LedgerRules, MetricKey, MetricKind,
    MetricTotals, Money, OveragePolicy, PeriodCommand, PeriodKey, PeriodOpening, PlanDefinition,
    PlanId, Quantity, QuotaDecision, Stamped, StreamCommand, UsagePeriodAggregate,
};
use rust_decimal::Decimal;

// ---------------------------------------------------------------------------------------
// Vocabulary of the tests.
// ---------------------------------------------------------------------------------------

const R3D: &str = "renders_3d";
const R2D: &str = "renders_2d";
const AI: &str = "ai_generations";
const DESIGNS: &str = "designs_created";
const GLTF: &str = "exports_gltf";
const STORAGE: &str = "storage_gb";
const SEATS: &str = "team_members";
const API: &str = "api_calls";

fn catalog() -> Catalog {
    Catalog::default_catalog()
}

fn plan(id: &str) -> PlanDefinition {
    catalog()
        .plan(&PlanId::parse(id).expect("test plan ids are valid"))
        .unwrap_or_else(|| panic!("plan {id} is in the default catalog"))
        .clone()
}

/// `plan_id` with renders_3d blocked at its limit: the default catalog blocks only a
/// gauge (team_members), and counters follow the block rule too.
fn blocking_renders(plan_id: &str) -> PlanDefinition {
    let mut p = plan(plan_id);
    for q in p.quotas.iter_mut().filter(|q| q.metric.as_str() == R3D) {
        q.overage = OveragePolicy::Block;
        q.overage_rate = None;
    }
    p
}

/// The one base line of a period on a single plan.
fn whole_period(plan_id: &str, amount: i64) -> BaseLine {
    BaseLine {
        plan_id: plan(plan_id).id,
        from: period().start(),
        to: period().end(),
        amount: cents(amount),
    }
}

fn metric(key: &str) -> MetricKey {
    MetricKey::parse(key).expect("test metric keys are valid")
}

fn qty(n: u64) -> Quantity {
    Quantity::new(n).expect("test quantities are in range")
}

fn cents(n: i64) -> Money {
    Money::from_minor(n)
}

fn pct(text: &str) -> Decimal {
    Decimal::from_str(text).expect("test percentages are decimals")
}

fn metric_kinds() -> BTreeMap<MetricKey, MetricKind> {
    catalog().metric_kinds().clone()
}

fn brand() -> BrandId {
    BrandId::parse("brand_x").expect("valid brand")
}

fn period() -> PeriodKey {
    PeriodKey::parse("2026-11").expect("valid period")
}

/// Noon on a day of the test period.
fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, d, 12, 0, 0)
        .single()
        .expect("a real November day")
}

/// The instant every command of a test happens at, unless it says otherwise.
fn now() -> DateTime<Utc> {
    day(10)
}

fn grace_deadline() -> DateTime<Utc> {
    period().end() + Duration::hours(LATE_USAGE_GRACE_HOURS_DEFAULT)
}

// --- commands -----------------------------------------------------------------------

fn open_on(plan: PlanDefinition, carried: &[(&str, u64)]) -> Stamped {
    let opening = PeriodOpening {
        brand_id: brand(),
        period: period(),
        plan,
        metric_kinds: metric_kinds(),
        carried_levels: carried.iter().map(|(k, v)| (metric(k), *v)).collect(),
    };
    Stamped::new(opening, period().start())
}

fn open(plan_id: &str) -> Stamped {
    open_on(plan(plan_id), &[])
}

fn record(key: &str, n: u64) -> Stamped {
    record_at(key, n, now(), now())
}

fn record_at(key: &str, n: u64, occurred_at: DateTime<Utc>, at: DateTime<Utc>) -> Stamped {
    let command = PeriodCommand::RecordUsage {
        metric: metric(key),
        quantity: qty(n),
        occurred_at: Some(occurred_at),
    };
    Stamped::new(command, at)
}

fn check(key: &str, n: u64, consume: bool) -> Stamped {
    let command = PeriodCommand::CheckQuota {
        metric: metric(key),
        requested: qty(n),
        consume,
        occurred_at: None,
    };
    Stamped::new(command, now())
}

fn set_level(key: &str, level: u64) -> Stamped {
    set_level_at(key, level, now())
}

fn set_level_at(key: &str, level: u64, at: DateTime<Utc>) -> Stamped {
    let command = PeriodCommand::SetGaugeLevel {
        metric: metric(key),
        level,
    };
    Stamped::new(command, at)
}

fn top_up(key: &str, units: u64) -> Stamped {
    let command = PeriodCommand::ApplyTopUp {
        metric: metric(key),
        units: qty(units),
        price: cents(500),
        reference: "topup-1".to_owned(),
        actor: "billing".to_owned(),
    };
    Stamped::new(command, now())
}

fn adjust(key: &str, delta: i64) -> Stamped {
    let command = PeriodCommand::AdjustUsage {
        metric: metric(key),
        delta,
        actor: "support@ledger".to_owned(),
        reason: "duplicate batch".to_owned(),
    };
    Stamped::new(command, now())
}

fn close() -> Stamped {
    let command = PeriodCommand::ClosePeriod {
        actor: "billing-cron".to_owned(),
        plan_at_end: None,
    };
    Stamped::new(command, period().end() + Duration::hours(1))
}

fn apply_plan(plan_id: &str) -> Stamped {
    Stamped::new(StreamCommand::ApplyPlan(plan(plan_id)), day(15))
}

// --- events -------------------------------------------------------------------------

fn opened(plan_id: &str) -> LedgerEvent {
    LedgerEvent::PeriodOpened {
        brand_id: brand(),
        period: period(),
        plan: plan(plan_id),
        metric_kinds: metric_kinds(),
        carried_levels: BTreeMap::new(),
        at: period().start(),
    }
}

fn totals(
    current: u64,
    billable: u64,
    effective_limit: Option<u64>,
    overage_units: u64,
    overage_cost: i64,
) -> MetricTotals {
    MetricTotals {
        current,
        billable,
        effective_limit,
        overage_units,
        overage_cost: cents(overage_cost),
        held: 0,
    }
}

fn recorded(key: &str, quantity: u64, marginal: i64, totals: MetricTotals) -> LedgerEvent {
    LedgerEvent::UsageRecorded {
        metric: metric(key),
        quantity,
        via: UsageVia::Record,
        occurred_at: now(),
        after_close: false,
        marginal_cost: cents(marginal),
        totals,
        at: now(),
        hold: None,
    }
}

fn denied(key: &str, requested: u64, via: UsageVia, current: u64, limit: u64) -> LedgerEvent {
    LedgerEvent::UsageDenied {
        metric: metric(key),
        requested,
        via,
        current,
        effective_limit: limit,
        at: now(),
        held: 0,
        count: 1,
        first_at: None,
    }
}

fn crossed(
    key: &str,
    threshold: u8,
    severity: Severity,
    percentage: &str,
    current: u64,
    limit: u64,
) -> LedgerEvent {
    LedgerEvent::ThresholdCrossed {
        metric: metric(key),
        threshold,
        severity,
        percentage: pct(percentage),
        current,
        effective_limit: limit,
        at: now(),
    }
}

fn level_set(key: &str, previous: u64, marginal: i64, totals: MetricTotals) -> LedgerEvent {
    LedgerEvent::GaugeLevelSet {
        metric: metric(key),
        previous,
        marginal_cost: cents(marginal),
        totals,
        at: now(),
    }
}

fn topped_up(key: &str, units: u64, marginal: i64, totals: MetricTotals) -> LedgerEvent {
    LedgerEvent::TopUpApplied {
        metric: metric(key),
        units,
        price: cents(500),
        reference: "topup-1".to_owned(),
        actor: "billing".to_owned(),
        marginal_cost: cents(marginal),
        totals,
        at: now(),
    }
}

fn adjusted(key: &str, delta: i64, marginal: i64, totals: MetricTotals) -> LedgerEvent {
    LedgerEvent::UsageAdjusted {
        metric: metric(key),
        delta,
        actor: "support@ledger".to_owned(),
        reason: "duplicate batch".to_owned(),
        marginal_cost: cents(marginal),
        totals,
        at: now(),
    }
}

// --- running the aggregate ----------------------------------------------------------

/// The events a sequence of commands writes, each decided against the state the
/// previous ones left. Panics when one is refused: a "given" must be a real history.
fn history(commands: Vec<Stamped>) -> Vec<LedgerEvent> {
    let rules = LedgerRules::default();
    let mut aggregate = UsagePeriodAggregate::default();
    let mut events = Vec::new();
    for command in commands {
        let decided = aggregate
            .decide_stamped(&command, &rules)
            .unwrap_or_else(|e| panic!("history command {command:?} was refused: {e}"));
        for event in decided {
            aggregate.apply(event.clone());
            events.push(event);
        }
    }
    events
}

fn state_of(events: Vec<LedgerEvent>) -> UsagePeriodAggregate {
    let mut aggregate = UsagePeriodAggregate::default();
    for event in events {
        aggregate.apply(event);
    }
    aggregate
}

fn given(commands: Vec<Stamped>) -> AggregateTestExecutor<UsagePeriodAggregate> {
    TestFramework::<UsagePeriodAggregate>::with(LedgerRules::default()).given(history(commands))
}

fn given_events(events: Vec<LedgerEvent>) -> AggregateTestExecutor<UsagePeriodAggregate> {
    TestFramework::<UsagePeriodAggregate>::with(LedgerRules::default()).given(events)
}

// ---------------------------------------------------------------------------------------
// Opening.
// ---------------------------------------------------------------------------------------

#[test]
fn opening_a_period_emits_period_opened_with_the_plan_snapshot() {
    // The first command of a stream snapshots plan and metric kinds in one event.
    TestFramework::<UsagePeriodAggregate>::with(LedgerRules::default())
        .given_no_previous_events()
        .when(open("starter"))
        .then_expect_events(vec![opened("starter")]);
}

#[test]
fn opening_an_open_period_again_is_already_opened() {
    // A period is opened exactly once, even with another plan.
    given_events(vec![opened("starter")])
        .when(open("professional"))
        .then_expect_error(LedgerError::AlreadyOpened);
}

#[test]
fn any_command_before_open_is_not_opened() {
    // Nothing but OpenPeriod is decided on an empty stream, and nothing is evaluated.
    let commands = vec![
        record(R3D, 1),
        check(R3D, 1, false),
        check(R3D, 1, true),
        set_level(STORAGE, 1),
        top_up(R3D, 1),
        adjust(R3D, 1),
        apply_plan("starter"),
        close(),
    ];
    for command in commands {
        let result = TestFramework::<UsagePeriodAggregate>::with(LedgerRules::default())
            .given_no_previous_events()
            .when(command.clone())
            .inspect_result();
        assert_eq!(result, Err(LedgerError::NotOpened), "{command:?}");
    }
    assert_eq!(
        UsagePeriodAggregate::default().evaluate(&metric(R3D), qty(1), now()),
        Err(LedgerError::NotOpened)
    );
}

// ---------------------------------------------------------------------------------------
// Limits and overage.
// ---------------------------------------------------------------------------------------

#[test]
fn usage_landing_exactly_on_a_block_limit_is_allowed() {
    // Reaching the limit is not exceeding it: the third starter seat is accepted.
    given(vec![open("starter"), set_level(SEATS, 2)])
        .when(set_level(SEATS, 3))
        .then_expect_events(vec![
            level_set(SEATS, 2, 0, totals(3, 3, Some(3), 0, 0)),
            crossed(SEATS, 75, Severity::Warning, "100", 3, 3),
            crossed(SEATS, 90, Severity::Critical, "100", 3, 3),
        ]);
}

#[test]
fn usage_landing_exactly_on_a_charge_limit_costs_nothing() {
    // The tenth starter 3D render is included in the base price.
    given(vec![open("starter")])
        .when(record(R3D, 10))
        .then_expect_events(vec![
            recorded(R3D, 10, 0, totals(10, 10, Some(10), 0, 0)),
            crossed(R3D, 50, Severity::Warning, "100", 10, 10),
            crossed(R3D, 75, Severity::Warning, "100", 10, 10),
            crossed(R3D, 90, Severity::Critical, "100", 10, 10),
        ]);
}

#[test]
fn one_unit_over_a_block_limit_yields_a_single_usage_denied_event() {
    // A refusal on a block metric is a recorded fact, not an error.
    given(vec![open("starter"), set_level(SEATS, 3)])
        .when(set_level(SEATS, 4))
        .then_expect_events(vec![denied(SEATS, 1, UsageVia::Gauge, 3, 3)]);
}

#[test]
fn a_denial_changes_no_total() {
    // Folding a UsageDenied only bumps the version: the seat count stays at the limit.
    let before = state_of(history(vec![open("starter"), set_level(SEATS, 3)]));
    let mut after = before.clone();
    after.apply(denied(SEATS, 1, UsageVia::Gauge, 3, 3));
    assert_eq!(after.metric(&metric(SEATS)), before.metric(&metric(SEATS)));
    assert_eq!(after.version, before.version + 1);
}

#[test]
fn usage_over_a_charge_limit_is_allowed_and_billed_at_the_rate() {
    // Three renders above the starter limit of 10 cost 3 × 100 cents.
    given(vec![open("starter"), record(R3D, 10)])
        .when(record(R3D, 3))
        .then_expect_events(vec![recorded(
            R3D,
            3,
            300,
            totals(13, 13, Some(10), 3, 300),
        )]);
}

#[test]
fn marginal_cost_is_this_event_alone_and_overage_cost_is_cumulative() {
    // After 3 paid renders, 2 more cost 200 cents on their own and 500 in total.
    given(vec![open("starter"), record(R3D, 10), record(R3D, 3)])
        .when(record(R3D, 2))
        .then_expect_events(vec![recorded(
            R3D,
            2,
            200,
            totals(15, 15, Some(10), 5, 500),
        )]);
}

#[test]
fn a_usage_straddling_the_limit_pays_only_for_the_units_above_it() {
    // 8 used, 4 requested: 2 are included and 2 are billed.
    given(vec![open("starter"), record(R3D, 8)])
        .when(record(R3D, 4))
        .then_expect_events(vec![
            recorded(R3D, 4, 200, totals(12, 12, Some(10), 2, 200)),
            crossed(R3D, 90, Severity::Critical, "120", 12, 10),
        ]);
}

// ---------------------------------------------------------------------------------------
// Unlimited and unknown metrics.
// ---------------------------------------------------------------------------------------

#[test]
fn a_metric_without_quota_is_unlimited_never_denied_and_never_billed() {
    // Starter lists no exports_gltf quota: even two maximal batches are plain records.
    let max = QUANTITY_MAX;
    given(vec![open("starter"), record(GLTF, max)])
        .when(record(GLTF, max))
        .then_expect_events(vec![recorded(
            GLTF,
            max,
            0,
            totals(2 * max, 2 * max, None, 0, 0),
        )]);
}

#[test]
fn an_unknown_metric_is_refused_by_every_command() {
    // A metric the catalog does not know is an error, never silently counted.
    let unknown = "renders_4d";
    let commands = vec![
        record(unknown, 1),
        check(unknown, 1, false),
        check(unknown, 1, true),
        set_level(unknown, 1),
        top_up(unknown, 1),
        adjust(unknown, 1),
    ];
    for command in commands {
        let result = given(vec![open("starter")])
            .when(command.clone())
            .inspect_result();
        assert_eq!(
            result,
            Err(LedgerError::UnknownMetric(metric(unknown))),
            "{command:?}"
        );
    }
    let state = state_of(history(vec![open("starter")]));
    assert_eq!(
        state.evaluate(&metric(unknown), qty(1), now()),
        Err(LedgerError::UnknownMetric(metric(unknown)))
    );
}

// ---------------------------------------------------------------------------------------
// Top-ups.
// ---------------------------------------------------------------------------------------

#[test]
fn a_top_up_raises_the_effective_limit() {
    // Two purchased seats lift the starter seat limit from 3 to 5.
    // At 3 of 5 (60 %) the 75 % and 90 % alerts of 3 of 3 no longer hold.
    given(vec![open("starter"), set_level(SEATS, 3)])
        .when(top_up(SEATS, 2))
        .then_expect_events(vec![
            topped_up(SEATS, 2, 0, totals(3, 3, Some(5), 0, 0)),
            resolved(SEATS, 75, "60", 3, Some(5)),
            resolved(SEATS, 90, "60", 3, Some(5)),
        ]);
}

#[test]
fn a_top_up_turns_a_denial_into_an_acceptance() {
    // The fourth seat, refused at 3/3, is accepted once 2 seats are topped up.
    given(vec![open("starter"), set_level(SEATS, 3)])
        .when(set_level(SEATS, 4))
        .then_expect_events(vec![denied(SEATS, 1, UsageVia::Gauge, 3, 3)]);
    given(vec![open("starter"), set_level(SEATS, 3), top_up(SEATS, 2)])
        .when(set_level(SEATS, 4))
        .then_expect_events(vec![
            level_set(SEATS, 3, 0, totals(4, 4, Some(5), 0, 0)),
            crossed(SEATS, 75, Severity::Warning, "80", 4, 5),
        ]);
}

#[test]
fn a_top_up_retroactively_reduces_the_overage_cost() {
    // 15 renders on a limit of 10 cost 500; 3 topped-up units take 300 of it back.
    given(vec![open("starter"), record(R3D, 15)])
        .when(top_up(R3D, 3))
        .then_expect_events(vec![topped_up(
            R3D,
            3,
            -300,
            totals(15, 15, Some(13), 2, 200),
        )]);
}

#[test]
fn a_top_up_larger_than_the_overage_brings_the_cost_to_zero_not_below() {
    // The credit beyond the overage becomes headroom, never a negative cost.
    // 15 of 23 is 65.22 %: the 75 % and 90 % alerts resolve with it.
    given(vec![open("starter"), record(R3D, 15), top_up(R3D, 3)])
        .when(top_up(R3D, 10))
        .then_expect_events(vec![
            topped_up(R3D, 10, -200, totals(15, 15, Some(23), 0, 0)),
            resolved(R3D, 75, "65.22", 15, Some(23)),
            resolved(R3D, 90, "65.22", 15, Some(23)),
        ]);
}

#[test]
fn a_top_up_on_an_unlimited_metric_is_refused() {
    // There is no limit to raise on exports_gltf for starter.
    given(vec![open("starter")])
        .when(top_up(GLTF, 5))
        .then_expect_error(LedgerError::TopUpOnUnlimited(metric(GLTF)));
}

#[test]
fn a_top_up_after_close_is_refused() {
    // The invoice is frozen: a credit can no longer change it.
    given(vec![open("starter"), record(R3D, 12), close()])
        .when(top_up(R3D, 2))
        .then_expect_error(LedgerError::Closed(period()));
}

// ---------------------------------------------------------------------------------------
// Thresholds.
// ---------------------------------------------------------------------------------------

#[test]
fn a_threshold_is_emitted_in_the_same_decision_as_the_usage_that_crosses_it() {
    // The fifth of 10 renders reaches 50 %: the alert is written with the usage.
    given(vec![open("starter"), record(R3D, 4)])
        .when(record(R3D, 1))
        .then_expect_events(vec![
            recorded(R3D, 1, 0, totals(5, 5, Some(10), 0, 0)),
            crossed(R3D, 50, Severity::Warning, "50", 5, 10),
        ]);
}

#[test]
fn one_big_usage_from_zero_to_95_percent_emits_50_75_and_90_at_once() {
    // Jumping over several thresholds fires each of them, in ascending order.
    given(vec![open("starter")])
        .when(record(R2D, 95))
        .then_expect_events(vec![
            recorded(R2D, 95, 0, totals(95, 95, Some(100), 0, 0)),
            crossed(R2D, 50, Severity::Warning, "95", 95, 100),
            crossed(R2D, 75, Severity::Warning, "95", 95, 100),
            crossed(R2D, 90, Severity::Critical, "95", 95, 100),
        ]);
}

#[test]
fn a_later_usage_does_not_re_emit_a_crossed_threshold() {
    // A threshold that stands fires no second time, even when usage passes 100 %.
    given(vec![open("starter"), record(R2D, 95)])
        .when(record(R2D, 10))
        .then_expect_events(vec![recorded(
            R2D,
            10,
            100,
            totals(105, 105, Some(100), 5, 100),
        )]);
}

#[test]
fn thresholds_are_counted_per_metric() {
    // renders_2d at 95 % does not mark the thresholds of renders_3d as fired.
    given(vec![open("starter"), record(R2D, 95)])
        .when(record(R3D, 5))
        .then_expect_events(vec![
            recorded(R3D, 5, 0, totals(5, 5, Some(10), 0, 0)),
            crossed(R3D, 50, Severity::Warning, "50", 5, 10),
        ]);
}

#[test]
fn severity_is_critical_from_90_percent_and_warning_below() {
    // The severity depends on the threshold, not on how far usage went past it.
    assert_eq!(Severity::of_threshold(50), Severity::Warning);
    assert_eq!(Severity::of_threshold(75), Severity::Warning);
    assert_eq!(Severity::of_threshold(89), Severity::Warning);
    assert_eq!(Severity::of_threshold(90), Severity::Critical);
    assert_eq!(Severity::of_threshold(100), Severity::Critical);
}

#[test]
fn thresholds_are_measured_against_the_effective_limit() {
    // With 10 topped-up renders the limit is 20, so 10 renders are 50 %, not 100 %.
    given(vec![open("starter"), top_up(R3D, 10)])
        .when(record(R3D, 10))
        .then_expect_events(vec![
            recorded(R3D, 10, 0, totals(10, 10, Some(20), 0, 0)),
            crossed(R3D, 50, Severity::Warning, "50", 10, 20),
        ]);
}

#[test]

fn a_threshold_is_not_crossed_before_usage_really_reaches_it() {
    // 89 996 of 100 000 professional API calls is 89.996 %: the 90 % alert must wait.
    let events = given(vec![open("professional")])
        .when(record("api_calls", 89_996))
        .inspect_result()
        .expect("usage under a charge limit is accepted");
    let fired: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            LedgerEvent::ThresholdCrossed { threshold, .. } => Some(*threshold),
            _ => None,
        })
        .collect();
    assert_eq!(fired, vec![50, 75]);
}

// ---------------------------------------------------------------------------------------
// CheckQuota.
// ---------------------------------------------------------------------------------------

#[test]
fn check_quota_without_consume_emits_nothing() {
    // A question is not a fact: neither an allowed nor a refused check writes events.
    given(vec![open("starter")])
        .when(check(R3D, 5, false))
        .then_expect_events(vec![]);
    given(vec![
        open_on(blocking_renders("starter"), &[]),
        record(R3D, 10),
    ])
    .when(check(R3D, 5, false))
    .then_expect_events(vec![]);
}

#[test]
fn check_quota_with_consume_records_an_allowed_request_via_check_quota() {
    // Check-and-consume is one decision: the usage is recorded with its origin.
    let usage = LedgerEvent::UsageRecorded {
        metric: metric(R3D),
        quantity: 5,
        via: UsageVia::CheckQuota,
        occurred_at: now(),
        after_close: false,
        marginal_cost: Money::ZERO,
        totals: totals(5, 5, Some(10), 0, 0),
        at: now(),
        hold: None,
    };
    given(vec![open("starter")])
        .when(check(R3D, 5, true))
        .then_expect_events(vec![
            usage,
            crossed(R3D, 50, Severity::Warning, "50", 5, 10),
        ]);
}

#[test]
fn a_denied_consuming_check_quota_is_recorded_as_usage_denied() {
    // The refusal of a consuming check is stored, marked as coming from CheckQuota.
    given(vec![
        open_on(blocking_renders("starter"), &[]),
        record(R3D, 10),
    ])
    .when(check(R3D, 1, true))
    .then_expect_events(vec![denied(R3D, 1, UsageVia::CheckQuota, 10, 10)]);
}

// ---------------------------------------------------------------------------------------
// evaluate: the original's QuotaEvaluation fields.
// ---------------------------------------------------------------------------------------

#[test]
fn evaluate_answers_with_the_originals_fields() {
    // 8 renders on 10 + 2 topped up; asking for 6 more leaves 4 of headroom and 2 billed.
    let state = state_of(history(vec![
        open("starter"),
        record(R3D, 8),
        top_up(R3D, 2),
    ]));
    let decision = state
        .evaluate(&metric(R3D), qty(6), now())
        .expect("known metric");
    assert_eq!(
        decision,
        QuotaDecision {
            allowed: true,
            remaining: Some(4),
            limit: Some(10),
            effective_limit: Some(12),
            current: 8,
            overage: 2,
            will_charge: true,
            estimated_cost: cents(200),
            cumulative_overage_cost: cents(200),
            plan_id: plan("starter").id,
            overage_policy: Some(OveragePolicy::Charge),
            consumed: false,
            reserved: 0,
        }
    );
}

#[test]
fn evaluate_reports_the_marginal_cost_apart_from_the_cumulative_cost() {
    // Already 2 renders over (200 cents): 3 more cost 300 alone and 500 cumulated.
    let state = state_of(history(vec![open("starter"), record(R3D, 12)]));
    let decision = state
        .evaluate(&metric(R3D), qty(3), now())
        .expect("known metric");
    assert_eq!(decision.remaining, Some(0));
    assert_eq!(decision.current, 12);
    assert_eq!(decision.overage, 5);
    assert_eq!(decision.estimated_cost, cents(300));
    assert_eq!(decision.cumulative_overage_cost, cents(500));
    assert!(decision.will_charge);
}

#[test]
fn evaluate_on_a_full_block_metric_is_refused_and_costs_nothing() {
    // The fourth starter seat is not allowed, so nothing would be charged.
    let state = state_of(history(vec![open("starter"), set_level(SEATS, 3)]));
    let decision = state
        .evaluate(&metric(SEATS), qty(1), now())
        .expect("known metric");
    assert_eq!(
        decision,
        QuotaDecision {
            allowed: false,
            remaining: Some(0),
            limit: Some(3),
            effective_limit: Some(3),
            current: 3,
            overage: 1,
            will_charge: false,
            estimated_cost: Money::ZERO,
            cumulative_overage_cost: Money::ZERO,
            plan_id: plan("starter").id,
            overage_policy: Some(OveragePolicy::Block),
            consumed: false,
            reserved: 0,
        }
    );
}

#[test]
fn evaluate_on_an_unlimited_metric_has_no_limit_and_no_policy() {
    // No quota: no remaining, no limit, never overage, always allowed.
    let state = state_of(history(vec![open("starter"), record(GLTF, 500)]));
    let decision = state
        .evaluate(&metric(GLTF), qty(1_000), now())
        .expect("known metric");
    assert_eq!(
        decision,
        QuotaDecision {
            allowed: true,
            remaining: None,
            limit: None,
            effective_limit: None,
            current: 500,
            overage: 0,
            will_charge: false,
            estimated_cost: Money::ZERO,
            cumulative_overage_cost: Money::ZERO,
            plan_id: plan("starter").id,
            overage_policy: None,
            consumed: false,
            reserved: 0,
        }
    );
}

#[test]
fn evaluate_decides_nothing() {
    // Asking leaves the state untouched: same totals, same version.
    let state = state_of(history(vec![open("starter"), record(R3D, 9)]));
    let before = state.clone();
    let _ = state.evaluate(&metric(R3D), qty(5), now());
    assert_eq!(state, before);
}

// ---------------------------------------------------------------------------------------
// decision_of: idempotent replays.
// ---------------------------------------------------------------------------------------

/// The decision a live `RecordUsage` made (as `evaluate` answered it just before, with
/// `consumed` set as the engine sets it) and the decision rebuilt from its stored event.
/// What `evaluate` predicts for `n` more units of `key`, moved to the state after them
/// when allowed, and what `decision_of` rebuilds from the event the command wrote (a
/// record for a counter, the level `n` above the current one for a gauge).
fn live_and_stored(commands: Vec<Stamped>, key: &str, n: u64) -> (QuotaDecision, QuotaDecision) {
    let state = state_of(history(commands));
    let live = state
        .evaluate(&metric(key), qty(n), now())
        .expect("known metric");
    let command = match metric_kinds()[&metric(key)] {
        MetricKind::Gauge => set_level(key, live.current + n),
        MetricKind::Counter => record(key, n),
    };
    let events = state
        .decide_stamped(&command, &LedgerRules::default())
        .expect("a usage in the period is decided");
    let plan = state.plan().expect("open period");
    let stored =
        UsagePeriodAggregate::decision_of(&events[0], plan).expect("a usage or denial event");
    let live = match live.allowed {
        true => QuotaDecision {
            consumed: true,
            current: live.current + n,
            remaining: live
                .effective_limit
                .map(|l| l.saturating_sub(live.current + n)),
            ..live
        },
        false => live,
    };
    (live, stored)
}

#[test]
fn decision_of_a_stored_usage_recorded_is_the_decision_the_live_command_made() {
    // A retry with the same idempotency key answers exactly what the first call did.
    let cases: Vec<(Vec<Stamped>, &str, u64)> = vec![
        (vec![open("starter")], R3D, 5),
        (vec![open("starter"), record(R3D, 8)], R3D, 4),
        (vec![open("starter"), record(R3D, 12)], R3D, 2),
        (
            vec![open("starter"), record(R3D, 12), top_up(R3D, 1)],
            R3D,
            3,
        ),
        (vec![open("starter"), record(GLTF, 5)], GLTF, 7),
        (vec![open("starter"), set_level(SEATS, 2)], SEATS, 1),
        (vec![open("starter"), set_level(STORAGE, 4)], STORAGE, 3),
    ];
    for (commands, key, n) in cases {
        let (live, stored) = live_and_stored(commands, key, n);
        assert!(live.allowed, "{key} +{n} should be allowed");
        assert_eq!(stored, live, "{key} +{n}");
    }
}

#[test]
fn decision_of_a_stored_usage_denied_is_the_refusal_the_live_command_made() {
    // A retried refusal is refused again with the same numbers.
    let cases: Vec<(Vec<Stamped>, &str, u64)> = vec![
        (vec![open("starter"), set_level(SEATS, 3)], SEATS, 1),
        (
            vec![open("starter"), set_level(SEATS, 2), top_up(SEATS, 1)],
            SEATS,
            5,
        ),
        (vec![open("starter"), set_level(SEATS, 1)], SEATS, 3),
    ];
    for (commands, key, n) in cases {
        let (live, stored) = live_and_stored(commands, key, n);
        assert!(!live.allowed, "{key} +{n} should be denied");
        assert_eq!(stored, live, "{key} +{n}");
    }
}

#[test]

fn decision_of_a_usage_on_a_gauge_below_its_peak_matches_the_live_decision() {
    // Storage peaked at 8 GB (3 over) then fell to 2: adding 1 GB is still 3 GB billed over.
    let (live, stored) = live_and_stored(
        vec![
            open("starter"),
            set_level(STORAGE, 8),
            set_level(STORAGE, 2),
        ],
        STORAGE,
        1,
    );
    assert_eq!(stored, live);
}

#[test]
fn decision_of_any_other_event_is_none() {
    // Only usage, gauge level and denial events stand for a quota decision.
    let starter = plan("starter");
    for event in history(vec![
        open("starter"),
        record(R3D, 5),
        top_up(R3D, 1),
        set_level(STORAGE, 1),
        adjust(R3D, -1),
        close(),
    ]) {
        let is_decision = matches!(
            event,
            LedgerEvent::UsageRecorded { .. }
                | LedgerEvent::GaugeLevelSet { .. }
                | LedgerEvent::UsageDenied { .. }
        );
        assert_eq!(
            UsagePeriodAggregate::decision_of(&event, &starter).is_some(),
            is_decision,
            "{}",
            event.event_type_str()
        );
    }
}

// ---------------------------------------------------------------------------------------
// AdjustUsage.
// ---------------------------------------------------------------------------------------

#[test]
fn an_adjustment_is_a_signed_correction_with_actor_and_reason() {
    // Removing 3 of 12 renders takes the period back under its limit and refunds 200.
    given(vec![open("starter"), record(R3D, 12)])
        .when(adjust(R3D, -3))
        .then_expect_events(vec![adjusted(R3D, -3, -200, totals(9, 9, Some(10), 0, 0))]);
}

#[test]
fn a_positive_adjustment_counts_and_can_cross_a_threshold() {
    // Adding one forgotten render to 4 reaches 50 %, alerted in the same decision.
    given(vec![open("starter"), record(R3D, 4)])
        .when(adjust(R3D, 1))
        .then_expect_events(vec![
            adjusted(R3D, 1, 0, totals(5, 5, Some(10), 0, 0)),
            crossed(R3D, 50, Severity::Warning, "50", 5, 10),
        ]);
}

#[test]
fn an_adjustment_cannot_take_usage_below_zero() {
    // A correction larger than what was counted is refused, not clamped.
    given(vec![open("starter"), record(R3D, 4)])
        .when(adjust(R3D, -5))
        .then_expect_error(LedgerError::BelowZero {
            metric: metric(R3D),
            delta: -5,
            current: 4,
        });
    given(vec![open("starter")])
        .when(adjust(R2D, -1))
        .then_expect_error(LedgerError::BelowZero {
            metric: metric(R2D),
            delta: -1,
            current: 0,
        });
}

#[test]
fn a_positive_adjustment_cannot_exceed_a_block_limit() {
    // Support cannot smuggle a fourth starter seat in through a correction.
    given(vec![open("starter"), set_level(SEATS, 2)])
        .when(adjust(SEATS, 2))
        .then_expect_error(LedgerError::AboveBlockLimit {
            metric: metric(SEATS),
            effective_limit: 3,
            would_be: 4,
        });
    given(vec![open("starter"), set_level(SEATS, 2)])
        .when(adjust(SEATS, 1))
        .then_expect_events(vec![
            adjusted(SEATS, 1, 0, totals(3, 3, Some(3), 0, 0)),
            crossed(SEATS, 75, Severity::Warning, "100", 3, 3),
            crossed(SEATS, 90, Severity::Critical, "100", 3, 3),
        ]);
}

#[test]
fn a_negative_adjustment_on_a_full_block_metric_is_allowed() {
    // Removing a seat counted twice is always possible, even at the limit.
    // 2 of 3 is 66.67 %: the 75 % and 90 % alerts of 3 of 3 resolve with it.
    given(vec![open("starter"), set_level(SEATS, 3)])
        .when(adjust(SEATS, -1))
        .then_expect_events(vec![
            adjusted(SEATS, -1, 0, totals(2, 2, Some(3), 0, 0)),
            resolved(SEATS, 75, "66.67", 2, Some(3)),
            resolved(SEATS, 90, "66.67", 2, Some(3)),
        ]);
}

#[test]

fn a_correction_never_takes_a_blocked_gauge_billable_above_its_limit() {
    // Seats peaked at 3 (the limit), fell to 0; adding 2 forgotten seats gives 2, and
    // the billable level must stay within the 3 seats the block allows, with no overage.
    given(vec![
        open("starter"),
        set_level(SEATS, 3),
        set_level(SEATS, 0),
    ])
    .when(adjust(SEATS, 2))
    .then_expect_events(vec![
        adjusted(SEATS, 2, 0, totals(2, 3, Some(3), 0, 0)),
        crossed(SEATS, 50, Severity::Warning, "66.67", 2, 3),
    ]);
}

#[test]
fn a_zero_or_oversized_adjustment_is_refused() {
    // A correction of nothing, or of more than one command may move, is a mistake.
    let too_big = QUANTITY_MAX as i64 + 1;
    for delta in [0, too_big, -too_big] {
        given(vec![open("starter"), record(R3D, 4)])
            .when(adjust(R3D, delta))
            .then_expect_error(LedgerError::BadAdjustment);
    }
}

// ---------------------------------------------------------------------------------------
// Gauges.
// ---------------------------------------------------------------------------------------

#[test]
fn a_gauge_level_goes_up_and_down() {
    // Storage is an absolute level: 4 GB then 2 GB, each event says the previous level.
    given(vec![open("starter")])
        .when(set_level(STORAGE, 4))
        .then_expect_events(vec![
            level_set(STORAGE, 0, 0, totals(4, 4, Some(5), 0, 0)),
            crossed(STORAGE, 50, Severity::Warning, "80", 4, 5),
            crossed(STORAGE, 75, Severity::Warning, "80", 4, 5),
        ]);
    // At 2 of 5 (40 %) the two alerts of 4 GB resolve.
    given(vec![open("starter"), set_level(STORAGE, 4)])
        .when(set_level(STORAGE, 2))
        .then_expect_events(vec![
            level_set(STORAGE, 4, 0, totals(2, 4, Some(5), 0, 0)),
            resolved(STORAGE, 50, "40", 2, Some(5)),
            resolved(STORAGE, 75, "40", 2, Some(5)),
        ]);
}

#[test]
fn seats_go_up_to_the_block_limit_and_back_down() {
    // Three seats fill the starter plan; releasing two leaves one, billable stays the peak.
    given(vec![open("starter"), set_level(SEATS, 1)])
        .when(set_level(SEATS, 3))
        .then_expect_events(vec![
            level_set(SEATS, 1, 0, totals(3, 3, Some(3), 0, 0)),
            crossed(SEATS, 50, Severity::Warning, "100", 3, 3),
            crossed(SEATS, 75, Severity::Warning, "100", 3, 3),
            crossed(SEATS, 90, Severity::Critical, "100", 3, 3),
        ]);
    given(vec![open("starter"), set_level(SEATS, 3)])
        .when(set_level(SEATS, 1))
        .then_expect_events(vec![
            level_set(SEATS, 3, 0, totals(1, 3, Some(3), 0, 0)),
            resolved(SEATS, 50, "33.33", 1, Some(3)),
            resolved(SEATS, 75, "33.33", 1, Some(3)),
            resolved(SEATS, 90, "33.33", 1, Some(3)),
        ]);
}

#[test]
fn raising_a_block_gauge_above_its_limit_is_denied() {
    // Four seats on starter are refused as a denial of the 4 extra seats.
    given(vec![open("starter")])
        .when(set_level(SEATS, 4))
        .then_expect_events(vec![denied(SEATS, 4, UsageVia::Gauge, 0, 3)]);
}

#[test]
fn setting_a_level_on_a_counter_is_not_a_gauge() {
    // Renders are summed, so they have no level to set.
    given(vec![open("starter")])
        .when(set_level(R3D, 4))
        .then_expect_error(LedgerError::NotAGauge {
            metric: metric(R3D),
            kind: MetricKind::Counter,
        });
}

#[test]
fn a_gauge_level_above_the_quantity_bound_is_refused() {
    // Levels share the bound of quantities so totals cannot overflow.
    given(vec![open("starter")])
        .when(set_level(STORAGE, QUANTITY_MAX + 1))
        .then_expect_error(LedgerError::BadLevel);
}

#[test]
fn storage_overage_is_billed_on_the_peak_level() {
    // Deleting data before close does not dodge overage: 8 GB at peak is 3 GB over.
    given(vec![open("starter")])
        .when(set_level(STORAGE, 8))
        .then_expect_events(vec![
            level_set(STORAGE, 0, 150, totals(8, 8, Some(5), 3, 150)),
            crossed(STORAGE, 50, Severity::Warning, "160", 8, 5),
            crossed(STORAGE, 75, Severity::Warning, "160", 8, 5),
            crossed(STORAGE, 90, Severity::Critical, "160", 8, 5),
        ]);
    // Alerts follow the level now (2 of 5 = 40 %); the bill follows the peak.
    given(vec![open("starter"), set_level(STORAGE, 8)])
        .when(set_level(STORAGE, 2))
        .then_expect_events(vec![
            level_set(STORAGE, 8, 0, totals(2, 8, Some(5), 3, 150)),
            resolved(STORAGE, 50, "40", 2, Some(5)),
            resolved(STORAGE, 75, "40", 2, Some(5)),
            resolved(STORAGE, 90, "40", 2, Some(5)),
        ]);
    given(vec![
        open("starter"),
        set_level(STORAGE, 8),
        set_level(STORAGE, 2),
    ])
    .when(set_level(STORAGE, 9))
    .then_expect_events(vec![
        level_set(STORAGE, 2, 50, totals(9, 9, Some(5), 4, 200)),
        crossed(STORAGE, 50, Severity::Warning, "180", 9, 5),
        crossed(STORAGE, 75, Severity::Warning, "180", 9, 5),
        crossed(STORAGE, 90, Severity::Critical, "180", 9, 5),
    ]);
}

#[test]
fn carried_levels_seed_the_gauges_of_a_new_period() {
    // Two seats from last month count against this month's limit of three.
    let events = history(vec![open_on(plan("starter"), &[(SEATS, 2), (STORAGE, 4)])]);
    let state = state_of(events.clone());
    assert_eq!(state.metric(&metric(SEATS)).map(|s| s.current), Some(2));
    assert_eq!(
        state.gauge_levels(),
        BTreeMap::from([(metric(STORAGE), 4), (metric(SEATS), 2)])
    );
    given_events(events.clone())
        .when(set_level(SEATS, 4))
        .then_expect_events(vec![denied(SEATS, 2, UsageVia::Gauge, 2, 3)]);
    // Carried levels are this period's state from its first event: the thresholds they
    // already reach (2/3 seats: 50 %) fire at opening, the rest when usage reaches them.
    assert_eq!(
        state.metric(&metric(SEATS)).map(|s| s.fired.clone()),
        Some(vec![50])
    );
    given_events(events)
        .when(set_level(SEATS, 3))
        .then_expect_events(vec![
            level_set(SEATS, 2, 0, totals(3, 3, Some(3), 0, 0)),
            crossed(SEATS, 75, Severity::Warning, "100", 3, 3),
            crossed(SEATS, 90, Severity::Critical, "100", 3, 3),
        ]);
}

#[test]

fn a_carried_level_above_the_limit_is_priced_from_the_opening() {
    // 8 GB carried onto a 5 GB plan costs 150 from the start; re-stating 8 GB adds nothing.
    let events = history(vec![open_on(plan("starter"), &[(STORAGE, 8)])]);
    let state = state_of(events.clone());
    assert_eq!(
        state.metric(&metric(STORAGE)).map(|s| s.overage_cost),
        Some(cents(150))
    );
    // The opening already raised its crossings, so re-stating the level raises none.
    let at_opening: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            LedgerEvent::ThresholdCrossed { threshold, .. } => Some(*threshold),
            _ => None,
        })
        .collect();
    assert_eq!(at_opening, vec![50, 75, 90]);
    given_events(events)
        .when(set_level(STORAGE, 8))
        .then_expect_events(vec![level_set(
            STORAGE,
            8,
            0,
            totals(8, 8, Some(5), 3, 150),
        )]);
}

// ---------------------------------------------------------------------------------------
// Time: the period, the grace window and late usage.
// ---------------------------------------------------------------------------------------

#[test]
fn usage_that_occurred_outside_the_period_is_wrong_period() {
    // The last second of October and the first instant of December are not November.
    let before = period().start() - Duration::seconds(1);
    let after = period().end();
    for occurred_at in [before, after] {
        given(vec![open("starter")])
            .when(record_at(R3D, 1, occurred_at, now()))
            .then_expect_error(LedgerError::WrongPeriod {
                period: period(),
                occurred_at,
            });
    }
}

#[test]
fn usage_reported_after_the_grace_window_is_too_late() {
    // 72 h after the period's end the stream stops accepting usage.
    let last_day = day(30);
    let too_late = grace_deadline() + Duration::seconds(1);
    let expected = LedgerError::TooLate {
        period: period(),
        deadline: grace_deadline(),
    };
    given(vec![open("starter")])
        .when(record_at(R3D, 1, last_day, too_late))
        .then_expect_error(expected.clone());
    given(vec![open("starter")])
        .when(set_level_at(STORAGE, 1, too_late))
        .then_expect_error(expected.clone());
    let late_check = PeriodCommand::CheckQuota {
        metric: metric(R3D),
        requested: qty(1),
        consume: true,
        occurred_at: None,
    };
    given(vec![open("starter")])
        .when(Stamped::new(late_check, too_late))
        .then_expect_error(expected);
}

#[test]
fn usage_reported_exactly_at_the_grace_deadline_is_accepted() {
    // The deadline itself is still inside the window.
    let events = given(vec![open("starter")])
        .when(record_at(R3D, 1, day(30), grace_deadline()))
        .inspect_result()
        .expect("the deadline is inclusive");
    assert!(matches!(
        events[0],
        LedgerEvent::UsageRecorded {
            after_close: false,
            ..
        }
    ));
}

#[test]
fn the_grace_window_is_a_rule_not_a_constant() {
    // With no grace at all, one second after the end is already too late.
    TestFramework::<UsagePeriodAggregate>::with(LedgerRules {
        late_usage_grace: Duration::zero(),
    })
    .given(vec![opened("starter")])
    .when(record_at(
        R3D,
        1,
        day(30),
        period().end() + Duration::seconds(1),
    ))
    .then_expect_error(LedgerError::TooLate {
        period: period(),
        deadline: period().end(),
    });
}

#[test]
fn usage_within_grace_after_close_is_accepted_and_flagged_after_close() {
    // A render of 30 November reported on 2 December adjusts the frozen invoice.
    let reported = period().end() + Duration::hours(24);
    given(vec![open("starter"), record(R3D, 12), close()])
        .when(record_at(R3D, 1, day(30), reported))
        .then_expect_events(vec![LedgerEvent::UsageRecorded {
            metric: metric(R3D),
            quantity: 1,
            via: UsageVia::Record,
            occurred_at: day(30),
            after_close: true,
            marginal_cost: cents(100),
            totals: totals(13, 13, Some(10), 3, 300),
            at: reported,
            hold: None,
        }]);
}

// ---------------------------------------------------------------------------------------
// Closing.
// ---------------------------------------------------------------------------------------

#[test]
fn closing_produces_an_invoice_with_the_base_price_and_one_line_per_metric_with_overage() {
    // Lines only for charged overage, in metric order; block and unlimited metrics bill nothing.
    given(vec![
        open("starter"),
        record(AI, 21),
        record(DESIGNS, 55),
        top_up(DESIGNS, 5),
        record(GLTF, 500),
        record(R2D, 90),
        record(R3D, 13),
        set_level(STORAGE, 8),
        set_level(STORAGE, 2),
        set_level(SEATS, 3),
    ])
    .when(close())
    .then_expect_events(vec![LedgerEvent::PeriodClosed {
        invoice: Invoice {
            plan_id: plan("starter").id,
            currency: Currency::Eur,
            base: cents(2900),
            base_lines: vec![whole_period("starter", 2900)],
            lines: vec![
                InvoiceLine {
                    metric: metric(AI),
                    billable_units: 21,
                    effective_limit: 20,
                    overage_units: 1,
                    rate: Some(Decimal::from(75)),
                    amount: cents(75),
                },
                InvoiceLine {
                    metric: metric(R3D),
                    billable_units: 13,
                    effective_limit: 10,
                    overage_units: 3,
                    rate: Some(Decimal::from(100)),
                    amount: cents(300),
                },
                InvoiceLine {
                    metric: metric(STORAGE),
                    billable_units: 8,
                    effective_limit: 5,
                    overage_units: 3,
                    rate: Some(Decimal::from(50)),
                    amount: cents(150),
                },
            ],
            overage: cents(525),
            total: cents(3425),
        },
        actor: "billing-cron".to_owned(),
        at: period().end() + Duration::hours(1),
    }]);
}

#[test]
fn closing_an_unused_period_bills_the_base_price_only() {
    // No usage, no lines: the invoice is the plan's price.
    given(vec![open("professional")])
        .when(close())
        .then_expect_events(vec![LedgerEvent::PeriodClosed {
            invoice: Invoice {
                plan_id: plan("professional").id,
                currency: Currency::Eur,
                base: cents(9900),
                base_lines: vec![whole_period("professional", 9900)],
                lines: vec![],
                overage: Money::ZERO,
                total: cents(9900),
            },
            actor: "billing-cron".to_owned(),
            at: period().end() + Duration::hours(1),
        }]);
}

#[test]
fn fractional_rates_are_rounded_once_on_the_period_total() {
    // At half a cent per render, three renders over cost 2 cents, not 3 × 1.
    let mut half_cent = plan("starter");
    for quota in &mut half_cent.quotas {
        if quota.metric == metric(R3D) {
            quota.overage_rate = Some(pct("0.5"));
        }
    }
    let base = vec![
        open_on(half_cent.clone(), &[]),
        record(R3D, 11),
        record(R3D, 1),
    ];
    given(base.clone())
        .when(record(R3D, 1))
        .then_expect_events(vec![recorded(R3D, 1, 1, totals(13, 13, Some(10), 3, 2))]);
    let marginals: Vec<i64> = history(base)
        .iter()
        .filter_map(|e| match e {
            LedgerEvent::UsageRecorded { marginal_cost, .. } => Some(marginal_cost.minor()),
            _ => None,
        })
        .collect();
    assert_eq!(marginals, vec![1, 0], "0.5 rounds up to 1, then 1.0 adds 0");
    let closed = given(vec![
        open_on(half_cent, &[]),
        record(R3D, 11),
        record(R3D, 1),
        record(R3D, 1),
    ])
    .when(close())
    .inspect_result()
    .expect("an open period closes");
    let LedgerEvent::PeriodClosed { invoice, .. } = &closed[0] else {
        panic!("expected PeriodClosed, got {closed:?}");
    };
    assert_eq!(invoice.lines.len(), 1);
    assert_eq!(invoice.lines[0].amount, cents(2));
    assert_eq!(invoice.total, cents(2902));
}

#[test]
fn closing_a_closed_period_is_closed() {
    // An invoice is frozen once.
    given(vec![open("starter"), close()])
        .when(close())
        .then_expect_error(LedgerError::Closed(period()));
}

// ---------------------------------------------------------------------------------------
// Plan changes.
// ---------------------------------------------------------------------------------------

#[test]
fn applying_a_different_plan_recomputes_the_totals_of_every_metric() {
    // Moving up to professional lifts every limit, but the overage of usage made under
    // starter stays (3 renders, 300; storage's 8 GB peak, 150): only what comes after is
    // measured against the new limits. The alerts the higher limits no longer reach
    // resolve (renders 13 of 50 = 26 %, seats 2 of 10 = 20 %).
    given(vec![
        open("starter"),
        record(R3D, 13),
        set_level(SEATS, 2),
        set_level(STORAGE, 8),
        set_level(STORAGE, 2),
        record(GLTF, 5),
        top_up(R2D, 10),
    ])
    .when(apply_plan("professional"))
    .then_expect_events(
        vec![LedgerEvent::PlanApplied {
            previous_plan: plan("starter").id,
            plan: plan("professional"),
            totals: BTreeMap::from([
                (metric(GLTF), totals(5, 5, None, 0, 0)),
                (metric(R2D), totals(0, 0, Some(510), 0, 0)),
                (metric(R3D), totals(13, 13, Some(50), 3, 300)),
                (metric(STORAGE), totals(2, 2, Some(50), 3, 150)),
                (metric(SEATS), totals(2, 2, Some(10), 0, 0)),
            ]),
            at: day(15),
        }]
        .into_iter()
        .chain([50, 75, 90].map(|t| resolved_at(R3D, t, "26", 13, Some(50), day(15))))
        .chain([resolved_at(SEATS, 50, "20", 2, Some(10), day(15))])
        .collect(),
    );
}

#[test]
fn a_downgrade_bills_usage_above_the_new_limits_and_blocks_further_seats() {
    // 13 renders made on professional are not starter's overage; 5 seats stay but a
    // sixth is refused.
    let events = history(vec![
        open("professional"),
        record(R3D, 13),
        set_level(SEATS, 5),
        apply_plan("starter"),
    ]);
    let Some(LedgerEvent::PlanApplied { totals: t, .. }) = events
        .iter()
        .find(|e| matches!(e, LedgerEvent::PlanApplied { .. }))
    else {
        panic!("expected PlanApplied, got {events:?}");
    };
    // The downgrade puts renders at 130 %: its crossings come with the plan change.
    let crossed_after: Vec<u8> = events
        .iter()
        .skip_while(|e| !matches!(e, LedgerEvent::PlanApplied { .. }))
        .filter_map(|e| match e {
            LedgerEvent::ThresholdCrossed {
                metric: m,
                threshold,
                ..
            } if *m == metric(R3D) => Some(*threshold),
            _ => None,
        })
        .collect();
    assert_eq!(crossed_after, vec![50, 75, 90]);
    assert_eq!(t[&metric(R3D)], totals(13, 13, Some(10), 0, 0));
    assert_eq!(t[&metric(SEATS)], totals(5, 5, Some(3), 2, 0));
    given_events(events.clone())
        .when(set_level(SEATS, 6))
        .then_expect_events(vec![denied(SEATS, 1, UsageVia::Gauge, 5, 3)]);
    let closed = given_events(events)
        .when(close())
        .inspect_result()
        .expect("an open period closes");
    let LedgerEvent::PeriodClosed { invoice, .. } = &closed[0] else {
        panic!("expected PeriodClosed, got {closed:?}");
    };
    // 14.5 days of 30 on professional, 15.5 on starter; no overage line (renders were
    // used on professional, seats are blocked, never billed).
    let bases: Vec<i64> = invoice
        .base_lines
        .iter()
        .map(|l| l.amount.minor())
        .collect();
    assert_eq!(bases, [4785, 1498]);
    assert_eq!(invoice.base, cents(6283));
    assert!(invoice.lines.is_empty(), "{:?}", invoice.lines);
    assert_eq!(invoice.total, cents(6283));
}

#[test]
fn a_downgrade_bills_only_the_usage_made_after_it_at_the_new_rate() {
    // 40 of professional's 50 renders, then starter (10): nothing of the 40 is overage;
    // 2 more are, at starter's 1.00 € each.
    let events = history(vec![
        open("professional"),
        record(R3D, 40),
        apply_plan("starter"),
        record(R3D, 2),
    ]);
    let state = state_of(events);
    let s = state.metric(&metric(R3D)).expect("renders used");
    assert_eq!(
        (s.current, s.overage_units, s.overage_cost),
        (42, 2, cents(200))
    );
}

#[test]
fn an_upgrade_keeps_the_overage_of_the_usage_made_before_it() {
    // 13 of starter's 10 renders cost 300; on professional (50) 30 more are within the
    // new limit, and the 300 stays.
    let state = state_of(history(vec![
        open("starter"),
        record(R3D, 13),
        apply_plan("professional"),
        record(R3D, 30),
    ]));
    let s = state.metric(&metric(R3D)).expect("renders used");
    assert_eq!(
        (s.current, s.overage_units, s.overage_cost),
        (43, 3, cents(300))
    );
}

#[test]
fn a_gauge_over_two_plans_is_billed_its_costliest_plan_once() {
    // 8 GB on starter (5) is 150; professional holds them without overage; back on
    // starter at 8 GB it is 150 again, not 300: a level is billed once.
    let state = state_of(history(vec![
        open("starter"),
        set_level(STORAGE, 8),
        apply_plan("professional"),
        Stamped::new(StreamCommand::ApplyPlan(plan("starter")), day(20)),
    ]));
    let s = state.metric(&metric(STORAGE)).expect("storage used");
    assert_eq!((s.overage_units, s.overage_cost), (3, cents(150)));
}

#[test]
fn the_base_price_is_prorated_by_the_time_on_each_plan_half_up() {
    // Starter (29.00 €) from 1 November, professional (99.00 €) from the 15th at noon:
    // 14.5 / 30 × 2,900 = 1,401.67 → 1,402, and 15.5 / 30 × 9,900 = 5,115. One line each.
    let closed = given(vec![open("starter"), apply_plan("professional")])
        .when(close())
        .inspect_result()
        .expect("an open period closes");
    let LedgerEvent::PeriodClosed { invoice, .. } = &closed[0] else {
        panic!("expected PeriodClosed, got {closed:?}");
    };
    let lines: Vec<(&str, i64)> = invoice
        .base_lines
        .iter()
        .map(|l| (l.plan_id.as_str(), l.amount.minor()))
        .collect();
    assert_eq!(lines, [("starter", 1402), ("professional", 5115)]);
    assert_eq!(invoice.base_lines[0].to, day(15));
    assert_eq!(invoice.base, cents(6517));
    assert_eq!(invoice.total, cents(6517));
}

#[test]
fn applying_the_same_plan_emits_nothing() {
    // Re-applying the plan in force is a no-op, so the call is safe to retry.
    given(vec![open("starter"), record(R3D, 13)])
        .when(apply_plan("starter"))
        .then_expect_events(vec![]);
}

// ---------------------------------------------------------------------------------------
// Events describe themselves.
// ---------------------------------------------------------------------------------------

#[test]
fn every_event_names_its_type_and_schema_version() {
    // Stored events carry a stable type name and a version for upcasters.
    let events = history(vec![
        open("starter"),
        record(R3D, 5),
        top_up(R3D, 1),
        close(),
    ]);
    let types: Vec<String> = events.iter().map(DomainEvent::event_type).collect();
    assert_eq!(
        types,
        [
            "PeriodOpened",
            "UsageRecorded",
            "ThresholdCrossed",
            "TopUpApplied",
            "ThresholdResolved",
            "PeriodClosed"
        ]
    );
    assert!(events
        .iter()
        .all(|e| e.event_version() == LEDGER_EVENT_VERSION));
}

// ---------------------------------------------------------------------------------------
// The brand aggregate.
// ---------------------------------------------------------------------------------------

fn set_plan(brand_id: &str, plan: PlanDefinition) -> BrandCommand {
    set_plan_effective(brand_id, plan, None)
}

fn set_plan_effective(
    brand_id: &str,
    plan: PlanDefinition,
    effective: Option<Effective>,
) -> BrandCommand {
    BrandCommand::SetPlan {
        brand_id: BrandId::parse(brand_id).expect("valid brand"),
        plan,
        actor: "admin".to_owned(),
        at: now(),
        effective,
    }
}

fn registered(plan_id: &str) -> BrandEvent {
    BrandEvent::BrandRegistered {
        brand_id: brand(),
        plan: plan(plan_id),
        actor: "admin".to_owned(),
        at: now(),
    }
}

fn brand_test() -> TestFramework<BrandAggregate> {
    TestFramework::<BrandAggregate>::with(())
}

#[test]
fn setting_a_plan_on_a_new_brand_registers_it() {
    // The first plan of a brand is its registration.
    brand_test()
        .given_no_previous_events()
        .when(set_plan("brand_x", plan("starter")))
        .then_expect_events(vec![registered("starter")]);
}

#[test]
fn setting_the_plan_a_brand_already_has_emits_nothing() {
    // Same plan, same catalog version: a retry changes nothing.
    brand_test()
        .given(vec![registered("starter")])
        .when(set_plan("brand_x", plan("starter")))
        .then_expect_events(vec![]);
}

#[test]
fn setting_a_different_plan_emits_plan_changed() {
    // The event names the plan it replaces.
    brand_test()
        .given(vec![registered("starter")])
        .when(set_plan("brand_x", plan("professional")))
        .then_expect_events(vec![BrandEvent::PlanChanged {
            previous_plan: plan("starter").id,
            plan: plan("professional"),
            actor: "admin".to_owned(),
            at: now(),
            effective_from: None,
        }]);
}

#[test]
fn a_new_catalog_version_of_the_same_tier_is_a_plan_change() {
    // Repricing starter in a new catalog moves the brand onto the new snapshot.
    let mut repriced = plan("starter");
    repriced.catalog_version = "2026-01-01.1".to_owned();
    repriced.base_price_cents = cents(3900);
    brand_test()
        .given(vec![registered("starter")])
        .when(set_plan("brand_x", repriced.clone()))
        .then_expect_events(vec![BrandEvent::PlanChanged {
            previous_plan: plan("starter").id,
            plan: repriced,
            actor: "admin".to_owned(),
            at: now(),
            effective_from: None,
        }]);
}

#[test]
fn a_downgrade_takes_effect_at_the_next_period_unless_asked_for_now() {
    // Business to starter on 10 November: November stays on business, December opens
    // on starter; the same downgrade again is a retry; an admin's "now" applies at once.
    let given = vec![registered("business")];
    let events = brand_test()
        .given(given.clone())
        .when(set_plan("brand_x", plan("starter")))
        .inspect_result()
        .expect("a downgrade is accepted");
    assert!(matches!(
        &events[..],
        [BrandEvent::PlanChanged { effective_from: Some(from), .. }] if *from == period().next()
    ));
    let mut brand_state = BrandAggregate::default();
    given
        .iter()
        .chain(&events)
        .for_each(|e| brand_state.fold(e));
    assert_eq!(brand_state.plan_for(period()), Some(&plan("business")));
    assert_eq!(
        brand_state.plan_for(period().next()),
        Some(&plan("starter"))
    );
    brand_test()
        .given(given.iter().chain(&events).cloned().collect())
        .when(set_plan("brand_x", plan("starter")))
        .then_expect_events(vec![]);
    brand_test()
        .given(given.clone())
        .when(set_plan_effective(
            "brand_x",
            plan("starter"),
            Some(Effective::Now),
        ))
        .then_expect_events(vec![BrandEvent::PlanChanged {
            previous_plan: plan("business").id,
            plan: plan("starter"),
            actor: "admin".to_owned(),
            at: now(),
            effective_from: None,
        }]);
}

#[test]
fn an_upgrade_takes_effect_at_once_and_cancels_a_pending_downgrade() {
    // Business to starter is pending for December; moving to professional now replaces
    // it: the plan in force and December's are professional.
    let pending = BrandEvent::PlanChanged {
        previous_plan: plan("business").id,
        plan: plan("starter"),
        actor: "admin".to_owned(),
        at: now(),
        effective_from: Some(period().next()),
    };
    let mut brand_state = BrandAggregate::default();
    brand_state.fold(&registered("business"));
    brand_state.fold(&pending);
    let events = brand_state
        .decide(&set_plan_effective(
            "brand_x",
            plan("professional"),
            Some(Effective::Now),
        ))
        .expect("a change is accepted");
    events.iter().for_each(|e| brand_state.fold(e));
    assert_eq!(brand_state.plan_for(period()), Some(&plan("professional")));
    assert_eq!(
        brand_state.plan_for(period().next()),
        Some(&plan("professional"))
    );
    // A scheduled change whose period has come is the plan in force for every later one.
    let mut later = BrandAggregate::default();
    later.fold(&registered("business"));
    later.fold(&pending);
    assert_eq!(
        later.plan_for(period().next().next()),
        Some(&plan("starter"))
    );
}

#[test]
fn a_command_for_another_brand_is_refused() {
    // A brand stream only ever holds one brand.
    brand_test()
        .given(vec![registered("starter")])
        .when(set_plan("brand_y", plan("professional")))
        .then_expect_error(BrandError::WrongBrand {
            stream: brand(),
            got: BrandId::parse("brand_y").expect("valid brand"),
        });
}

#[test]
fn the_brand_aggregate_folds_its_plan_and_counts_its_events() {
    // After registration and one change the brand is on the new plan at version 2.
    let mut brand_state = BrandAggregate::default();
    assert!(!brand_state.is_registered());
    brand_state.apply(registered("starter"));
    brand_state.apply(BrandEvent::PlanChanged {
        previous_plan: plan("starter").id,
        plan: plan("business"),
        actor: "admin".to_owned(),
        at: now(),
        effective_from: None,
    });
    assert!(brand_state.is_registered());
    assert_eq!(brand_state.brand_id, Some(brand()));
    assert_eq!(brand_state.plan, Some(plan("business")));
    assert_eq!(brand_state.version, 2);
    let event = registered("starter");
    assert_eq!(event.event_type(), "BrandRegistered");
    assert_eq!(event.event_version(), BRAND_EVENT_VERSION);
}

// ---------------------------------------------------------------------------------------
// Alert lifecycle: a threshold fires once, resolves when it stops holding, fires again.
// ---------------------------------------------------------------------------------------

fn resolved(
    key: &str,
    threshold: u8,
    percentage: &str,
    current: u64,
    limit: Option<u64>,
) -> LedgerEvent {
    resolved_at(key, threshold, percentage, current, limit, now())
}

fn resolved_at(
    key: &str,
    threshold: u8,
    percentage: &str,
    current: u64,
    limit: Option<u64>,
    at: DateTime<Utc>,
) -> LedgerEvent {
    LedgerEvent::ThresholdResolved {
        metric: metric(key),
        threshold,
        severity: Severity::of_threshold(threshold),
        percentage: pct(percentage),
        current,
        effective_limit: limit,
        at,
    }
}

/// The thresholds of `key` each event of `events` crosses (`+t`) or resolves (`-t`).
fn alert_moves(events: &[LedgerEvent], key: &str) -> Vec<i16> {
    events
        .iter()
        .filter_map(|e| match e {
            LedgerEvent::ThresholdCrossed {
                metric: m,
                threshold,
                ..
            } if m.as_str() == key => Some(i16::from(*threshold)),
            LedgerEvent::ThresholdResolved {
                metric: m,
                threshold,
                ..
            } if m.as_str() == key => Some(-i16::from(*threshold)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_top_up_above_a_crossed_threshold_resolves_it_in_the_same_decision() {
    // 18 of 20 AI generations stands at 90 %; 20 more units make it 18 of 40 = 45 %: all
    // three alerts resolve with the top-up, whose own totals come first.
    given(vec![open("starter"), record(AI, 18)])
        .when(top_up(AI, 20))
        .then_expect_events(vec![
            topped_up(AI, 20, 0, totals(18, 18, Some(40), 0, 0)),
            resolved(AI, 50, "45", 18, Some(40)),
            resolved(AI, 75, "45", 18, Some(40)),
            resolved(AI, 90, "45", 18, Some(40)),
        ]);
}

#[test]
fn a_resolved_threshold_fires_again_on_the_next_crossing() {
    // After the top-up resolved 50/75/90, reaching 90 % of the new 40 fires them again.
    let events = history(vec![
        open("starter"),
        record(AI, 18),
        top_up(AI, 20),
        record(AI, 18),
    ]);
    assert_eq!(
        alert_moves(&events, AI),
        vec![50, 75, 90, -50, -75, -90, 50, 75, 90]
    );
}

#[test]
fn a_top_up_that_still_leaves_usage_above_a_threshold_keeps_it() {
    // 18 of 20 is 90 %; 4 more units make 18 of 24 = 75 %: only 90 % stops holding.
    given(vec![open("starter"), record(AI, 18)])
        .when(top_up(AI, 4))
        .then_expect_events(vec![
            topped_up(AI, 4, 0, totals(18, 18, Some(24), 0, 0)),
            resolved(AI, 90, "75", 18, Some(24)),
        ]);
}

#[test]
fn a_correction_below_a_threshold_resolves_it() {
    // 16 of 20 (80 %) corrected by -8 is 40 %: 50 and 75 resolve, in the order they fired.
    given(vec![open("starter"), record(AI, 16)])
        .when(adjust(AI, -8))
        .then_expect_events(vec![
            adjusted(AI, -8, 0, totals(8, 8, Some(20), 0, 0)),
            resolved(AI, 50, "40", 8, Some(20)),
            resolved(AI, 75, "40", 8, Some(20)),
        ]);
}

#[test]
fn a_lower_gauge_resolves_and_the_next_rise_fires_again() {
    // 3 GB of 5 fired 50 %; dropping to 1 GB resolves it, back to 3 GB fires it again.
    let events = history(vec![
        open("starter"),
        set_level(STORAGE, 3),
        set_level(STORAGE, 1),
        set_level(STORAGE, 3),
    ]);
    assert_eq!(alert_moves(&events, STORAGE), vec![50, -50, 50]);
}

#[test]
fn an_upgrade_resolves_what_its_higher_limits_no_longer_reach() {
    // 9 of starter's 10 renders is 90 %; on professional (limit 100) it is 9 %: the
    // plan change resolves the three alerts in its own commit.
    let events = given(vec![open("starter"), record(R3D, 9)])
        .when(apply_plan("professional"))
        .inspect_result()
        .expect("a plan change applies");
    assert_eq!(alert_moves(&events, R3D), vec![-50, -75, -90]);
}

#[test]
fn a_plan_without_a_quota_for_the_metric_resolves_its_alerts() {
    // No limit, no threshold: an alert of a metric the new plan leaves unlimited resolves,
    // with no effective limit to quote.
    let mut unlimited = plan("professional");
    unlimited.quotas.retain(|q| q.metric.as_str() != R3D);
    let state = state_of(history(vec![open("starter"), record(R3D, 6)]));
    let events = state
        .decide_plan_change(&unlimited, now(), &LedgerRules::default())
        .expect("a plan change applies");
    assert!(events.contains(&resolved(R3D, 50, "0", 6, None)));
    assert_eq!(alert_moves(&events, R3D), vec![-50]);
}

#[test]
fn an_active_threshold_never_fires_twice() {
    // However usage moves above 50 %, the 50 % alert stands once: 6, 7, 8 of 10.
    let events = history(vec![
        open("starter"),
        record(R3D, 6),
        record(R3D, 1),
        record(R3D, 1),
    ]);
    assert_eq!(alert_moves(&events, R3D), vec![50, 75]);
}

#[test]
fn percentages_round_half_up_like_money() {
    // One rounding rule: 62.5 % shows as 63, 89.5 % as 90; two decimals round half up
    // too (12,501 of 20,000 is 62.505 %), and a whole percentage is rounded from the
    // ratio, never from its two-decimal figure (62.495 % is 62).
    use ledger_aggregates::period::{percentage, whole_percentage};
    assert_eq!(whole_percentage(5, 8), pct("63"));
    assert_eq!(whole_percentage(179, 200), pct("90"));
    assert_eq!(percentage(12_501, 20_000), pct("62.51"));
    assert_eq!(percentage(12_499, 20_000), pct("62.50"));
    assert_eq!(whole_percentage(12_499, 20_000), pct("62"));
}

// ---------------------------------------------------------------------------------------
// Gauges are set, never added to.
// ---------------------------------------------------------------------------------------

#[test]
fn recording_usage_on_a_gauge_is_refused() {
    // Recording storage 3 then 3 would bill 6 GB: a gauge's level is set, not added to.
    given(vec![open("starter"), set_level(STORAGE, 3)])
        .when(record(STORAGE, 3))
        .then_expect_error(LedgerError::GaugeIsSet(metric(STORAGE)));
}

#[test]
fn a_consuming_check_on_a_gauge_is_refused_and_a_pure_one_answers() {
    // A pure check says whether one more seat fits; consuming one would add to a level.
    given(vec![open("starter")])
        .when(check(SEATS, 1, true))
        .then_expect_error(LedgerError::GaugeIsSet(metric(SEATS)));
    given(vec![open("starter"), set_level(SEATS, 3)])
        .when(check(SEATS, 1, false))
        .then_expect_events(vec![]);
}

#[test]
fn lowering_a_full_block_gauge_frees_a_seat_at_once() {
    // 3 of 3 seats refuses a 4th; set to 2, the 3rd seat fits again.
    let state = state_of(history(vec![
        open("starter"),
        set_level(SEATS, 3),
        set_level(SEATS, 2),
    ]));
    let decision = state
        .evaluate(&metric(SEATS), qty(1), now())
        .expect("a known metric");
    assert!(decision.allowed);
    assert_eq!((decision.current, decision.remaining), (2, Some(1)));
}

#[test]
fn a_refused_gauge_level_is_recorded_as_a_gauge_denial() {
    // 4 seats of 3 on a block quota: the refusal is stored, marked as a gauge level.
    given(vec![open("starter"), set_level(SEATS, 3)])
        .when(set_level(SEATS, 4))
        .then_expect_events(vec![denied(SEATS, 1, UsageVia::Gauge, 3, 3)]);
}

// ---------------------------------------------------------------------------------------
// A consuming check answers the state after it.
// ---------------------------------------------------------------------------------------

#[test]
fn the_decision_of_a_consumption_is_the_state_after_it() {
    // 16 of 20, consume 2: the answer says 18 used and 2 left, not the 16 and 4 before.
    let mut state = state_of(history(vec![open("starter"), record(AI, 16)]));
    let events = state
        .decide(
            &PeriodCommand::CheckQuota {
                metric: metric(AI),
                requested: qty(2),
                consume: true,
                occurred_at: None,
            },
            now(),
            &LedgerRules::default(),
        )
        .expect("2 more fit");
    events.iter().for_each(|e| state.fold(e));
    let plan = state.plan().expect("open").clone();
    let decision = UsagePeriodAggregate::decision_of(&events[0], &plan).expect("a usage");
    assert_eq!((decision.current, decision.remaining), (18, Some(2)));
    assert_eq!(decision.overage, 0);
    assert_eq!(alert_moves(&events, AI), vec![90]);
}

/// The brand as registered at `now()` (10 November, noon) on starter.
fn registered_brand() -> BrandAggregate {
    let mut brand_state = BrandAggregate::default();
    brand_state.apply(registered("starter"));
    brand_state
}

#[test]
fn a_brand_remembers_when_it_was_registered_and_keeps_it_across_plan_changes() {
    // The registration instant is the first event's, never a later plan change's.
    let mut brand_state = registered_brand();
    brand_state.apply(BrandEvent::PlanChanged {
        previous_plan: plan("starter").id,
        plan: plan("business"),
        actor: "admin".to_owned(),
        at: day(20),
        effective_from: None,
    });
    assert_eq!(brand_state.registered_at, Some(now()));
}

#[test]
fn usage_stamped_before_the_registration_is_refused_naming_the_registration() {
    // Given a brand registered on 10 November at noon, usage stamped a second earlier
    // is not the brand's, while usage stamped at the registration instant is.
    let brand_state = registered_brand();
    let earlier = now() - Duration::seconds(1);
    let refused = brand_state
        .check_existed(period(), Some(earlier))
        .unwrap_err();
    assert_eq!(
        refused,
        BeforeRegistration::Usage {
            occurred_at: earlier,
            registered_at: now(),
        }
    );
    assert_eq!(refused.registered_at(), now());
    assert_eq!(brand_state.check_existed(period(), Some(now())), Ok(()));
    assert_eq!(brand_state.check_existed(period(), None), Ok(()));
}

#[test]
fn a_period_that_ended_before_the_registration_is_refused_whatever_the_command() {
    // Given a brand registered on 1 December at midnight, November (which ends then)
    // was never the brand's, with or without a usage stamp; December is.
    let mut brand_state = BrandAggregate::default();
    let december = period().end();
    brand_state.apply(BrandEvent::BrandRegistered {
        brand_id: brand(),
        plan: plan("starter"),
        actor: "admin".to_owned(),
        at: december,
    });
    for stamp in [None, Some(day(30))] {
        assert_eq!(
            brand_state.check_existed(period(), stamp),
            Err(BeforeRegistration::Period {
                period: period(),
                registered_at: december,
            })
        );
    }
    assert_eq!(brand_state.check_existed(period().next(), None), Ok(()));
}

#[test]
fn a_brand_snapshotted_before_the_instant_was_kept_is_held_to_none() {
    // A snapshot without `registered_at` loads, and refuses nothing it did not before.
    let old: BrandAggregate = serde_json::from_value(serde_json::json!({
        "brand_id": "brand_x", "plan": null, "version": 1
    }))
    .expect("an old snapshot loads");
    assert_eq!(old.registered_at, None);
    assert_eq!(old.check_existed(period(), Some(day(1))), Ok(()));
}

// ---------------------------------------------------------------------------------------
// Holds: reserve, then commit or void, or expiry.
// ---------------------------------------------------------------------------------------

fn reserve_at(key: &str, n: u64, ttl_s: u64, at: DateTime<Utc>) -> Stamped {
    let command = PeriodCommand::Reserve {
        metric: metric(key),
        amount: qty(n),
        ttl: HoldTtl::new(ttl_s).expect("test TTLs are in range"),
    };
    Stamped::new(command, at)
}

fn reserve(key: &str, n: u64) -> Stamped {
    reserve_at(key, n, 600, now())
}

fn commit_at(hold: u64, amount: Option<u64>, at: DateTime<Utc>) -> Stamped {
    let command = PeriodCommand::CommitHold {
        hold,
        amount: amount.map(qty),
    };
    Stamped::new(command, at)
}

fn void_at(hold: u64, at: DateTime<Utc>) -> Stamped {
    Stamped::new(PeriodCommand::VoidHold { hold }, at)
}

fn expire_at(at: DateTime<Utc>) -> Stamped {
    Stamped::new(PeriodCommand::ExpireHolds, at)
}

fn held_totals(current: u64, limit: u64, held: u64) -> MetricTotals {
    MetricTotals {
        held,
        ..totals(current, current, Some(limit), 0, 0)
    }
}

#[test]
fn a_hold_that_fits_is_placed_and_counted_against_a_block_limit() {
    // Given 4 of 10 blocked renders used, when a job holds 5, then the hold is placed
    // with its expiry, and a check for 2 more is refused: 4 + 5 + 2 > 10.
    let given = vec![open_on(blocking_renders("starter"), &[]), record(R3D, 4)];
    given_events(history(given.clone()))
        .when(reserve(R3D, 5))
        .then_expect_events(vec![LedgerEvent::QuotaReserved {
            hold: 1,
            metric: metric(R3D),
            amount: 5,
            expires_at: now() + Duration::seconds(600),
            totals: held_totals(4, 10, 5),
            at: now(),
        }]);
    let mut commands = given;
    commands.push(reserve(R3D, 5));
    let state = state_of(history(commands));
    let decision = state.evaluate(&metric(R3D), qty(2), now()).unwrap();
    assert!(!decision.allowed, "{decision:?}");
    assert_eq!((decision.remaining, decision.reserved), (Some(1), 5));
    assert!(state.evaluate(&metric(R3D), qty(1), now()).unwrap().allowed);
}

#[test]
fn a_hold_that_does_not_fit_is_refused_and_the_refusal_recorded() {
    // Given 8 of 10 blocked renders used, a hold of 3 is a denial via reservation.
    given(vec![
        open_on(blocking_renders("starter"), &[]),
        record(R3D, 8),
    ])
    .when(reserve(R3D, 3))
    .then_expect_events(vec![denied(R3D, 3, UsageVia::Reservation, 8, 10)]);
}

#[test]
fn committing_less_than_held_records_what_was_used_and_frees_the_rest() {
    // Given a hold of 5 on 4 used, when the job commits 2, then 2 are recorded (dated
    // when the hold was placed) and the hold is gone: 6 used, 4 left.
    let placed = day(9);
    let commands = vec![
        open_on(blocking_renders("starter"), &[]),
        record(R3D, 4),
        reserve_at(R3D, 5, 3_600, placed),
    ];
    given(commands.clone())
        .when(commit_at(1, Some(2), placed + Duration::minutes(10)))
        .then_expect_events(vec![
            LedgerEvent::UsageRecorded {
                metric: metric(R3D),
                quantity: 2,
                via: UsageVia::Reservation,
                occurred_at: placed,
                after_close: false,
                marginal_cost: Money::ZERO,
                totals: held_totals(6, 10, 0),
                at: placed + Duration::minutes(10),
                hold: Some(HoldCommit { number: 1, held: 5 }),
            },
            LedgerEvent::ThresholdCrossed {
                metric: metric(R3D),
                threshold: 50,
                severity: Severity::Warning,
                percentage: pct("60"),
                current: 6,
                effective_limit: 10,
                at: placed + Duration::minutes(10),
            },
        ]);
    let mut all = commands;
    all.push(commit_at(1, Some(2), placed + Duration::minutes(10)));
    let state = state_of(history(all));
    assert!(state.holds.is_empty());
    let d = state.evaluate(&metric(R3D), qty(4), day(9)).unwrap();
    assert!(
        d.allowed && d.reserved == 0 && d.remaining == Some(4),
        "{d:?}"
    );
}

#[test]
fn a_commit_above_the_hold_is_refused() {
    given(vec![open("starter"), reserve(R3D, 3)])
        .when(commit_at(1, Some(4), now()))
        .then_expect_error(LedgerError::CommitAboveHold {
            hold: 1,
            held: 3,
            amount: 4,
        });
}

#[test]
fn a_voided_hold_releases_its_units_and_cannot_be_committed() {
    // Voiding gives the units back; the hold then is neither committable nor voidable.
    let commands = vec![open_on(blocking_renders("starter"), &[]), reserve(R3D, 7)];
    given(commands.clone())
        .when(void_at(1, now()))
        .then_expect_events(vec![LedgerEvent::HoldReleased {
            hold: 1,
            metric: metric(R3D),
            amount: 7,
            reason: Release::Voided,
            totals: held_totals(0, 10, 0),
            at: now(),
        }]);
    let mut voided = commands;
    voided.push(void_at(1, now()));
    given(voided.clone())
        .when(commit_at(1, None, now()))
        .then_expect_error(LedgerError::HoldNotHeld(1));
    given(voided)
        .when(void_at(1, now()))
        .then_expect_error(LedgerError::HoldNotHeld(1));
    given(vec![open("starter")])
        .when(commit_at(1, None, now()))
        .then_expect_error(LedgerError::UnknownHold(1));
}

#[test]
fn an_expired_hold_holds_nothing_and_its_commit_is_refused() {
    // A hold past its TTL frees its units at once, even before its release is appended;
    // committing it is refused with its expiry instant; the sweeper's command then
    // appends the release dated at that instant.
    let expires = now() + Duration::seconds(60);
    let commands = vec![
        open_on(blocking_renders("starter"), &[]),
        reserve_at(R3D, 10, 60, now()),
    ];
    let state = state_of(history(commands.clone()));
    assert!(!state.evaluate(&metric(R3D), qty(1), now()).unwrap().allowed);
    assert!(
        state
            .evaluate(&metric(R3D), qty(10), expires)
            .unwrap()
            .allowed
    );
    given(commands.clone())
        .when(commit_at(1, None, expires))
        .then_expect_error(LedgerError::HoldExpired {
            hold: 1,
            expires_at: expires,
        });
    given(commands.clone())
        .when(expire_at(expires - Duration::seconds(1)))
        .then_expect_events(vec![]);
    given(commands)
        .when(expire_at(expires + Duration::hours(1)))
        .then_expect_events(vec![LedgerEvent::HoldReleased {
            hold: 1,
            metric: metric(R3D),
            amount: 10,
            reason: Release::Expired,
            totals: held_totals(0, 10, 0),
            at: expires,
        }]);
}

#[test]
fn a_replay_of_the_log_restores_the_open_holds() {
    // What a restart does: the holds, their numbering and the held units come back
    // from the events alone (and from a snapshot of the state).
    let events = history(vec![
        open("starter"),
        reserve(R3D, 2),
        reserve(R3D, 3),
        reserve(AI, 4),
        void_at(2, now()),
    ]);
    let state = state_of(events);
    assert_eq!(state.holds.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(state.holds_placed, 3);
    assert_eq!(state.metric(&metric(R3D)).unwrap().held, 2);
    assert_eq!(state.metric(&metric(AI)).unwrap().held, 4);
    let snapshot: UsagePeriodAggregate =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    assert_eq!(snapshot, state);
    let next = state.decide(
        &PeriodCommand::Reserve {
            metric: metric(R3D),
            amount: qty(1),
            ttl: HoldTtl::new(1).unwrap(),
        },
        now(),
        &LedgerRules::default(),
    );
    assert!(matches!(
        next.unwrap()[0],
        LedgerEvent::QuotaReserved { hold: 4, .. }
    ));
}

#[test]
fn holds_are_refused_on_gauges_outside_the_period_and_past_the_open_limit() {
    given(vec![open("starter")])
        .when(reserve(SEATS, 1))
        .then_expect_error(LedgerError::GaugeIsSet(metric(SEATS)));
    given(vec![open("starter")])
        .when(reserve_at(R3D, 1, 60, day(30) + Duration::days(1)))
        .then_expect_error(LedgerError::WrongPeriod {
            period: period(),
            occurred_at: day(30) + Duration::days(1),
        });
    let mut commands = vec![open("professional")];
    commands.extend((0..OPEN_HOLDS_MAX).map(|_| reserve(API, 1)));
    given(commands)
        .when(reserve(API, 1))
        .then_expect_error(LedgerError::TooManyHolds);
}

#[test]
fn a_hold_on_a_charged_metric_never_blocks_and_its_commit_is_billed() {
    // Holds on `charge` metrics only inform: the overage is billed when committed.
    given(vec![open("starter"), record(R3D, 10), reserve(R3D, 2)])
        .when(commit_at(1, None, now()))
        .then_expect_events(vec![LedgerEvent::UsageRecorded {
            metric: metric(R3D),
            quantity: 2,
            via: UsageVia::Reservation,
            occurred_at: now(),
            after_close: false,
            marginal_cost: cents(200),
            totals: totals(12, 12, Some(10), 2, 200),
            at: now(),
            hold: Some(HoldCommit { number: 1, held: 2 }),
        }]);
}
