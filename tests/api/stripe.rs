//! Top-ups bought through Stripe, against a server on loopback that speaks Stripe's API
//! shapes and checks what it receives (form encoding, bearer key, idempotency key,
//! amount), with webhook deliveries signed here as Stripe signs them. The clock stands
//! at 2026-11-15 12:00 UTC. Starter: renders_3d 10 @100 cents, ai_generations 20 @75,
//! api_calls 10,000 @1, team_members 3 (block).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::{Duration, TimeZone, Utc};
use hmac::{Hmac, Mac};
use ledger_aggregates::PeriodKey;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;
use usage_ledger::auth::Role;
use usage_ledger::config::Settings;
use usage_ledger::secret::Secret;

use crate::common::TestDb;
use crate::helpers::{
    answer, ledger_process, serving, spawn_app_with, test_settings, Answer, TestApp,
};
use crate::on_both_stores;

const SECRET_KEY: &str = "sk_test_ledger_0123456789";
const WEBHOOK_SECRET: &str = "whsec_test_current";
const OLD_WEBHOOK_SECRET: &str = "whsec_test_previous";
const ORIGIN: &str = "https://app.example.com";
const SUCCESS: &str = "https://app.example.com/billing/done?session_id={CHECKOUT_SESSION_ID}";
const CANCEL: &str = "https://app.example.com/billing";

/// One creation request: its `Authorization` and `Idempotency-Key`, and its form.
type Creation = (Option<String>, Option<String>, BTreeMap<String, String>);

/// What the fake Stripe saw and holds.
#[derive(Default)]
struct Seen {
    /// Each creation request: its headers of interest and its form fields.
    creations: Vec<Creation>,
    /// Sessions by idempotency key, as Stripe replays a retried creation.
    sessions: BTreeMap<String, Value>,
    /// Events `GET /v1/events` lists, oldest first.
    events: Vec<Value>,
    /// Query strings of the event listings.
    listings: Vec<BTreeMap<String, String>>,
}

type Fake = Arc<Mutex<Seen>>;

async fn create_session(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> axum::response::Response {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut seen = fake.lock().unwrap();
    seen.creations
        .push((h("authorization"), h("idempotency-key"), form.clone()));
    if h("authorization").as_deref() != Some(&format!("Bearer {SECRET_KEY}")) {
        let body = json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    if form.get("metadata[brand_id]").map(String::as_str) == Some("refused") {
        let body = json!({"error": {"type": "invalid_request_error", "message": "account cannot accept payments"}});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let Some(key) = h("idempotency-key") else {
        return (StatusCode::BAD_REQUEST, "no idempotency key").into_response();
    };
    let n = seen.sessions.len() + 1;
    let session = seen
        .sessions
        .entry(key)
        .or_insert_with(|| {
            json!({
                "id": format!("cs_test_{n}"),
                "object": "checkout.session",
                "url": format!("https://checkout.stripe.test/c/pay/cs_test_{n}"),
                "expires_at": form["expires_at"].parse::<i64>().unwrap(),
                "amount_total": form["line_items[0][price_data][unit_amount]"].parse::<i64>().unwrap(),
                "currency": form["line_items[0][price_data][currency]"],
                "client_reference_id": form["client_reference_id"],
                "metadata": {
                    "topup_id": form["metadata[topup_id]"],
                    "brand_id": form["metadata[brand_id]"],
                },
                "payment_status": "unpaid",
                "status": "open",
            })
        })
        .clone();
    Json(session).into_response()
}

/// `GET /v1/events`: newest first, `created[gte]`, `types[]`, `limit`, `starting_after`.
async fn list_events(
    State(fake): State<Fake>,
    Query(q): Query<Vec<(String, String)>>,
) -> Json<Value> {
    let mut seen = fake.lock().unwrap();
    seen.listings.push(q.iter().cloned().collect());
    let types: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "types[]")
        .map(|(_, v)| v.as_str())
        .collect();
    let get = |k: &str| q.iter().find(|(qk, _)| qk == k).map(|(_, v)| v.clone());
    let gte: i64 = get("created[gte]").unwrap().parse().unwrap();
    let limit: usize = get("limit").unwrap().parse().unwrap();
    let newest_first: Vec<&Value> = seen
        .events
        .iter()
        .rev()
        .filter(|e| e["created"].as_i64().unwrap() >= gte)
        .filter(|e| types.contains(&e["type"].as_str().unwrap()))
        .collect();
    let start = match get("starting_after") {
        Some(id) => {
            newest_first
                .iter()
                .position(|e| e["id"] == id.as_str())
                .unwrap()
                + 1
        }
        None => 0,
    };
    let page: Vec<Value> = newest_first
        .iter()
        .skip(start)
        .take(limit)
        .map(|e| (*e).clone())
        .collect();
    let has_more = newest_first.len() > start + page.len();
    Json(json!({"object": "list", "data": page, "has_more": has_more}))
}

/// `GET /v1/prices`: the fixture's prices in pages of 10 (fewer than Stripe's `limit`,
/// so the client's paging is exercised), for the configured key only.
async fn list_prices(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {SECRET_KEY}")) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "bad key"}})),
        )
            .into_response();
    }
    fake.lock()
        .unwrap()
        .listings
        .push(q.iter().cloned().collect());
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stripe-prices.json"
    );
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let all = list["data"].as_array().unwrap();
    let start = match q.iter().find(|(k, _)| k == "starting_after") {
        Some((_, id)) => all.iter().position(|p| p["id"] == id.as_str()).unwrap() + 1,
        None => 0,
    };
    let page: Vec<Value> = all.iter().skip(start).take(10).cloned().collect();
    let has_more = all.len() > start + page.len();
    Json(json!({"object": "list", "data": page, "has_more": has_more})).into_response()
}

