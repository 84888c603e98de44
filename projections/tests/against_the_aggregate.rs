//! Property tests: random commands for several brands, decided by the real aggregate,
//! and after every command the folded models agree with the aggregate's own state.
//!
//! The aggregate is the source of truth for usage (`UsagePeriodAggregate::totals`), for
//! the plan in force and for the invoice. The models must read the same figures from
//! the events alone, to the cent, and finance's totals must equal the sum of the
//! per-brand estimates. Commands cover every event: usage, refusals, gauges, top-ups,
//! corrections, plan changes, the close and late usage after it.

mod common;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use common::*;
use ledger_aggregates::period::{base_lines, percentage};
use ledger_aggregates::{
    BrandId, LedgerEvent, MetricKey, Money, PeriodCommand, PeriodKey, PlanDefinition, Quantity,
    Stamped, StreamCommand, UsagePeriodAggregate,
};
use ledger_projections::{Delivery, LineKind, PeriodModels, ReadModel, ReadModels};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const BRANDS: [&str; 3] = ["acme", "globex", "initech"];
/// The metrics commands are drawn from, one of each quota shape: charged counters,
/// an unlimited counter, a charged gauge (billed on its peak) and a blocked gauge.
const METRICS: [&str; 5] = [R3D, AI, GLTF, STORAGE, SEATS];
const GAUGES: [&str; 2] = [STORAGE, SEATS];
/// Long enough for every brand to go well into overage, close and get late usage.
const OPS_LEN_MAX: usize = 80;

/// The plans a brand opens on or changes to.
static PLANS: LazyLock<[PlanDefinition; 3]> =
    LazyLock::new(|| [plan("starter"), plan("professional"), fractional_starter()]);

fn plans() -> &'static [PlanDefinition; 3] {
    &PLANS
}

/// One random command for one brand.
#[derive(Debug, Clone)]
enum Op {
    Record { m: usize, n: u64 },
    Check { m: usize, n: u64, consume: bool },
    TopUp { m: usize, units: u64 },
    SetLevel { g: usize, level: u64 },
    Adjust { m: usize, delta: i64 },
    ChangePlan { plan: usize },
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    let m = 0..METRICS.len();
    prop_oneof![
        6 => (m.clone(), 1..=8u64).prop_map(|(m, n)| Op::Record { m, n }),
        2 => (m.clone(), 1..=8u64, any::<bool>())
            .prop_map(|(m, n, consume)| Op::Check { m, n, consume }),
        1 => (m.clone(), 1..=5u64).prop_map(|(m, units)| Op::TopUp { m, units }),
        2 => (0..GAUGES.len(), 0..=12u64).prop_map(|(g, level)| Op::SetLevel { g, level }),
        1 => (m, -4..=4i64).prop_map(|(m, delta)| Op::Adjust { m, delta }),
        1 => (0..3usize).prop_map(|plan| Op::ChangePlan { plan }),
        1 => Just(Op::Close),
    ]
}

fn ops() -> impl Strategy<Value = Vec<(usize, Op)>> {
    prop::collection::vec((0..BRANDS.len(), op()), 0..=OPS_LEN_MAX)
}

fn opening_plans() -> impl Strategy<Value = [usize; 3]> {
    [0..3usize, 0..3usize, 0..3usize]
}

/// The command of `op` at `step`. Once the brand's period is closed, usage is reported
/// after the period's end, inside the grace window: the aggregate flags it `after_close`.
fn command(op: &Op, step: usize, closed: bool) -> Stamped {
    let minutes = chrono::Duration::minutes(step as i64);
    let at = if closed {
        after_end(nov(), 1) + minutes
    } else {
        day(2) + minutes
    };
    let occurred_at = if closed {
        nov().end() - minutes - chrono::Duration::minutes(1)
    } else {
        at
    };
    let m = |i: usize| metric(METRICS[i]);
    let command = match op {
        Op::Record { m: i, n } => PeriodCommand::RecordUsage {
            metric: m(*i),
            quantity: Quantity::new(*n).expect("1..=8"),
            occurred_at: Some(occurred_at),
        },
        Op::Check { m: i, n, consume } => PeriodCommand::CheckQuota {
            metric: m(*i),
            requested: Quantity::new(*n).expect("1..=8"),
            consume: *consume,
            occurred_at: None,
        },
        Op::TopUp { m: i, units } => PeriodCommand::ApplyTopUp {
            metric: m(*i),
            units: Quantity::new(*units).expect("1..=5"),
            price: Money::from_minor(100 * *units as i64),
            reference: format!("topup-{step}"),
            actor: "billing".to_owned(),
        },
        Op::SetLevel { g, level } => PeriodCommand::SetGaugeLevel {
            metric: metric(GAUGES[*g]),
            level: *level,
        },
        Op::Adjust { m: i, delta } => PeriodCommand::AdjustUsage {
            metric: m(*i),
            delta: *delta,
            actor: "support".to_owned(),
            reason: "property test".to_owned(),
        },
        Op::ChangePlan { plan } => {
            return Stamped::new(StreamCommand::ApplyPlan(plans()[*plan].clone()), at)
        }
        Op::Close => {
            let close = PeriodCommand::ClosePeriod {
                actor: "billing-cron".to_owned(),
                plan_at_end: None,
            };
            return Stamped::new(close, nov().end());
        }
    };
    Stamped::new(command, at)
}

