//! The layer on a router of its own, against a ledger address where nothing listens:
//! what the guard decides before (or instead of) reaching the ledger.

mod support;

use axum::body::Bytes;
use axum::routing::post;
use axum::{Extension, Router};
use ledger_guard::{BrandIdentity, Credential, Credentials, Guard, GuardConfig, QuotaGrant};
use serde_json::json;
use support::answer;

/// A loopback address where nothing listens: every ledger call is refused at once.
async fn dead_ledger() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

async fn guard(spool_entries_max: usize) -> Guard {
    let config = GuardConfig::new(
        dead_ledger().await,
        Credentials::one(Credential::api_key("ulk_test")),
    )
    .spool_entries_max(spool_entries_max);
    Guard::start(config).unwrap()
}

/// The handler echoes the body it got and what the guard granted.
async fn echo(Extension(grant): Extension<QuotaGrant>, body: Bytes) -> String {
    format!(
        "{} {} {}",
        grant.amount,
        grant.spooled,
        String::from_utf8_lossy(&body)
    )
}

/// Serve `app` with every request authenticated as acme.
async fn serve(app: Router) -> String {
    let app = app.layer(axum::middleware::from_fn(
        |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
            req.extensions_mut()
                .insert(BrandIdentity::new("acme").unwrap());
            next.run(req).await
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn post_json(base: &str, body: serde_json::Value) -> support::Answer {
    let res = reqwest::Client::new()
        .post(format!("{base}/x"))
        .json(&body)
        .send()
        .await
        .unwrap();
    answer(res).await
}

#[tokio::test]
async fn a_route_layered_twice_for_one_metric_spends_it_once() {
    // Proves the once-per-request rule: two layers of the same metric spool one entry per
    // request, while a second metric on the same route spools its own.
    let g = guard(10).await;
    let app = Router::new()
        .route(
            "/x",
            post(echo).layer(g.require("api_calls").amount_field("n").fail_open()),
        )
        .layer(g.require("api_calls").amount_field("n").fail_open())
        .layer(g.require("designs_created").fail_open());
    let base = serve(app).await;

    let a = post_json(&base, json!({ "n": 3 })).await;

    assert_eq!(a.status, 200);
    let metrics: Vec<(String, u64)> = g
        .spool()
        .entries()
        .into_iter()
        .map(|e| (e.metric, e.amount))
        .collect();
    assert_eq!(
        metrics,
        vec![
            ("designs_created".to_owned(), 1),
            ("api_calls".to_owned(), 3)
        ]
    );
}

#[tokio::test]
async fn the_handler_gets_the_body_the_amount_was_read_from() {
    // Proves buffering is invisible to the handler: same bytes, and the grant's amount.
    let g = guard(10).await;
    let app = Router::new().route(
        "/x",
        post(echo).layer(g.require("api_calls").amount_field("job.n").fail_open()),
    );
    let base = serve(app).await;

    let sent = json!({ "job": { "n": 2 }, "brandId": "globex" });
    let a = post_json(&base, sent.clone()).await;

    assert_eq!(a.status, 200);
    assert_eq!(a.text, format!("2 true {sent}"));
    let entry = &g.spool().entries()[0];
    assert_eq!((entry.brand.as_str(), entry.amount), ("acme", 2));
}

#[tokio::test]
async fn a_full_spool_fails_the_request_closed() {
    // Proves the bound: past SPOOL_ENTRIES_MAX (here 2) a fail-open route answers 503
    // with Retry-After instead of serving usage it could not keep.
    let g = guard(2).await;
    let app = Router::new().route("/x", post(echo).layer(g.require("api_calls").fail_open()));
    let base = serve(app).await;

    for _ in 0..2 {
        assert_eq!(post_json(&base, json!({})).await.status, 200);
    }
    let full = post_json(&base, json!({})).await;

    full.assert_problem(503, "ledger-unavailable");
    assert!(full.headers.contains_key("retry-after"));
    assert_eq!(g.spool().len(), 2);
    assert_eq!(g.spool().stats().full, 1);
}

#[tokio::test]
async fn a_fail_closed_route_answers_503_when_the_ledger_is_unreachable() {
    // Proves the default: no ledger, no service, and the answer says so (not 402/403).
    let g = guard(10).await;
    let app = Router::new().route("/x", post(echo).layer(g.require("renders_3d")));
    let base = serve(app).await;

    let a = post_json(&base, json!({})).await;

    a.assert_problem(503, "ledger-unavailable");
    assert_eq!(a.headers["retry-after"], "5");
    assert!(g.spool().is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413() {
    // Proves the buffering limit: the guard holds at most body_bytes_max bytes.
    let g = guard(10).await;
    let app = Router::new().route(
        "/x",
        post(echo).layer(
            g.require("api_calls")
                .amount_field("n")
                .body_bytes_max(32)
                .fail_open(),
        ),
    );
    let base = serve(app).await;

    let a = post_json(&base, json!({ "n": 1, "pad": "x".repeat(64) })).await;

    a.assert_problem(413, "payload-too-large");
    assert!(g.spool().is_empty());
}

#[tokio::test]
async fn a_request_id_reused_during_an_outage_is_spooled_and_served_once() {
    // Proves the spool is not a way around the duplicate rule: the second request with
    // the same id is a 409 and adds no entry.
    let g = guard(10).await;
    let app = Router::new().route("/x", post(echo).layer(g.require("api_calls").fail_open()));
    let base = serve(app).await;
    let send = || {
        reqwest::Client::new()
            .post(format!("{base}/x"))
            .header("x-request-id", "r-7")
            .send()
    };

    let first = answer(send().await.unwrap()).await;
    let second = answer(send().await.unwrap()).await;

    assert_eq!(first.status, 200);
    second.assert_problem(409, "duplicate-request");
    assert_eq!(g.spool().len(), 1);
}
