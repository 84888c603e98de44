//! Sealed periods over HTTP: a brand has no period and no usage before its registration,
//! a close covers exactly the brands that existed during the period, and a brand-period's
//! summary, finance line and invoice agree to the cent, closed or not.
//!
//! The harness starts at `t0` (2026-11-15 12:00 UTC) on the default catalog's `starter`
//! plan (base 2,900 cents; renders_3d: 10 included, then 100 cents a unit).

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use crate::common::TestDb;
use crate::helpers::{spawn_app, Answer, TestApp};
use crate::on_both_stores;

fn at(month: u32, day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, hour, 0, 0).unwrap()
}

async fn record(app: &TestApp, brand: &str, value: u64, occurred: Option<&str>) -> Answer {
    let mut body = json!({ "brandId": brand, "metric": "renders_3d", "value": value });
    if let Some(t) = occurred {
        body["occurredAt"] = json!(t);
    }
    app.post("record", &app.admin, body).await
}

/// Every event of a brand's period, as the audit trail shows them.
async fn events(app: &TestApp, brand: &str, period: &str) -> Vec<Value> {
    let a = app
        .get(
            &format!("brands/{brand}/periods/{period}/events?limit=1000"),
            &app.admin,
        )
        .await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    a.body["events"].as_array().cloned().unwrap_or_default()
}

/// A brand's summary of `period`, asserted 200.
async fn summary(app: &TestApp, brand: &str, period: &str) -> Value {
    let a = app
        .get(&format!("summary/{brand}?period={period}"), &app.admin)
        .await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    a.body["summary"].clone()
}

/// The finance answer of `period`, asserted 200.
async fn finance(app: &TestApp, period: &str) -> Value {
    let a = app
        .get(&format!("finance/overages?period={period}"), &app.admin)
        .await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    a.body
}

/// One brand's entry of a finance answer.
fn brand_line<'a>(finance: &'a Value, brand: &str) -> &'a Value {
    finance["brands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["brandId"] == brand)
        .unwrap_or_else(|| panic!("{brand} is in {finance:#}"))
}

async fn usage_stamped_before_the_registration_is_refused_and_opens_nothing(db: &TestDb) {
    // acme is registered at t0. Usage stamped a minute earlier, in the same period, is a
    // 422 `before-registration` naming the registration instant; November's stream stays
    // empty (no period opened). Usage stamped at the registration instant is accepted.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;

    let early = record(&app, "acme", 1, Some("2026-11-15T11:59:00Z")).await;
    early.assert_problem(422, "before-registration");
    let detail = early.body["detail"].as_str().unwrap();
    assert!(detail.contains("2026-11-15 12:00:00 UTC"), "{detail}");
    assert!(events(&app, "acme", "2026-11").await.is_empty());

    let on_time = record(&app, "acme", 1, Some("2026-11-15T12:00:00Z")).await;
    assert_eq!(on_time.status, 201, "{:#}", on_time.body);
}
on_both_stores!(
    usage_stamped_before_the_registration_is_refused_and_opens_nothing,
    usage_stamped_before_the_registration_is_refused_and_opens_nothing
);

async fn a_brand_registered_on_the_first_of_december_accepts_no_november_usage(db: &TestDb) {
    // On 1 December, within November's grace, acme (registered in November) still
    // reports late November usage, but newbie, registered that day, is refused any:
    // November ended when newbie came to exist. The close then skips newbie, which
    // owes nothing for November and whose November summary shows no base fee.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    app.clock.set(at(12, 1, 0));
    app.register("newbie", "starter").await;

    let late = record(&app, "acme", 1, Some("2026-11-30T23:00:00Z")).await;
    assert_eq!(late.status, 201, "{:#}", late.body);
    for stamp in ["2026-11-30T23:00:00Z", "2026-11-01T00:00:00Z"] {
        let refused = record(&app, "newbie", 1, Some(stamp)).await;
        refused.assert_problem(422, "before-registration");
        let detail = refused.body["detail"].as_str().unwrap();
        assert!(detail.contains("2026-12-01 00:00:00 UTC"), "{detail}");
    }
    assert!(events(&app, "newbie", "2026-11").await.is_empty());

    let close = app
        .post("periods/2026-11/close", &app.admin, json!({}))
        .await;
    assert_eq!(close.status, 201, "{:#}", close.body);
    assert_eq!(close.body["skipped"], json!(["newbie"]));
    assert_eq!(close.body["closed"][0]["brandId"], "acme");
    assert!(events(&app, "newbie", "2026-11").await.is_empty());
    let november = summary(&app, "newbie", "2026-11").await;
    assert_eq!(november["estimatedCost"]["base"], 0, "{november:#}");
    assert_eq!(november["estimatedCost"]["total"], 0, "{november:#}");
}
on_both_stores!(
    a_brand_registered_on_the_first_of_december_accepts_no_november_usage,
    a_brand_registered_on_the_first_of_december_accepts_no_november_usage
);