/// Run `ops` against the aggregates, folding each command's events into `models` as
/// they are appended, and call `check` after every command.
fn drive(
    opening: [usize; 3],
    ops: &[(usize, Op)],
    mut check: impl FnMut(&Ledger, &ReadModels) -> Result<(), TestCaseError>,
) -> Result<(Ledger, ReadModels), TestCaseError> {
    let mut ledger = Ledger::new();
    for (b, p) in BRANDS.iter().zip(opening) {
        ledger.register_on(b, &plans()[p]);
    }
    let mut models = ReadModels::replay(ledger.log());
    check(&ledger, &models)?;
    for (step, (b, op)) in ops.iter().enumerate() {
        let brand_id = BRANDS[*b];
        let closed = ledger.period(brand_id, nov()).closed.is_some();
        let appended = match op {
            Op::ChangePlan { plan } if !closed => {
                // The registry and the open period change in one commit, as the engine does.
                let mut events = ledger.set_plan(brand_id, &plans()[*plan]);
                let applied = ledger.try_decide(brand_id, nov(), command(op, step, closed));
                events.extend(applied.unwrap_or_default());
                events
            }
            // Refusals append nothing; that they are refused is the aggregate's business.
            _ => ledger
                .try_decide(brand_id, nov(), command(op, step, closed))
                .unwrap_or_default(),
        };
        for event in &appended {
            prop_assert!(models.apply(event).folded(), "a new event is folded");
        }
        check(&ledger, &models)?;
    }
    Ok((ledger, models))
}

/// Each quota row and cost estimate against the aggregate of its brand.
fn models_agree_with_the_aggregates(
    ledger: &Ledger,
    models: &ReadModels,
) -> Result<(), TestCaseError> {
    for brand_id in BRANDS {
        let period = ledger.period(brand_id, nov());
        check_quota_rows(brand_id, period, models)?;
        check_cost(brand_id, period, models)?;
        check_alerts_and_top_ups(brand_id, period, models)?;
    }
    check_finance_totals(ledger, models)
}

fn check_quota_rows(
    brand_id: &str,
    period: &UsagePeriodAggregate,
    models: &ReadModels,
) -> Result<(), TestCaseError> {
    let plan = period.plan().expect("the period is open");
    for def in CATALOG.metrics() {
        let m = &def.key;
        let t = period.totals(m).expect("the period is open");
        let state = period.metric(m).cloned().unwrap_or_default();
        let Some(row) = models.quota_summary.get(&brand(brand_id), nov(), m) else {
            // No row: no quota and never used.
            prop_assert!(
                plan.quota(m).is_none(),
                "{} {}: a quota without a row",
                brand_id,
                m
            );
            prop_assert_eq!((t.current, t.billable, t.overage_cost), (0, 0, Money::ZERO));
            continue;
        };
        let what = format!("{brand_id} {m}");
        prop_assert_eq!(row.current, t.current, "{} current", what);
        prop_assert_eq!(row.billable, t.billable, "{} billable", what);
        prop_assert_eq!(
            row.effective_limit,
            t.effective_limit,
            "{} effective limit",
            what
        );
        prop_assert_eq!(row.overage_units, t.overage_units, "{} overage units", what);
        prop_assert_eq!(row.overage_cost, t.overage_cost, "{} overage cost", what);
        prop_assert_eq!(
            row.base_limit,
            plan.quota(m).map(|q| q.limit),
            "{} base limit",
            what
        );
        prop_assert_eq!(row.top_up_units, state.top_up_units, "{} top-ups", what);
        let pct = t.effective_limit.map(|l| percentage(t.current, l));
        prop_assert_eq!(row.percentage, pct, "{} percentage", what);
    }
    Ok(())
}

