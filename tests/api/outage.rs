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