async fn a_close_covers_every_brand_that_existed_and_none_registered_after(db: &TestDb) {
    // In October, used records usage and quiet records nothing; after October ended,
    // later registers. The close invoices used and quiet (quiet its base price alone)
    // and skips later, whose October stream stays empty.
    let app = spawn_app(db).await;
    app.clock.set(at(10, 10, 12));
    app.register("used", "starter").await;
    app.register("quiet", "starter").await;
    assert_eq!(record(&app, "used", 2, None).await.status, 201);
    app.clock.set(at(11, 1, 0));
    app.register("later", "starter").await;

    app.clock.set(at(11, 2, 0));
    let close = app
        .post("periods/2026-10/close", &app.admin, json!({}))
        .await;
    assert_eq!(close.status, 201, "{:#}", close.body);
    let closed: Vec<&str> = close.body["closed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["brandId"].as_str().unwrap())
        .collect();
    assert_eq!(closed, ["quiet", "used"]);
    assert_eq!(close.body["skipped"], json!(["later"]));
    assert_eq!(close.body["closed"][0]["total"], 2900);
    assert!(events(&app, "later", "2026-10").await.is_empty());
}
on_both_stores!(
    a_close_covers_every_brand_that_existed_and_none_registered_after,
    a_close_covers_every_brand_that_existed_and_none_registered_after
);

/// Assert that acme's summary, finance brand line and finance lines of `period` agree:
/// `estimatedCost` is finance's `total`, its overage the sum of the metrics'
/// `overageCost` and of the brand's charge and adjustment lines. Answers the summary's
/// total.
async fn assert_summary_and_finance_agree(app: &TestApp, period: &str) -> i64 {
    let s = summary(app, "acme", period).await;
    let f = finance(app, period).await;
    let b = brand_line(&f, "acme");
    let cost = &s["estimatedCost"];
    let metrics: i64 = s["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["overageCost"].as_i64().unwrap())
        .sum();
    let lines: i64 = f["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["brandId"] == "acme")
        .map(|l| l["amount"].as_i64().unwrap())
        .sum();
    assert_eq!(cost["overage"], metrics, "{s:#}");
    assert_eq!(cost["overage"], lines, "{f:#}");
    assert_eq!(
        cost["overage"].as_i64().unwrap(),
        b["overage"].as_i64().unwrap() + b["adjustment"].as_i64().unwrap(),
        "{b:#}"
    );
    assert_eq!(cost["base"], b["base"], "{b:#}");
    assert_eq!(cost["total"], b["total"], "{s:#} {b:#}");
    assert_eq!(
        b["total"].as_i64().unwrap(),
        b["invoiceTotal"].as_i64().unwrap() + b["adjustment"].as_i64().unwrap()
    );
    cost["total"].as_i64().unwrap()
}

async fn summary_finance_and_invoice_agree_to_the_cent_before_and_after_the_close(db: &TestDb) {
    // acme uses 13 renders in October (3 over: 300 cents). Open, closed, and after 2
    // late renders within the grace (an adjustment of 200 cents), its summary, its
    // finance line and its invoice agree: the summary shows what October comes to now,
    // the invoice's 3,200 cents plus the adjustments made after it.
    let app = spawn_app(db).await;
    app.clock.set(at(10, 10, 12));
    app.register("acme", "starter").await;
    assert_eq!(record(&app, "acme", 13, None).await.status, 201);
    app.clock.set(at(11, 2, 0));
    assert_eq!(
        assert_summary_and_finance_agree(&app, "2026-10").await,
        3200
    );

    let close = app
        .post("periods/2026-10/close", &app.admin, json!({}))
        .await;
    assert_eq!(close.status, 201, "{:#}", close.body);
    let invoice_total = close.body["closed"][0]["total"].as_i64().unwrap();
    assert_eq!(invoice_total, 3200);
    assert_eq!(
        assert_summary_and_finance_agree(&app, "2026-10").await,
        3200
    );

    let late = record(&app, "acme", 2, Some("2026-10-31T22:00:00Z")).await;
    assert_eq!(late.status, 201, "{:#}", late.body);
    let total = assert_summary_and_finance_agree(&app, "2026-10").await;
    let f = finance(&app, "2026-10").await;
    let b = brand_line(&f, "acme");
    assert_eq!(
        (
            b["invoiceTotal"].as_i64().unwrap(),
            b["adjustment"].as_i64().unwrap()
        ),
        (invoice_total, 200)
    );
    assert_eq!(total, invoice_total + 200);
    assert_eq!(f["brandTotals"]["total"], total);
    assert_eq!(f["totals"]["total"], 500, "charges and adjustments alike");
    // The invoice itself never moves: the one `PeriodClosed` still says 3,200.
    let closed: Vec<Value> = events(&app, "acme", "2026-10")
        .await
        .into_iter()
        .filter(|e| e["type"] == "PeriodClosed")
        .collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(
        closed[0]["payload"]["period_closed"]["invoice"]["total"],
        invoice_total
    );
    let s = summary(&app, "acme", "2026-10").await;
    assert_eq!(s["period"]["status"], "closed");
}
on_both_stores!(
    summary_finance_and_invoice_agree_to_the_cent_before_and_after_the_close,
    summary_finance_and_invoice_agree_to_the_cent_before_and_after_the_close
);

async fn no_base_fee_is_shown_for_a_period_the_brand_never_had(db: &TestDb) {
    // acme is registered at t0 (mid-November): October ended before it existed and
    // 9999-12 has not begun, so both summaries show a base of 0; November, which it
    // has (without any usage yet), shows starter's 2,900 cents.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    for (period, base, status) in [
        ("2026-10", 0, "ended"),
        ("9999-12", 0, "upcoming"),
        ("2026-11", 2900, "active"),
    ] {
        let s = summary(&app, "acme", period).await;
        assert_eq!(s["estimatedCost"]["base"], base, "{period}: {s:#}");
        assert_eq!(s["estimatedCost"]["total"], base, "{period}: {s:#}");
        assert_eq!(s["period"]["status"], status, "{period}: {s:#}");
    }
}
on_both_stores!(
    no_base_fee_is_shown_for_a_period_the_brand_never_had,
    no_base_fee_is_shown_for_a_period_the_brand_never_had
);
