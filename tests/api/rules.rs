//! The rules users expect, through HTTP: gauges are set (and lowering frees capacity),
//! alerts resolve and fire again, a consuming check answers the state after it, and the
//! history says where credit and corrections came from.

use ledger_aggregates::{BrandId, MetricKey};
use serde_json::{json, Value};
use usage_ledger::cli::reset::{self, ResetArgs};
use usage_ledger::startup::open_engine;

use crate::common::{manual_clock, TestDb};
use crate::helpers::{spawn_app, test_settings, TestApp};
use crate::on_both_stores;

fn thresholds(alerts: &Value) -> Vec<u64> {
    alerts
        .as_array()
        .expect("an alert list")
        .iter()
        .map(|a| a["threshold"].as_u64().expect("a threshold"))
        .collect()
}

async fn consume(app: &TestApp, metric: &str, n: u64, key: &str) -> Value {
    let body = json!({
        "brandId": "acme", "metric": metric, "requestedAmount": n,
        "consume": true, "idempotencyKey": key
    });
    let a = app.post("check-quota", &app.admin, body).await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    a.body
}

async fn gauge_levels_are_set_and_lowering_frees_a_seat(db: &TestDb) {
    // Seats are a level: 3 of starter's 3, a 4th refused with the decision, 2 frees one
    // at once, and the same key again answers the first result without a new event.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let full = app.set_gauge("acme", "team_members", 3).await;
    assert_eq!(full.status, 200, "{:#}", full.body);
    assert_eq!(full.body["previousLevel"], 0);
    assert_eq!(full.body["level"], 3);
    assert_eq!(full.body["replayed"], false);
    assert_eq!(full.body["state"]["limit"], 3);
    assert_eq!(thresholds(&full.body["alerts"]), [50, 75, 90]);
    app.set_gauge("acme", "team_members", 4)
        .await
        .assert_problem(409, "quota-exceeded");

    let path = "brands/acme/gauges/team_members";
    let lower = json!({ "level": 2, "idempotencyKey": "seats-2" });
    let lowered = app.put(path, &app.admin, lower.clone()).await;
    assert_eq!(lowered.status, 200, "{:#}", lowered.body);
    assert_eq!(lowered.body["previousLevel"], 3);
    let events = app.audit("acme").await.len();
    let again = app.put(path, &app.admin, lower).await;
    assert_eq!(again.body["replayed"], true, "{:#}", again.body);
    assert_eq!(again.body["sequence"], lowered.body["sequence"]);
    assert_eq!(app.audit("acme").await.len(), events);

    let check = app
        .post(
            "check-quota",
            &app.admin,
            json!({ "brandId": "acme", "metric": "team_members" }),
        )
        .await;
    assert_eq!(check.body["allowed"], true, "{:#}", check.body);
    assert_eq!(check.body["remaining"], 1);
    assert_eq!(app.set_gauge("acme", "team_members", 3).await.status, 200);
    let usage = app.get("current/acme", &app.admin).await;
    assert_eq!(usage.body["usage"]["team_members"], 3);
}
on_both_stores!(
    gauge_levels_are_set_and_lowering_frees_a_seat,
    gauge_levels_are_set_and_lowering_frees_a_seat
);

async fn adding_to_a_gauge_is_refused_with_the_route_that_sets_it(db: &TestDb) {
    // Recording storage 3 then 3 would bill 6 GB: a record or a consuming check on a
    // gauge is a 422 that names the gauge route, and nothing is written. A level on a
    // counter, an unknown metric or an out-of-range level are 422s too.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let record = json!({ "brandId": "acme", "metric": "storage_gb", "value": 3 });
    let refused = app.post("record", &app.admin, record).await;
    refused.assert_problem(422, "gauge-is-set");
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("PUT /api/v1/usage-billing/brands/{brandId}/gauges/storage_gb"),
        "{detail}"
    );
    let consume = json!({ "brandId": "acme", "metric": "storage_gb", "consume": true });
    app.post("check-quota", &app.admin, consume)
        .await
        .assert_problem(422, "gauge-is-set");
    app.set_gauge("acme", "renders_3d", 2)
        .await
        .assert_problem(422, "not-a-gauge");
    app.set_gauge("acme", "nonsense", 2)
        .await
        .assert_problem(422, "unknown-metric");
    app.set_gauge("acme", "storage_gb", 2_000_000_000)
        .await
        .assert_problem(422, "out-of-range");
    assert!(app.audit("acme").await.is_empty());
}
on_both_stores!(
    adding_to_a_gauge_is_refused_with_the_route_that_sets_it,
    adding_to_a_gauge_is_refused_with_the_route_that_sets_it
);

