//! Period close over HTTP, and usage that arrives after it.
//!
//! The harness stands at `t0` (2026-11-15); these tests move its clock back into October
//! to register brands and record usage, then to just after October's end (within the
//! 72-hour grace) to close it, and past the grace to be refused.

use chrono::{DateTime, TimeZone, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Executor;
use usage_ledger::auth::Role;

use crate::common::TestDb;
use crate::helpers::{spawn_app, Answer, TestApp};
use crate::on_both_stores;

const CLOSE_OCTOBER: &str = "periods/2026-10/close";

fn at(month: u32, day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, day, hour, 0, 0).unwrap()
}

/// Mid-October: brands registered now were registered before the period ended.
fn mid_october() -> DateTime<Utc> {
    at(10, 10, 12)
}

/// A day after October ended: it may be closed and still takes late usage.
fn within_grace() -> DateTime<Utc> {
    at(11, 2, 0)
}

/// A second past October's deadline (end + 72 h).
fn past_grace() -> DateTime<Utc> {
    at(11, 4, 0) + chrono::Duration::seconds(1)
}

async fn record(
    app: &TestApp,
    brand: &str,
    metric: &str,
    value: u64,
    occurred: Option<&str>,
) -> Answer {
    let mut body = json!({ "brandId": brand, "metric": metric, "value": value });
    if let Some(t) = occurred {
        body["occurredAt"] = json!(t);
    }
    app.post("record", &app.admin, body).await
}

async fn close_october(app: &TestApp) -> Answer {
    app.post(CLOSE_OCTOBER, &app.admin, json!({})).await
}

/// acme on starter records 10 `renders_3d` mid-October; October is then closed
/// within the grace window.
async fn acme_october_closed_with_ten_renders(db: &TestDb) -> TestApp {
    let app = spawn_app(db).await;
    app.clock.set(mid_october());
    app.register("acme", "starter").await;
    record(&app, "acme", "renders_3d", 10, None).await;
    app.clock.set(within_grace());
    assert_eq!(close_october(&app).await.status, 201);
    app
}

/// Every event of the brand's October stream, as the audit trail shows them.
async fn october_events(app: &TestApp, brand: &str) -> Vec<Value> {
    let a = app
        .get(
            &format!("brands/{brand}/periods/2026-10/events?limit=1000"),
            &app.admin,
        )
        .await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    a.body["events"].as_array().cloned().unwrap_or_default()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The brand ids of one of the answer's lists.
fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().or_else(|| v["brandId"].as_str()).unwrap())
        .collect()
}

