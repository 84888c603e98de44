//! Finance reconciliation over HTTP: `GET /finance/overages?period=`, as JSON and CSV.
//!
//! Every amount is checked against a hand computation on the default catalog's
//! `starter` plan (renders_3d: 10 included, then 100 cents a unit; ai_generations: 20
//! included, then 75 cents a unit; base 2,900 cents), then against the two other ways
//! to get the same figures: each brand's summary, and a fresh fold of the whole log.

use chrono::{DateTime, TimeZone, Utc};
use ledger_aggregates::PeriodKey;
use ledger_projections::{LogPosition, ReadModels};
use ledger_replay::Replayer;
use reqwest::header::{HeaderMap, ACCEPT};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use usage_ledger::auth::Role;

use crate::common::TestDb;
use crate::helpers::{answer, spawn_app, Answer, TestApp, PREFIX};
use crate::on_both_stores;

/// Log records per page of the test's replay: small enough that the replay of every
/// test pages at least once on a long log, large enough to stay quick.
const REPLAY_PAGE_EVENTS_MAX: i64 = 500;

fn at(month: u32, day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, hour, 0, 0).unwrap()
}

async fn record(app: &TestApp, brand: &str, metric: &str, value: u64, occurred: Option<&str>) {
    let mut body = json!({ "brandId": brand, "metric": metric, "value": value });
    if let Some(t) = occurred {
        body["occurredAt"] = json!(t);
    }
    let a = app.post("record", &app.admin, body).await;
    assert_eq!(a.status, 201, "{brand} {metric} {value}: {:#}", a.body);
}

/// `GET finance/overages?<query>` with an optional `Accept`, as `token`.
async fn finance(
    app: &TestApp,
    query: &str,
    token: &str,
    accept: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .get(format!("{}{PREFIX}/finance/overages?{query}", app.base))
        .bearer_auth(token);
    if let Some(a) = accept {
        req = req.header(ACCEPT, a);
    }
    req.send().await.expect("request")
}

/// The answer to an admin's `GET finance/overages?<query>`, JSON or problem.
async fn as_admin(app: &TestApp, query: &str) -> Answer {
    answer(finance(app, query, &app.admin, None).await).await
}

/// The JSON answer for `period`, asserted 200.
async fn overages(app: &TestApp, period: &str) -> Value {
    let a = as_admin(app, &format!("period={period}")).await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    assert_eq!(a.content_type, "application/json");
    a.body
}

/// November (the harness's current period): four brands on `starter`, three of them
/// over a quota, plus October usage of acme that November must not show.
async fn november_usage(app: &TestApp) {
    app.clock.set(at(10, 10, 12));
    for brand in ["acme", "globex", "initech", "umbrella"] {
        app.register(brand, "starter").await;
    }
    record(app, "acme", "renders_3d", 30, None).await;
    app.clock.set(crate::common::t0());
    // acme: 3 renders over (3 × 100) and 3 generations over (3 × 75).
    record(app, "acme", "renders_3d", 13, None).await;
    record(app, "acme", "ai_generations", 23, None).await;
    // globex: 25 renders in two records, 15 over (15 × 100).
    record(app, "globex", "renders_3d", 12, None).await;
    record(app, "globex", "renders_3d", 13, None).await;
    // initech: exactly at its generation limit and under its render limit: no line.
    record(app, "initech", "ai_generations", 20, None).await;
    record(app, "initech", "renders_3d", 4, None).await;
    // umbrella: one generation over (1 × 75).
    record(app, "umbrella", "ai_generations", 21, None).await;
}

/// Each brand's `estimatedCost.overage` for `period`, from its summary.
async fn summary_overage(app: &TestApp, brand: &str, period: &str) -> i64 {
    let s = app
        .get(&format!("summary/{brand}?period={period}"), &app.admin)
        .await;
    assert_eq!(s.status, 200, "{:#}", s.body);
    s.body["summary"]["estimatedCost"]["overage"]
        .as_i64()
        .unwrap()
}

