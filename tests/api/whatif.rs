//! What-if routes over HTTP: the original's shapes, limits with the period's top-ups,
//! the bill equal to the summary, bad questions refused, tenants kept apart. The clock
//! stands at 2026-11-15 12:00 UTC: 14 whole days of November's 30. Starter: base 2,900,
//! renders_3d 10 @100, ai_generations 20 @75, storage_gb 5 @50, api_calls 10,000 @1,
//! team_members 3 (block).

use reqwest::Method;
use serde_json::{json, Value};
use usage_ledger::auth::Role;

use crate::common::TestDb;
use crate::helpers::{spawn_app, without_request_id, TestApp};
use crate::on_both_stores;

async fn record(app: &TestApp, brand: &str, metric: &str, value: u64) {
    let a = app
        .post(
            "record",
            &app.admin,
            json!({ "brandId": brand, "metric": metric, "value": value }),
        )
        .await;
    assert!(a.status.is_success(), "record: {:#}", a.body);
}

async fn grant(app: &TestApp, brand: &str, metric: &str, units: u64) {
    let body = json!({ "brandId": brand, "metric": metric, "units": units, "reason": "goodwill" });
    let a = app.post("topups/grant", &app.admin, body).await;
    assert_eq!(a.status, 201, "grant: {:#}", a.body);
}

async fn simulate(app: &TestApp, body: Value) -> Value {
    let a = app.post("topups/simulate", &app.admin, body).await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    a.body
}

async fn a_simulated_top_up_has_the_originals_shape_and_counts_the_periods_top_ups(db: &TestDb) {
    // renders_3d 7 of 10 at 0.5 a day (7 / 14 days): +5 units → limit 15, 6 days to the
    // limit become 16. After a grant of 4 the same question starts from 14: 14 and 24.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    record(&app, "acme", "renders_3d", 7).await;
    let ask = json!({ "brandId": "acme", "metric": "renders_3d", "units": 5 });
    let s = simulate(&app, ask.clone()).await;
    let expected = json!({
        "brandId": "acme", "period": "2026-11", "metric": "renders_3d", "unit": "render",
        "baseLimit": 10, "bonusUnits": 0, "effectiveLimit": 10, "simulatedLimit": 15,
        "current": 7, "currentPercentage": 70.0, "simulatedPercentage": 46.67,
        "originalDaysToLimit": 6.0, "simulatedDaysToLimit": 16.0, "regainedDays": 10.0,
        "estimatedCostCents": 500, "overagePolicy": "charge",
    });
    assert_eq!(s, expected);
    grant(&app, "acme", "renders_3d", 4).await;
    let s = simulate(&app, ask).await;
    assert_eq!(
        (&s["bonusUnits"], &s["effectiveLimit"], &s["simulatedLimit"]),
        (&json!(4), &json!(14), &json!(19))
    );
    assert_eq!(s["currentPercentage"], 50.0);
    assert_eq!(s["originalDaysToLimit"], 14.0);
    assert_eq!(s["simulatedDaysToLimit"], 24.0);
    // No units: nothing moves (0 is allowed, as in the original); block has no cost.
    let s = simulate(&app, json!({ "brandId": "acme", "metric": "team_members" })).await;
    assert_eq!(s["simulatedLimit"], s["effectiveLimit"]);
    assert_eq!(s["originalDaysToLimit"], Value::Null);
    assert_eq!(s["estimatedCostCents"], Value::Null);
    assert_eq!(s["overagePolicy"], "block");
}
on_both_stores!(
    a_simulated_top_up_has_the_originals_shape_and_counts_the_periods_top_ups,
    a_simulated_top_up_has_the_originals_shape_and_counts_the_periods_top_ups
);