/// The catalog's overage rate of `metric` on `plan`, in cents per unit.
async fn rate_of(app: &TestApp, plan: &str, metric: &str) -> i64 {
    let p = app.get(&format!("plans/{plan}"), "").await;
    p.body["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["metric"] == metric)
        .and_then(|q| q["overageRate"].as_i64())
        .unwrap_or_else(|| panic!("{plan} charges {metric} at a whole rate"))
}

async fn closing_an_ended_period_freezes_each_brands_invoice_to_the_cent(db: &TestDb) {
    // acme (starter, `charge`) goes 3 renders and 3 AI generations over its quotas in
    // October; globex (professional) stays under. Closing October answers 201 with one
    // invoice per brand, lines priced at the catalog's rates, and the sum of them all.
    let app = spawn_app(db).await;
    app.clock.set(mid_october());
    app.register("acme", "starter").await;
    app.register("globex", "professional").await;
    assert_eq!(
        record(&app, "acme", "renders_3d", 13, None).await.status,
        201
    );
    assert_eq!(
        record(&app, "acme", "ai_generations", 23, None)
            .await
            .status,
        201
    );
    assert_eq!(
        record(&app, "globex", "renders_3d", 10, None).await.status,
        201
    );
    let renders_rate = rate_of(&app, "starter", "renders_3d").await;
    let ai_rate = rate_of(&app, "starter", "ai_generations").await;

    app.clock.set(within_grace());
    let a = close_october(&app).await;
    assert_eq!(a.status, 201, "{:#}", a.body);
    let b = &a.body;
    assert_eq!(b["period"], "2026-10");
    assert_eq!(ids(&b["closed"]), ["acme", "globex"]);
    assert_eq!(b["alreadyClosed"], json!([]));
    assert_eq!(b["skipped"], json!([]));
    assert_eq!(b["failed"], json!([]));
    let acme = &b["closed"][0];
    let overage = 3 * ai_rate + 3 * renders_rate;
    assert_eq!(
        *acme,
        json!({
            "brandId": "acme", "planId": "starter", "currency": "EUR",
            "base": 2900, "overage": overage, "total": 2900 + overage,
            "baseLines": [
                { "planId": "starter", "from": "2026-10-01T00:00:00Z",
                  "to": "2026-11-01T00:00:00Z", "amount": 2900 },
            ],
            "lines": [
                { "metric": "ai_generations", "billableUnits": 23, "effectiveLimit": 20,
                  "overageUnits": 3, "rate": ai_rate, "amount": 3 * ai_rate },
                { "metric": "renders_3d", "billableUnits": 13, "effectiveLimit": 10,
                  "overageUnits": 3, "rate": renders_rate, "amount": 3 * renders_rate },
            ],
        })
    );
    assert_eq!(
        overage, 525,
        "75 and 100 cents a unit in the default catalog"
    );
    let globex = &b["closed"][1];
    assert_eq!(globex["planId"], "professional");
    assert_eq!(globex["lines"], json!([]));
    assert_eq!(globex["total"], 9900);
    assert_eq!(
        b["totals"],
        json!({ "base": 12800, "usage": 0, "overage": 525, "total": 13325 })
    );
    // The invoice is the one `PeriodClosed` of the stream, stamped with the admin.
    let events = october_events(&app, "acme").await;
    assert_eq!(types(&events).last(), Some(&"PeriodClosed"));
    let closed = &events.last().unwrap()["payload"]["period_closed"];
    assert_eq!(closed["actor"], "admin-test");
    assert_eq!(closed["invoice"]["total"], 2900 + overage);
}
on_both_stores!(
    closing_an_ended_period_freezes_each_brands_invoice_to_the_cent,
    closing_an_ended_period_freezes_each_brands_invoice_to_the_cent
);

async fn a_second_close_appends_nothing_and_lists_every_brand_as_already_closed(db: &TestDb) {
    // Closing twice is safe: the second answer is 200, every brand is already closed,
    // the totals are zero, and no stream grows.
    let app = spawn_app(db).await;
    app.clock.set(mid_october());
    app.register("acme", "starter").await;
    app.register("globex", "starter").await;
    record(&app, "acme", "renders_3d", 12, None).await;
    app.clock.set(within_grace());
    assert_eq!(close_october(&app).await.status, 201);
    let before = (
        october_events(&app, "acme").await,
        october_events(&app, "globex").await,
    );

    let again = close_october(&app).await;
    assert_eq!(again.status, 200, "{:#}", again.body);
    assert_eq!(again.body["closed"], json!([]));
    assert_eq!(ids(&again.body["alreadyClosed"]), ["acme", "globex"]);
    assert_eq!(again.body["totals"]["total"], 0);
    let after = (
        october_events(&app, "acme").await,
        october_events(&app, "globex").await,
    );
    assert_eq!(after, before);
}
on_both_stores!(
    a_second_close_appends_nothing_and_lists_every_brand_as_already_closed,
    a_second_close_appends_nothing_and_lists_every_brand_as_already_closed
);

async fn a_period_that_has_not_ended_cannot_be_closed(db: &TestDb) {
    // At t0 (mid-November) neither November nor December may be closed: 409 with its own
    // type, naming when the period can be closed, and nothing is written.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    record(&app, "acme", "renders_3d", 2, None).await;
    let before = app.audit("acme").await;
    for (period, end) in [("2026-11", "2026-12-01"), ("2026-12", "2027-01-01")] {
        let a = app
            .post(&format!("periods/{period}/close"), &app.admin, json!({}))
            .await;
        a.assert_problem(409, "period-not-ended");
        let detail = a.body["detail"].as_str().unwrap();
        assert!(detail.contains(end), "{detail}");
    }
    assert_eq!(app.audit("acme").await, before);
}
on_both_stores!(
    a_period_that_has_not_ended_cannot_be_closed,
    a_period_that_has_not_ended_cannot_be_closed
);

async fn only_admins_close_periods(db: &TestDb) {
    // A brand or service token gets the 403 of every admin route, no token a 401, and
    // the period stays open.
    let app = spawn_app(db).await;
    app.clock.set(mid_october());
    app.register("acme", "starter").await;
    record(&app, "acme", "renders_3d", 2, None).await;
    app.clock.set(within_grace());
    for role in [Role::Brand, Role::Service] {
        let token = app.token(role, &["acme"]);
        app.post(CLOSE_OCTOBER, &token, json!({}))
            .await
            .assert_problem(403, "forbidden");
    }
    app.call(Method::POST, CLOSE_OCTOBER, None, None)
        .await
        .assert_problem(401, "unauthenticated");
    assert!(!types(&october_events(&app, "acme").await).contains(&"PeriodClosed"));
}
on_both_stores!(only_admins_close_periods, only_admins_close_periods);

async fn a_brand_without_usage_owes_the_base_price_of_the_plan_it_ended_the_period_on(db: &TestDb) {
    // quiet and switcher were registered in October and recorded nothing: each is
    // invoiced its base price on the plan it had when October ended (switcher moved to
    // business only in November). newcomer registered after October ended: skipped.
    // latecomer registered after too: its usage stamped in October, within the grace,
    // is refused (October was never its period), and it is skipped like newcomer.
    let app = spawn_app(db).await;
    app.clock.set(mid_october());
    app.register("quiet", "starter").await;
    app.register("switcher", "starter").await;
    app.clock.set(within_grace());
    app.register("switcher", "business").await;
    app.register("newcomer", "starter").await;
    app.register("latecomer", "starter").await;
    let late = record(
        &app,
        "latecomer",
        "renders_3d",
        11,
        Some("2026-10-31T23:00:00Z"),
    )
    .await;
    late.assert_problem(422, "before-registration");

    let a = close_october(&app).await;
    assert_eq!(a.status, 201, "{:#}", a.body);
    assert_eq!(ids(&a.body["closed"]), ["quiet", "switcher"]);
    assert_eq!(ids(&a.body["skipped"]), ["latecomer", "newcomer"]);
    let [quiet, switcher] = [0, 1].map(|i| &a.body["closed"][i]);
    for (invoice, plan, total) in [(quiet, "starter", 2900), (switcher, "starter", 2900)] {
        assert_eq!(invoice["planId"], plan, "{invoice:#}");
        assert_eq!(invoice["total"], total, "{invoice:#}");
    }
    assert_eq!(quiet["lines"], json!([]));
    assert_eq!(
        types(&october_events(&app, "quiet").await),
        ["PeriodOpened", "PeriodClosed"]
    );
    for skipped in ["latecomer", "newcomer"] {
        assert!(october_events(&app, skipped).await.is_empty(), "{skipped}");
    }
    // Closing again keeps skipping both and appends nothing.
    let again = close_october(&app).await;
    assert_eq!(again.status, 200, "{:#}", again.body);
    assert_eq!(ids(&again.body["skipped"]), ["latecomer", "newcomer"]);
    assert_eq!(ids(&again.body["alreadyClosed"]), ["quiet", "switcher"]);
}
on_both_stores!(
    a_brand_without_usage_owes_the_base_price_of_the_plan_it_ended_the_period_on,
    a_brand_without_usage_owes_the_base_price_of_the_plan_it_ended_the_period_on
);

async fn storage_held_since_an_earlier_period_is_invoiced_at_close(db: &TestDb) {
    // Gauges carry over: held stored 7 GB in August, grown 7 GB then 8 GB in September,
    // and neither recorded anything in October. The close opens October on the newest
    // earlier level of each (held skips the empty September) and bills the storage
    // above starter's 5 GB.
    let app = spawn_app(db).await;
    app.clock.set(at(8, 10, 12));
    app.register("held", "starter").await;
    app.register("grown", "starter").await;
    for brand in ["held", "grown"] {
        assert_eq!(app.set_gauge(brand, "storage_gb", 7).await.status, 200);
    }
    app.clock.set(at(9, 10, 12));
    assert_eq!(app.set_gauge("grown", "storage_gb", 8).await.status, 200);
    let rate = rate_of(&app, "starter", "storage_gb").await;

    app.clock.set(within_grace());
    let a = close_october(&app).await;
    assert_eq!(a.status, 201, "{:#}", a.body);
    assert_eq!(ids(&a.body["closed"]), ["grown", "held"]);
    for (invoice, level) in [(&a.body["closed"][0], 8), (&a.body["closed"][1], 7)] {
        let line = &invoice["lines"][0];
        assert_eq!(line["metric"], "storage_gb", "{invoice:#}");
        assert_eq!(line["billableUnits"], level);
        assert_eq!(line["overageUnits"], level - 5);
        assert_eq!(line["amount"], (level - 5) * rate);
        assert_eq!(invoice["total"], 2900 + (level - 5) * rate);
    }
}
on_both_stores!(
    storage_held_since_an_earlier_period_is_invoiced_at_close,
    storage_held_since_an_earlier_period_is_invoiced_at_close
);

async fn late_usage_within_the_grace_is_accepted_and_flagged_after_close(db: &TestDb) {
    // After the close, usage stamped in October still arrives within the grace: it is
    // recorded (201), flagged `after_close` for finance, and the invoice stays frozen.
    let app = acme_october_closed_with_ten_renders(db).await;

    let late = record(&app, "acme", "renders_3d", 2, Some("2026-10-31T22:00:00Z")).await;
    assert_eq!(late.status, 201, "{:#}", late.body);
    assert_eq!(late.body["period"], "2026-10");
    let events = october_events(&app, "acme").await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "UsageRecorded");
    assert_eq!(last["payload"]["usage_recorded"]["after_close"], true);
    let flags = events
        .iter()
        .filter(|e| e["type"] == "UsageRecorded")
        .map(|e| {
            e["payload"]["usage_recorded"]["after_close"]
                .as_bool()
                .unwrap()
        })
        .collect::<Vec<_>>();
    assert_eq!(flags, [false, true], "only the late record is flagged");
    // The period stays closed: the late record is an adjustment, not a reopening.
    let summary = app.get("summary/acme?period=2026-10", &app.admin).await;
    assert_eq!(summary.body["summary"]["period"]["status"], "closed");
}
on_both_stores!(
    late_usage_within_the_grace_is_accepted_and_flagged_after_close,
    late_usage_within_the_grace_is_accepted_and_flagged_after_close
);

