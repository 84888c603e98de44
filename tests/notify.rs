//! The delivery channels against real receivers on loopback: axum servers standing in
//! for Slack, Zapier and a webhook endpoint (recording what they got), Svix's
//! `standardwebhooks` crate verifying our signatures, and aiosmtpd as the SMTP relay.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use chrono::Utc;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use usage_ledger::notify::{
    Endpoint, Notice, NoticeKind, Sender, SmtpSettings, SmtpTls, ATTEMPT_TIMEOUT,
};
use usage_ledger::secret::Secret;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// A receiver on 127.0.0.1, port 0, answering `status` after `delay`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(status: u16, delay: Duration) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = got.clone();
        let app =
            axum::Router::new().fallback(move |method: Method, headers: HeaderMap, body: Bytes| {
                let record = record.clone();
                async move {
                    record.lock().unwrap().push(Received {
                        method,
                        headers,
                        body,
                    });
                    tokio::time::sleep(delay).await;
                    (StatusCode::from_u16(status).unwrap(), "receiver says hello")
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, got }
    }

    fn only(&self) -> Received {
        let got = self.got.lock().unwrap();
        assert_eq!(got.len(), 1, "one request received");
        got[0].clone()
    }
}

fn notice() -> Notice {
    Notice {
        id: "acme:2026-11:42".into(),
        kind: NoticeKind::ThresholdCrossed,
        brand_id: "acme".into(),
        plan_id: "starter".into(),
        plan_name: "Starter".into(),
        period: "2026-11".into(),
        metric: "ai_generations".into(),
        unit: "génération".into(),
        current: 900,
        limit: Some(1000),
        remaining: Some(100),
        overage: 0,
        overage_cost_cents: 0,
        percentage: "90.00".parse().unwrap(),
        threshold: Some(90),
        severity: "critical".into(),
        refused: None,
        units: None,
        price_cents: None,
        reason: None,
        at: "2026-11-20T10:15:00Z".parse().unwrap(),
        dashboard_url: Some("https://app.example.com/brands/acme/usage".into()),
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEXT_SECRET: &str = "whsec_BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
const DELIVERY: &str = "acme:2026-11:42:webhook-1";

#[tokio::test]
async fn slack_receives_a_header_the_bar_and_the_dashboard_button() {
    // Proves the Block Kit message Slack is posted, as the receiver parsed it.
    let slack = Receiver::start(200, Duration::ZERO).await;
    let endpoint = Endpoint::Slack {
        url: slack.url.clone(),
    };
    let attempt = Sender::new(None)
        .attempt(&endpoint, &notice(), DELIVERY, Utc::now())
        .await;
    assert!(attempt.delivered, "{attempt:?}");
    assert_eq!(attempt.status, Some(200));
    assert_eq!(attempt.error, None);
    let got = slack.only();
    assert_eq!(got.method, Method::POST);
    assert_eq!(got.headers["content-type"], "application/json");
    let json = got.json();
    assert!(json["text"]
        .as_str()
        .unwrap()
        .starts_with("Quota critique · Starter · ai_generations"));
    let blocks = json["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(
        blocks[0]["text"]["text"],
        "Quota critique · Starter · ai_generations"
    );
    assert_eq!(blocks[1]["type"], "section");
    let fields: Vec<&str> = blocks[1]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert_eq!(fields[0], "*Plan*\nStarter");
    assert_eq!(fields[1], "*Métrique*\nai_generations");
    assert_eq!(fields[2], "*Utilisation*\n`▓▓▓▓▓▓▓▓▓░ 90 %`");
    assert_eq!(fields[3], "*Limite*\n1000 génération");
    assert_eq!(fields[4], "*Restant*\n100");
    assert_eq!(fields[5], "*Dépassement*\n0 (0,00)");
    assert_eq!(blocks[2]["type"], "actions");
    assert_eq!(
        blocks[2]["elements"][0]["url"],
        "https://app.example.com/brands/acme/usage"
    );
    assert_eq!(blocks[3]["type"], "context");
}

#[tokio::test]
async fn zapier_receives_exactly_the_original_fields_plus_kind_and_notice_id() {
    // Proves the flat payload a Zap maps: these keys and no other.
    let zapier = Receiver::start(200, Duration::ZERO).await;
    let endpoint = Endpoint::Zapier {
        url: zapier.url.clone(),
    };
    let mut n = notice();
    n.percentage = "130.5".parse().unwrap();
    n.remaining = Some(0);
    n.overage = 305;
    let attempt = Sender::new(None)
        .attempt(&endpoint, &n, DELIVERY, Utc::now())
        .await;
    assert!(attempt.delivered, "{attempt:?}");
    let json = zapier.only().json();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "brandId",
            "kind",
            "limit",
            "metric",
            "noticeId",
            "overage",
            "percentage",
            "planId",
            "remaining",
            "severity",
            "timestamp"
        ]
    );
    assert_eq!(json["brandId"], "acme");
    assert_eq!(json["planId"], "starter");
    assert_eq!(json["metric"], "ai_generations");
    assert_eq!(json["percentage"], serde_json::json!(130.5));
    assert_eq!(json["remaining"], 0);
    assert_eq!(json["limit"], 1000);
    assert_eq!(json["overage"], 305);
    assert_eq!(json["severity"], "critical");
    assert_eq!(json["timestamp"], "2026-11-20T10:15:00Z");
    assert_eq!(json["kind"], "threshold_crossed");
    assert_eq!(json["noticeId"], "acme:2026-11:42");
}