async fn the_bill_equals_the_summarys_estimated_cost_with_tax_by_country(db: &TestDb) {
    // renders_3d 13 with 2 topped up: limit 12, 1 over, 100. storage_gb 6 of 5: 50.
    // Overage 150, subtotal 2,900 + 150 = 3,050: US 0 % → 3,050; FR 20 % → 610, 3,660.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    record(&app, "acme", "renders_3d", 13).await;
    grant(&app, "acme", "renders_3d", 2).await;
    assert_eq!(app.set_gauge("acme", "storage_gb", 6).await.status, 200);
    let summary = app.get("summary/acme", &app.admin).await.body;
    let cost = &summary["summary"]["estimatedCost"];
    assert_eq!(
        (&cost["overage"], &cost["total"]),
        (&json!(150), &json!(3_050))
    );

    let us = app.get("bill/current/acme?country=US", &app.admin).await;
    assert_eq!(us.status, 200, "{:#}", us.body);
    let b = &us.body;
    assert_eq!(b["totalOverageCost"], cost["overage"]);
    assert_eq!(b["subtotal"], cost["total"]);
    assert_eq!(b["basePrice"], cost["base"]);
    assert_eq!(
        (&b["taxRate"], &b["tax"], &b["total"]),
        (&json!(0.0), &json!(0), &json!(3_050))
    );
    assert_eq!(b["usageCosts"], json!({}));
    assert_eq!(b["totalUsageCost"], 0);
    assert_eq!(
        b["overageCosts"],
        json!({ "renders_3d": 100, "storage_gb": 50 })
    );
    assert_eq!(
        (&b["period"], &b["plan"], &b["currency"]),
        (&json!("2026-11"), &json!("starter"), &json!("EUR"))
    );
    let line = b["breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["metric"] == "renders_3d")
        .unwrap();
    assert_eq!(
        line,
        &json!({ "metric": "renders_3d", "quantity": 13, "baseLimit": 10, "limit": 12,
                 "overage": 1, "unitPrice": 100.0, "cost": 100 })
    );

    let fr = app
        .get("bill/current/acme?country=fr", &app.admin)
        .await
        .body;
    assert_eq!(
        (&fr["country"], &fr["tax"], &fr["total"]),
        (&json!("FR"), &json!(610), &json!(3_660))
    );
    let default = app.get("bill/current/acme", &app.admin).await.body;
    assert_eq!(
        (&default["country"], &default["total"]),
        (&json!("FR"), &json!(3_660))
    );
}
on_both_stores!(
    the_bill_equals_the_summarys_estimated_cost_with_tax_by_country,
    the_bill_equals_the_summarys_estimated_cost_with_tax_by_country
);

async fn an_estimate_is_the_marginal_cost_apart_from_the_cumulative_and_the_total(db: &TestDb) {
    // renders_3d 12: 2 over, 200 so far, total 3,100. One more: 100 alone, 300 for the
    // metric, 3,200 in all. A full block quota says it would refuse.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    record(&app, "acme", "renders_3d", 12).await;
    let e = app
        .post(
            "estimate",
            &app.admin,
            json!({ "brandId": "acme", "metric": "renders_3d" }),
        )
        .await;
    assert_eq!(e.status, 200, "{:#}", e.body);
    assert_eq!(
        e.body,
        json!({
            "brandId": "acme", "period": "2026-11", "metric": "renders_3d", "quantity": 1,
            "current": 12, "limit": 10, "effectiveLimit": 10, "unlimited": false,
            "overagePolicy": "charge", "allowed": true, "willExceed": true,
            "overageAmount": 1, "estimatedCost": 100, "currentOverageCost": 200,
            "cumulativeOverageCost": 300, "currentTotal": 3_100, "totalAfter": 3_200,
        })
    );
    assert_eq!(app.set_gauge("acme", "team_members", 3).await.status, 200);
    let seats = app
        .post(
            "estimate",
            &app.admin,
            json!({ "brandId": "acme", "metric": "team_members", "quantity": 1 }),
        )
        .await
        .body;
    assert_eq!(
        (&seats["allowed"], &seats["overagePolicy"]),
        (&json!(false), &json!("block"))
    );
    assert_eq!(seats["estimatedCost"], 0);
    let free = app
        .post(
            "estimate",
            &app.admin,
            json!({ "brandId": "acme", "metric": "exports_gltf", "quantity": 9 }),
        )
        .await
        .body;
    assert_eq!(
        (&free["limit"], &free["unlimited"], &free["estimatedCost"]),
        (&json!(999_999), &json!(true), &json!(0))
    );
    assert_eq!(free["overagePolicy"], "none");
}
on_both_stores!(
    an_estimate_is_the_marginal_cost_apart_from_the_cumulative_and_the_total,
    an_estimate_is_the_marginal_cost_apart_from_the_cumulative_and_the_total
);

async fn plans_are_compared_cheapest_first_and_the_recommendation_is_never_the_own_plan(
    db: &TestDb,
) {
    // renders_3d 30 and api_calls 12,000 on starter: 2,000 + 2,000 overage, 6,900;
    // professional 9,900 (3,000 more). 300 % of renders: professional is recommended.
    // An enterprise brand at 90 % of its calls is told it is on the top tier.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    record(&app, "acme", "renders_3d", 30).await;
    record(&app, "acme", "api_calls", 12_000).await;
    let a = app.get("compare-plans/acme", &app.admin).await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    let c = &a.body;
    assert_eq!(
        (&c["plan"], &c["period"]),
        (&json!("starter"), &json!("2026-11"))
    );
    let first = &c["comparisons"][0];
    assert_eq!(
        first,
        &json!({ "plan": "starter", "name": "Starter", "basePrice": 2_900, "estimatedOverage": 4_000,
                 "total": 6_900, "savings": 0, "extraCostVsCheapest": 0, "current": true,
                 "blockedMetrics": [], "recommendation": "✅ Best value for your usage" })
    );
    let second = &c["comparisons"][1];
    assert_eq!(
        (&second["plan"], &second["total"]),
        (&json!("professional"), &json!(9_900))
    );
    assert_eq!(
        (&second["savings"], &second["extraCostVsCheapest"]),
        (&json!(3_000), &json!(3_000))
    );
    assert_eq!(c["comparisons"].as_array().unwrap().len(), 4);
    assert_eq!(c["recommendedPlan"]["status"], "upgrade");
    assert_eq!(c["recommendedPlan"]["plan"], "professional");

    app.register("bigco", "enterprise").await;
    record(&app, "bigco", "api_calls", 9_000_000).await;
    let top = app.get("compare-plans/bigco", &app.admin).await.body;
    assert_eq!(top["recommendedPlan"]["status"], "top-tier");
    assert_eq!(top["recommendedPlan"]["plan"], Value::Null);
}
on_both_stores!(
    plans_are_compared_cheapest_first_and_the_recommendation_is_never_the_own_plan,
    plans_are_compared_cheapest_first_and_the_recommendation_is_never_the_own_plan
);

async fn projections_run_on_whole_days_against_the_effective_limits(db: &TestDb) {
    // renders_3d 7 in 14 days: 0.5/day → 15 by 30 November, 150 % "Action immédiate";
    // ai_generations 9: 19 by the end, 95 % "Sous tension". Over 30 days renders cost
    // (15 - 10) × 100 = 500: 2,900 + 500. A grant of 10 renders makes 15 of 20 "Stable".
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    record(&app, "acme", "renders_3d", 7).await;
    record(&app, "acme", "ai_generations", 9).await;
    let a = app.get("projections/acme", &app.admin).await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    let p = &a.body;
    assert_eq!(
        (&p["days"], &p["elapsedDays"], &p["periodDays"]),
        (&json!(30), &json!(14), &json!(30))
    );
    assert_eq!(
        (
            &p["projectedOverage"],
            &p["projectedMonthly"],
            &p["currentDaily"]
        ),
        (&json!(500), &json!(3_400), &json!(0))
    );
    assert_eq!(p["recommendations"].as_array().unwrap().len(), 2, "{:#}", p);
    let renders = &p["velocity"][0];
    assert_eq!(
        renders,
        &json!({ "metric": "renders_3d", "label": "Rendus 3D", "unit": "render", "current": 7,
                 "limit": 10, "dailyRate": 0.5, "projectedUnits": 15, "projectedPercentage": 150.0,
                 "daysToLimit": 6.0, "status": "critical", "statusLabel": "Action immédiate" })
    );
    let ai = &p["velocity"][1];
    assert_eq!(
        (&ai["metric"], &ai["status"], &ai["statusLabel"]),
        (
            &json!("ai_generations"),
            &json!("warning"),
            &json!("Sous tension")
        )
    );

    grant(&app, "acme", "renders_3d", 10).await;
    let p = app.get("projections/acme?days=7", &app.admin).await.body;
    assert_eq!(p["days"], 7);
    let renders = p["velocity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["metric"] == "renders_3d")
        .unwrap()
        .clone();
    assert_eq!(
        (&renders["limit"], &renders["projectedPercentage"]),
        (&json!(20), &json!(75.0))
    );
    assert_eq!(
        (&renders["status"], &renders["statusLabel"]),
        (&json!("ok"), &json!("Stable"))
    );
}
on_both_stores!(
    projections_run_on_whole_days_against_the_effective_limits,
    projections_run_on_whole_days_against_the_effective_limits
);

async fn bad_what_if_questions_are_precise_and_change_nothing(db: &TestDb) {
    // Each refusal names its cause, and the log is the same afterwards.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    record(&app, "acme", "renders_3d", 1).await;
    let before = app.audit("acme").await;
    let sim = |body: Value| ("topups/simulate", body);
    let cases = [
        (
            sim(json!({ "brandId": "acme", "metric": "exports_gltf", "units": 1 })),
            422,
            "metric-not-in-plan",
        ),
        (
            sim(json!({ "brandId": "acme", "metric": "teleports", "units": 1 })),
            422,
            "unknown-metric",
        ),
        (
            sim(json!({ "brandId": "acme", "metric": "renders_3d", "units": -1 })),
            422,
            "invalid-body",
        ),
        (
            sim(json!({ "brandId": "acme", "metric": "renders_3d", "units": 100_000_001u64 })),
            422,
            "out-of-range",
        ),
        (
            (
                "estimate",
                json!({ "brandId": "acme", "metric": "renders_3d", "quantity": 0 }),
            ),
            422,
            "out-of-range",
        ),
        (
            (
                "estimate",
                json!({ "brandId": "acme", "metric": "renders_3d", "extra": 1 }),
            ),
            422,
            "invalid-body",
        ),
    ];
    for ((path, body), status, kind) in cases {
        let a = app.post(path, &app.admin, body.clone()).await;
        a.assert_problem(status, kind);
    }
    for (path, status, kind) in [
        ("projections/acme?days=0", 422, "out-of-range"),
        ("projections/acme?days=367", 422, "out-of-range"),
        ("projections/acme?days=soon", 400, "bad-request"),
        ("bill/current/acme?country=ZZ", 422, "unknown-country"),
        ("compare-plans/ghost", 404, "not-found"),
    ] {
        app.get(path, &app.admin).await.assert_problem(status, kind);
    }
    assert_eq!(app.audit("acme").await, before);
}
on_both_stores!(
    bad_what_if_questions_are_precise_and_change_nothing,
    bad_what_if_questions_are_precise_and_change_nothing
);

/// The five routes for `brand`.
fn routes(brand: &str) -> Vec<(Method, String, Option<Value>)> {
    let ask = json!({ "brandId": brand, "metric": "renders_3d", "units": 1 });
    vec![
        (Method::POST, "topups/simulate".into(), Some(ask)),
        (Method::GET, format!("compare-plans/{brand}"), None),
        (Method::GET, format!("projections/{brand}"), None),
        (
            Method::POST,
            "estimate".into(),
            Some(json!({ "brandId": brand, "metric": "renders_3d" })),
        ),
        (Method::GET, format!("bill/current/{brand}"), None),
    ]
}

async fn another_tenant_learns_nothing_from_what_if_routes(db: &TestDb) {
    // Brand `rival` asks about `acme`: word for word the 404 of a brand that does not
    // exist. Acme itself is answered; a service key of acme may meter, not read.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    app.register("rival", "starter").await;
    let rival = app.token(Role::Brand, &["rival"]);
    let acme = app.token(Role::Brand, &["acme"]);
    let service = app.token(Role::Service, &["acme"]);
    for ((method, path, body), (_, ghost_path, ghost_body)) in
        routes("acme").into_iter().zip(routes("ghost"))
    {
        let theirs = app
            .call(method.clone(), &path, Some(&rival), body.clone())
            .await;
        theirs.assert_problem(404, "not-found");
        let unknown = app
            .call(method.clone(), &ghost_path, Some(&app.admin), ghost_body)
            .await;
        let strip = |v: &Value, b: &str| without_request_id(v).to_string().replace(b, "<brand>");
        assert_eq!(
            strip(&theirs.body, "acme"),
            strip(&unknown.body, "ghost"),
            "{path}"
        );
        let own = app
            .call(method.clone(), &path, Some(&acme), body.clone())
            .await;
        assert_eq!(own.status, 200, "{path}: {:#}", own.body);
        let metering = app.call(method, &path, Some(&service), body).await;
        metering.assert_problem(403, "forbidden");
    }
}
on_both_stores!(
    another_tenant_learns_nothing_from_what_if_routes,
    another_tenant_learns_nothing_from_what_if_routes
);