async fn late_usage_after_the_grace_is_refused_and_changes_nothing(db: &TestDb) {
    // Past October's deadline (end + 72 h), usage stamped in October is a 422 `too-late`
    // that names the deadline; the closed stream does not change.
    let app = acme_october_closed_with_ten_renders(db).await;
    let before = october_events(&app, "acme").await;

    app.clock.set(past_grace());
    let refused = record(&app, "acme", "renders_3d", 1, Some("2026-10-31T22:00:00Z")).await;
    refused.assert_problem(422, "too-late");
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(detail.contains("2026-11-04 00:00:00 UTC"), "{detail}");
    assert_eq!(october_events(&app, "acme").await, before);
}
on_both_stores!(
    late_usage_after_the_grace_is_refused_and_changes_nothing,
    late_usage_after_the_grace_is_refused_and_changes_nothing
);

async fn a_malformed_period_is_refused_like_on_the_other_period_routes(db: &TestDb) {
    // The period path parameter parses like the audit trail's: the same problem for
    // the same bad key, and nothing is closed.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    for bad in ["2026-13", "26-10", "2026-1", "october"] {
        let close = app
            .post(&format!("periods/{bad}/close"), &app.admin, json!({}))
            .await;
        close.assert_problem(400, "bad-request");
        let audit = app
            .get(&format!("brands/acme/periods/{bad}/events"), &app.admin)
            .await;
        assert_eq!(
            (close.status, &close.body["type"]),
            (audit.status, &audit.body["type"]),
            "{bad}"
        );
    }
}
on_both_stores!(
    a_malformed_period_is_refused_like_on_the_other_period_routes,
    a_malformed_period_is_refused_like_on_the_other_period_routes
);