fn check_cost(
    brand_id: &str,
    period: &UsagePeriodAggregate,
    models: &ReadModels,
) -> Result<(), TestCaseError> {
    let plan = period.plan().expect("the period is open");
    let cost = models
        .period_cost
        .get(&brand(brand_id), nov())
        .ok_or_else(|| TestCaseError::fail(format!("{brand_id} has no cost")))?;
    let running: Money = period.metrics.values().map(|s| s.overage_cost).sum();
    let base: Money = base_lines(&period.segments, nov())
        .iter()
        .map(|l| l.amount)
        .sum();
    prop_assert_eq!(cost.base, base, "{} base", brand_id);
    prop_assert_eq!(&cost.plan_id, &plan.id);
    prop_assert_eq!(cost.usage, Money::ZERO);
    prop_assert_eq!(
        cost.overage + cost.adjustment,
        running,
        "{} running overage",
        brand_id
    );
    match &period.closed {
        Some(invoice) => {
            prop_assert!(cost.invoiced);
            prop_assert_eq!(
                (cost.base, cost.overage, cost.total),
                (invoice.base, invoice.overage, invoice.total)
            );
        }
        None => {
            prop_assert!(!cost.invoiced);
            prop_assert_eq!(cost.overage, running, "{} overage", brand_id);
            prop_assert_eq!(cost.total, cost.base + cost.overage);
            prop_assert_eq!(cost.adjustment, Money::ZERO);
        }
    }
    Ok(())
}

fn check_alerts_and_top_ups(
    brand_id: &str,
    period: &UsagePeriodAggregate,
    models: &ReadModels,
) -> Result<(), TestCaseError> {
    // The alerts that stand are the thresholds the aggregate holds as fired.
    let mut expected: Vec<_> = period
        .metrics
        .iter()
        .flat_map(|(m, s)| s.fired.iter().map(move |t| (m.clone(), *t)))
        .collect();
    let mut listed: Vec<_> = models
        .active_alerts
        .get(&brand(brand_id), nov())
        .iter()
        .map(|a| (a.metric.clone(), a.threshold))
        .collect();
    expected.sort();
    listed.sort();
    prop_assert_eq!(listed, expected, "{} alerts", brand_id);

    let mut units: BTreeMap<MetricKey, u64> = BTreeMap::new();
    for t in models.top_up_history.get(&brand(brand_id), nov()) {
        *units.entry(t.metric.clone()).or_default() += t.units;
    }
    let credited: BTreeMap<MetricKey, u64> = period
        .metrics
        .iter()
        .filter(|(_, s)| s.top_up_units > 0)
        .map(|(m, s)| (m.clone(), s.top_up_units))
        .collect();
    prop_assert_eq!(units, credited, "{} top-ups", brand_id);
    Ok(())
}

fn check_finance_totals(ledger: &Ledger, models: &ReadModels) -> Result<(), TestCaseError> {
    let (overage, adjustment) = models
        .period_cost
        .in_period(nov())
        .fold((Money::ZERO, Money::ZERO), |(o, a), (_, c)| {
            (o + c.overage, a + c.adjustment)
        });
    let totals = models.overage_ledger.totals(nov());
    prop_assert_eq!(totals.charged, overage, "charged = Σ PeriodCost.overage");
    prop_assert_eq!(
        totals.adjustments,
        adjustment,
        "adjustments = Σ PeriodCost.adjustment"
    );
    prop_assert_eq!(totals.total, overage + adjustment);
    let lines = models.overage_ledger.lines(nov());
    let sum = |kind| {
        lines
            .iter()
            .filter(|l| l.kind == kind)
            .map(|l| l.amount)
            .sum::<Money>()
    };
    prop_assert_eq!(sum(LineKind::Charge), totals.charged);
    prop_assert_eq!(sum(LineKind::Adjustment), totals.adjustments);
    // A closed brand's charge lines are its invoice's lines.
    for brand_id in BRANDS {
        let Some(invoice) = &ledger.period(brand_id, nov()).closed else {
            continue;
        };
        let charged: Vec<_> = lines
            .iter()
            .filter(|l| l.brand.as_str() == brand_id && l.kind == LineKind::Charge)
            .map(|l| (l.metric.clone(), l.units, l.rate, l.amount))
            .collect();
        let invoiced: Vec<_> = invoice
            .lines
            .iter()
            .map(|l| (l.metric.clone(), l.overage_units as i64, l.rate, l.amount))
            .collect();
        prop_assert_eq!(charged, invoiced, "{} invoice lines", brand_id);
    }
    Ok(())
}

