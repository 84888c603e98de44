//! The `brands` and `reset` commands against real PostgreSQL and real SQLite: a reset
//! appends compensating events for one metric, reaches its target on the effective
//! limit, never applies twice, and a dry run appends nothing.

mod common;

use std::sync::Arc;

use clap::Parser;
use ledger_aggregates::reset::ResetRefusal;
use ledger_aggregates::{BrandId, MetricKey, PeriodCommand, PeriodKey, PlanId, Quantity};
use usage_ledger::cli::brands::{self, BrandsArgs, BrandsCommand, BrandsError};
use usage_ledger::cli::reset::{self, ResetArgs, ResetError, ResetReport};

use usage_ledger::engine::{Engine, PeriodRequest};
use usage_ledger::store::EventLog;

fn brand(s: &str) -> BrandId {
    BrandId::parse(s).unwrap()
}
fn metric(s: &str) -> MetricKey {
    MetricKey::parse(s).unwrap()
}
fn november() -> PeriodKey {
    PeriodKey::parse("2026-11").unwrap()
}

use common::{engine, stream_len};

async fn brands_cmd(e: &Engine, command: BrandsCommand) -> (Result<(), BrandsError>, String) {
    let mut out = Vec::new();
    let res = brands::run(e, &BrandsArgs { command }, &mut out).await;
    (res, String::from_utf8(out).unwrap())
}

async fn register(e: &Engine, b: &str, plan: &str) {
    let (res, _) = brands_cmd(
        e,
        BrandsCommand::Set {
            brand: brand(b),
            plan: PlanId::parse(plan).unwrap(),
        },
    )
    .await;
    res.unwrap();
}

async fn record(e: &Engine, b: &str, m: &str, n: u64) {
    e.execute(PeriodRequest {
        brand: brand(b),
        period: None,
        command: PeriodCommand::RecordUsage {
            metric: metric(m),
            quantity: Quantity::new(n).unwrap(),
            occurred_at: None,
        },
        idempotency_key: None,
        metadata: Default::default(),
    })
    .await
    .unwrap();
}

/// `reset --brand <b> --metric <m> --target <t> --topup <u> [--dry-run]`.
fn reset_args(b: &str, m: &str, target: u32, topup: u64, dry_run: bool) -> ResetArgs {
    ResetArgs {
        brand: brand(b),
        metric: metric(m),
        period: None,
        target,
        topup,
        price_cents: None,
        dry_run,
    }
}

async fn reset_cmd(
    e: &Engine,
    log: &Arc<dyn EventLog>,
    args: &ResetArgs,
) -> (Result<ResetReport, ResetError>, String) {
    let mut out = Vec::new();
    let res = reset::run(e, log.as_ref(), args, &mut out).await;
    (res, String::from_utf8(out).unwrap())
}

/// A starter brand at 100 % of ai_generations (20/20, every alert raised) that also
/// used 30 renders_2d.
async fn brand_at_its_limit(e: &Engine) {
    register(e, "acme", "starter").await;
    record(e, "acme", "ai_generations", 20).await;
    record(e, "acme", "renders_2d", 30).await;
}

