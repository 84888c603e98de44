//! Auth and tenancy: who may call what, and what another tenant learns (nothing).

use reqwest::Method;
use serde_json::{json, Value};
use usage_ledger::auth::Role;

use crate::common::TestDb;
use crate::helpers::{spawn_app, without_request_id, Answer, TestApp};
use crate::on_both_stores;

/// Every brand-scoped route, as (method, path, body) for `brand`.
fn routes(brand: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (
            Method::POST,
            "record".into(),
            Some(json!({ "brandId": brand, "metric": "renders_3d" })),
        ),
        (
            Method::POST,
            "record/batch".into(),
            Some(json!({ "events": [{ "brandId": brand, "metric": "renders_3d" }] })),
        ),
        (
            Method::POST,
            "check-quota".into(),
            Some(json!({ "brandId": brand, "metric": "renders_3d", "consume": true })),
        ),
        (Method::GET, format!("summary/{brand}"), None),
        (Method::GET, format!("current/{brand}"), None),
        (Method::GET, format!("history/{brand}"), None),
        (
            Method::GET,
            format!("brands/{brand}/periods/2026-11/events"),
            None,
        ),
    ]
}

/// The answer with the brand's name replaced, to compare "yours" with "unknown".
fn shape(a: &Answer, brand: &str) -> (u16, String) {
    let body = without_request_id(&a.body)
        .to_string()
        .replace(brand, "<brand>");
    (a.status.as_u16(), body)
}

/// For a batch the refusal is per item: the item's answer is what counts.
fn item_or_whole(route: &str, a: &Answer) -> Answer {
    if route != "record/batch" || a.status != 200 {
        return Answer {
            status: a.status,
            content_type: a.content_type.clone(),
            headers: a.headers.clone(),
            body: a.body.clone(),
        };
    }
    let item = &a.body["results"][0];
    Answer {
        status: reqwest::StatusCode::from_u16(item["status"].as_u64().unwrap() as u16).unwrap(),
        content_type: "application/problem+json".into(),
        headers: a.headers.clone(),
        body: item["problem"].clone(),
    }
}

async fn a_tenant_learns_nothing_about_another_tenant(db: &TestDb) {
    // Brand `rival` tries every route against `acme`: each answer is exactly the
    // answer for a brand that does not exist, and acme's log does not change.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    app.register("rival", "starter").await;
    app.post(
        "record",
        &app.admin,
        json!({ "brandId": "acme", "metric": "renders_3d", "value": 2 }),
    )
    .await;
    let before = app.audit("acme").await;
    let rival = app.token(Role::Brand, &["rival"]);
    for ((method, path, body), (_, ghost_path, ghost_body)) in
        routes("acme").into_iter().zip(routes("ghost"))
    {
        let theirs = app.call(method.clone(), &path, Some(&rival), body).await;
        let unknown = app
            .call(method, &ghost_path, Some(&app.admin), ghost_body)
            .await;
        let theirs = item_or_whole(&path, &theirs);
        let unknown = item_or_whole(&ghost_path, &unknown);
        assert_eq!(theirs.status, 404, "{path}: {:#}", theirs.body);
        theirs.assert_problem(404, "not-found");
        assert_eq!(shape(&theirs, "acme"), shape(&unknown, "ghost"), "{path}");
    }
    // Admin routes are refused to tenants whatever the brand.
    for brand in ["acme", "rival"] {
        app.call(
            Method::PUT,
            &format!("brands/{brand}"),
            Some(&rival),
            Some(json!({ "plan": "enterprise" })),
        )
        .await
        .assert_problem(403, "forbidden");
    }
    app.post("brands/rival/api-keys", &rival, json!({ "label": "mine" }))
        .await
        .assert_problem(403, "forbidden");
    app.post(
        "topups/grant",
        &rival,
        json!({ "brandId": "rival", "metric": "renders_3d", "units": 5, "reason": "self-service" }),
    )
    .await
    .assert_problem(403, "forbidden");
    assert_eq!(app.audit("acme").await, before);
}
on_both_stores!(
    a_tenant_learns_nothing_about_another_tenant,
    a_tenant_learns_nothing_about_another_tenant
);

async fn service_credentials_meter_their_brands_but_do_not_read(db: &TestDb) {
    // A service token scoped to acme records and checks for acme, cannot read its
    // summary (403), and sees other brands as unknown (404).
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    app.register("other", "starter").await;
    let service = app.token(Role::Service, &["acme"]);
    let rec = app
        .post(
            "record",
            &service,
            json!({ "brandId": "acme", "metric": "api_calls", "value": 5 }),
        )
        .await;
    assert_eq!(rec.status, 201, "{:#}", rec.body);
    assert_eq!(rec.body["event"]["metadata"]["actor"], "service-test");
    let check = app
        .post(
            "check-quota",
            &service,
            json!({ "brandId": "acme", "metric": "api_calls" }),
        )
        .await;
    assert_eq!(check.status, 200);
    app.get("summary/acme", &service)
        .await
        .assert_problem(403, "forbidden");
    app.post(
        "record",
        &service,
        json!({ "brandId": "other", "metric": "api_calls" }),
    )
    .await
    .assert_problem(404, "not-found");
}
on_both_stores!(
    service_credentials_meter_their_brands_but_do_not_read,
    service_credentials_meter_their_brands_but_do_not_read
);

