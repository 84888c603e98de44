//! The OpenAPI document is served, covers every route, and states what the service
//! answers and enforces: statuses, patterns, bounds.

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

/// The served document. It does not depend on the store, so one (SQLite) serves it.
async fn document() -> serde_json::Value {
    let db = TestDb::sqlite();
    let app = spawn_app(&db).await;
    let doc = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(doc.status, 200);
    doc.body
}

/// `schema`, or the component it refers to.
fn resolve<'a>(doc: &'a serde_json::Value, schema: &'a serde_json::Value) -> &'a serde_json::Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn operation<'a>(doc: &'a serde_json::Value, method: &str, path: &str) -> &'a serde_json::Value {
    let op = &doc["paths"][format!("/api/v1/usage-billing/{path}")][method];
    assert!(op.is_object(), "{method} {path} is not in the document");
    op
}

fn parameter<'a>(op: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    op["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no parameter {name} in {op:#}"))
}

fn pattern(doc: &serde_json::Value, component: &str) -> regex::Regex {
    let p = doc["components"]["schemas"][component]["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{component} has no pattern"));
    regex::Regex::new(p).unwrap_or_else(|e| panic!("{component}'s pattern {p}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_route_documents_every_status_it_answers() {
    // The extractors' and layers' answers (400, 401, 413, 415, 422, 429, 503) are in
    // the document beside the handler's own, each a problem+json of the shared schema.
    let doc = document().await;
    let record = operation(&doc, "post", "record");
    let responses = record["responses"].as_object().unwrap();
    let mut statuses: Vec<&str> = responses.keys().map(String::as_str).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        ["200", "201", "400", "401", "404", "409", "413", "415", "422", "429", "503"],
        "{record:#}"
    );
    for (status, response) in responses {
        if status.starts_with('2') {
            continue;
        }
        let problem = &response["content"]["application/problem+json"]["schema"]["$ref"];
        assert_eq!(
            problem, "#/components/schemas/Problem",
            "{status} is a problem+json: {response:#}"
        );
    }
    assert!(
        responses["429"]["headers"]["Retry-After"].is_object(),
        "429 names Retry-After"
    );
    // A route without credentials or a body answers none of those.
    let plans = operation(&doc, "get", "plans")["responses"]
        .as_object()
        .unwrap();
    let mut statuses: Vec<&str> = plans.keys().map(String::as_str).collect();
    statuses.sort();
    assert_eq!(statuses, ["200", "503"]);
    // Stripe's webhook reads bytes: no 415, no 422 of a body extractor.
    let webhook = &operation(&doc, "post", "webhooks/stripe")["responses"];
    assert!(
        webhook["415"].is_null() && webhook["422"].is_null(),
        "{webhook:#}"
    );
}

