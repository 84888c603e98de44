//! Bad input: every malformed request is a precise 4xx problem+json, never a 5xx, and
//! changes nothing.

use chrono::Duration;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{t0, TestDb};
use crate::helpers::{answer, spawn_app, TestApp, PREFIX};
use crate::on_both_stores;

/// Send a raw body with a content type, as a misbehaving client would.
async fn raw(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> crate::helpers::Answer {
    let res = app
        .client
        .post(format!("{}{PREFIX}/{path}", app.base))
        .bearer_auth(&app.admin)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    answer(res).await
}

fn record(overrides: Value) -> Value {
    let mut body = json!({ "brandId": "acme", "metric": "renders_3d", "value": 1 });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    body
}

async fn malformed_records_are_refused_precisely_and_change_nothing(db: &TestDb) {
    // Each malformed body gets its own status and problem type; afterwards the period's
    // log holds exactly what the one good record wrote.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let good = app.post("record", &app.admin, record(json!({}))).await;
    assert_eq!(good.status, 201, "{:#}", good.body);
    let before = app.audit("acme").await;

    let future = (t0() + Duration::hours(1)).to_rfc3339();
    // Three months back: far past the previous period's end plus its 72 h grace.
    let stale = (t0() - Duration::days(90)).to_rfc3339();
    let cases: Vec<(Value, u16, &str)> = vec![
        (record(json!({ "value": 0 })), 422, "invalid-body"),
        (record(json!({ "value": -5 })), 422, "invalid-body"),
        (record(json!({ "value": 1.5 })), 422, "invalid-body"),
        (record(json!({ "value": 1e12 })), 422, "invalid-body"),
        (
            record(json!({ "value": 1_000_000_001u64 })),
            422,
            "invalid-body",
        ),
        (record(json!({ "value": "7" })), 422, "invalid-body"),
        (record(json!({ "brandId": null })), 422, "invalid-body"),
        (record(json!({ "metric": null })), 422, "invalid-body"),
        (
            record(json!({ "brandId": "acme:2026-11" })),
            422,
            "invalid-body",
        ),
        (record(json!({ "brandId": "" })), 422, "invalid-body"),
        (
            record(json!({ "metric": "renders_4d" })),
            422,
            "unknown-metric",
        ),
        (record(json!({ "brandId": "nobody" })), 404, "not-found"),
        (record(json!({ "extra": true })), 422, "invalid-body"),
        (
            record(json!({ "occurredAt": "yesterday" })),
            422,
            "invalid-body",
        ),
        (record(json!({ "occurredAt": future })), 422, "in-future"),
        (record(json!({ "occurredAt": stale })), 422, "too-late"),
        (
            record(json!({ "occurredAt": "1970-01-01T00:00:00Z" })),
            422,
            "too-late",
        ),
        (
            record(json!({ "occurredAt": "9999-12-31T23:59:59Z" })),
            422,
            "in-future",
        ),
        (record(json!({ "idempotencyKey": "" })), 422, "invalid-body"),
        (
            record(json!({ "idempotencyKey": "x".repeat(256) })),
            422,
            "invalid-body",
        ),
        (
            record(json!({ "metadata": { "actor": "someone-else" } })),
            422,
            "invalid-metadata",
        ),
        (
            record(json!({ "metadata": { "bad key": "v" } })),
            422,
            "invalid-metadata",
        ),
        (
            record(json!({ "metadata": { "n": 1 } })),
            422,
            "invalid-body",
        ),
        (json!([1, 2, 3]), 422, "invalid-body"),
    ];
    for (body, status, kind) in cases {
        let a = app.post("record", &app.admin, body.clone()).await;
        assert_eq!(a.status.as_u16(), status, "{body} → {:#}", a.body);
        a.assert_problem(status, kind);
    }

    raw(
        &app,
        "record",
        "application/json",
        b"{\"brandId\": \"acme\",".to_vec(),
    )
    .await
    .assert_problem(400, "bad-request");
    raw(&app, "record", "text/plain", b"{}".to_vec())
        .await
        .assert_problem(415, "unsupported-media-type");
    let huge = format!(
        "{{\"brandId\":\"acme\",\"metric\":\"renders_3d\",\"metadata\":{{\"k\":\"{}\"}}}}",
        "x".repeat(usage_ledger::config::BODY_BYTES_MAX_DEFAULT)
    );
    raw(&app, "record", "application/json", huge.into_bytes())
        .await
        .assert_problem(413, "payload-too-large");

    assert_eq!(app.audit("acme").await, before, "bad input changed the log");
}
on_both_stores!(
    malformed_records_are_refused_precisely_and_change_nothing,
    malformed_records_are_refused_precisely_and_change_nothing
);

async fn malformed_paths_and_queries_are_refused_precisely(db: &TestDb) {
    // Path and query parameters parse like bodies: a bad period, brand or limit is a
    // 4xx problem, an unknown route a 404 problem.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let cases: Vec<(&str, u16, &str)> = vec![
        ("summary/acme?period=2026-13", 400, "bad-request"),
        ("summary/acme?period=26-11", 400, "bad-request"),
        ("summary/ac%3Ame", 400, "bad-request"),
        ("history/acme?limit=0", 422, "invalid-limit"),
        ("history/acme?limit=1001", 422, "invalid-limit"),
        ("history/acme?limit=ten", 400, "bad-request"),
        ("history/acme?metric=renders%204d", 400, "bad-request"),
        ("brands/acme/periods/2026-1/events", 400, "bad-request"),
        (
            "brands/acme/periods/2026-11/events?afterSequence=-1",
            400,
            "bad-request",
        ),
        ("summary/acme?unknown=1", 400, "bad-request"),
        ("plans/platinum", 404, "not-found"),
        ("no/such/route", 404, "not-found"),
    ];
    for (path, status, kind) in cases {
        let a = app.get(path, &app.admin).await;
        assert_eq!(a.status.as_u16(), status, "{path} → {:#}", a.body);
        a.assert_problem(status, kind);
    }
    let put_bad = app
        .call(
            Method::PUT,
            "brands/acme",
            Some(&app.admin),
            Some(json!({ "plan": 7 })),
        )
        .await;
    put_bad.assert_problem(422, "invalid-body");
}
on_both_stores!(
    malformed_paths_and_queries_are_refused_precisely,
    malformed_paths_and_queries_are_refused_precisely
);