async fn requests_without_valid_credentials_are_401(db: &TestDb) {
    // No token, a garbage token, or a token signed with another secret: 401 with
    // `WWW-Authenticate: Bearer`, and nothing is written. Plans and probes are public.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let body = json!({ "brandId": "acme", "metric": "renders_3d" });
    let none = app
        .call(Method::POST, "record", None, Some(body.clone()))
        .await;
    none.assert_problem(401, "unauthenticated");
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    app.call(
        Method::POST,
        "record",
        Some("not.a.jwt"),
        Some(body.clone()),
    )
    .await
    .assert_problem(401, "unauthenticated");
    let forged = crate::helpers::forged_token();
    app.call(Method::POST, "record", Some(&forged), Some(body))
        .await
        .assert_problem(401, "unauthenticated");
    assert_eq!(app.get("plans", "").await.status, 200);
    assert_eq!(
        app.call(Method::GET, "/healthz", None, None).await.status,
        200
    );
    assert_eq!(
        app.call(Method::GET, "/readyz", None, None).await.status,
        200
    );
    assert!(app.audit("acme").await.is_empty());
}
on_both_stores!(
    requests_without_valid_credentials_are_401,
    requests_without_valid_credentials_are_401
);

async fn an_api_key_meters_for_its_brand_until_revoked(db: &TestDb) {
    // An admin creates a key for acme (shown once), the key records usage for acme
    // only, and once revoked it is refused.
    let app: TestApp = spawn_app(db).await;
    app.register("acme", "starter").await;
    let created = app
        .post(
            "brands/acme/api-keys",
            &app.admin,
            json!({ "label": "worker" }),
        )
        .await;
    assert_eq!(created.status, 201, "{:#}", created.body);
    let key = created.body["key"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_str().unwrap().to_owned();
    let send = |brand: &'static str| {
        let req = app
            .client
            .post(format!("{}{}/record", app.base, crate::helpers::PREFIX))
            .header("X-Api-Key", &key)
            .json(&json!({ "brandId": brand, "metric": "api_calls" }));
        async move { crate::helpers::answer(req.send().await.unwrap()).await }
    };
    assert_eq!(send("acme").await.status, 201);
    send("rival").await.assert_problem(404, "not-found");
    let listed = app.get("brands/acme/api-keys", &app.admin).await;
    assert!(
        !listed.body.to_string().contains(&key),
        "a listing never shows the key"
    );
    let revoked = app
        .call(
            Method::DELETE,
            &format!("brands/acme/api-keys/{id}"),
            Some(&app.admin),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204);
    send("acme").await.assert_problem(401, "unauthenticated");
}
on_both_stores!(
    an_api_key_meters_for_its_brand_until_revoked,
    an_api_key_meters_for_its_brand_until_revoked
);

async fn the_api_keys_of_an_unregistered_brand_are_a_404_to_read_as_to_create(db: &TestDb) {
    // `nobody` was never registered: listing its keys is the same 404 problem as
    // creating one, not an empty list that reads as a brand without keys.
    let app = spawn_app(db).await;
    app.register("acme", "starter").await;
    let listed = app.get("brands/nobody/api-keys", &app.admin).await;
    listed.assert_problem(404, "not-found");
    let created = app
        .post(
            "brands/nobody/api-keys",
            &app.admin,
            json!({ "label": "ci" }),
        )
        .await;
    created.assert_problem(404, "not-found");
    assert_eq!(
        without_request_id(&listed.body),
        without_request_id(&created.body)
    );
    let registered = app.get("brands/acme/api-keys", &app.admin).await;
    assert_eq!(registered.status, 200, "{:#}", registered.body);
    assert_eq!(registered.body, json!([]));
}
on_both_stores!(
    the_api_keys_of_an_unregistered_brand_are_a_404_to_read_as_to_create,
    the_api_keys_of_an_unregistered_brand_are_a_404_to_read_as_to_create
);

/// PostgreSQL only: its NOTIFY is how one instance hears of another's revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_instance_is_refused_by_the_other_at_once() {
    // Two instances on one database: the second has the key in its cache (it just
    // served it) when the first revokes it; the second refuses it within a second,
    // not after its cache's 30 s.
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let first = spawn_app(&db).await;
    let second = spawn_app(&db).await;
    first.register("acme", "starter").await;
    let created = first
        .post(
            "brands/acme/api-keys",
            &first.admin,
            json!({ "label": "worker" }),
        )
        .await;
    let key = created.body["key"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_str().unwrap().to_owned();
    let record = |app: &TestApp| {
        let req = app
            .client
            .post(format!("{}{}/record", app.base, crate::helpers::PREFIX))
            .header("X-Api-Key", &key)
            .json(&json!({ "brandId": "acme", "metric": "api_calls" }));
        async move { crate::helpers::answer(req.send().await.unwrap()).await }
    };
    assert_eq!(record(&second).await.status, 201);
    let revoked = first
        .call(
            Method::DELETE,
            &format!("brands/acme/api-keys/{id}"),
            Some(&first.admin),
            None,
        )
        .await;
    assert!(revoked.status.is_success(), "{:#}", revoked.body);
    let started = std::time::Instant::now();
    loop {
        let a = record(&second).await;
        if a.status == 401 {
            break;
        }
        assert_eq!(a.status, 201, "{:#}", a.body);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "the other instance still accepts the revoked key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    db.cleanup().await;
}