/// The Standard Webhooks verdict of Svix's crate on what `receiver` got, with `secret`.
fn verify(got: &Received, secret: &str) -> Result<(), standardwebhooks::WebhookError> {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&got.body, &got.headers)
}

#[tokio::test]
async fn a_webhook_is_signed_as_standard_webhooks_verifies_it() {
    // Proves the headers, the body, and a signature an independent verifier accepts.
    let hook = Receiver::start(204, Duration::ZERO).await;
    let endpoint = Endpoint::Webhook {
        url: hook.url.clone(),
        secrets: vec![Secret::new(SECRET)],
    };
    let now = Utc::now();
    let attempt = Sender::new(None)
        .attempt(&endpoint, &notice(), DELIVERY, now)
        .await;
    assert!(attempt.delivered, "{attempt:?}");
    assert_eq!(attempt.status, Some(204));
    let got = hook.only();
    assert_eq!(got.headers["webhook-id"], DELIVERY);
    assert_eq!(
        got.headers["webhook-timestamp"],
        now.timestamp().to_string()
    );
    let signature = got.headers["webhook-signature"].to_str().unwrap();
    assert!(signature.starts_with("v1,"), "{signature}");
    assert_eq!(signature.split(' ').count(), 1);
    verify(&got, SECRET).expect("Svix's verifier accepts the delivery");
    assert!(
        verify(&got, NEXT_SECRET).is_err(),
        "another secret does not verify"
    );

    let json = got.json();
    assert_eq!(json["type"], "quota.threshold_crossed");
    assert_eq!(json["timestamp"], "2026-11-20T10:15:00Z");
    let data = &json["data"];
    assert_eq!(data["id"], "acme:2026-11:42");
    assert_eq!(data["kind"], "threshold_crossed");
    assert_eq!(data["brandId"], "acme");
    assert_eq!(data["planId"], "starter");
    assert_eq!(data["planName"], "Starter");
    assert_eq!(data["period"], "2026-11");
    assert_eq!(data["metric"], "ai_generations");
    assert_eq!(data["unit"], "génération");
    assert_eq!(data["current"], 900);
    assert_eq!(data["limit"], 1000);
    assert_eq!(data["remaining"], 100);
    assert_eq!(data["overage"], 0);
    assert_eq!(data["overageCostCents"], 0);
    assert_eq!(data["percentage"], serde_json::json!(90.0));
    assert_eq!(data["threshold"], 90);
    assert_eq!(data["severity"], "critical");
    assert_eq!(data["refused"], Value::Null);
    assert_eq!(data["at"], "2026-11-20T10:15:00Z");
    assert_eq!(
        data["dashboardUrl"],
        "https://app.example.com/brands/acme/usage"
    );
}