/// Brands of the bulk close: a thousand, the scale the close is built for.
const BULK_BRANDS: usize = 1_000;

async fn a_thousand_brands_close_in_one_call(db: &TestDb) {
    // Every registered brand is closed by one call, concurrently, each exactly once.
    let app = spawn_app(db).await;
    app.clock.set(mid_october());
    let brands: Vec<String> = (0..BULK_BRANDS).map(|i| format!("b{i:04}")).collect();
    for chunk in brands.chunks(100) {
        futures::future::join_all(chunk.iter().map(|b| app.register(b, "starter"))).await;
    }
    app.clock.set(within_grace());
    let started = std::time::Instant::now();
    let a = close_october(&app).await;
    let took = started.elapsed();
    assert_eq!(a.status, 201, "{:#}", a.body["failed"]);
    assert_eq!(ids(&a.body["closed"]), brands);
    assert_eq!(a.body["totals"]["total"], 2900 * BULK_BRANDS as i64);
    eprintln!("closed {BULK_BRANDS} brands in {took:?}");
    let again = close_october(&app).await;
    assert_eq!(again.status, 200);
    assert_eq!(ids(&again.body["alreadyClosed"]).len(), BULK_BRANDS);
}
on_both_stores!(
    a_thousand_brands_close_in_one_call,
    a_thousand_brands_close_in_one_call
);

