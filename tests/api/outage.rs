//! The database breaks on purpose: callers get a 503 problem, never a 500 or a false
//! acknowledgement, and the service recovers when the database does.

use serde_json::json;
use sqlx::Executor;

use crate::common::TestDb;
use crate::helpers::spawn_app;

/// PostgreSQL only: renaming the events table away is an outage the test can undo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_a_503_and_the_service_recovers() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = spawn_app(&db).await;
    app.register("acme", "starter").await;
    let admin = sqlx::PgPool::connect(db.pg_url().unwrap()).await.unwrap();
    let record =
        json!({ "brandId": "acme", "metric": "renders_2d", "value": 1, "idempotencyKey": "o-1" });

    admin
        .execute("ALTER TABLE events RENAME TO events_away")
        .await
        .unwrap();
    let failed = app.post("record", &app.admin, record.clone()).await;
    failed.assert_problem(503, "unavailable");
    assert_eq!(failed.headers["retry-after"], "1");
    admin
        .execute("ALTER TABLE events_away RENAME TO events")
        .await
        .unwrap();

    // The retry with the same key is applied once.
    let retried = app.post("record", &app.admin, record).await;
    assert_eq!(retried.status, 201, "{:#}", retried.body);
    let current = app.get("current/acme", &app.admin).await;
    assert_eq!(current.body["usage"]["renders_2d"], 1);
    admin.close().await;
    db.cleanup().await;
}

/// A TCP relay to PostgreSQL that the test can cut and restore: a network outage.
struct Relay {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(addr: std::net::SocketAddr, upstream: String) -> Relay {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("bound");
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                pipes.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Relay { addr, task }
    }

    /// Drop the listener and every relayed connection, as a dead network does.
    fn cut(self) -> std::net::SocketAddr {
        self.task.abort();
        self.addr
    }
}

/// PostgreSQL only: the database goes away under the service (its connections die and
/// new ones are refused): writes and readiness answer 503 within the pool's acquire
/// bound instead of hanging, and the service recovers with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_answers_503_quickly_and_the_service_recovers() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let url = db.pg_url().unwrap().to_owned();
    let (_, rest) = url.split_once('@').expect("a URL with a host");
    let (hostport, name) = rest.split_once('/').expect("a URL with a database");
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), hostport.to_owned()).await;
    let mut settings = crate::helpers::test_settings(&db);
    let user = url
        .trim_start_matches("postgres://")
        .split('@')
        .next()
        .unwrap();
    settings.store.database_url = Some(format!("postgres://{user}@{}/{name}", relay.addr));
    let app = crate::helpers::spawn_app_with(&settings).await;
    app.register("acme", "starter").await;
    let record =
        |key: &str| json!({ "brandId": "acme", "metric": "renders_2d", "idempotencyKey": key });
    assert_eq!(
        app.post("record", &app.admin, record("n-1")).await.status,
        201
    );

    let addr = relay.cut();
    let bound = std::time::Duration::from_secs(3);
    let started = std::time::Instant::now();
    let failed = app.post("record", &app.admin, record("n-2")).await;
    failed.assert_problem(503, "unavailable");
    let ready = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 503);
    let took = started.elapsed();
    assert!(
        took < bound,
        "two answers took {took:?} with the database gone"
    );

    let _relay = Relay::start(addr, hostport.to_owned()).await;
    let mut recovered = None;
    for _ in 0..50 {
        let a = app.post("record", &app.admin, record("n-2")).await;
        if a.status == 201 {
            recovered = Some(a);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        recovered.is_some(),
        "no recovery within 5 s of the database's return"
    );
    let current = app.get("current/acme", &app.admin).await;
    assert_eq!(current.body["usage"]["renders_2d"], 2, "{:#}", current.body);
    db.cleanup().await;
}