// Proves a dry run appends nothing (the stream length and version are unchanged) and
// prints exactly the commands the real run then appends, keys included.
async fn a_dry_run_appends_nothing_and_prints_the_commands_of_the_real_run(db: &common::TestDb) {
    let (e, log) = engine(db).await;
    brand_at_its_limit(&e).await;
    let before = stream_len(&log, "acme:2026-11").await;
    let (dry, out) = reset_cmd(
        &e,
        &log,
        &reset_args("acme", "ai_generations", 90, 25, true),
    )
    .await;
    let dry = dry.unwrap();
    println!("{out}");
    assert_eq!(stream_len(&log, "acme:2026-11").await, before);
    let state = e.period_state(brand("acme"), november()).await.unwrap();
    assert_eq!(state.unwrap().version, before as u64);
    assert!(dry.appended.is_empty() && dry.dry_run);
    for expected in [
        "TopUp ai_generations +25 units, price 0 cents, reference cli-reset",
        "Adjust ai_generations by +21 (20 → 41)",
        "41 of effective limit 45 = 91.11 %",
        "dry run: nothing appended",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    for step in &dry.plan.steps {
        assert!(out.contains(step.key.as_str()), "{out}");
    }
    let (real, out) = reset_cmd(
        &e,
        &log,
        &reset_args("acme", "ai_generations", 90, 25, false),
    )
    .await;
    println!("{out}");
    let real = real.unwrap();
    assert_eq!(
        real.plan, dry.plan,
        "the real run appends what the dry run printed"
    );
    let events = log
        .read_stream("usage_period", "acme:2026-11", before as i64, 100)
        .await
        .unwrap();
    let types: Vec<_> = events.iter().map(|ev| ev.event_type.as_str()).collect();
    // The top-up takes 20 of 20 to 20 of 45 (44 %), resolving the three alerts; the
    // adjustment to 41 of 45 (91 %) raises them again.
    let resolved = ["ThresholdResolved"; 3];
    let crossed = ["ThresholdCrossed"; 3];
    let expected = [
        &["TopUpApplied"][..],
        &resolved,
        &["UsageAdjusted"],
        &crossed,
    ]
    .concat();
    assert_eq!(types, expected);
}
on_both_stores!(
    a_dry_run_appends_nothing,
    a_dry_run_appends_nothing_and_prints_the_commands_of_the_real_run
);

// Proves the reset reaches exactly the target percentage of the effective limit (the
// smallest usage at which the 90 % threshold holds, top-up counted), and that running
// the identical command again appends nothing: no second top-up, no adjustment.
async fn a_reset_reaches_the_target_and_a_second_run_appends_nothing(db: &common::TestDb) {
    let (e, log) = engine(db).await;
    brand_at_its_limit(&e).await;
    let args = reset_args("acme", "ai_generations", 90, 25, false);
    let (first, out) = reset_cmd(&e, &log, &args).await;
    let first = first.unwrap();
    // Two commands: the top-up with its three resolutions, the adjustment with its
    // three crossings.
    assert_eq!(first.appended.len(), 8, "{out}");
    assert!(
        out.contains("alerts: new 50 %, 75 %, 90 %; resolved 50 %, 75 %, 90 %"),
        "{out}"
    );
    assert!(
        out.contains("now: 41 of effective limit 45 = 91.11 %"),
        "{out}"
    );
    let state = e
        .period_state(brand("acme"), november())
        .await
        .unwrap()
        .unwrap();
    let m = metric("ai_generations");
    let s = state.metric(&m).unwrap();
    let quota = state.plan().unwrap().quota(&m);
    let effective = ledger_aggregates::period::effective_limit(quota, s).unwrap();
    assert_eq!((s.current, s.top_up_units, effective), (41, 25, 45));
    assert!(
        s.current * 100 >= 90 * effective,
        "the 90 % threshold is reached"
    );
    assert!((s.current - 1) * 100 < 90 * effective, "and not overshot");

    let len = stream_len(&log, "acme:2026-11").await;
    let (second, out) = reset_cmd(&e, &log, &args).await;
    let second = second.unwrap();
    assert!(second.appended.is_empty(), "{out}");
    assert!(out.contains("already granted in this period"), "{out}");
    assert!(out.contains("nothing to append"), "{out}");
    assert_eq!(stream_len(&log, "acme:2026-11").await, len);
}
on_both_stores!(
    a_reset_reaches_the_target_and_a_second_run_appends_nothing,
    a_reset_reaches_the_target_and_a_second_run_appends_nothing
);

async fn a_reset_prepares_a_brand_that_has_no_usage_yet(db: &common::TestDb) {
    // The runbook's "prepare an account": a registered brand without events this
    // period is reset to 90 % of a counter; the period opens on the brand's plan and
    // usage lands on the target. Running it again appends nothing.
    let (e, log) = engine(db).await;
    register(&e, "acme", "starter").await;
    let args = reset_args("acme", "ai_generations", 90, 0, false);
    let (first, out) = reset_cmd(&e, &log, &args).await;
    // The adjustment and the three crossings it causes (after the period's opening).
    assert_eq!(first.unwrap().appended, vec![2, 3, 4, 5], "{out}");
    let state = e
        .period_state(brand("acme"), november())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.metric(&metric("ai_generations")).unwrap().current, 18);
    let len = stream_len(&log, "acme:2026-11").await;
    let (second, out) = reset_cmd(&e, &log, &args).await;
    assert!(second.unwrap().appended.is_empty(), "{out}");
    assert_eq!(stream_len(&log, "acme:2026-11").await, len);
}
on_both_stores!(
    a_reset_prepares_a_brand_that_has_no_usage_yet,
    a_reset_prepares_a_brand_that_has_no_usage_yet
);