/// A component, samples, and whether its parser takes a sample.
type PatternCase = (&'static str, Vec<String>, fn(&str) -> bool);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patterns_of_the_document_are_the_parsers() {
    // Each pattern accepts exactly what the newtype's parser accepts, on edge cases of
    // length, alphabet and range.
    use ledger_aggregates::{BrandId, IdempotencyKey, MetricKey, PeriodKey, ReservationId};
    let doc = document().await;
    let long = |n: usize| "a".repeat(n);
    let cases: [PatternCase; 5] = [
        (
            "BrandId",
            [
                "acme", "a", "A.b-c_9", "-x", ".x", "", "a:b", "é", "a b", "acme\n",
            ]
            .map(str::to_owned)
            .into_iter()
            .chain([long(64), long(65)])
            .collect(),
            |s| BrandId::parse(s).is_ok(),
        ),
        (
            "MetricKey",
            ["renders_3d", "x", "Renders", "a-b", "", "a.b"]
                .map(str::to_owned)
                .into_iter()
                .chain([long(64), long(65)])
                .collect(),
            |s| MetricKey::parse(s).is_ok(),
        ),
        (
            "PeriodKey",
            [
                "2026-11", "2000-01", "1999-12", "9999-12", "2026-13", "2026-00", "26-11",
                "2026-1", "2026-011",
            ]
            .map(str::to_owned)
            .into(),
            |s| PeriodKey::parse(s).is_ok(),
        ),
        (
            "IdempotencyKey",
            ["order-4711", "!", "a b", "é", "", "~~"]
                .map(str::to_owned)
                .into_iter()
                .chain([long(255), long(256)])
                .collect(),
            |s| IdempotencyKey::parse(s).is_ok(),
        ),
        (
            "ReservationId",
            [
                "acme:2026-12:7",
                "acme:2026-12:0",
                "acme:2026-12:07",
                "acme:2026-13:1",
                "acme:2026-12",
                "a.b:2000-01:18446744073709551",
            ]
            .map(str::to_owned)
            .into(),
            |s| ReservationId::parse(s).is_ok(),
        ),
    ];
    for (component, samples, parses) in cases {
        let re = pattern(&doc, component);
        for s in samples {
            assert_eq!(re.is_match(&s), parses(&s), "{component} {s:?}");
        }
    }
    // The path parameters use them, and an API key's id is a UUID.
    let summary = operation(&doc, "get", "summary/{brandId}");
    assert_eq!(
        parameter(summary, "brandId")["schema"]["$ref"],
        "#/components/schemas/BrandId"
    );
    let revoke = operation(&doc, "delete", "brands/{brandId}/api-keys/{keyId}");
    assert_eq!(parameter(revoke, "keyId")["schema"]["format"], "uuid");
    // Every country of the tax table, in either case, and no other.
    let country = pattern(&doc, "Country");
    for a in b'A'..=b'Z' {
        for b in b'A'..=b'Z' {
            let code = String::from_utf8(vec![a, b]).unwrap();
            let taxed = ledger_projections::whatif::tax_rate(&code).is_some();
            assert_eq!(country.is_match(&code), taxed, "{code}");
            assert_eq!(country.is_match(&code.to_lowercase()), taxed, "{code}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bounds_of_the_document_are_the_named_limits() {
    // The limits are stated once, as constants; the document reads them.
    let doc = document().await;
    let schemas = &doc["components"]["schemas"];
    let bound = |component: &str, keyword: &str| schemas[component][keyword].as_u64();
    let max = usage_ledger::http::RECORD_BATCH_ITEMS_MAX as u64;
    assert_eq!(bound("BatchEvents", "maxItems"), Some(max));
    assert_eq!(bound("BatchEvents", "minItems"), Some(1));
    let items = resolve(&doc, &schemas["BatchBody"]["properties"]["events"]);
    assert_eq!(
        items["maxItems"].as_u64(),
        Some(max),
        "the batch body uses it"
    );
    let quantity = ledger_aggregates::ids::QUANTITY_MAX;
    assert_eq!(bound("Quantity", "maximum"), Some(quantity));
    assert_eq!(bound("Quantity", "minimum"), Some(1));
    let page = u64::from(usage_ledger::http::PAGE_ITEMS_MAX);
    assert_eq!(bound("PageLimit", "maximum"), Some(page));
    let ttl = u64::from(ledger_aggregates::hold::HOLD_TTL_SECONDS_MAX);
    assert_eq!(bound("HoldTtl", "maximum"), Some(ttl));
    let label = usage_ledger::auth::api_keys::API_KEY_LABEL_CHARS_MAX as u64;
    assert_eq!(bound("KeyLabel", "maxLength"), Some(label));
    let entries = usage_ledger::engine::METADATA_ENTRIES_MAX as u64;
    assert_eq!(bound("Metadata", "maxProperties"), Some(entries));
    let units = ledger_projections::whatif::SIMULATED_TOP_UP_UNITS_MAX;
    assert_eq!(bound("SimulatedUnits", "maximum"), Some(units));
    let pressure = u64::from(usage_ledger::live::LIVE_PRESSURE_PERCENT_MAX);
    assert_eq!(bound("Pressure", "maximum"), Some(pressure));
    // An optional field is `oneOf: [null, $ref]`.
    let ticket = resolve(
        &doc,
        &schemas["TicketBody"]["properties"]["pressure"]["oneOf"][1],
    );
    assert_eq!(
        ticket["maximum"].as_u64(),
        Some(pressure),
        "the ticket uses it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_are_documented_in_the_query() {
    // The query structs are query parameters (they were once listed as path ones), and
    // finance's period is required there.
    let doc = document().await;
    let history = operation(&doc, "get", "history/{brandId}");
    for name in ["metric", "limit", "period", "before"] {
        let p = parameter(history, name);
        assert_eq!(p["in"], "query", "{name}: {p:#}");
        assert_ne!(p["required"], true, "{name} is optional: {p:#}");
    }
    let finance = parameter(operation(&doc, "get", "finance/overages"), "period");
    assert_eq!(
        (&finance["in"], &finance["required"]),
        (&"query".into(), &true.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_written_with_a_fraction_are_integers() {
    // The document types counts as JSON Schema integers, which include 2.0 and 3e0: the
    // body parser takes them as 2 and 3, and still refuses 2.5.
    let db = TestDb::sqlite();
    let app = spawn_app(&db).await;
    app.register("acme", "starter").await;
    let record = |value: &str| {
        let body = format!(r#"{{"brandId":"acme","metric":"renders_3d","value":{value}}}"#);
        app.client
            .post(format!("{}/api/v1/usage-billing/record", app.base))
            .bearer_auth(&app.admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let two = record("2.0").await.unwrap();
    assert_eq!(two.status(), 201);
    let two: serde_json::Value = two.json().await.unwrap();
    assert_eq!(two["event"]["value"], 2);
    let three: serde_json::Value = record("3e0").await.unwrap().json().await.unwrap();
    assert_eq!(three["state"]["current"], 5, "{three:#}");
    let half = record("2.5").await.unwrap();
    assert_eq!(half.status(), 422);
}