async fn start_fake_stripe() -> (String, Fake) {
    let fake = Fake::default();
    let app = Router::new()
        .route("/v1/checkout/sessions", post(create_session))
        .route("/v1/events", get(list_events))
        .route("/v1/prices", get(list_prices))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

fn stripe_settings(db: &TestDb, api_base: &str) -> Settings {
    let mut s = test_settings(db);
    s.stripe.secret_key = Some(Secret::new(SECRET_KEY));
    s.stripe.webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
    s.stripe.webhook_secret_previous = Some(Secret::new(OLD_WEBHOOK_SECRET));
    s.stripe.api_base = api_base.to_owned();
    s.stripe.redirect_origins = format!("{ORIGIN}, https://admin.example.com");
    s.stripe.success_url = Some(SUCCESS.to_owned());
    s.stripe.cancel_url = Some(CANCEL.to_owned());
    s
}

struct World {
    app: TestApp,
    fake: Fake,
    settings: Settings,
}

async fn world(db: &TestDb) -> World {
    let (base, fake) = start_fake_stripe().await;
    let settings = stripe_settings(db, &base);
    let app = spawn_app_with(&settings).await;
    app.register("acme", "starter").await;
    World {
        app,
        fake,
        settings,
    }
}

async fn checkout(app: &TestApp, body: Value) -> Answer {
    app.post("topups/checkout", &app.admin, body).await
}

/// A checkout of `units` renders for acme, asserted created; its answer.
async fn buy_renders(app: &TestApp, units: u64) -> Value {
    let a = checkout(
        app,
        json!({ "brandId": "acme", "metric": "renders_3d", "units": units }),
    )
    .await;
    assert_eq!(a.status, 201, "{:#}", a.body);
    a.body
}

/// A Stripe event about the session of a checkout answer.
fn event(id: &str, kind: &str, created: i64, bought: &Value, paid: Option<(i64, &str)>) -> Value {
    let (amount, currency) = paid.unwrap_or((bought["totalPriceCents"].as_i64().unwrap(), "eur"));
    json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "type": kind,
        "created": created,
        "livemode": false,
        "data": { "object": {
            "id": bought["stripeSessionId"],
            "object": "checkout.session",
            "client_reference_id": bought["topupId"],
            "metadata": { "topup_id": bought["topupId"], "brand_id": "acme" },
            "amount_total": amount,
            "currency": currency,
            "payment_status": match kind { "checkout.session.expired" => "unpaid", _ => "paid" },
            "status": match kind { "checkout.session.expired" => "expired", _ => "complete" },
        }},
    })
}

fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// POST `body` to the webhook with `signature` as the `Stripe-Signature` header.
async fn deliver_raw(app: &TestApp, body: &[u8], signature: Option<String>) -> Answer {
    let mut req = app
        .client
        .post(format!("{}/api/v1/usage-billing/webhooks/stripe", app.base))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(sig) = signature {
        req = req.header("stripe-signature", sig);
    }
    answer(req.send().await.unwrap()).await
}

/// Deliver `event` signed now with the current secret, as Stripe does.
async fn deliver(app: &TestApp, event: &Value) -> Answer {
    let body = serde_json::to_vec(event).unwrap();
    let t = app.clock_now().timestamp();
    deliver_raw(
        app,
        &body,
        Some(format!("t={t},v1={}", sign(WEBHOOK_SECRET, t, &body))),
    )
    .await
}

trait ClockNow {
    fn clock_now(&self) -> chrono::DateTime<Utc>;
}