/// The read models `ledger_replay` folds from the whole log, read on a connection of
/// its own: what an auditor's replay computes, independent of the projector's rows.
async fn replay(db: &TestDb) -> ReadModels {
    let (_, store) = db.stores().await;
    let mut replayer = Replayer::new();
    let mut after = LogPosition::START;
    loop {
        let page = store
            .read_log(after, None, REPLAY_PAGE_EVENTS_MAX)
            .await
            .expect("read the log");
        let Some(last) = page.last() else {
            return replayer.into_models();
        };
        after = last.at;
        replayer
            .apply_all(&page)
            .expect("every stored event decodes and follows its stream");
    }
}

/// Assert the answer's lines and totals are the replay's, and its brands' overages and
/// adjustments sum to them.
#[track_caller]
fn assert_matches_replay(body: &Value, replayed: &ReadModels, period: &str) {
    let period = PeriodKey::parse(period).unwrap();
    // Rates are compared as decimal text: the answer's are JSON numbers.
    let lines: Vec<Value> = replayed
        .overage_ledger
        .lines(period)
        .into_iter()
        .map(|l| {
            json!({
                "brandId": l.brand.to_string(), "metric": l.metric.to_string(),
                "kind": serde_json::to_value(l.kind).unwrap(), "unitsOver": l.units,
                "rate": l.rate.map(|r| r.normalize().to_string()), "amount": l.amount.minor(),
            })
        })
        .collect();
    let answered: Vec<Value> = body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l["rate"] = json!(l["rate"].as_number().map(|r| r.to_string()));
            l
        })
        .collect();
    assert_eq!(answered, lines, "lines differ from a replay of the log");
    let t = replayed.overage_ledger.totals(period);
    assert_eq!(
        body["totals"],
        json!({
            "charged": t.charged.minor(),
            "adjustments": t.adjustments.minor(),
            "total": t.total.minor(),
        })
    );
    let costs: Vec<_> = replayed.period_cost.in_period(period).collect();
    let overage: i64 = costs.iter().map(|(_, c)| c.overage.minor()).sum();
    let adjustment: i64 = costs.iter().map(|(_, c)| c.adjustment.minor()).sum();
    assert_eq!(body["totals"]["charged"], overage);
    assert_eq!(body["totals"]["adjustments"], adjustment);
    assert_eq!(body["brandTotals"]["overage"], overage);
    assert_eq!(body["brandTotals"]["adjustment"], adjustment);
}

async fn finance_lists_each_overage_line_of_the_period_to_the_cent(db: &TestDb) {
    // Four brands on starter use November: the answer has one charge line per metric
    // over its limit, in brand then metric order, at the plan's rate, and totals to the
    // cent; every brand with usage is listed, with or without overage. acme's October
    // usage stays in October.
    let app = spawn_app(db).await;
    november_usage(&app).await;

    let body = overages(&app, "2026-11").await;
    let line = |brand: &str, metric: &str, units: i64, rate: i64| {
        json!({ "brandId": brand, "metric": metric, "kind": "charge",
                "unitsOver": units, "rate": rate, "amount": units * rate })
    };
    let brand = |id: &str, overage: i64| {
        json!({ "brandId": id, "planId": "starter", "base": 2900, "overage": overage,
                "adjustment": 0, "invoiceTotal": 2900 + overage, "total": 2900 + overage,
                "invoiced": false })
    };
    assert_eq!(
        body,
        json!({
            "period": "2026-11",
            "currency": "EUR",
            "lines": [
                line("acme", "ai_generations", 3, 75),
                line("acme", "renders_3d", 3, 100),
                line("globex", "renders_3d", 15, 100),
                line("umbrella", "ai_generations", 1, 75),
            ],
            "totals": { "charged": 2100, "adjustments": 0, "total": 2100 },
            "brands": [
                brand("acme", 525),
                brand("globex", 1500),
                brand("initech", 0),
                brand("umbrella", 75),
            ],
            "brandTotals": { "base": 11600, "overage": 2100, "adjustment": 0,
                             "invoiceTotal": 13700, "total": 13700 },
        })
    );
    // October holds acme's 20 renders over, and only them.
    let october = overages(&app, "2026-10").await;
    assert_eq!(
        october["lines"],
        json!([line("acme", "renders_3d", 20, 100)])
    );
    assert_eq!(october["totals"]["charged"], 2000);
}
on_both_stores!(
    finance_lists_each_overage_line_of_the_period_to_the_cent,
    finance_lists_each_overage_line_of_the_period_to_the_cent
);

