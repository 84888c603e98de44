//! Connections under abuse: slow or idle clients are closed after the header timeout,
//! a connection beyond the cap gets a 503 problem instead of a hang, and a real client
//! is served throughout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::TestDb;
use crate::helpers::{spawn_app_with, test_settings, TestApp};

/// Read until the peer closes (Ok with what it sent) or `wait` passes (Err).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Result<Vec<u8>, ()> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.map(|()| got).map_err(|_| ())
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_while_a_real_client_is_served() {
    // With a 300 ms header timeout: a client trickling its headers (slowloris) and an
    // idle kept-alive connection are both closed within a second, and a normal request
    // on a fresh connection in the meantime is answered.
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.http.header_read_timeout_ms = 300;
    let app = spawn_app_with(&settings).await;

    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let n = idle.read(&mut first).await.unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );

    let healthy = app.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(healthy.status, 200);
    // Trickle one more header line: it does not reset the deadline of the head.
    slow.write_all(b"X-Slow: 1\r\n").await.unwrap();
    let wait = Duration::from_secs(2);
    assert!(
        closed_within(&mut slow, wait).await.is_ok(),
        "slowloris kept open"
    );
    assert!(
        closed_within(&mut idle, wait).await.is_ok(),
        "idle connection kept open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_the_cap_gets_a_503_problem_not_a_hang() {
    // Cap 3: three open connections hold every slot, the fourth is answered 503 with
    // Retry-After within a moment and closed; once one closes, new clients are served.
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.http.connections_max = 3;
    let app = spawn_app_with(&settings).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(addr(&app)).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    let mut extra = TcpStream::connect(addr(&app)).await.unwrap();
    let answer = closed_within(&mut extra, Duration::from_secs(2))
        .await
        .expect("the extra connection is answered and closed, not left hanging");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");

    drop(held.pop());
    let mut served = false;
    for _ in 0..20 {
        let a = reqwest::Client::new()
            .get(format!("{}/healthz", app.base))
            .send()
            .await;
        if a.is_ok_and(|r| r.status() == 200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "no slot came back after a connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_past_its_rate_gets_429_with_retry_after_and_others_do_not() {
    // At 5 requests a second (bursts of 10), a token's 11th request in a row is a 429
    // problem with Retry-After; another credential is not slowed by it, and the first
    // is served again once its budget refills.
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.http.requests_per_second_per_credential = 5;
    let app = spawn_app_with(&settings).await;
    let mut statuses = Vec::new();
    for _ in 0..11 {
        statuses.push(app.get("projector", &app.admin).await.status.as_u16());
    }
    assert_eq!(&statuses[..10], &[200; 10], "{statuses:?}");
    let limited = app.get("projector", &app.admin).await;
    limited.assert_problem(429, "rate-limited");
    assert_eq!(limited.headers["retry-after"], "1");
    let other = another_admin(&app);
    assert_eq!(app.get("projector", &other).await.status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.get("projector", &app.admin).await.status, 200);
}

/// An admin token of another subject than the harness's admin.
fn another_admin(app: &TestApp) -> String {
    let ttl = usage_ledger::auth::jwt::TokenTtl::default();
    app.auth
        .jwt()
        .mint(usage_ledger::auth::Role::Admin, &[], "another-admin", ttl)
        .expect("mint")
}