impl ClockNow for TestApp {
    fn clock_now(&self) -> chrono::DateTime<Utc> {
        use usage_ledger::clock::Clock;
        self.clock.now()
    }
}

async fn history(app: &TestApp, period: &str) -> Vec<Value> {
    let a = app
        .get(
            &format!("topups/history?brandId=acme&period={period}"),
            &app.admin,
        )
        .await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    a.body["entries"].as_array().unwrap().clone()
}

/// renders_3d of acme's summary of `period`.
async fn renders(app: &TestApp, period: &str) -> Value {
    let s = app
        .get(&format!("summary/acme?period={period}"), &app.admin)
        .await;
    assert_eq!(s.status, 200, "{:#}", s.body);
    s.body["summary"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "renders_3d")
        .cloned()
        .unwrap()
}

async fn the_whole_path_from_simulate_to_a_higher_limit_everywhere(db: &TestDb) {
    let World { app, fake, .. } = world(db).await;
    let sim = app
        .post(
            "topups/simulate",
            &app.admin,
            json!({ "brandId": "acme", "metric": "renders_3d", "units": 5 }),
        )
        .await;
    assert_eq!(sim.body["estimatedCostCents"], 500, "{:#}", sim.body);
    let bought = buy_renders(&app, 5).await;
    assert_eq!(bought["topupId"], "acme:topup:1");
    assert_eq!(bought["totalPriceCents"], 500);
    assert_eq!(bought["currency"], "EUR");
    assert_eq!(
        bought["checkoutUrl"],
        "https://checkout.stripe.test/c/pay/cs_test_1"
    );
    {
        let seen = fake.lock().unwrap();
        let (auth, key, form) = &seen.creations[0];
        assert_eq!(auth.as_deref(), Some(&*format!("Bearer {SECRET_KEY}")));
        assert_eq!(key.as_deref(), Some("checkout-acme:topup:1"));
        assert_eq!(form["mode"], "payment");
        assert_eq!(form["line_items[0][price_data][unit_amount]"], "500");
        assert_eq!(form["line_items[0][price_data][currency]"], "eur");
        assert_eq!(form["line_items[0][quantity]"], "1");
        assert_eq!(form["client_reference_id"], "acme:topup:1");
        assert_eq!(form["metadata[topup_id]"], "acme:topup:1");
        assert_eq!(form["metadata[units]"], "5");
        // The template reaches Stripe intact, so Stripe fills it in.
        assert_eq!(form["success_url"], SUCCESS);
        let expires = form["expires_at"].parse::<i64>().unwrap();
        assert_eq!(expires - app.clock_now().timestamp(), 3600);
    }
    let pending = history(&app, "2026-11").await;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (&pending[0]["status"], &pending[0]["units"]),
        (&json!("pending"), &json!(5))
    );
    // Usage past the base limit: 12 renders of 10.
    let r = app
        .post(
            "record",
            &app.admin,
            json!({ "brandId": "acme", "metric": "renders_3d", "value": 12 }),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(renders(&app, "2026-11").await["overage"], 2);

    let paid = event(
        "evt_paid_1",
        "checkout.session.completed",
        app.clock_now().timestamp(),
        &bought,
        None,
    );
    let a = deliver(&app, &paid).await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    assert_eq!(a.body["effect"], "credited");
    assert_eq!(a.body["period"], "2026-11");

    let m = renders(&app, "2026-11").await;
    assert_eq!(
        (&m["limit"], &m["overage"], &m["overageCost"]),
        (&json!(15), &json!(0), &json!(0)),
        "{m:#}"
    );
    let check = app
        .post(
            "check-quota",
            &app.admin,
            json!({ "brandId": "acme", "metric": "renders_3d", "requestedAmount": 3 }),
        )
        .await;
    assert_eq!(check.status, 200, "{:#}", check.body);
    assert_eq!(
        (&check.body["effectiveLimit"], &check.body["remaining"]),
        (&json!(15), &json!(3)),
        "{:#}",
        check.body
    );
    let bill = app.get("bill/current/acme", &app.admin).await;
    assert_eq!(bill.status, 200, "{:#}", bill.body);
    let done = history(&app, "2026-11").await;
    assert_eq!(done[0]["status"], "paid");
    assert_eq!(done[0]["stripeSessionId"], "cs_test_1");
    assert_eq!(done[0]["stripeEventId"], "evt_paid_1");
    assert_eq!(done[0]["creditedPeriod"], "2026-11");
    assert_eq!(done[0]["priceCents"], 500);
    // Finance sees the purchase's effect: no renders overage line for acme.
    let f = app.get("finance/overages?period=2026-11", &app.admin).await;
    assert_eq!(f.status, 200, "{:#}", f.body);
    let lines = f.body.to_string();
    assert!(
        !lines.contains("renders_3d"),
        "no renders overage after the top-up: {lines}"
    );
}
on_both_stores!(
    the_whole_path,
    the_whole_path_from_simulate_to_a_higher_limit_everywhere
);