async fn the_finance_totals_equal_the_brand_summaries_and_a_replay_of_the_log(db: &TestDb) {
    // Three ways to the same cents: the finance totals, the sum of each brand's summary
    // `estimatedCost.overage`, and a fold of every event of the log from scratch.
    let app = spawn_app(db).await;
    november_usage(&app).await;

    let body = overages(&app, "2026-11").await;
    let mut from_summaries = 0;
    for b in body["brands"].as_array().unwrap() {
        let id = b["brandId"].as_str().unwrap();
        let overage = summary_overage(&app, id, "2026-11").await;
        assert_eq!(b["overage"], overage, "{id}");
        from_summaries += overage;
    }
    assert_eq!(body["totals"]["charged"], from_summaries);
    assert_matches_replay(&body, &replay(db).await, "2026-11");
}
on_both_stores!(
    the_finance_totals_equal_the_brand_summaries_and_a_replay_of_the_log,
    the_finance_totals_equal_the_brand_summaries_and_a_replay_of_the_log
);

async fn the_csv_export_has_a_header_one_row_per_line_and_a_total_row(db: &TestDb) {
    // `Accept: text/csv` answers the same lines as an RFC 4180 file (CRLF line ends)
    // to download, ending with the total in cents.
    let app = spawn_app(db).await;
    november_usage(&app).await;

    let res = finance(&app, "period=2026-11", &app.admin, Some("text/csv")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let headers = res.headers().clone();
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"overages-2026-11.csv\""
    );
    assert_eq!(
        res.text().await.unwrap(),
        "brand_id,metric,kind,units_over,rate,amount_cents\r\n\
         acme,ai_generations,charge,3,75,225\r\n\
         acme,renders_3d,charge,3,100,300\r\n\
         globex,renders_3d,charge,15,100,1500\r\n\
         umbrella,ai_generations,charge,1,75,75\r\n\
         TOTAL,,,,,2100\r\n"
    );
}
on_both_stores!(
    the_csv_export_has_a_header_one_row_per_line_and_a_total_row,
    the_csv_export_has_a_header_one_row_per_line_and_a_total_row
);

async fn a_period_without_usage_answers_no_lines_and_zero_totals(db: &TestDb) {
    // A period nobody used is not an error: 200 with nothing in it, in both formats.
    let app = spawn_app(db).await;
    november_usage(&app).await;

    assert_eq!(
        overages(&app, "2027-03").await,
        json!({
            "period": "2027-03", "currency": "EUR", "lines": [],
            "totals": { "charged": 0, "adjustments": 0, "total": 0 },
            "brands": [],
            "brandTotals": { "base": 0, "overage": 0, "adjustment": 0, "invoiceTotal": 0,
                             "total": 0 },
        })
    );
    let csv = finance(&app, "period=2027-03", &app.admin, Some("text/csv")).await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert_eq!(
        csv.text().await.unwrap(),
        "brand_id,metric,kind,units_over,rate,amount_cents\r\nTOTAL,,,,,0\r\n"
    );
}
on_both_stores!(
    a_period_without_usage_answers_no_lines_and_zero_totals,
    a_period_without_usage_answers_no_lines_and_zero_totals
);

