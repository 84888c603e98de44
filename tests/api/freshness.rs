//! Reads see writes made elsewhere: `check-quota` decides on what another process
//! committed before it (the CLI's `brands set` and `reset`), and a second instance's
//! writes reach this instance's summaries within the projector lag.

use std::time::{Duration, Instant};

use ledger_aggregates::{BrandId, MetricKey, PlanId};
use serde_json::{json, Value};
use usage_ledger::cli::brands::{self, BrandsArgs, BrandsCommand};
use usage_ledger::cli::reset::{self, ResetArgs};
use usage_ledger::startup::open_engine;
use usage_ledger::tail::TAIL_POLL_INTERVAL;

use crate::common::{manual_clock, TestDb};
use crate::helpers::{spawn_app, spawn_app_with, test_settings, TestApp};
use crate::on_both_stores;

async fn check(app: &TestApp, metric: &str) -> Value {
    let r = app
        .post(
            "check-quota",
            &app.admin,
            json!({ "brandId": "acme", "metric": metric, "requestedAmount": 1 }),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    r.body
}

/// Record `value` units of `metric` for `acme`, acknowledged.
async fn record(app: &TestApp, metric: &str, value: u64) {
    let r = app
        .post(
            "record",
            &app.admin,
            json!({ "brandId": "acme", "metric": metric, "value": value }),
        )
        .await;
    assert_eq!(r.status, 201, "{:#}", r.body);
}

/// `acme`'s current renders_3d as its summary shows them, and the whole answer.
async fn renders_3d(app: &TestApp) -> (Option<Value>, Value) {
    let s = app.get("summary/acme", &app.admin).await;
    assert_eq!(s.status, 200, "{:#}", s.body);
    let current = s.body["summary"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "renders_3d")
        .map(|m| m["current"].clone());
    (current, s.body)
}

async fn check_quota_sees_what_the_cli_wrote(db: &TestDb) {
    // A pure check answered from this process's cache would keep the old plan and
    // usage; it must decide on what the CLI, another process, committed before it.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let seats = app.set_gauge("acme", "team_members", 3).await;
    assert_eq!(seats.status, 200, "{:#}", seats.body);
    let before = check(&app, "team_members").await;
    assert_eq!(before["allowed"], false, "3 of 3 seats: {before:#}");
    assert_eq!(before["planId"], "starter");

    let (cli, stores) = open_engine(&test_settings(db), manual_clock())
        .await
        .expect("the CLI's engine");
    let mut out = Vec::new();
    let set = BrandsCommand::Set {
        brand: BrandId::parse("acme").unwrap(),
        plan: PlanId::parse("business").unwrap(),
    };
    brands::run(&cli, &BrandsArgs { command: set }, &mut out)
        .await
        .expect("brands set");
    let after_plan = check(&app, "team_members").await;
    assert_eq!(after_plan["planId"], "business", "{after_plan:#}");
    assert_eq!(after_plan["allowed"], true, "50 seats on business");

    let args = ResetArgs {
        brand: BrandId::parse("acme").unwrap(),
        metric: MetricKey::parse("team_members").unwrap(),
        period: None,
        target: 2,
        topup: 0,
        price_cents: None,
        dry_run: false,
    };
    reset::run(&cli, stores.log.as_ref(), &args, &mut out)
        .await
        .expect("reset");
    let after_reset = check(&app, "team_members").await;
    assert_eq!(
        after_reset["current"], 1,
        "reset to 2 % of 50: {after_reset:#}"
    );
    cli.drain().await;
}
on_both_stores!(
    check_quota_sees_what_the_cli_wrote,
    check_quota_sees_what_the_cli_wrote
);

async fn a_second_instances_write_reaches_the_summary_within_the_lag(db: &TestDb) {
    // Two instances on one database: what one acknowledges, the other's summary shows
    // within the projector lag (milliseconds on PostgreSQL, which notifies every
    // instance of each commit; at most the poll interval plus a pass on SQLite).
    let settings = test_settings(db);
    let a = spawn_app_with(&settings).await;
    let b = spawn_app_with(&settings).await;
    a.register("acme", "starter").await;
    assert_eq!(renders_3d(&a).await.0, Some(json!(0)));
    record(&b, "renders_3d", 4).await;
    let acknowledged = Instant::now();
    let bound = TAIL_POLL_INTERVAL * 3;
    loop {
        let (renders, body) = renders_3d(&a).await;
        if renders == Some(json!(4)) {
            break;
        }
        assert!(
            acknowledged.elapsed() < bound,
            "not visible after {bound:?}: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "visible on the other instance after {:?}",
        acknowledged.elapsed()
    );
    // Its own writes an instance shows at once, without waiting for any poll.
    record(&b, "renders_3d", 1).await;
    let (renders, body) = renders_3d(&b).await;
    assert_eq!(renders, Some(json!(5)), "read your own write: {body:#}");
}
on_both_stores!(
    a_second_instances_write_reaches_the_summary_within_the_lag,
    a_second_instances_write_reaches_the_summary_within_the_lag
);
