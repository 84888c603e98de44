//! `GET /metrics`: the original's quota metrics and the service's own, counted per check
//! and per crossing (never per read), behind a credential, in a format promtool accepts.

use serde_json::json;
use usage_ledger::secret::Secret;

use crate::common::TestDb;
use crate::helpers::{blocking_renders_settings, spawn_app_with, TestApp};
use crate::on_both_stores;

/// The value of the series `name{labels}` (labels exactly as written), or 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp, token: &str) -> String {
    let res = app
        .client
        .get(format!("{}/metrics", app.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("scrape");
    assert_eq!(res.status(), 200);
    let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    res.text().await.unwrap()
}

async fn checks_crossings_and_refusals_are_counted_once_each(db: &TestDb) {
    // Two checks count two, whatever the units asked; the consumption crossing 50, 75
    // and 90 % counts three crossings; a refused record counts one refusal; reading the
    // summary counts none of them.
    let dir = tempfile::tempdir().expect("a temp dir");
    let app = spawn_app_with(&blocking_renders_settings(db, dir.path())).await;
    app.register("acme", "business").await;
    let check = |n: u64, consume: bool| json!({ "brandId": "acme", "metric": "renders_3d", "requestedAmount": n, "consume": consume });
    let appends = |text: &str| value(text, "ledger_engine_batch_commands_count");
    let registered = appends(&scrape(&app, &app.admin).await);
    assert_eq!(
        app.post("check-quota", &app.admin, check(10, false))
            .await
            .status,
        200
    );
    assert_eq!(
        appends(&scrape(&app, &app.admin).await),
        registered,
        "a pure check appends nothing, so it is no append"
    );
    assert_eq!(
        app.post("check-quota", &app.admin, check(46, true))
            .await
            .status,
        200
    );
    assert_eq!(
        appends(&scrape(&app, &app.admin).await),
        registered + 1.0,
        "a consuming check is one append"
    );
    let record = json!({ "brandId": "acme", "metric": "renders_3d", "value": 5 });
    app.post("record", &app.admin, record)
        .await
        .assert_problem(409, "quota-exceeded");
    for _ in 0..3 {
        assert_eq!(app.get("summary/acme", &app.admin).await.status, 200);
    }

    let text = scrape(&app, &app.admin).await;
    let allowed = r#"luneo_quota_checks_total{metric="renders_3d",outcome="allowed",plan="business",source="system"}"#;
    assert_eq!(value(&text, allowed), 2.0, "{text}");
    let crossings = ["warning", "critical"].map(|sev| {
        value(
            &text,
            &format!(r#"luneo_quota_alerts_total{{metric="renders_3d",overage_policy="block",plan="business",severity="{sev}"}}"#),
        )
    });
    assert_eq!(
        crossings,
        [2.0, 1.0],
        "50 and 75 % warn, 90 % is critical: {text}"
    );
    assert_eq!(
        value(&text, r#"ledger_engine_refusals_total{via="record"}"#),
        1.0,
        "{text}"
    );
    let summaries = r#"ledger_http_requests_total{method="GET",route="/api/v1/usage-billing/summary/{brand}",status="200"}"#;
    assert_eq!(value(&text, summaries), 3.0, "{text}");
    assert_eq!(
        value(&text, "ledger_read_model_waits_total"),
        0.0,
        "summaries of this instance's writes find them without waiting: {text}"
    );
    assert!(
        value(&text, "ledger_engine_batch_commands_count") >= 2.0,
        "{text}"
    );
    assert!(
        text.contains("luneo_quota_check_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains(r#"ledger_consumer_events{consumer="read_models"}"#),
        "{text}"
    );
    // Per brand, from the read models: 46 of 50, not capped, 4 left.
    let series =
        |name: &str| format!(r#"{name}{{brand="acme",metric="renders_3d",plan="business"}}"#);
    assert_eq!(
        value(&text, &series("luneo_quota_usage_percentage")),
        92.0,
        "{text}"
    );
    assert_eq!(
        value(&text, &series("luneo_quota_remaining_units")),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(&text, &series("luneo_quota_overage_units")),
        0.0,
        "{text}"
    );
    let changed = r#"luneo_quota_last_change_timestamp_seconds{brand="acme",plan="business"}"#;
    assert!(value(&text, changed) > 1.0e9, "{text}");

    if let Ok(out) = promtool_check(&text) {
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
on_both_stores!(
    checks_crossings_and_refusals_are_counted_once_each,
    checks_crossings_and_refusals_are_counted_once_each
);

/// `promtool check metrics` on `text`; an error when promtool is not installed (CI
/// installs it, see `.ci/run`, and sets `LEDGER_REQUIRE_PROMTOOL`).
fn promtool_check(text: &str) -> std::io::Result<std::process::Output> {
    use std::io::Write;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if std::env::var("LEDGER_REQUIRE_PROMTOOL").is_ok() => {
            panic!("promtool is required here: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED promtool check: {e}");
            return Err(e);
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes())?;
    child.wait_with_output()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrape_needs_its_token_or_an_admin() {
    // Without a configured token an admin credential scrapes and a brand's does not;
    // with one, exactly that token scrapes.
    let db = TestDb::sqlite();
    let app = spawn_app_with(&crate::helpers::test_settings(&db)).await;
    let anonymous = app.call(reqwest::Method::GET, "/metrics", None, None).await;
    anonymous.assert_problem(401, "unauthenticated");
    let brand = app.token(usage_ledger::auth::Role::Brand, &["acme"]);
    app.get("/metrics", &brand)
        .await
        .assert_problem(403, "forbidden");
    scrape(&app, &app.admin).await;

    let mut settings = crate::helpers::test_settings(&db);
    settings.metrics.token = Some(Secret::new("scrape-token-0123456789"));
    let guarded = spawn_app_with(&settings).await;
    scrape(&guarded, "scrape-token-0123456789").await;
    guarded
        .get("/metrics", "scrape-token-0123456780")
        .await
        .assert_problem(401, "unauthenticated");
}

async fn per_brand_series_are_bounded_to_the_most_recently_active(db: &TestDb) {
    // With room for two brands, three active brands show the two most recently active,
    // the third is counted as untracked, and a brand that becomes active again takes a
    // slot back.
    let mut settings = crate::helpers::test_settings(db);
    settings.metrics.brand_series_max = 2;
    let app = spawn_app_with(&settings).await;
    for brand in ["a1", "a2", "a3"] {
        app.register(brand, "starter").await;
        let record = json!({ "brandId": brand, "metric": "ai_generations", "value": 4 });
        assert_eq!(app.post("record", &app.admin, record).await.status, 201);
        assert_eq!(
            app.get(&format!("summary/{brand}"), &app.admin)
                .await
                .status,
            200
        );
    }
    let shown = |text: &str| -> Vec<String> {
        ["a1", "a2", "a3"]
            .into_iter()
            .filter(|b| text.contains(&format!(r#"luneo_quota_usage_percentage{{brand="{b}""#)))
            .map(str::to_owned)
            .collect()
    };
    let text = scrape(&app, &app.admin).await;
    assert_eq!(shown(&text), ["a2", "a3"], "{text}");
    assert_eq!(value(&text, "ledger_quota_brands_untracked"), 1.0, "{text}");
    let series =
        r#"luneo_quota_usage_percentage{brand="a3",metric="ai_generations",plan="starter"}"#;
    assert_eq!(value(&text, series), 20.0, "4 of 20: {text}");

    assert_eq!(app.get("summary/a1", &app.admin).await.status, 200);
    let text = scrape(&app, &app.admin).await;
    assert_eq!(shown(&text).len(), 2, "{text}");
    assert!(shown(&text).contains(&"a1".to_owned()), "{text}");
}
on_both_stores!(
    per_brand_series_are_bounded_to_the_most_recently_active,
    per_brand_series_are_bounded_to_the_most_recently_active
);

// After a random workload over several brands and metrics, every per-brand gauge says
// what the summary says: the usage percentage, the units remaining, the overage.
async fn per_brand_gauges_equal_the_summaries_after_a_random_workload(db: &TestDb) {
    let app = crate::helpers::spawn_app(db).await;
    let brands = ["acme", "globex", "initech"];
    let metrics = [
        "renders_3d",
        "ai_generations",
        "api_calls",
        "designs_created",
    ];
    for b in brands {
        app.register(b, "starter").await;
    }
    // A fixed linear congruential sequence: random enough, the same every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    for _ in 0..120 {
        let brand = brands[next(brands.len() as u64) as usize];
        let metric = metrics[next(metrics.len() as u64) as usize];
        let value = 1 + next(4);
        let r = app
            .post(
                "record",
                &app.admin,
                json!({ "brandId": brand, "metric": metric, "value": value }),
            )
            .await;
        assert!(r.status.is_success(), "{:#}", r.body);
    }
    // The summaries first: a read waits for the read models to hold every write
    // acknowledged before it, and the gauges are sampled from those models.
    let mut summaries = Vec::new();
    for b in brands {
        let s = app.get(&format!("summary/{b}"), &app.admin).await;
        assert_eq!(s.status, 200);
        summaries.push((b, s.body));
    }
    let text = scrape(&app, &app.admin).await;
    let mut compared = 0;
    for (b, s) in &summaries {
        for m in s["summary"]["metrics"].as_array().unwrap() {
            let metric = m["type"].as_str().unwrap();
            if m["current"] == 0 || m["limit"].is_null() {
                continue;
            }
            // Label pairs come out sorted by name.
            let labels = format!("{{brand=\"{b}\",metric=\"{metric}\",plan=\"starter\"}}");
            let limit = m["limit"].as_u64().unwrap();
            let current = m["current"].as_u64().unwrap();
            // The summary's percentage stops at 100 (the original's shape); the gauge
            // does not, so overage shows: both are current over the effective limit.
            let pct = value(&text, &format!("luneo_quota_usage_percentage{labels}"));
            let exact = current as f64 * 100.0 / limit as f64;
            assert!((pct - exact).abs() < 0.01, "{b}/{metric}: {pct} vs {m:#}");
            let shown = m["percentage"].as_f64().unwrap();
            assert!(
                (shown - exact.min(100.0)).abs() < 0.01,
                "{b}/{metric}: {m:#}"
            );
            let remaining = value(&text, &format!("luneo_quota_remaining_units{labels}"));
            assert_eq!(
                remaining as u64,
                limit.saturating_sub(current),
                "{b}/{metric}"
            );
            let overage = value(&text, &format!("luneo_quota_overage_units{labels}"));
            assert_eq!(
                overage as u64,
                m["overage"].as_u64().unwrap(),
                "{b}/{metric}"
            );
            compared += 1;
        }
    }
    assert!(
        compared >= 8,
        "the workload touched {compared} brand-metrics"
    );
}
on_both_stores!(
    gauges_equal_summaries,
    per_brand_gauges_equal_the_summaries_after_a_random_workload
);