async fn a_method_a_route_does_not_have_is_a_405_problem_with_allow(db: &TestDb) {
    // Each known route asked with a method it lacks answers 405 problem+json, never an
    // empty body, with an `Allow` header naming the methods it has; nothing is written.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let before = app.audit("acme").await;
    let cases: Vec<(Method, &str, &str)> = vec![
        (Method::GET, "record", "POST"),
        (Method::DELETE, "summary/acme", "GET,HEAD"),
        (Method::POST, "brands/acme", "PUT"),
        (Method::PUT, "brands/acme/api-keys", "GET,HEAD,POST"),
        (Method::PATCH, "/healthz", "GET,HEAD"),
    ];
    for (method, path, allow) in cases {
        let a = app
            .call(method.clone(), path, Some(&app.admin), Some(json!({})))
            .await;
        a.assert_problem(405, "method-not-allowed");
        let allowed = a.headers["allow"].to_str().unwrap();
        let mut allowed: Vec<&str> = allowed.split(',').map(str::trim).collect();
        allowed.sort_unstable();
        assert_eq!(allowed.join(","), allow, "{method} {path}");
    }
    assert_eq!(app.audit("acme").await, before);
}
on_both_stores!(
    a_method_a_route_does_not_have_is_a_405_problem_with_allow,
    a_method_a_route_does_not_have_is_a_405_problem_with_allow
);

async fn a_huge_metadata_key_is_echoed_capped_in_the_422(db: &TestDb) {
    // A 5,000-character metadata key is refused as `invalid-metadata`, and the problem
    // quotes only its first `ECHO_CHARS_MAX` characters, then an ellipsis.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let key = "k".repeat(5_000);
    let a = app
        .post(
            "record",
            &app.admin,
            record(json!({ "metadata": { key.clone(): "v" } })),
        )
        .await;
    a.assert_problem(422, "invalid-metadata");
    let detail = a.body["detail"].as_str().unwrap();
    let echoed = format!("{}…", &key[..usage_ledger::engine::ECHO_CHARS_MAX]);
    assert!(detail.contains(&echoed), "{detail}");
    assert!(
        detail.chars().count() < 200,
        "{} characters: {detail}",
        detail.chars().count()
    );
}
on_both_stores!(
    a_huge_metadata_key_is_echoed_capped_in_the_422,
    a_huge_metadata_key_is_echoed_capped_in_the_422
);

async fn ambiguous_requests_are_refused_instead_of_guessed(db: &TestDb) {
    // A batch item naming brandId twice is refused as `/record` refuses it (the last
    // value used to win and charge the other brand), and two Idempotency-Key headers
    // are a 422 rather than a silent choice of the first; nothing is written.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    app.register("globex", "starter").await;
    let item = r#"{"brandId":"acme","brandId":"globex","metric":"renders_3d","value":1}"#;
    let batch = raw(
        &app,
        "record/batch",
        "application/json",
        format!(r#"{{"events":[{item}]}}"#).into_bytes(),
    )
    .await;
    assert_eq!(batch.status, 200, "{:#}", batch.body);
    assert_eq!(batch.body["rejected"], 1, "{:#}", batch.body);
    let problem = &batch.body["results"][0]["problem"];
    assert_eq!(problem["status"], 422, "{problem:#}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("duplicate field"),
        "{problem:#}"
    );
    let single = raw(&app, "record", "application/json", item.as_bytes().to_vec()).await;
    single.assert_problem(422, "invalid-body");

    let res = app
        .client
        .post(format!("{}{PREFIX}/record", app.base))
        .bearer_auth(&app.admin)
        .header("idempotency-key", "k-1")
        .header("idempotency-key", "k-2")
        .json(&record(json!({})))
        .send()
        .await
        .expect("request");
    answer(res)
        .await
        .assert_problem(422, "invalid-idempotency-key");
    for brand in ["acme", "globex"] {
        let current = app.get(&format!("current/{brand}"), &app.admin).await;
        assert_eq!(
            current.body["usage"]["renders_3d"], 0,
            "{brand}: {:#}",
            current.body
        );
    }
}
on_both_stores!(
    ambiguous_requests_are_refused_instead_of_guessed,
    ambiguous_requests_are_refused_instead_of_guessed
);