/// PostgreSQL only: a trigger makes the store refuse one brand's close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_leaves_the_other_brands_closed_and_a_retry_finishes() {
    // While the store refuses to write bad's close, the answer is a 503 that lists bad
    // (and any brand that shared its append) as failed, beside the invoices of the
    // brands that did close. Once the store recovers, a retry closes the rest, and no
    // brand is ever closed twice.
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = spawn_app(&db).await;
    app.clock.set(mid_october());
    let brands = ["a1", "a2", "a3", "bad", "z1", "z2"];
    for b in brands {
        app.register(b, "starter").await;
    }
    let pg = sqlx::PgPool::connect(db.pg_url().unwrap()).await.unwrap();
    pg.execute(
        "CREATE FUNCTION refuse_bad() RETURNS trigger AS $$ BEGIN
           RAISE EXCEPTION 'refusing %', NEW.aggregate_id; END $$ LANGUAGE plpgsql;
         CREATE TRIGGER refuse_bad BEFORE INSERT ON events FOR EACH ROW
           WHEN (NEW.aggregate_id = 'bad:2026-10') EXECUTE FUNCTION refuse_bad();",
    )
    .await
    .unwrap();
    app.clock.set(within_grace());
    let first = close_october(&app).await;
    assert_eq!(first.status, 503, "{:#}", first.body);
    let failed = ids(&first.body["failed"]);
    assert!(failed.contains(&"bad"), "{:#}", first.body);
    for f in first.body["failed"].as_array().unwrap() {
        assert_eq!(f["problem"]["status"], 503, "{f:#}");
    }
    let closed_first: Vec<String> = ids(&first.body["closed"])
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(closed_first.len() + failed.len(), brands.len());

    pg.execute("DROP TRIGGER refuse_bad ON events")
        .await
        .unwrap();
    let retry = close_october(&app).await;
    assert_eq!(retry.status, 201, "{:#}", retry.body);
    assert_eq!(ids(&retry.body["closed"]), failed);
    assert_eq!(ids(&retry.body["alreadyClosed"]), closed_first);
    for b in brands {
        let closes = types(&october_events(&app, b).await)
            .into_iter()
            .filter(|t| *t == "PeriodClosed")
            .count();
        assert_eq!(closes, 1, "{b}");
    }
    pg.close().await;
    db.cleanup().await;
}