async fn only_admins_read_the_finance_overages(db: &TestDb) {
    // Finance sees every brand's money: a brand token (even of a brand in the period)
    // or a service token gets the 403 of every admin route, no token a 401.
    let app = spawn_app(db).await;
    november_usage(&app).await;
    for role in [Role::Brand, Role::Service] {
        let token = app.token(role, &["acme"]);
        for accept in [None, Some("text/csv")] {
            answer(finance(&app, "period=2026-11", &token, accept).await)
                .await
                .assert_problem(403, "forbidden");
        }
    }
    app.call(Method::GET, "finance/overages?period=2026-11", None, None)
        .await
        .assert_problem(401, "unauthenticated");
}
on_both_stores!(
    only_admins_read_the_finance_overages,
    only_admins_read_the_finance_overages
);

async fn a_missing_period_is_422_and_a_malformed_one_400_like_the_other_reads(db: &TestDb) {
    // Finance reconciles one named period: without one it is a 422 `period-required`
    // (the close's kind). A period that does not parse is refused exactly like the
    // summary's `?period=`, and so is an unknown parameter.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    as_admin(&app, "")
        .await
        .assert_problem(422, "period-required");
    as_admin(&app, "brand=acme")
        .await
        .assert_problem(400, "bad-request");
    for bad in ["2026-13", "26-11", "2026-1", "november", ""] {
        let query = format!("period={bad}");
        let a = as_admin(&app, &query).await;
        a.assert_problem(400, "bad-request");
        let summary = app.get(&format!("summary/acme?{query}"), &app.admin).await;
        assert_eq!(
            (a.status, &a.body["type"]),
            (summary.status, &summary.body["type"]),
            "{bad}"
        );
    }
}
on_both_stores!(
    a_missing_period_is_422_and_a_malformed_one_400_like_the_other_reads,
    a_missing_period_is_422_and_a_malformed_one_400_like_the_other_reads
);

async fn an_accept_that_allows_neither_json_nor_csv_is_refused_with_406(db: &TestDb) {
    // Negotiation follows RFC 9110: JSON by default and for `*/*`, CSV for `text/*`,
    // and a 406 problem when every range the client accepts is another type or q=0.
    let app = spawn_app(db).await;
    november_usage(&app).await;
    for accept in [
        "application/xml",
        "text/html, application/xml;q=0.9",
        "text/csv;q=0, application/json;q=0",
    ] {
        let a = answer(finance(&app, "period=2026-11", &app.admin, Some(accept)).await).await;
        a.assert_problem(406, "not-acceptable");
    }
    let content_type = |h: &HeaderMap| h["content-type"].to_str().unwrap().to_owned();
    for (accept, expected) in [
        ("*/*", "application/json"),
        ("application/json", "application/json"),
        ("application/*", "application/json"),
        ("text/*", "text/csv; charset=utf-8"),
        ("text/csv;q=0.5, application/json", "application/json"),
        (
            "application/json;q=0.5, text/csv",
            "text/csv; charset=utf-8",
        ),
    ] {
        let res = finance(&app, "period=2026-11", &app.admin, Some(accept)).await;
        assert_eq!(res.status(), StatusCode::OK, "{accept}");
        assert_eq!(content_type(res.headers()), expected, "{accept}");
    }
}
on_both_stores!(
    an_accept_that_allows_neither_json_nor_csv_is_refused_with_406,
    an_accept_that_allows_neither_json_nor_csv_is_refused_with_406
);