proptest! {
    #[test]
    fn prop_the_folded_models_equal_the_aggregates_state_after_every_command(
        opening in opening_plans(),
        ops in ops(),
    ) {
        // QuotaSummary = `totals(metric)`, PeriodCost = plan base + overage (or the
        // invoice), alerts and top-ups = the aggregate's, and finance's totals = the sum
        // of the brands' estimates, after each command of a random multi-brand run.
        let (ledger, models) = drive(opening, &ops, models_agree_with_the_aggregates)?;
        // And the incremental fold equals a replay from nothing.
        prop_assert_eq!(ReadModels::replay(ledger.log()), models);
    }

    #[test]
    fn prop_any_redelivery_folds_to_the_models_of_a_single_delivery(
        opening in opening_plans(),
        ops in ops(),
        rewinds in prop::collection::vec(prop::option::weighted(0.2, any::<prop::sample::Index>()), 1..32),
    ) {
        // A projector that restarts from older checkpoints (re-reading a suffix of what it
        // already folded) at random moments ends with the models of one clean fold.
        let (ledger, _) = drive(opening, &ops, |_, _| Ok(()))?;
        let log = ledger.log();
        let mut models = ReadModels::new();
        for (i, event) in log.iter().enumerate() {
            models.apply(event);
            if let Some(back_to) = &rewinds[i % rewinds.len()] {
                for again in &log[back_to.index(i + 1)..=i] {
                    prop_assert!(!models.apply(again).folded(), "a redelivery is not folded");
                }
            }
        }
        let once = ReadModels::replay(log);
        prop_assert!(models.diff(&once).is_empty(), "{}", models.diff(&once));
        prop_assert_eq!(&models, &once);
        // Every model on its own, too.
        let mut overage = ledger_projections::OverageLedger::new();
        for event in log.iter().chain(log.iter()) {
            overage.apply(event);
        }
        prop_assert_eq!(&overage, &once.overage_ledger);
    }

    #[test]
    fn prop_folding_batches_into_stored_rows_equals_one_replay(
        opening in opening_plans(),
        ops in ops(),
        cuts in prop::collection::vec(1usize..40, 1..16),
        redeliver in any::<bool>(),
    ) {
        // The projector's way: per batch, each stream the batch touches is folded on its
        // own (`PeriodModels::apply`) from its row as stored (JSON), or from nothing.
        // The rows it ends with are those of one fold of the whole log, even when every
        // batch is delivered twice.
        let (ledger, _) = drive(opening, &ops, |_, _| Ok(()))?;
        let log = ledger.log();
        let mut stored: std::collections::BTreeMap<(BrandId, PeriodKey), String> = Default::default();
        let mut rest = log;
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let (batch, tail) = rest.split_at((*cut.next().unwrap()).min(rest.len()));
            rest = tail;
            let mut folding: std::collections::BTreeMap<(BrandId, PeriodKey), PeriodModels> =
                Default::default();
            let deliveries = if redeliver { 2 } else { 1 };
            for event in std::iter::repeat_n(batch, deliveries).flatten() {
                let Some((b, p, _)) = event.as_period() else { continue };
                let models = folding.entry((b.clone(), p)).or_insert_with(|| {
                    stored.get(&(b.clone(), p))
                        .map_or_else(PeriodModels::new, |json| serde_json::from_str(json).unwrap())
                });
                let delivery = models.apply(event);
                prop_assert!(!matches!(delivery, Delivery::AppliedAfterGap { .. }), "no gap");
            }
            for (key, row) in folding {
                stored.insert(key, serde_json::to_string(&row).unwrap());
            }
        }
        let mut restored = ReadModels::new();
        for ((b, p), json) in &stored {
            restored.restore(b, *p, serde_json::from_str(json).unwrap());
        }
        let once = ReadModels::replay(log);
        let mut once_periods = ReadModels::new();
        for (b, p) in once.periods() {
            once_periods.restore(b, p, once.period_models(b, p).unwrap());
        }
        // Brand-registry cursors are not part of the rows: compare period streams.
        prop_assert!(restored.diff(&once_periods).is_empty(), "{}", restored.diff(&once_periods));
        prop_assert_eq!(restored.overage_ledger.period(nov()).map(|p| p.totals()),
            once.overage_ledger.period(nov()).map(|p| p.totals()));
        prop_assert_eq!(&restored, &once_periods);
    }
}

#[test]
fn late_usage_is_flagged_by_the_aggregate_after_a_close_in_these_runs() {
    // The generator really produces `after_close` usage: the property covers late usage.
    let ops = vec![
        (0, Op::Record { m: 0, n: 8 }),
        (0, Op::Record { m: 0, n: 8 }),
        (0, Op::Close),
        (0, Op::Record { m: 0, n: 3 }),
    ];
    let (ledger, models) =
        drive([0, 0, 0], &ops, models_agree_with_the_aggregates).expect("the run agrees");
    assert!(ledger.log().iter().any(|e| matches!(
        e.as_period(),
        Some((
            _,
            _,
            LedgerEvent::UsageRecorded {
                after_close: true,
                ..
            }
        ))
    )));
    assert_eq!(models.overage_ledger.totals(nov()).adjustments, cents(300));
}