// Proves the reset touches only the metric it names, unlike the original that
// deleted every metric of the brand for the month.
async fn a_reset_leaves_the_other_metrics_untouched(db: &common::TestDb) {
    let (e, log) = engine(db).await;
    brand_at_its_limit(&e).await;
    let before = e
        .period_state(brand("acme"), november())
        .await
        .unwrap()
        .unwrap();
    let (res, _) = reset_cmd(
        &e,
        &log,
        &reset_args("acme", "ai_generations", 50, 0, false),
    )
    .await;
    res.unwrap();
    let after = e
        .period_state(brand("acme"), november())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.metric(&metric("ai_generations")).unwrap().current, 10);
    for (m, state) in &before.metrics {
        if m.as_str() != "ai_generations" {
            assert_eq!(after.metric(m), Some(state), "{m} changed");
        }
    }
    assert_eq!(after.metrics.len(), before.metrics.len());
    assert_eq!(after.metric(&metric("renders_2d")).unwrap().current, 30);
}
on_both_stores!(
    a_reset_leaves_the_other_metrics_untouched,
    a_reset_leaves_the_other_metrics_untouched
);

// Proves a retry after a run that appended its top-up and then failed does not grant
// the credit twice, and still lands on the target: the top-up's key is found in the log.
async fn a_retry_after_only_the_top_up_was_appended_grants_nothing_twice(db: &common::TestDb) {
    let (e, log) = engine(db).await;
    brand_at_its_limit(&e).await;
    let args = reset_args("acme", "ai_generations", 90, 25, false);
    let (dry, _) = reset_cmd(
        &e,
        &log,
        &ResetArgs {
            dry_run: true,
            ..args.clone()
        },
    )
    .await;
    let top_up = dry.unwrap().plan.steps[0].clone();
    assert!(matches!(top_up.command, PeriodCommand::ApplyTopUp { .. }));
    // The interrupted run: its first command only.
    e.execute(PeriodRequest {
        brand: brand("acme"),
        period: Some(november()),
        command: top_up.command,
        idempotency_key: Some(top_up.key),
        metadata: Default::default(),
    })
    .await
    .unwrap();
    let (retry, out) = reset_cmd(&e, &log, &args).await;
    let retry = retry.unwrap();
    assert_eq!(retry.plan.top_up_units, 0, "{out}");
    let state = e
        .period_state(brand("acme"), november())
        .await
        .unwrap()
        .unwrap();
    let s = state.metric(&metric("ai_generations")).unwrap();
    assert_eq!((s.current, s.top_up_units), (41, 25));
    let events = log
        .read_stream("usage_period", "acme:2026-11", 0, 100)
        .await
        .unwrap();
    let top_ups = events
        .iter()
        .filter(|ev| ev.event_type == "TopUpApplied")
        .count();
    assert_eq!(top_ups, 1);
}
on_both_stores!(
    a_retry_after_only_the_top_up_was_appended,
    a_retry_after_only_the_top_up_was_appended_grants_nothing_twice
);