#[tokio::test]
async fn during_a_rotation_either_secret_verifies_the_delivery() {
    // Proves two secrets give two signatures, each accepted by Svix's verifier alone.
    let hook = Receiver::start(200, Duration::ZERO).await;
    let endpoint = Endpoint::Webhook {
        url: hook.url.clone(),
        secrets: vec![Secret::new(SECRET), Secret::new(NEXT_SECRET)],
    };
    let attempt = Sender::new(None)
        .attempt(&endpoint, &notice(), DELIVERY, Utc::now())
        .await;
    assert!(attempt.delivered, "{attempt:?}");
    let got = hook.only();
    let signature = got.headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    verify(&got, SECRET).expect("the current secret verifies");
    verify(&got, NEXT_SECRET).expect("the next secret verifies");
    let stranger = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert!(verify(&got, stranger).is_err());
    // A body changed in transit no longer verifies.
    let mut tampered = got.clone();
    tampered.body = Bytes::from(
        String::from_utf8(got.body.to_vec())
            .unwrap()
            .replace("900", "901"),
    );
    assert!(verify(&tampered, SECRET).is_err());
}

#[tokio::test]
async fn a_receiver_answering_500_is_not_delivered() {
    // Proves a non-2xx is a failure carrying the status and a bounded error.
    let hook = Receiver::start(500, Duration::ZERO).await;
    let endpoint = Endpoint::Zapier {
        url: hook.url.clone(),
    };
    let attempt = Sender::new(None)
        .attempt(&endpoint, &notice(), DELIVERY, Utc::now())
        .await;
    assert!(!attempt.delivered);
    assert_eq!(attempt.status, Some(500));
    let error = attempt.error.unwrap();
    assert!(
        error.contains("500") && error.contains("receiver says hello"),
        "{error}"
    );
    assert!(error.chars().count() <= usage_ledger::notify::channel::ATTEMPT_ERROR_CHARS_MAX + 1);
}

#[tokio::test]
async fn nobody_listening_is_an_error_not_a_panic() {
    // Proves a refused connection is reported with no status.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    for endpoint in [
        Endpoint::Slack { url: url.clone() },
        Endpoint::Webhook {
            url,
            secrets: vec![Secret::new(SECRET)],
        },
    ] {
        let attempt = Sender::new(None)
            .attempt(&endpoint, &notice(), DELIVERY, Utc::now())
            .await;
        assert!(!attempt.delivered);
        assert_eq!(attempt.status, None);
        assert!(attempt.error.is_some());
    }
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_given_up_on() {
    // Proves an attempt is bounded by the sender's timeout, whatever the receiver does.
    assert_eq!(Sender::new(None).timeout(), ATTEMPT_TIMEOUT);
    let slow = Receiver::start(200, Duration::from_secs(30)).await;
    let endpoint = Endpoint::Slack {
        url: slow.url.clone(),
    };
    let sender = Sender::with_timeout(None, Duration::from_millis(300));
    let attempt = sender
        .attempt(&endpoint, &notice(), DELIVERY, Utc::now())
        .await;
    assert!(!attempt.delivered);
    assert_eq!(attempt.status, None);
    assert!(attempt.error.is_some());
    assert!(
        attempt.duration < Duration::from_secs(3),
        "{:?}",
        attempt.duration
    );
    assert_eq!(slow.got.lock().unwrap().len(), 1, "the request did arrive");
}

