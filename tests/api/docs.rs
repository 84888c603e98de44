//! The OpenAPI document is served and covers every route.

use reqwest::Method;

use crate::common::TestDb;
use crate::helpers::spawn_app;
use crate::on_both_stores;

async fn the_openapi_document_lists_every_route(db: &TestDb) {
    // Generated from the handlers: each route of the API is in it with its methods,
    // and both ways to authenticate are declared.
    let app = spawn_app(db).await;
    let doc = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let p = "/api/v1/usage-billing";
    let expected = [
        ("post", format!("{p}/record")),
        ("post", format!("{p}/record/batch")),
        ("post", format!("{p}/check-quota")),
        ("put", format!("{p}/brands/{{brandId}}/gauges/{{metric}}")),
        ("post", format!("{p}/reservations")),
        ("post", format!("{p}/reservations/{{id}}/commit")),
        ("post", format!("{p}/reservations/{{id}}/void")),
        (
            "get",
            format!("{p}/brands/{{brandId}}/periods/{{period}}/alerts"),
        ),
        ("get", format!("{p}/summary")),
        ("get", format!("{p}/summary/{{brandId}}")),
        ("get", format!("{p}/current/{{brandId}}")),
        ("get", format!("{p}/history/{{brandId}}")),
        (
            "get",
            format!("{p}/brands/{{brandId}}/periods/{{period}}/events"),
        ),
        (
            "get",
            format!("{p}/brands/{{brandId}}/periods/{{period}}/summary"),
        ),
        ("put", format!("{p}/brands/{{brandId}}")),
        ("post", format!("{p}/topups/grant")),
        ("get", format!("{p}/projector")),
        ("post", format!("{p}/periods/{{period}}/close")),
        ("get", format!("{p}/finance/overages")),
        ("post", format!("{p}/brands/{{brandId}}/api-keys")),
        ("get", format!("{p}/brands/{{brandId}}/api-keys")),
        (
            "delete",
            format!("{p}/brands/{{brandId}}/api-keys/{{keyId}}"),
        ),
        ("get", format!("{p}/plans")),
        ("get", format!("{p}/plans/{{plan}}")),
        ("post", format!("{p}/topups/simulate")),
        ("get", format!("{p}/compare-plans/{{brandId}}")),
        ("get", format!("{p}/projections/{{brandId}}")),
        ("post", format!("{p}/estimate")),
        ("get", format!("{p}/bill/current/{{brandId}}")),
        ("post", format!("{p}/topups/checkout")),
        ("post", format!("{p}/webhooks/stripe")),
        ("get", format!("{p}/topups/history")),
        ("put", format!("{p}/brands/{{brandId}}/notifications")),
        ("get", format!("{p}/brands/{{brandId}}/notifications")),
        ("get", format!("{p}/alerts/deliveries")),
        ("post", format!("{p}/alerts/deliveries/{{id}}/retry")),
        ("post", format!("{p}/live/tickets")),
        ("get", format!("{p}/live")),
    ];
    for (method, path) in &expected {
        assert!(
            doc.body["paths"][path][method].is_object(),
            "{method} {path} is missing from the document"
        );
    }
    let documented: usize = doc.body["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|ops| ops.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        expected.len(),
        "an undocumented extra path or method"
    );
    let schemes = &doc.body["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["apiKey"]["name"], "X-Api-Key");
    let problem = &doc.body["components"]["schemas"]["Problem"];
    assert!(problem.is_object());
    assert!(
        problem["properties"]["requestId"].is_object(),
        "the problem schema names the requestId member: {problem:#}"
    );
}
on_both_stores!(
    the_openapi_document_lists_every_route,
    the_openapi_document_lists_every_route
);
