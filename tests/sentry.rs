//! Sentry reports: an internal error reaches a Sentry server (a local one that records
//! what it is sent) with its message and tags, the live feed's failure streak too, and
//! nothing is sent without a DSN.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use usage_ledger::config::Settings;
use usage_ledger::http::error::ApiError;
use usage_ledger::http::request_id::{self, RequestContext};
use usage_ledger::secret::Secret;
use usage_ledger::telemetry;

type Received = Arc<Mutex<Vec<String>>>;

/// A server speaking Sentry's ingestion routes that keeps every body; its port.
async fn collector() -> (u16, Received) {
    let received: Received = Arc::default();
    let keep = |r: Received| {
        move |body: Bytes| {
            let r = r.clone();
            async move {
                r.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                "{}"
            }
        }
    };
    let app = Router::new()
        .route("/api/{project}/envelope/", post(keep(received.clone())))
        .route("/api/{project}/store/", post(keep(received.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, received)
}

/// An internal error answered inside request `req-42` of the record route.
async fn internal_error_in_a_request() -> serde_json::Value {
    let context = RequestContext {
        id: "req-42".to_owned(),
        route: "/api/v1/usage-billing/record".to_owned(),
    };
    let res = request_id::scope(context, async {
        ApiError::Internal("a stored payload is not JSON".to_owned()).into_response()
    })
    .await;
    assert_eq!(res.status(), 500);
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_errors_reach_sentry_with_their_tags_and_nothing_leaves_without_a_dsn() {
    // Proves the whole path: no DSN, no client and nothing sent; with one, a 500 and a
    // live failure streak each arrive as an event with the message and tags documented.
    let (port, received) = collector().await;
    let mut settings = Settings::default();
    assert!(telemetry::init_sentry(&settings).is_none());
    let problem = internal_error_in_a_request().await;
    assert_eq!(problem["requestId"], "req-42", "{problem:#}");
    telemetry::report_live_failures(3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(received.lock().unwrap().is_empty(), "sent without a DSN");

    let dsn = format!("http://publickey@127.0.0.1:{port}/1");
    settings.sentry.dsn = Some(Secret::new(dsn));
    let guard = telemetry::init_sentry(&settings).expect("a DSN starts the client");
    internal_error_in_a_request().await;
    telemetry::report_live_failures(3);
    // Dropping the guard flushes, blocking: off the runtime, which serves the collector.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let bodies = received.lock().unwrap().clone();
    let internal = bodies
        .iter()
        .find(|b| b.contains("a stored payload is not JSON"))
        .unwrap_or_else(|| panic!("no internal error event in {bodies:#?}"));
    for tag in [
        r#""route":"/api/v1/usage-billing/record""#,
        r#""status":"500""#,
        r#""request_id":"req-42""#,
        r#""environment":"development""#,
    ] {
        assert!(internal.contains(tag), "{tag} missing from {internal}");
    }
    let live = bodies
        .iter()
        .find(|b| b.contains("broadcast failures in a row"))
        .unwrap_or_else(|| panic!("no live feed event in {bodies:#?}"));
    assert!(live.contains(r#""component":"live""#), "{live}");
}