#[tokio::test]
async fn a_bad_webhook_secret_or_no_relay_fails_without_sending() {
    // Proves configuration errors are attempts that failed, not panics.
    let hook = Receiver::start(200, Duration::ZERO).await;
    let bad = Endpoint::Webhook {
        url: hook.url.clone(),
        secrets: vec![Secret::new("not-a-secret")],
    };
    let attempt = Sender::new(None)
        .attempt(&bad, &notice(), DELIVERY, Utc::now())
        .await;
    assert!(!attempt.delivered);
    assert!(attempt.error.unwrap().contains("whsec_"));
    assert!(hook.got.lock().unwrap().is_empty());
    let email = Endpoint::Email {
        to: vec!["ops@acme.example".into()],
    };
    let attempt = Sender::new(None)
        .attempt(&email, &notice(), DELIVERY, Utc::now())
        .await;
    assert!(!attempt.delivered);
    assert!(attempt.error.is_some());
}

/// A Python interpreter that has aiosmtpd: `python3` first, then the system's own (a
/// pyenv `python3` on the PATH does not see Debian's python3-aiosmtpd).
fn python_with_aiosmtpd() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[tokio::test]
async fn an_email_reaches_a_real_smtp_server_with_both_parts_and_the_notice_id() {
    // Proves what an SMTP relay (aiosmtpd) received, decoded by Python's e-mail package.
    let Some(python) = python_with_aiosmtpd() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI needs python3-aiosmtpd for the SMTP test"
        );
        eprintln!("skipped: python3 -c 'import aiosmtpd' fails (apt-get install python3-aiosmtpd)");
        return;
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/notify/smtp_sink.py");
    let mut sink = tokio::process::Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(sink.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .expect("the SMTP sink starts")
        .unwrap();
    assert_eq!(ready.as_deref(), Some("ready"));

    let smtp = SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        from: "Alertes <alertes@ledger.example>".into(),
        username: None,
        password: None,
        tls: SmtpTls::None,
    };
    let endpoint = Endpoint::Email {
        to: vec!["ops@acme.example".into(), "cto@acme.example".into()],
    };
    let attempt = Sender::new(Some(smtp))
        .attempt(&endpoint, &notice(), DELIVERY, Utc::now())
        .await;
    assert!(attempt.delivered, "{attempt:?}");
    assert_eq!(attempt.status, Some(250));

    let path = dir.path().join("0001.json");
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(record["mail_from"], "alertes@ledger.example");
    assert_eq!(
        record["rcpt_tos"],
        serde_json::json!(["ops@acme.example", "cto@acme.example"])
    );
    assert_eq!(record["from"], "Alertes <alertes@ledger.example>");
    assert_eq!(record["to"], "ops@acme.example, cto@acme.example");
    assert_eq!(
        record["subject"],
        "[Quota CRITICAL] Starter · ai_generations"
    );
    // The "·" is not ASCII: on the wire the subject is an RFC 2047 encoded word.
    let raw_subject = record["raw_subject"].as_str().unwrap();
    assert!(raw_subject.contains("=?utf-8?"), "{raw_subject}");
    assert_eq!(record["x_notice_id"], DELIVERY);
    assert!(record["message_id"]
        .as_str()
        .unwrap()
        .ends_with("@ledger.example>"));
    assert_eq!(record["content_type"], "multipart/alternative");
    // Lines of a message are CRLF on the wire; Python keeps them so.
    let text = record["text"].as_str().unwrap().replace("\r\n", "\n");
    assert!(text.starts_with("Quota critique\n"), "{text:?}");
    assert!(text.contains("Le seuil de 90 % est atteint pour ai_generations (Starter)"));
    assert!(text.contains("Utilisation : ▓▓▓▓▓▓▓▓▓░ 90 %"));
    assert!(text.contains("Tableau de bord : https://app.example.com/brands/acme/usage"));
    let html = record["html"].as_str().unwrap().replace("\r\n", "\n");
    assert!(html.contains("<h2>Quota critique</h2>"), "{html}");
    assert!(html.contains("href=\"https://app.example.com/brands/acme/usage\""));
    drop(sink.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(5), sink.wait()).await;
}