async fn deliveries_not_signed_by_stripe_now_are_refused_and_credit_nothing(db: &TestDb) {
    let World { app, .. } = world(db).await;
    let bought = buy_renders(&app, 5).await;
    let now = app.clock_now().timestamp();
    let paid = event("evt_1", "checkout.session.completed", now, &bought, None);
    let body = serde_json::to_vec(&paid).unwrap();
    let good = sign(WEBHOOK_SECRET, now, &body);
    let reindented = serde_json::to_vec_pretty(&paid).unwrap();
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("unsigned", body.clone(), None),
        (
            "forged",
            body.clone(),
            Some(format!("t={now},v1={}", sign("whsec_attacker", now, &body))),
        ),
        (
            "stale",
            body.clone(),
            Some(format!(
                "t={},v1={}",
                now - 301,
                sign(WEBHOOK_SECRET, now - 301, &body)
            )),
        ),
        (
            "future",
            body.clone(),
            Some(format!(
                "t={},v1={}",
                now + 301,
                sign(WEBHOOK_SECRET, now + 301, &body)
            )),
        ),
        // The same JSON laid out anew: the signature covers the bytes, not the meaning.
        (
            "re-indented",
            reindented,
            Some(format!("t={now},v1={good}")),
        ),
        (
            "garbled header",
            body.clone(),
            Some("v1=abc,t=zzz".to_owned()),
        ),
        (
            "another timestamp",
            body.clone(),
            Some(format!("t={},v1={good}", now - 1)),
        ),
    ];
    for (what, body, sig) in cases {
        let a = deliver_raw(&app, &body, sig).await;
        assert_eq!(a.status, 400, "{what}: {:#}", a.body);
        a.assert_problem(400, "bad-request");
    }
    assert_eq!(history(&app, "2026-11").await[0]["status"], "pending");
    assert_eq!(renders(&app, "2026-11").await["limit"], 10);

    // A body over the limit is refused before its signature is computed.
    let huge = vec![b' '; 1024 * 1024 + 1];
    let sig = format!("t={now},v1={}", sign(WEBHOOK_SECRET, now, &huge));
    deliver_raw(&app, &huge, Some(sig))
        .await
        .assert_problem(413, "payload-too-large");
    // Signed with the secret being rotated out: genuine.
    let sig = format!("t={now},v1={}", sign(OLD_WEBHOOK_SECRET, now, &body));
    let a = deliver_raw(&app, &body, Some(sig.clone())).await;
    assert_eq!(a.body["effect"], "credited", "{:#}", a.body);
    // Delivered again (Stripe retries when it missed our answer): no second credit.
    let a = deliver_raw(&app, &body, Some(sig.clone())).await;
    assert_eq!(
        (a.status.as_u16(), &a.body["effect"]),
        (200, &json!("unchanged")),
        "{:#}",
        a.body
    );
    // Replayed by someone who captured it, six minutes later: refused.
    app.clock.advance(Duration::minutes(6));
    deliver_raw(&app, &body, Some(sig))
        .await
        .assert_problem(400, "bad-request");
    assert_eq!(renders(&app, "2026-11").await["limit"], 15);
}
on_both_stores!(
    forged_deliveries,
    deliveries_not_signed_by_stripe_now_are_refused_and_credit_nothing
);

