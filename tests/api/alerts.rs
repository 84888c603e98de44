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
use crate::helpers::{ledger_process, serving, spawn_app_with, test_settings, TestApp};
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
    // A receiver that takes its time: every request under /slow waits two seconds.
    if uri.path().starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut script = r.script.lock().unwrap();
    match script.is_empty() {
        true => StatusCode::OK,
        false => StatusCode::from_u16(script.remove(0)).unwrap(),
    }
}

impl Receiver {
    async fn start(script: Vec<u16>) -> (String, Receiver) {
        Self::start_at("127.0.0.1:0".parse().unwrap(), script).await
    }

    /// A receiver on `addr` (a port given back by an earlier listener: one that was
    /// down comes up).
    async fn start_at(addr: std::net::SocketAddr, script: Vec<u16>) -> (String, Receiver) {
        let r = Receiver {
            script: Arc::new(Mutex::new(script)),
            ..Receiver::default()
        };
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
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
    // Down (nothing listens on its port), then answering 500, then 200.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let base = format!("http://{addr}");
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
    let mut first = Vec::new();
    for _ in 0..100 {
        first = deliveries(&app, "brandId=acme").await;
        if first
            .first()
            .is_some_and(|d| !d["attempts"].as_array().unwrap().is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(first[0]["attempts"][0]["error"].is_string(), "{first:#?}");
    let (_, rx) = Receiver::start_at(addr, vec![500]).await;
    // The retry is due after the backoff: nothing before the clock gets there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.on("/hook").len(), 0);
    app.clock.advance(chrono::Duration::seconds(5));
    assert_eq!(rx.wait_for("/hook", 1).await.len(), 1);
    app.clock.advance(chrono::Duration::seconds(10));
    let got = rx.wait_for("/hook", 2).await;
    assert_eq!(got.len(), 2);
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
    assert_eq!(codes, [&json!(null), &json!(500), &json!(200)], "{d:#?}");
    assert_eq!(d[0]["status"], "delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.on("/hook").len(), 2, "nothing after the delivery");
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
    // Counted for Prometheus: every failed attempt, and the dead letter once.
    let metrics = app.scrape_metrics().await;
    for line in [
        format!(
            "ledger_delivery_attempts_total{{channel=\"slack\",outcome=\"failed\"}} {attempts}"
        ),
        "ledger_delivery_dead_letters_total{channel=\"slack\"} 1".to_owned(),
        "ledger_delivery_dead_letters_total{channel=\"webhook\"} 0".to_owned(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in /metrics");
    }
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

async fn a_slow_receiver_does_not_delay_the_others(db: &TestDb) {
    let (base, rx) = Receiver::start(Vec::new()).await;
    let app = spawn_app_with(&notify_settings(db)).await;
    for b in ["slowpoke", "brisk"] {
        app.register(b, "starter").await;
    }
    let slow =
        json!({ "endpoints": [{ "id": "ops", "channel": "slack", "url": format!("{base}/slow") }]});
    let fast =
        json!({ "endpoints": [{ "id": "ops", "channel": "slack", "url": format!("{base}/fast") }]});
    assert_eq!(
        app.put("brands/slowpoke/notifications", &app.admin, slow)
            .await
            .status,
        200
    );
    assert_eq!(
        app.put("brands/brisk/notifications", &app.admin, fast)
            .await
            .status,
        200
    );
    // Ten notices for the slow receiver (two seconds each, four at a time at most)...
    record(&app, "slowpoke", 9).await; // 50, 75, 90 %
    let grant =
        json!({ "brandId": "slowpoke", "metric": "renders_3d", "units": 100, "reason": "more" });
    assert_eq!(
        app.post("topups/grant", &app.admin, grant).await.status,
        201
    ); // 3 resolved, 1 top-up
    record(&app, "slowpoke", 91).await; // 50, 75, 90 % of 110 again
    rx.wait_for("/slow", 4).await;
    // ...then one for the fast one, answered while the slow ones still queue.
    let started = std::time::Instant::now();
    record(&app, "brisk", 5).await;
    assert_eq!(rx.wait_for("/fast", 1).await.len(), 1);
    let waited = started.elapsed();
    let slow_seen = rx.on("/slow").len();
    assert!(
        waited < Duration::from_millis(1500),
        "the fast receiver waited {waited:?}"
    );
    assert!(
        slow_seen < 10,
        "the slow receiver had not taken everything yet ({slow_seen})"
    );
    // Everything reaches the slow receiver in the end, four at a time.
    assert_eq!(rx.wait_for("/slow", 10).await.len(), 10);
}
on_both_stores!(slow_receiver, a_slow_receiver_does_not_delay_the_others);

async fn an_email_endpoint_gets_the_notice_through_the_smtp_relay(db: &TestDb) {
    let Some((port, dir, _sink)) = smtp_sink().await else {
        return;
    };
    let mut settings = notify_settings(db);
    settings.notify.smtp_host = Some("127.0.0.1".into());
    settings.notify.smtp_port = port;
    settings.notify.smtp_tls = "none".into();
    settings.notify.smtp_from = "Alertes <alertes@ledger.example>".into();
    let app = spawn_app_with(&settings).await;
    app.register("acme", "starter").await;
    let mail =
        json!({ "endpoints": [{ "id": "mail", "channel": "email", "to": ["ops@acme.example"] }]});
    assert_eq!(
        app.put("brands/acme/notifications", &app.admin, mail)
            .await
            .status,
        200
    );
    record(&app, "acme", 9).await; // 50, 75 (warning) and 90 % (critical)
    let path = dir.path().join("0003.json");
    for _ in 0..200 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut subjects = Vec::new();
    let mut notice_ids = Vec::new();
    for n in 1..=3 {
        let text = std::fs::read_to_string(dir.path().join(format!("{n:04}.json"))).unwrap();
        let m: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(m["rcpt_tos"], json!(["ops@acme.example"]));
        assert!(m["text"].as_str().unwrap().contains("renders_3d"), "{m:#}");
        assert!(m["html"].is_string(), "{m:#}");
        subjects.push(m["subject"].as_str().unwrap().to_owned());
        notice_ids.push(m["x_notice_id"].as_str().unwrap().to_owned());
    }
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "[Quota CRITICAL] Starter · renders_3d",
            "[Quota WARNING] Starter · renders_3d",
            "[Quota WARNING] Starter · renders_3d"
        ]
    );
    let listed = deliveries(&app, "brandId=acme").await;
    for id in &notice_ids {
        assert!(
            listed.iter().any(|d| d["id"] == id.as_str()),
            "{id} not in {listed:#?}"
        );
    }
}
on_both_stores!(
    email_delivery,
    an_email_endpoint_gets_the_notice_through_the_smtp_relay
);

/// aiosmtpd on a free port saving each message as JSON (`tests/notify/smtp_sink.py`):
/// its port, its directory and the process. `None` (the test skips) without aiosmtpd,
/// except under CI, which installs it.
async fn smtp_sink() -> Option<(u16, tempfile::TempDir, tokio::process::Child)> {
    use tokio::io::AsyncBufReadExt;
    let python = ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import aiosmtpd"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(python) = python else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI needs python3-aiosmtpd"
        );
        eprintln!("skipped: python3 -c 'import aiosmtpd' fails (apt-get install python3-aiosmtpd)");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/notify/smtp_sink.py");
    let mut sink = tokio::process::Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .arg(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(sink.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the SMTP sink starts")
        .unwrap();
    assert_eq!(ready.as_deref(), Some("ready"));
    Some((port, dir, sink))
}

async fn a_replay_of_the_log_sends_nothing(db: &TestDb) {
    let (base, rx) = Receiver::start(Vec::new()).await;
    let app = spawn_app_with(&notify_settings(db)).await;
    app.register("acme", "starter").await;
    let slack = json!({ "endpoints": [{ "id": "ops", "channel": "slack", "url": format!("{base}/slack") }]});
    assert_eq!(
        app.put("brands/acme/notifications", &app.admin, slack)
            .await
            .status,
        200
    );
    record(&app, "acme", 9).await;
    assert_eq!(rx.wait_for("/slack", 3).await.len(), 3);
    let (_, store) = db.stores().await;
    let mut out = Vec::new();
    usage_ledger::cli::replay::rebuild(store, &mut out)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rx.on("/slack").len(), 3, "the rebuild sent something");
    assert_eq!(deliveries(&app, "brandId=acme").await.len(), 3);
}
on_both_stores!(replay_silent, a_replay_of_the_log_sends_nothing);

/// The real binary on SQLite with notices to loopback receivers and a short claim lease.
fn notifying_process(dir: &std::path::Path, port: u16) -> std::process::Command {
    let mut c = ledger_process(dir, port);
    c.env("LEDGER_NOTIFY_ALLOW_HTTP", "true")
        .env("LEDGER_NOTIFY_ALLOW_PRIVATE_ADDRESSES", "true")
        .env("LEDGER_NOTIFY_CLAIM_LEASE_SECONDS", "2");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_killed_mid_attempt_sends_the_notice_again_after_a_restart() {
    let (base, rx) = Receiver::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = {
        let out = notifying_process(dir.path(), port)
            .args(["token", "--role", "admin"])
            .stdout(std::process::Stdio::piped())
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let api = format!("http://127.0.0.1:{port}/api/v1/usage-billing");
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Value| {
        client
            .request(method, format!("{api}/{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let mut child = serving(notifying_process(dir.path(), port), port).await;
    let r = call(
        reqwest::Method::PUT,
        "brands/acme",
        json!({ "plan": "starter" }),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    // The receiver takes two seconds to answer: the process dies while it does.
    let hook = json!({ "endpoints": [
        { "id": "erp", "channel": "webhook", "url": format!("{base}/slow-hook"), "secrets": [SECRET] },
    ]});
    let r = call(reqwest::Method::PUT, "brands/acme/notifications", hook)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = call(
        reqwest::Method::POST,
        "record",
        json!({ "brandId": "acme", "metric": "renders_3d", "value": 5 }),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(rx.wait_for("/slow-hook", 1).await.len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    // Restarted, the lease of the claim ends and the delivery is attempted again.
    let mut child = serving(notifying_process(dir.path(), port), port).await;
    let got = rx.wait_for("/slow-hook", 2).await;
    assert_eq!(got.len(), 2, "sent again after the restart");
    let ids: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|(_, h, _)| h["webhook-id"].to_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "under the same delivery id");
    let mut status = Value::Null;
    for _ in 0..100 {
        let listed: Value = client
            .get(format!("{api}/alerts/deliveries?brandId=acme"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = listed["deliveries"][0]["status"].clone();
        if status == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "delivered");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rx.on("/slow-hook").len(), 2, "nothing more once delivered");
    child.kill().unwrap();
    let _ = child.wait();
}