async fn a_consuming_check_answers_the_state_after_it(db: &TestDb) {
    // The README's walk-through: 16 of 20 AI generations, then consume 2. The answer is
    // the ledger after it (18 used, 2 left), with the 90 % alert it raised; the same key
    // again is the same answer, marked replayed.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let sixteen = json!({ "brandId": "acme", "metric": "ai_generations", "value": 16 });
    assert_eq!(app.post("record", &app.admin, sixteen).await.status, 201);
    let first = consume(&app, "ai_generations", 2, "consume-1").await;
    assert_eq!(first["consumed"], true);
    assert_eq!(
        (&first["current"], &first["remaining"]),
        (&json!(18), &json!(2))
    );
    assert_eq!(first["overage"], 0);
    assert_eq!(first["replayed"], false);
    assert_eq!(thresholds(&first["alerts"]), [90]);
    assert_eq!(
        first["alerts"][0]["message"],
        "Générations IA à 90% du quota"
    );
    let again = consume(&app, "ai_generations", 2, "consume-1").await;
    assert_eq!(again["replayed"], true);
    assert_eq!(again["current"], 18);
    let usage = app.get("current/acme", &app.admin).await;
    assert_eq!(usage.body["usage"]["ai_generations"], 18);

    // 3 more go 1 over: the marginal and the cumulative cost are those after it.
    let over = consume(&app, "ai_generations", 3, "consume-2").await;
    assert_eq!(
        (&over["current"], &over["remaining"]),
        (&json!(21), &json!(0))
    );
    assert_eq!(over["overage"], 1);
    assert_eq!(over["willCharge"], true);
    assert_eq!(over["estimatedCost"], 75);
    assert_eq!(over["cumulativeOverageCost"], 75);
}
on_both_stores!(
    a_consuming_check_answers_the_state_after_it,
    a_consuming_check_answers_the_state_after_it
);

async fn an_unlimited_metric_answers_as_the_original_did(db: &TestDb) {
    // Starter has no quota for exports_gltf: limit and remaining are 999999 and the policy
    // "none", as the original answered, flagged unlimited; nothing is ever refused.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let a = consume(&app, "exports_gltf", 5, "gltf-1").await;
    assert_eq!(a["allowed"], true);
    assert_eq!(a["unlimited"], true);
    assert_eq!(
        (&a["limit"], &a["remaining"]),
        (&json!(999999), &json!(999999))
    );
    assert_eq!(a["effectiveLimit"], 999999);
    assert_eq!(a["overagePolicy"], "none");
    assert_eq!(a["current"], 5);
    let limited = consume(&app, "renders_3d", 1, "r3d-1").await;
    assert_eq!(limited["unlimited"], false);
    assert_eq!(limited["overagePolicy"], "charge");
}
on_both_stores!(
    an_unlimited_metric_answers_as_the_original_did,
    an_unlimited_metric_answers_as_the_original_did
);

