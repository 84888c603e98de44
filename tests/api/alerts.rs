//! Notices out, over HTTP, against receivers on loopback started here: a brand's
//! settings, a crossing delivered to Slack, Zapier and a signed webhook once per
//! delivery id, retries through a failing receiver, a burst, and nothing sent by
//! reading or replaying. The clock stands at 2026-11-15 12:00 UTC; starter's
//! renders_3d has a limit of 10 (alerts at 50, 75 and 90 %).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use usage_ledger::auth::Role;
use usage_ledger::config::Settings;

use crate::common::TestDb;
use crate::helpers::{spawn_app_with, test_settings, TestApp};
use crate::on_both_stores;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What a receiver got: path, headers, body.
type Got = (String, HeaderMap, Bytes);

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// Statuses to answer, in order; 200 once they run out.
    script: Arc<Mutex<Vec<u16>>>,
}

async fn receive(
    State(r): State<Receiver>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    r.got
        .lock()
        .unwrap()
        .push((uri.path().to_owned(), headers, body));
    let mut script = r.script.lock().unwrap();
    match script.is_empty() {
        true => StatusCode::OK,
        false => StatusCode::from_u16(script.remove(0)).unwrap(),
    }
}

impl Receiver {
    async fn start(script: Vec<u16>) -> (String, Receiver) {
        let r = Receiver {
            script: Arc::new(Mutex::new(script)),
            ..Receiver::default()
        };
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), r)
    }

    fn on(&self, path: &str) -> Vec<Got> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .cloned()
            .collect()
    }

    /// Wait (at most 10 s) until `path` got `n` requests; what it got.
    async fn wait_for(&self, path: &str, n: usize) -> Vec<Got> {
        for _ in 0..200 {
            if self.on(path).len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.on(path)
    }
}

fn notify_settings(db: &TestDb) -> Settings {
    let mut s = test_settings(db);
    s.notify.allow_http = true;
    s.notify.allow_private_addresses = true;
    s.notify.dashboard_url = Some("https://app.example.com/brands/{brand}/usage".to_owned());
    s
}

fn endpoints(base: &str) -> Value {
    json!({ "endpoints": [
        { "id": "ops-slack", "channel": "slack", "url": format!("{base}/slack") },
        { "id": "zap", "channel": "zapier", "url": format!("{base}/zapier"),
          "kinds": ["threshold_crossed"] },
        { "id": "erp", "channel": "webhook", "url": format!("{base}/hook"), "secrets": [SECRET] },
    ]})
}

async fn record(app: &TestApp, brand: &str, value: u64) {
    let r = app
        .post(
            "record",
            &app.admin,
            json!({ "brandId": brand, "metric": "renders_3d", "value": value }),
        )
        .await;
    assert_eq!(r.status, 201, "{:#}", r.body);
}

async fn deliveries(app: &TestApp, query: &str) -> Vec<Value> {
    let a = app
        .get(&format!("alerts/deliveries?{query}"), &app.admin)
        .await;
    assert_eq!(a.status, 200, "{:#}", a.body);
    a.body["deliveries"].as_array().unwrap().clone()
}