async fn the_same_event_delivered_twenty_times_at_once_applies_once(db: &TestDb) {
    let World { app, .. } = world(db).await;
    let bought = buy_renders(&app, 7).await;
    let paid = event(
        "evt_storm",
        "checkout.session.completed",
        app.clock_now().timestamp(),
        &bought,
        None,
    );
    let app = Arc::new(app);
    let deliveries: Vec<_> = (0..20)
        .map(|_| {
            let (app, paid) = (app.clone(), paid.clone());
            tokio::spawn(async move { deliver(&app, &paid).await })
        })
        .collect();
    let mut effects = BTreeMap::new();
    for d in deliveries {
        let a = d.await.unwrap();
        assert_eq!(a.status, 200, "{:#}", a.body);
        *effects
            .entry(a.body["effect"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(
        effects,
        BTreeMap::from([("credited".to_owned(), 1), ("unchanged".to_owned(), 19)])
    );
    assert_eq!(renders(&app, "2026-11").await["limit"], 17);
    let credits = app.audit("acme").await;
    let applied = credits
        .iter()
        .filter(|e| e["type"] == "TopUpApplied")
        .count();
    assert_eq!(applied, 1, "one TopUpApplied in the log");
}
on_both_stores!(
    delivery_storm,
    the_same_event_delivered_twenty_times_at_once_applies_once
);

async fn a_retry_reaching_another_instance_after_the_credit_changes_nothing(db: &TestDb) {
    // The first instance credited the payment, then its answer was lost (the process
    // was killed before replying): Stripe's retry lands on a second instance.
    let World { app, settings, .. } = world(db).await;
    let bought = buy_renders(&app, 5).await;
    let paid = event(
        "evt_lost_answer",
        "checkout.session.completed",
        app.clock_now().timestamp(),
        &bought,
        None,
    );
    assert_eq!(deliver(&app, &paid).await.body["effect"], "credited");
    let other = spawn_app_with(&settings).await;
    let a = deliver(&other, &paid).await;
    assert_eq!(
        (a.status.as_u16(), &a.body["effect"]),
        (200, &json!("unchanged")),
        "{:#}",
        a.body
    );
    assert_eq!(renders(&app, "2026-11").await["limit"], 15);
    // The other way round: an order opened on one instance is paid through the other.
    let second = buy_renders(&app, 2).await;
    let paid = event(
        "evt_second",
        "checkout.session.completed",
        app.clock_now().timestamp(),
        &second,
        None,
    );
    assert_eq!(deliver(&other, &paid).await.body["effect"], "credited");
    assert_eq!(deliver(&app, &paid).await.body["effect"], "unchanged");
}
on_both_stores!(
    retry_on_another_instance,
    a_retry_reaching_another_instance_after_the_credit_changes_nothing
);

async fn a_payment_after_midnight_on_the_first_credits_the_new_period(db: &TestDb) {
    let World { app, .. } = world(db).await;
    app.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 30, 23, 50, 0).unwrap());
    let late = buy_renders(&app, 5).await;
    let early = buy_renders(&app, 3).await;
    let after_close = buy_renders(&app, 1).await;
    app.clock
        .set(Utc.with_ymd_and_hms(2026, 12, 1, 0, 10, 0).unwrap());
    // Paid at 00:05 on the 1st: December's.
    let paid_dec = Utc
        .with_ymd_and_hms(2026, 12, 1, 0, 5, 0)
        .unwrap()
        .timestamp();
    let a = deliver(
        &app,
        &event(
            "evt_dec",
            "checkout.session.completed",
            paid_dec,
            &late,
            None,
        ),
    )
    .await;
    assert_eq!(
        (&a.body["effect"], &a.body["period"]),
        (&json!("credited"), &json!("2026-12")),
        "{:#}",
        a.body
    );
    // Paid at 23:59 on the 30th, delivered after midnight: November's, within its grace.
    let paid_nov = Utc
        .with_ymd_and_hms(2026, 11, 30, 23, 59, 0)
        .unwrap()
        .timestamp();
    let a = deliver(
        &app,
        &event(
            "evt_nov",
            "checkout.session.completed",
            paid_nov,
            &early,
            None,
        ),
    )
    .await;
    assert_eq!(
        (&a.body["effect"], &a.body["period"]),
        (&json!("credited"), &json!("2026-11")),
        "{:#}",
        a.body
    );
    // Paid on the 30th too, but delivered once November is closed: its invoice is
    // frozen, so the units go to the open period.
    let close = app
        .post("periods/2026-11/close", &app.admin, json!({}))
        .await;
    assert_eq!(close.status, 201, "{:#}", close.body);
    let paid_nov = Utc
        .with_ymd_and_hms(2026, 11, 30, 23, 58, 0)
        .unwrap()
        .timestamp();
    let closed = event(
        "evt_closed",
        "checkout.session.completed",
        paid_nov,
        &after_close,
        None,
    );
    let a = deliver(&app, &closed).await;
    assert_eq!(
        (&a.body["effect"], &a.body["period"]),
        (&json!("credited"), &json!("2026-12")),
        "{:#}",
        a.body
    );
    assert_eq!(renders(&app, "2026-12").await["limit"], 16);
    assert_eq!(renders(&app, "2026-11").await["limit"], 13);
    let dec = history(&app, "2026-12").await;
    let listed: Vec<&Value> = dec.iter().map(|e| &e["topupId"]).collect();
    assert_eq!(
        listed,
        [&json!("acme:topup:1"), &json!("acme:topup:3")],
        "{dec:#?}"
    );
}
on_both_stores!(
    payment_after_midnight,
    a_payment_after_midnight_on_the_first_credits_the_new_period
);

async fn reconcile_applies_a_payment_whose_webhook_was_lost_once(db: &TestDb) {
    let World {
        app,
        fake,
        settings,
    } = world(db).await;
    let bought = buy_renders(&app, 5).await;
    let expired = buy_renders(&app, 2).await;
    let now = app.clock_now().timestamp();
    {
        let mut seen = fake.lock().unwrap();
        seen.events.push(event(
            "evt_old",
            "checkout.session.completed",
            now - 5 * 86_400,
            &bought,
            None,
        ));
        seen.events.push(event(
            "evt_other_type",
            "payment_intent.created",
            now - 60,
            &bought,
            None,
        ));
        seen.events.push(event(
            "evt_expired",
            "checkout.session.expired",
            now - 30,
            &expired,
            None,
        ));
        seen.events.push(event(
            "evt_lost",
            "checkout.session.completed",
            now - 20,
            &bought,
            None,
        ));
    }
    let ledger = usage_ledger::startup::open_ledger(&settings, app.clock.clone())
        .await
        .unwrap();
    let args = usage_ledger::cli::stripe::StripeArgs {
        command: usage_ledger::cli::stripe::StripeCommand::Reconcile {
            since: Some("1h".into()),
        },
    };
    let mut out = Vec::new();
    usage_ledger::cli::stripe::run(&ledger, &args, &mut out)
        .await
        .unwrap();
    let report = String::from_utf8(out).unwrap();
    assert!(
        report.contains("evt_lost checkout.session.completed credited acme:topup:1 to 2026-11"),
        "{report}"
    );
    assert!(
        report.contains("evt_expired checkout.session.expired marked acme:topup:2 failed"),
        "{report}"
    );
    assert!(
        report.ends_with(
            "2 events since 2026-11-15T11:00:00+00:00: 1 credited, 1 failed, 0 unchanged\n"
        ),
        "{report}"
    );
    {
        let seen = fake.lock().unwrap();
        let q = &seen.listings[0];
        assert_eq!(q["created[gte]"], (now - 3600).to_string());
        assert_eq!(q["limit"], "100");
    }
    // The webhook arrives after all: nothing more.
    let a = deliver(
        &app,
        &event(
            "evt_lost",
            "checkout.session.completed",
            now - 20,
            &bought,
            None,
        ),
    )
    .await;
    assert_eq!(a.body["effect"], "unchanged", "{:#}", a.body);
    let mut out = Vec::new();
    usage_ledger::cli::stripe::run(&ledger, &args, &mut out)
        .await
        .unwrap();
    let again = String::from_utf8(out).unwrap();
    assert!(
        again.ends_with(": 0 credited, 0 failed, 2 unchanged\n"),
        "{again}"
    );
    ledger.stop().await;
    // The service sees what the other process wrote within its projector's lag.
    let mut limit = json!(null);
    for _ in 0..100 {
        limit = renders(&app, "2026-11").await["limit"].clone();
        if limit == 15 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(limit, 15);
    let h = history(&app, "2026-11").await;
    assert_eq!(
        (&h[0]["status"], &h[1]["status"]),
        (&json!("paid"), &json!("failed")),
        "{h:#?}"
    );
    assert_eq!(h[1]["reason"], "the checkout expired unpaid");
}
on_both_stores!(
    reconcile,
    reconcile_applies_a_payment_whose_webhook_was_lost_once
);

async fn checkouts_are_refused_precisely_and_retried_safely(db: &TestDb) {
    let World { app, fake, .. } = world(db).await;
    let ask =
        |metric: &str, units: u64| json!({ "brandId": "acme", "metric": metric, "units": units });
    checkout(&app, ask("team_members", 1))
        .await
        .assert_problem(422, "not-for-sale");
    // 10 API calls at 1 cent: below Stripe's 50-cent minimum.
    checkout(&app, ask("api_calls", 10))
        .await
        .assert_problem(422, "amount-out-of-range");
    checkout(&app, ask("renders_3d", 0))
        .await
        .assert_problem(422, "invalid-body");
    for url in [
        "https://app.example.com.evil.io/done",
        "https://evil.io/?https://app.example.com",
        "http://app.example.com/done",
        "javascript:alert(1)",
    ] {
        let mut body = ask("renders_3d", 1);
        body["successUrl"] = json!(url);
        checkout(&app, body)
            .await
            .assert_problem(422, "redirect-not-allowed");
    }
    assert!(
        fake.lock().unwrap().creations.is_empty(),
        "nothing reached Stripe"
    );
    let mut body = ask("renders_3d", 1);
    body["cancelUrl"] = json!("https://admin.example.com/billing#cancelled");
    body["idempotencyKey"] = json!("buy-1");
    let first = checkout(&app, body.clone()).await;
    assert_eq!(first.status, 201, "{:#}", first.body);
    let again = checkout(&app, body.clone()).await;
    assert_eq!(again.status, 200, "{:#}", again.body);
    assert_eq!(
        (&again.body["topupId"], &again.body["checkoutUrl"]),
        (&first.body["topupId"], &first.body["checkoutUrl"])
    );
    assert_eq!(again.body["replayed"], true);
    body["units"] = json!(2);
    checkout(&app, body)
        .await
        .assert_problem(422, "idempotency-key-reused");
    // Tenants: the brand itself may buy, a service may not, another brand sees nothing.
    let own = app.token(Role::Brand, &["acme"]);
    let a = app
        .call(
            Method::POST,
            "topups/checkout",
            Some(&own),
            Some(ask("renders_3d", 1)),
        )
        .await;
    assert_eq!(a.status, 201, "{:#}", a.body);
    let service = app.token(Role::Service, &["acme"]);
    app.call(
        Method::POST,
        "topups/checkout",
        Some(&service),
        Some(ask("renders_3d", 1)),
    )
    .await
    .assert_problem(403, "forbidden");
    let other = app.token(Role::Brand, &["globex"]);
    app.call(
        Method::POST,
        "topups/checkout",
        Some(&other),
        Some(ask("renders_3d", 1)),
    )
    .await
    .assert_problem(404, "not-found");
    let a = app
        .call(
            Method::GET,
            "topups/history?brandId=acme",
            Some(&other),
            None,
        )
        .await;
    a.assert_problem(404, "not-found");
    // Stripe refusing is a 502, and the order stays pending for a retry.
    app.register("refused", "starter").await;
    let refused = json!({ "brandId": "refused", "metric": "renders_3d", "units": 1 });
    checkout(&app, refused)
        .await
        .assert_problem(502, "payment-provider-refused");
    // acme has 2 checkouts pending: 18 more fit under the cap of 20, the next does not.
    for _ in 0..18 {
        assert_eq!(checkout(&app, ask("renders_3d", 1)).await.status, 201);
    }
    checkout(&app, ask("renders_3d", 1))
        .await
        .assert_problem(409, "too-many-topups");
    // An hour later those checkouts have expired: a new one opens.
    app.clock.advance(Duration::minutes(61));
    assert_eq!(checkout(&app, ask("renders_3d", 1)).await.status, 201);
    let a = deliver(
        &app,
        &json!({"id": "evt_x", "type": "customer.created", "created": 1, "data": {"object": {}}}),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), &a.body["effect"]),
        (200, &json!("unchanged")),
        "{:#}",
        a.body
    );
}
on_both_stores!(
    checkout_refusals,
    checkouts_are_refused_precisely_and_retried_safely
);