async fn alerts_resolve_on_a_top_up_and_fire_again(db: &TestDb) {
    // 18 of 20 raises 50/75/90; a grant of 20 makes it 18 of 40 (45 %) and resolves all
    // three; 18 more (36 of 40, 90 %) raise them again. The summary lists what stands,
    // the timeline every crossing and resolution, newest first, and pages back.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let eighteen = json!({ "brandId": "acme", "metric": "ai_generations", "value": 18 });
    assert_eq!(
        app.post("record", &app.admin, eighteen.clone())
            .await
            .status,
        201
    );
    let grant =
        json!({ "brandId": "acme", "metric": "ai_generations", "units": 20, "reason": "goodwill" });
    assert_eq!(
        app.post("topups/grant", &app.admin, grant).await.status,
        201
    );
    let quiet = app.get("summary/acme", &app.admin).await;
    assert_eq!(
        quiet.body["summary"]["alerts"],
        json!([]),
        "{:#}",
        quiet.body
    );

    let again = app.post("record", &app.admin, eighteen).await;
    assert_eq!(thresholds(&again.body["alerts"]), [50, 75, 90]);
    let summary = app.get("summary/acme", &app.admin).await;
    let alerts = &summary.body["summary"]["alerts"];
    assert_eq!(thresholds(alerts), [90], "{alerts:#}");
    assert_eq!(alerts[0]["message"], "Générations IA à 90% du quota");

    let timeline = app
        .get("brands/acme/periods/2026-11/alerts", &app.admin)
        .await;
    assert_eq!(timeline.status, 200, "{:#}", timeline.body);
    let moves: Vec<(String, u64)> = timeline.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["threshold"].as_u64().unwrap(),
            )
        })
        .collect();
    let expect = |kind: &str, ts: [u64; 3]| ts.map(|t| (kind.to_owned(), t));
    let expected = [
        expect("crossed", [90, 75, 50]),
        expect("resolved", [90, 75, 50]),
        expect("crossed", [90, 75, 50]),
    ]
    .concat();
    assert_eq!(moves, expected);
    let resolved = &timeline.body["entries"][3];
    assert_eq!(resolved["effectiveLimit"], 40);
    assert_eq!(resolved["message"], "Générations IA à 45% du quota");
    assert!(timeline.body["nextBefore"].is_null());

    // Pages of two visit every entry exactly once.
    let mut paged = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let path = match before {
            Some(b) => format!("brands/acme/periods/2026-11/alerts?limit=2&before={b}"),
            None => "brands/acme/periods/2026-11/alerts?limit=2".to_owned(),
        };
        let page = app.get(&path, &app.admin).await;
        assert_eq!(page.status, 200, "{:#}", page.body);
        let entries = page.body["entries"].as_array().unwrap();
        assert!(!entries.is_empty() || page.body["nextBefore"].is_null());
        paged.extend(entries.iter().map(|e| e["sequence"].as_u64().unwrap()));
        match page.body["nextBefore"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let all: Vec<u64> = timeline.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(paged, all);
}
on_both_stores!(
    alerts_resolve_on_a_top_up_and_fire_again,
    alerts_resolve_on_a_top_up_and_fire_again
);

async fn the_history_says_where_credit_and_corrections_came_from(db: &TestDb) {
    // A grant shows as a top_up entry with its actor and reason-as-reference, and the
    // CLI reset's correction as an adjusted entry with who made it and why.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let record = json!({ "brandId": "acme", "metric": "renders_3d", "value": 8 });
    assert_eq!(app.post("record", &app.admin, record).await.status, 201);
    let grant =
        json!({ "brandId": "acme", "metric": "renders_3d", "units": 5, "reason": "goodwill" });
    assert_eq!(
        app.post("topups/grant", &app.admin, grant).await.status,
        201
    );
    let (cli, stores) = open_engine(&test_settings(db), manual_clock())
        .await
        .expect("the CLI's engine");
    let args = ResetArgs {
        brand: BrandId::parse("acme").unwrap(),
        metric: MetricKey::parse("renders_3d").unwrap(),
        period: None,
        target: 20,
        topup: 0,
        price_cents: None,
        dry_run: false,
    };
    reset::run(&cli, stores.log.as_ref(), &args, &mut Vec::new())
        .await
        .expect("reset");
    cli.drain().await;

    let history = app.get("history/acme", &app.admin).await;
    assert_eq!(history.status, 200, "{:#}", history.body);
    let entries = history.body["entries"].as_array().unwrap();
    let kinds: Vec<_> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["adjusted", "top_up", "recorded"]);
    let (adjusted, top_up) = (&entries[0], &entries[1]);
    assert_eq!(adjusted["value"], -5, "8 to 20 % of 15: 3");
    assert!(adjusted["reason"].as_str().unwrap().contains("quota reset"));
    assert!(adjusted["actor"].is_string());
    assert_eq!(top_up["value"], 5);
    assert_eq!(top_up["unit"], "render");
    assert!(
        top_up["reference"].as_str().unwrap().contains("goodwill"),
        "{top_up:#}"
    );
    assert!(entries[2].get("reason").is_none());
}
on_both_stores!(
    the_history_says_where_credit_and_corrections_came_from,
    the_history_says_where_credit_and_corrections_came_from
);