// Proves the refusals come before anything is appended and say why: an unregistered
// brand, an unknown metric, a metric without quota, a period without events, a
// target above the cap.
async fn a_reset_refuses_clearly_and_appends_nothing(db: &common::TestDb) {
    let (e, log) = engine(db).await;
    let (res, _) = reset_cmd(
        &e,
        &log,
        &reset_args("ghost", "ai_generations", 90, 0, false),
    )
    .await;
    assert!(
        matches!(res, Err(ResetError::BrandNotRegistered(_))),
        "{res:?}"
    );
    register(&e, "acme", "starter").await;
    let (res, _) = reset_cmd(&e, &log, &reset_args("acme", "team_members", 90, 0, false)).await;
    assert!(
        matches!(
            res,
            Err(ResetError::Refused(ResetRefusal::PeriodNotOpen { .. }))
        ),
        "{res:?}"
    );
    assert_eq!(stream_len(&log, "acme:2026-11").await, 0);
    record(&e, "acme", "exports_gltf", 3).await;
    let len = stream_len(&log, "acme:2026-11").await;
    let (res, _) = reset_cmd(&e, &log, &reset_args("acme", "exports_gltf", 90, 10, false)).await;
    let err = res.unwrap_err();
    assert!(
        matches!(err, ResetError::Refused(ResetRefusal::Unlimited { .. })),
        "{err}"
    );
    let (res, _) = reset_cmd(&e, &log, &reset_args("acme", "renders_4d", 90, 0, false)).await;
    let err = res.unwrap_err();
    assert!(
        err.to_string().contains("ai_generations"),
        "lists the catalog: {err}"
    );
    let (res, _) = reset_cmd(
        &e,
        &log,
        &reset_args("acme", "ai_generations", 151, 0, false),
    )
    .await;
    assert!(
        matches!(
            res,
            Err(ResetError::Refused(ResetRefusal::TargetOutOfRange(151)))
        ),
        "{res:?}"
    );
    assert_eq!(stream_len(&log, "acme:2026-11").await, len);
}
on_both_stores!(
    a_reset_refuses_clearly_and_appends_nothing,
    a_reset_refuses_clearly_and_appends_nothing
);

// Proves `brands set` registers and moves a brand and `brands show` reads it back; an
// unknown brand is reported as not registered.
async fn brands_set_then_show_round_trips(db: &common::TestDb) {
    let (e, _) = engine(db).await;
    let show = || BrandsCommand::Show {
        brand: brand("acme"),
    };
    let (res, _) = brands_cmd(&e, show()).await;
    assert!(matches!(res, Err(BrandsError::NotRegistered(_))), "{res:?}");
    let set = |plan: &str| BrandsCommand::Set {
        brand: brand("acme"),
        plan: PlanId::parse(plan).unwrap(),
    };
    let (res, out) = brands_cmd(&e, set("starter")).await;
    res.unwrap();
    assert!(
        out.contains("brand acme registered on plan starter"),
        "{out}"
    );
    let (res, out) = brands_cmd(&e, show()).await;
    res.unwrap();
    assert!(out.contains("plan: starter"), "{out}");
    let (res, out) = brands_cmd(&e, set("professional")).await;
    res.unwrap();
    assert!(
        out.contains("brand acme moved to plan professional"),
        "{out}"
    );
    let (res, out) = brands_cmd(&e, set("professional")).await;
    res.unwrap();
    assert!(out.contains("nothing changed"), "{out}");
    let (res, out) = brands_cmd(&e, show()).await;
    res.unwrap();
    assert!(out.contains("plan: professional"), "{out}");
}
on_both_stores!(
    brands_set_then_show_round_trips,
    brands_set_then_show_round_trips
);