async fn a_payment_that_is_not_the_orders_amount_is_not_credited(db: &TestDb) {
    let World { app, .. } = world(db).await;
    let bought = buy_renders(&app, 5).await;
    let now = app.clock_now().timestamp();
    let wrong = event(
        "evt_wrong",
        "checkout.session.completed",
        now,
        &bought,
        Some((5, "eur")),
    );
    let a = deliver(&app, &wrong).await;
    assert_eq!(a.body["effect"], "failed", "{:#}", a.body);
    assert_eq!(renders(&app, "2026-11").await["limit"], 10);
    let h = history(&app, "2026-11").await;
    assert!(
        h[0]["reason"].as_str().unwrap().contains("not credited"),
        "{h:#?}"
    );
}
on_both_stores!(
    amount_mismatch,
    a_payment_that_is_not_the_orders_amount_is_not_credited
);

async fn without_stripe_configured_checkouts_and_webhooks_answer_503(db: &TestDb) {
    let app = spawn_app_with(&test_settings(db)).await;
    app.register("acme", "starter").await;
    let a = checkout(
        &app,
        json!({ "brandId": "acme", "metric": "renders_3d", "units": 5 }),
    )
    .await;
    a.assert_problem(503, "unavailable");
    deliver(&app, &json!({"id": "evt"}))
        .await
        .assert_problem(503, "unavailable");
}
on_both_stores!(
    not_configured,
    without_stripe_configured_checkouts_and_webhooks_answer_503
);