async fn after_a_close_the_charges_are_the_invoice_and_late_usage_is_an_adjustment(db: &TestDb) {
    // October is used, then closed within the grace: the charge lines are the invoice's
    // lines and the totals its overage. Late usage stamped in October then moves acme's
    // renders 2 units further over: one adjustment line of 2 × 100 cents, while the
    // charges and the invoice stay as invoiced; the adjustment is in the brand's total
    // and in its summary, which show what October comes to now. Late usage that stays
    // under a limit (globex's generations) adds no line. A replay agrees throughout.
    let app = spawn_app(db).await;
    app.clock.set(at(10, 10, 12));
    app.register("acme", "starter").await;
    app.register("globex", "starter").await;
    record(&app, "acme", "renders_3d", 13, None).await;
    record(&app, "acme", "ai_generations", 23, None).await;
    record(&app, "globex", "renders_3d", 12, None).await;

    app.clock.set(at(11, 2, 0));
    let close = app
        .post("periods/2026-10/close", &app.admin, json!({}))
        .await;
    assert_eq!(close.status, 201, "{:#}", close.body);
    let closed = overages(&app, "2026-10").await;
    let mut from_invoices = Vec::new();
    for invoice in close.body["closed"].as_array().unwrap() {
        for l in invoice["lines"].as_array().unwrap() {
            from_invoices.push(json!({
                "brandId": invoice["brandId"], "metric": l["metric"], "kind": "charge",
                "unitsOver": l["overageUnits"], "rate": l["rate"], "amount": l["amount"],
            }));
        }
    }
    assert_eq!(closed["lines"], json!(from_invoices));
    assert_eq!(closed["totals"]["charged"], close.body["totals"]["overage"]);
    assert_eq!(closed["totals"]["charged"], 725);
    assert_eq!(closed["totals"]["adjustments"], 0);
    for b in closed["brands"].as_array().unwrap() {
        assert_eq!(b["invoiced"], true, "{b:#}");
    }
    assert_matches_replay(&closed, &replay(db).await, "2026-10");

    record(&app, "acme", "renders_3d", 2, Some("2026-10-31T22:00:00Z")).await;
    record(
        &app,
        "globex",
        "ai_generations",
        5,
        Some("2026-10-31T22:00:00Z"),
    )
    .await;
    let late = overages(&app, "2026-10").await;
    let charge = |brand: &str, metric: &str, units: i64, rate: i64| {
        json!({ "brandId": brand, "metric": metric, "kind": "charge",
                "unitsOver": units, "rate": rate, "amount": units * rate })
    };
    assert_eq!(
        late["lines"],
        json!([
            charge("acme", "ai_generations", 3, 75),
            charge("acme", "renders_3d", 3, 100),
            { "brandId": "acme", "metric": "renders_3d", "kind": "adjustment",
              "unitsOver": 2, "rate": 100, "amount": 200 },
            charge("globex", "renders_3d", 2, 100),
        ])
    );
    assert_eq!(
        late["totals"],
        json!({ "charged": 725, "adjustments": 200, "total": 925 })
    );
    assert_eq!(
        late["brands"],
        json!([
            { "brandId": "acme", "planId": "starter", "base": 2900, "overage": 525,
              "adjustment": 200, "invoiceTotal": 3425, "total": 3625, "invoiced": true },
            { "brandId": "globex", "planId": "starter", "base": 2900, "overage": 200,
              "adjustment": 0, "invoiceTotal": 3100, "total": 3100, "invoiced": true },
        ])
    );
    assert_eq!(
        late["brandTotals"],
        json!({ "base": 5800, "overage": 725, "adjustment": 200, "invoiceTotal": 6525,
                "total": 6725 })
    );
    // The summaries show the invoice plus its adjustment: 525 + 200 for acme.
    assert_eq!(summary_overage(&app, "acme", "2026-10").await, 725);
    assert_eq!(summary_overage(&app, "globex", "2026-10").await, 200);
    assert_matches_replay(&late, &replay(db).await, "2026-10");
    let csv = finance(&app, "period=2026-10", &app.admin, Some("text/csv")).await;
    let text = csv.text().await.unwrap();
    assert!(
        text.contains("\r\nacme,renders_3d,adjustment,2,100,200\r\n")
            && text.ends_with("\r\nTOTAL,,,,,925\r\n"),
        "{text}"
    );
}
on_both_stores!(
    after_a_close_the_charges_are_the_invoice_and_late_usage_is_an_adjustment,
    after_a_close_the_charges_are_the_invoice_and_late_usage_is_an_adjustment
);