async fn a_crossing_reaches_each_channel_once_and_reading_sends_nothing(db: &TestDb) {
    let (base, rx) = Receiver::start(Vec::new()).await;
    let app = spawn_app_with(&notify_settings(db)).await;
    app.register("acme", "starter").await;
    let put = app
        .put("brands/acme/notifications", &app.admin, endpoints(&base))
        .await;
    assert_eq!(put.status, 200, "{:#}", put.body);
    assert_eq!(put.body["changed"], true);
    // The secret is never answered, only its fingerprint.
    assert!(!put.body.to_string().contains(SECRET));
    let got = app.get("brands/acme/notifications", &app.admin).await;
    assert_eq!(
        got.body["endpoints"][2]["secretFingerprints"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(!got.body.to_string().contains(SECRET));

    record(&app, "acme", 5).await; // 50 %: warning
    let slack = rx.wait_for("/slack", 1).await;
    let zap = rx.wait_for("/zapier", 1).await;
    let hook = rx.wait_for("/hook", 1).await;
    assert_eq!((slack.len(), zap.len(), hook.len()), (1, 1, 1));
    let slack: Value = serde_json::from_slice(&slack[0].2).unwrap();
    assert!(slack["blocks"].is_array(), "{slack:#}");
    let text = slack.to_string();
    assert!(text.contains("renders_3d") && text.contains("50"), "{text}");
    assert!(
        text.contains("https://app.example.com/brands/acme/usage"),
        "{text}"
    );
    let zap: Value = serde_json::from_slice(&zap[0].2).unwrap();
    assert_eq!(
        (
            &zap["brandId"],
            &zap["planId"],
            &zap["metric"],
            &zap["limit"],
            &zap["remaining"],
            &zap["severity"]
        ),
        (
            &json!("acme"),
            &json!("starter"),
            &json!("renders_3d"),
            &json!(10),
            &json!(5),
            &json!("warning")
        ),
        "{zap:#}"
    );
    assert_eq!(zap["percentage"], 50.0);
    // The webhook: Standard Webhooks headers, the signature Svix's implementation makes.
    let (_, headers, body) = &hook[0];
    let id = headers["webhook-id"].to_str().unwrap();
    let ts: i64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected = standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .sign(id, ts, body)
        .unwrap();
    assert_eq!(headers["webhook-signature"].to_str().unwrap(), expected);
    let hook_body: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(hook_body["type"], "quota.threshold_crossed");

    // The deliveries, each delivered at its first attempt, under the id the receiver saw.
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = deliveries(&app, "brandId=acme&status=delivered").await;
        if listed.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed.len(), 3, "{listed:#?}");
    let erp = listed.iter().find(|d| d["endpoint"] == "erp").unwrap();
    assert_eq!(erp["id"], id);
    assert_eq!(erp["attempts"][0]["statusCode"], 200);
    assert_eq!(erp["kind"], "threshold_crossed");

    // Reading sends nothing; the 75 % crossing goes to Slack and the webhook but also
    // to Zapier (it takes crossings only), and a resolution only to Slack and the webhook.
    for _ in 0..3 {
        assert_eq!(app.get("summary/acme", &app.admin).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.got.lock().unwrap().len(), 3, "a read sent something");
    record(&app, "acme", 3).await; // 80 %: 75 crossed
    rx.wait_for("/slack", 2).await;
    rx.wait_for("/zapier", 2).await;
    let grant =
        json!({ "brandId": "acme", "metric": "renders_3d", "units": 10, "reason": "goodwill" });
    assert_eq!(
        app.post("topups/grant", &app.admin, grant).await.status,
        201
    );
    // 8 of 20: both thresholds resolve, and the grant itself is a top-up notice.
    let slack = rx.wait_for("/slack", 5).await;
    assert_eq!(
        slack.len(),
        5,
        "crossing, crossing, two resolutions, one top-up"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.on("/zapier").len(), 2, "zapier wants crossings only");
    // Each delivery id reached its receiver once.
    let ids: Vec<String> = rx
        .on("/hook")
        .iter()
        .map(|(_, h, _)| h["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}
on_both_stores!(
    crossing_delivered,
    a_crossing_reaches_each_channel_once_and_reading_sends_nothing
);

async fn a_failing_receiver_is_retried_with_backoff_until_it_answers(db: &TestDb) {
    let (base, rx) = Receiver::start(vec![503, 500]).await;
    let app = spawn_app_with(&notify_settings(db)).await;
    app.register("acme", "starter").await;
    let only_hook = json!({ "endpoints": [
        { "id": "erp", "channel": "webhook", "url": format!("{base}/hook"), "secrets": [SECRET] },
    ]});
    assert_eq!(
        app.put("brands/acme/notifications", &app.admin, only_hook)
            .await
            .status,
        200
    );
    record(&app, "acme", 5).await;
    assert_eq!(rx.wait_for("/hook", 1).await.len(), 1);
    // The retry is due after the backoff: nothing before the clock gets there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.on("/hook").len(), 1);
    app.clock.advance(chrono::Duration::seconds(5));
    assert_eq!(rx.wait_for("/hook", 2).await.len(), 2);
    app.clock.advance(chrono::Duration::seconds(10));
    let got = rx.wait_for("/hook", 3).await;
    assert_eq!(got.len(), 3);
    let ids: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|(_, h, _)| h["webhook-id"].to_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same delivery id");
    let mut d = Vec::new();
    for _ in 0..100 {
        d = deliveries(&app, "brandId=acme").await;
        if d[0]["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let codes: Vec<&Value> = d[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["statusCode"])
        .collect();
    assert_eq!(codes, [&json!(503), &json!(500), &json!(200)], "{d:#?}");
    assert_eq!(d[0]["status"], "delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.on("/hook").len(), 3, "nothing after the delivery");
}
on_both_stores!(
    retried,
    a_failing_receiver_is_retried_with_backoff_until_it_answers
);

async fn a_dead_letter_is_sent_again_on_request(db: &TestDb) {
    // Always 500: every attempt fails until the delivery is dead.
    let (base, rx) = Receiver::start(vec![500; 100]).await;
    let app = spawn_app_with(&notify_settings(db)).await;
    app.register("acme", "starter").await;
    let slack = json!({ "endpoints": [{ "id": "ops", "channel": "slack", "url": format!("{base}/slack") }]});
    assert_eq!(
        app.put("brands/acme/notifications", &app.admin, slack)
            .await
            .status,
        200
    );
    record(&app, "acme", 5).await;
    let attempts = usage_ledger::notify::dispatch::ATTEMPTS_MAX as usize;
    for n in 1..=attempts {
        rx.wait_for("/slack", n).await;
        app.clock.advance(chrono::Duration::hours(1));
    }
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = deliveries(&app, "brandId=acme&status=dead").await;
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 1, "dead after {attempts} attempts");
    assert_eq!(dead[0]["attempts"].as_array().unwrap().len(), attempts);
    assert_eq!(rx.on("/slack").len(), attempts);
    // The receiver is fixed; support sends the dead letter again.
    rx.script.lock().unwrap().clear();
    let id = dead[0]["id"].as_str().unwrap().to_owned();
    let brand = app.token(Role::Brand, &["acme"]);
    let denied = app
        .call(
            reqwest::Method::POST,
            &format!("alerts/deliveries/{id}/retry"),
            Some(&brand),
            None,
        )
        .await;
    denied.assert_problem(403, "forbidden");
    let a = app
        .post(
            &format!("alerts/deliveries/{id}/retry"),
            &app.admin,
            json!({}),
        )
        .await;
    assert_eq!(a.status, 202, "{:#}", a.body);
    assert_eq!(
        rx.wait_for("/slack", attempts + 1).await.len(),
        attempts + 1
    );
    app.post(
        &format!("alerts/deliveries/{id}/retry"),
        &app.admin,
        json!({}),
    )
    .await
    .assert_problem(404, "not-found");
}
on_both_stores!(dead_letter, a_dead_letter_is_sent_again_on_request);

async fn a_burst_of_a_thousand_crossings_is_all_delivered(db: &TestDb) {
    let (base, rx) = Receiver::start(Vec::new()).await;
    let app = spawn_app_with(&notify_settings(db)).await;
    let brands: Vec<String> = (0..334).map(|n| format!("b{n:03}")).collect();
    for b in &brands {
        app.register(b, "starter").await;
        let slack = json!({ "endpoints": [{ "id": "ops", "channel": "slack", "url": format!("{base}/slack") }]});
        assert_eq!(
            app.put(&format!("brands/{b}/notifications"), &app.admin, slack)
                .await
                .status,
            200
        );
    }
    // 9 of 10: 50, 75 and 90 % crossed at once, for each brand: 1,002 crossings.
    let app = Arc::new(app);
    let writes: Vec<_> = brands
        .iter()
        .map(|b| {
            let (app, b) = (app.clone(), b.clone());
            tokio::spawn(async move { record(&app, &b, 9).await })
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..600 {
        got = rx.on("/slack");
        if got.len() >= 1_002 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.len(), 1_002);
}
on_both_stores!(burst, a_burst_of_a_thousand_crossings_is_all_delivered);

async fn settings_that_would_reach_inside_or_nowhere_are_refused(db: &TestDb) {
    // The default rules: https receivers on public hosts only.
    let app = spawn_app_with(&test_settings(db)).await;
    app.register("acme", "starter").await;
    let put = |endpoints: Value| {
        let app = &app;
        async move {
            app.put(
                "brands/acme/notifications",
                &app.admin,
                json!({ "endpoints": endpoints }),
            )
            .await
        }
    };
    for url in [
        "http://hooks.example.com/x",
        "https://127.0.0.1/x",
        "https://169.254.169.254/latest",
        "https://10.1.2.3/x",
        "https://[::1]/x",
        "https://localhost/x",
    ] {
        put(json!([{ "id": "ops", "channel": "slack", "url": url }]))
            .await
            .assert_problem(422, "invalid-notifications");
    }
    put(json!([{ "id": "mail", "channel": "email", "to": ["not an address"] }]))
        .await
        .assert_problem(422, "invalid-notifications");
    put(json!([{ "id": "erp", "channel": "webhook", "url": "https://erp.example.com/h", "secrets": ["s3cret"] }]))
        .await
        .assert_problem(422, "invalid-notifications");
    put(json!([{ "id": "erp", "channel": "webhook", "url": "https://erp.example.com/h" }]))
        .await
        .assert_problem(422, "invalid-notifications");
    let many: Vec<Value> = (0..11)
        .map(|n| json!({ "id": format!("s{n}"), "channel": "slack", "url": "https://hooks.example.com/x" }))
        .collect();
    put(Value::Array(many))
        .await
        .assert_problem(422, "invalid-notifications");
    put(json!([{ "id": "ops", "channel": "slack", "url": "https://hooks.example.com/x", "kinds": ["sometimes"] }]))
        .await
        .assert_problem(422, "invalid-body");
    // Nothing was recorded by any of them.
    let got = app.get("brands/acme/notifications", &app.admin).await;
    assert_eq!(got.body["endpoints"], json!([]));
    // A public https receiver is fine; another brand may not touch acme's settings.
    let ok = put(json!([{ "id": "ops", "channel": "slack", "url": "https://hooks.slack.com/services/T/B/x" }])).await;
    assert_eq!(ok.status, 200, "{:#}", ok.body);
    let other = app.token(Role::Brand, &["globex"]);
    let a = app
        .call(
            reqwest::Method::GET,
            "brands/acme/notifications",
            Some(&other),
            None,
        )
        .await;
    a.assert_problem(404, "not-found");
}
on_both_stores!(
    forged_settings,
    settings_that_would_reach_inside_or_nowhere_are_refused
);