// Proves an unknown plan is refused with the catalog's plans listed, and registers nothing.
async fn an_unknown_plan_is_refused_with_the_catalog_plans(db: &common::TestDb) {
    let (e, _) = engine(db).await;
    let (res, _) = brands_cmd(
        &e,
        BrandsCommand::Set {
            brand: brand("acme"),
            plan: PlanId::parse("platinum").unwrap(),
        },
    )
    .await;
    let err = res.unwrap_err();
    assert!(matches!(err, BrandsError::UnknownPlan { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("starter, professional, business, enterprise"),
        "{err}"
    );
    assert!(e.brand_state(brand("acme")).await.unwrap().is_none());
}
on_both_stores!(
    an_unknown_plan_is_refused_with_the_catalog_plans,
    an_unknown_plan_is_refused_with_the_catalog_plans
);

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    Brands(BrandsArgs),
    Reset(ResetArgs),
}

#[test]
fn the_runbook_flags_parse_with_the_originals_spellings_and_our_defaults() {
    // Proves the command line: `--brandId=`/`--dryRun` as in the original script,
    // target 90 and top-up 0 by default, bad ids and negative prices refused by clap.
    let parse = |argv: &[&str]| Cli::try_parse_from(argv);
    let Command::Reset(r) = parse(&[
        "x",
        "reset",
        "--brandId=acme",
        "--metric=renders_3d",
        "--dryRun",
    ])
    .unwrap()
    .command
    else {
        panic!("reset expected");
    };
    assert_eq!(
        (r.brand.as_str(), r.metric.as_str()),
        ("acme", "renders_3d")
    );
    assert_eq!(
        (r.target, r.topup, r.price_cents, r.period),
        (90, 0, None, None)
    );
    assert!(r.dry_run);
    let Command::Reset(r) = parse(&[
        "x",
        "reset",
        "--brand",
        "acme",
        "--metric",
        "ai_generations",
        "--period",
        "2026-10",
        "--target",
        "75",
        "--topup",
        "10",
        "--price-cents",
        "500",
    ])
    .unwrap()
    .command
    else {
        panic!("reset expected");
    };
    assert_eq!((r.target, r.topup, r.price_cents), (75, 10, Some(500)));
    assert_eq!(r.period, Some(PeriodKey::parse("2026-10").unwrap()));
    assert!(
        parse(&["x", "reset", "--brand", "acme"]).is_err(),
        "metric is required"
    );
    assert!(parse(&["x", "reset", "--brand", "a b", "--metric", "api_calls"]).is_err());
    assert!(parse(&[
        "x",
        "reset",
        "--brand",
        "acme",
        "--metric",
        "api_calls",
        "--price-cents=-1"
    ])
    .is_err());
    let Command::Brands(b) = parse(&["x", "brands", "set", "--brand", "acme", "--plan", "starter"])
        .unwrap()
        .command
    else {
        panic!("brands expected");
    };
    assert!(matches!(b.command, BrandsCommand::Set { .. }));
}

/// The fixture CI checks: the embedded catalog's prices as Stripe holds them.
const STRIPE_PRICES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/stripe-prices.json"
);

async fn pricing_cmd(
    path: std::path::PathBuf,
) -> (Result<(), usage_ledger::cli::pricing::PricingError>, String) {
    use usage_ledger::cli::pricing::{self, PricingArgs, PricingCommand};
    let args = PricingArgs {
        command: PricingCommand::Verify { prices: Some(path) },
    };
    let mut out = Vec::new();
    let catalog = ledger_aggregates::Catalog::default_catalog();
    let res = pricing::run(&catalog, None, &args, &mut out).await;
    (res, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn pricing_verify_passes_on_the_fixture_and_names_every_mismatch_of_a_changed_one() {
    let (res, out) = pricing_cmd(STRIPE_PRICES.into()).await;
    assert!(res.is_ok(), "{out}");
    assert_eq!(
        out,
        "28 prices read, catalog 2025-11-16.1: 0 mismatch(es)\n"
    );
    // A rate changed in Stripe, a base price deleted, a price for no plan of ours.
    let mut list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(STRIPE_PRICES).unwrap()).unwrap();
    let data = list["data"].as_array_mut().unwrap();
    for p in data.iter_mut() {
        if p["lookup_key"] == "starter_renders_3d_overage" {
            p["unit_amount_decimal"] = "90".into();
            p["unit_amount"] = 90.into();
        }
    }
    data.retain(|p| p["lookup_key"] != "professional_base");
    data.push(serde_json::json!({"id": "price_gold", "lookup_key": "gold_base", "currency": "eur", "unit_amount": 1, "active": true}));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prices.json");
    std::fs::write(&path, list.to_string()).unwrap();
    let (res, out) = pricing_cmd(path).await;
    assert!(
        matches!(
            res,
            Err(usage_ledger::cli::pricing::PricingError::Mismatches(3))
        ),
        "{res:?}: {out}"
    );
    assert!(
        out.contains("starter/renders_3d overage: catalog 100 cents, Stripe price_fixture_"),
        "{out}"
    );
    assert!(
        out.contains("professional base: no active Stripe price with lookup key professional_base"),
        "{out}"
    );
    assert!(
        out.contains(
            "Stripe price_gold (gold_base): no such plan or charged metric in the catalog"
        ),
        "{out}"
    );
    let (res, _) = pricing_cmd(dir.path().join("absent.json")).await;
    assert!(matches!(
        res,
        Err(usage_ledger::cli::pricing::PricingError::File { .. })
    ));
}
