//! Request ids: the caller's `X-Request-Id` comes back in the header and in problem
//! bodies; without one, or with a bad one, the service makes its own.

use crate::common::TestDb;
use crate::helpers::{answer, spawn_app, Answer, TestApp};

/// A GET of a route that does not exist (a 404 problem), with `id` as `X-Request-Id`.
async fn missing(app: &TestApp, id: Option<&str>) -> Answer {
    let mut req = app.client.get(format!("{}/no/such/route", app.base));
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    answer(req.send().await.expect("request")).await
}

fn header_id(a: &Answer) -> String {
    a.headers
        .get("x-request-id")
        .expect("every answer names its request")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_callers_request_id_comes_back_in_the_header_and_the_problem() {
    // Proves a sane caller id is kept, echoed, and carried by problem+json as `requestId`.
    let db = TestDb::sqlite();
    let app = spawn_app(&db).await;
    let a = missing(&app, Some("abc-123")).await;
    a.assert_problem(404, "not-found");
    assert_eq!(header_id(&a), "abc-123");
    assert_eq!(a.body["requestId"], "abc-123", "{:#}", a.body);
}

#[tokio::test]
async fn without_a_request_id_each_request_gets_its_own() {
    // Proves a generated id is answered in the header and the body, and differs per request.
    let db = TestDb::sqlite();
    let app = spawn_app(&db).await;
    let (first, second) = (missing(&app, None).await, missing(&app, None).await);
    let id = header_id(&first);
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    assert_eq!(first.body["requestId"], id.as_str());
    assert_ne!(id, header_id(&second));
    let ok = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert!(
        ok.headers().contains_key("x-request-id"),
        "success answers carry it too"
    );
}

#[tokio::test]
async fn a_bad_request_id_is_replaced_by_a_generated_one() {
    // Proves an id too long, or with a control character, never reaches the logs or answers.
    let db = TestDb::sqlite();
    let app = spawn_app(&db).await;
    let long = "a".repeat(usage_ledger::http::request_id::REQUEST_ID_CHARS_MAX + 1);
    for bad in [long.as_str(), "abc\t123"] {
        let a = missing(&app, Some(bad)).await;
        let id = header_id(&a);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{bad:?} gave {id}");
        assert_eq!(a.body["requestId"], id.as_str());
    }
}