#[tokio::test]
async fn pricing_verify_reads_every_page_of_stripes_prices() {
    use usage_ledger::cli::pricing::{self, PricingArgs, PricingCommand};
    use usage_ledger::stripe::client::StripeClient;
    let (base, fake) = start_fake_stripe().await;
    let args = PricingArgs {
        command: PricingCommand::Verify { prices: None },
    };
    let catalog = ledger_aggregates::Catalog::default_catalog();
    let client = StripeClient::new(&base, Secret::new(SECRET_KEY));
    let mut out = Vec::new();
    let res = pricing::run(&catalog, Some(&client), &args, &mut out).await;
    let out = String::from_utf8(out).unwrap();
    assert!(res.is_ok(), "{res:?}: {out}");
    assert!(out.starts_with("28 prices read"), "{out}");
    {
        let seen = fake.lock().unwrap();
        assert_eq!(seen.listings.len(), 3, "28 prices in pages of 10");
        assert_eq!(seen.listings[0]["active"], "true");
        assert_eq!(seen.listings[2]["starting_after"], "price_fixture_020");
    }
    // A wrong key is Stripe's refusal, not a pass.
    let wrong = StripeClient::new(&base, Secret::new("sk_test_wrong"));
    let res = pricing::run(&catalog, Some(&wrong), &args, &mut Vec::new()).await;
    assert!(
        matches!(res, Err(pricing::PricingError::Stripe(_))),
        "{res:?}"
    );
}