async fn a_downgrade_waits_for_the_next_period_unless_an_admin_says_now(db: &TestDb) {
    // Business to starter in November keeps November on business (what was paid for)
    // and opens December on starter; "effective": "now" applies at once and prorates
    // the base; an unknown "effective" is a 422.
    let app = spawn_app(db).await;
    app.register("acme", "business").await;
    let used = json!({ "brandId": "acme", "metric": "renders_3d", "value": 1 });
    assert_eq!(app.post("record", &app.admin, used).await.status, 201);
    let down = app
        .put("brands/acme", &app.admin, json!({ "plan": "starter" }))
        .await;
    assert_eq!(down.status, 200, "{:#}", down.body);
    assert_eq!(down.body["changed"], true);
    assert_eq!(down.body["effectiveFrom"], "2026-12");
    assert!(down.body["appliedTo"].is_null());
    let november = app.get("summary/acme", &app.admin).await;
    assert_eq!(november.body["plan"]["id"], "business");
    let december = app.get("summary/acme?period=2026-12", &app.admin).await;
    assert_eq!(december.body["plan"]["id"], "starter");

    app.put(
        "brands/acme",
        &app.admin,
        json!({ "plan": "starter", "effective": "soon" }),
    )
    .await
    .assert_problem(422, "invalid-body");
    let now = app
        .put(
            "brands/acme",
            &app.admin,
            json!({ "plan": "starter", "effective": "now" }),
        )
        .await;
    assert_eq!(now.status, 200, "{:#}", now.body);
    assert_eq!(now.body["appliedTo"], "2026-11");
    assert!(now.body["effectiveFrom"].is_null());
    let s = app.get("summary/acme", &app.admin).await;
    assert_eq!(s.body["plan"]["id"], "starter");
    let base = s.body["summary"]["estimatedCost"]["base"].as_i64().unwrap();
    assert!(
        2_900 < base && base < 29_900,
        "prorated between the two: {base}"
    );
}
on_both_stores!(
    a_downgrade_waits_for_the_next_period_unless_an_admin_says_now,
    a_downgrade_waits_for_the_next_period_unless_an_admin_says_now
);

async fn a_plan_change_before_any_usage_still_bills_each_plan_its_share(db: &TestDb) {
    // A brand on starter with nothing recorded yet moves to professional mid-month: the
    // period opens on starter at the change, so the base is split between the two
    // (starter until now, professional to the end), not professional for the month.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let up = app
        .put("brands/acme", &app.admin, json!({ "plan": "professional" }))
        .await;
    assert_eq!(up.status, 200, "{:#}", up.body);
    assert_eq!(up.body["appliedTo"], "2026-11");
    let types: Vec<_> = app
        .audit("acme")
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["PeriodOpened", "PlanApplied"]);
    let s = app.get("summary/acme", &app.admin).await;
    assert_eq!(s.body["plan"]["id"], "professional");
    let base = s.body["summary"]["estimatedCost"]["base"].as_i64().unwrap();
    assert!(
        2_900 < base && base < 9_900,
        "prorated between the two: {base}"
    );
}
on_both_stores!(
    a_plan_change_before_any_usage_still_bills_each_plan_its_share,
    a_plan_change_before_any_usage_still_bills_each_plan_its_share
);