/// The real binary on SQLite with Stripe pointed at the fake, on `port`.
fn stripe_process(dir: &std::path::Path, port: u16, stripe: &str) -> std::process::Command {
    let mut c = ledger_process(dir, port);
    c.env("LEDGER_STRIPE_SECRET_KEY", SECRET_KEY)
        .env("LEDGER_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("LEDGER_STRIPE_API_BASE", stripe)
        .env("LEDGER_STRIPE_REDIRECT_ORIGINS", ORIGIN)
        .env("LEDGER_STRIPE_SUCCESS_URL", SUCCESS)
        .env("LEDGER_STRIPE_CANCEL_URL", CANCEL);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_killed_while_a_payment_arrives_credits_it_once_after_stripes_retry() {
    let (stripe, _fake) = start_fake_stripe().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = {
        let out = stripe_process(dir.path(), port, &stripe)
            .args(["token", "--role", "admin"])
            .stdout(std::process::Stdio::piped())
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let api = format!("http://127.0.0.1:{port}/api/v1/usage-billing");
    let client = reqwest::Client::new();
    let mut child = serving(stripe_process(dir.path(), port, &stripe), port).await;
    let put = client
        .put(format!("{api}/brands/acme"))
        .bearer_auth(&token)
        .json(&json!({ "plan": "starter" }))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    // Four orders, each paid while the process is killed at a different moment of the
    // deliveries (before, during, after them), then Stripe's retry after a restart.
    let cycles = [0u64, 3, 8, 40];
    for (n, kill_after_ms) in cycles.iter().enumerate() {
        let bought: Value = client
            .post(format!("{api}/topups/checkout"))
            .bearer_auth(&token)
            .json(&json!({ "brandId": "acme", "metric": "renders_3d", "units": 5 }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            bought["topupId"],
            format!("acme:topup:{}", n + 1),
            "{bought:#}"
        );
        let paid = event(
            &format!("evt_kill_{n}"),
            "checkout.session.completed",
            Utc::now().timestamp(),
            &bought,
            None,
        );
        let body = serde_json::to_vec(&paid).unwrap();
        let sign_now = || {
            let t = Utc::now().timestamp();
            format!("t={t},v1={}", sign(WEBHOOK_SECRET, t, &body))
        };
        let url = format!("{api}/webhooks/stripe");
        let storm: Vec<_> = (0..20)
            .map(|_| {
                let (client, url, body, sig) =
                    (client.clone(), url.clone(), body.clone(), sign_now());
                tokio::spawn(async move {
                    let _ = client
                        .post(url)
                        .header("stripe-signature", sig)
                        .body(body)
                        .send()
                        .await;
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(*kill_after_ms)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        for s in storm {
            s.await.unwrap();
        }
        child = serving(stripe_process(dir.path(), port, &stripe), port).await;
        let retry = client
            .post(&url)
            .header("stripe-signature", sign_now())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(retry.status(), 200);
        let effect: Value = retry.json().await.unwrap();
        assert!(
            ["credited", "unchanged"].contains(&effect["effect"].as_str().unwrap()),
            "{effect:#}"
        );
    }
    let period = PeriodKey::containing(Utc::now());
    let events: Value = client
        .get(format!(
            "{api}/brands/acme/periods/{period}/events?limit=1000"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let credits: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "TopUpApplied")
        .collect();
    assert_eq!(
        credits.len(),
        cycles.len(),
        "one credit per order: {credits:#?}"
    );
    let history: Value = client
        .get(format!("{api}/topups/history?brandId=acme"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paid = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "paid")
        .count();
    assert_eq!(paid, cycles.len(), "{history:#}");
    child.kill().unwrap();
    let _ = child.wait();
}
