//! The guard end to end: the real ledger (SQLite, in process) and the example render
//! service in front of it, over HTTP, with the ledger killed and restarted mid-run.

mod support;

use std::time::Duration;

use ledger_guard::{Credential, Credentials};
use reqwest::Method;
use serde_json::json;
use support::{eventually, Ledger, RenderService};

/// How long a test waits for the spool to reach a restarted ledger: the replayer's
/// backoff after a short outage is a few seconds at most.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a read waits for the ledger's read models to show a count.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_are_counted_for_the_callers_brand_never_the_one_in_the_body() {
    // Proves the seed's hole is closed: acme's caller sends globex's brandId in the body,
    // and acme is charged, globex untouched.
    let ledger = Ledger::start().await;
    let acme = ledger.brand_with_key("acme").await;
    let globex = ledger.brand_with_key("globex").await;
    let svc = RenderService::start(&ledger, &[("acme", &acme), ("globex", &globex)]).await;

    let a = svc
        .render(
            "acme",
            json!({ "count": 3, "brandId": "globex", "scene": "chair" }),
        )
        .await;

    assert_eq!(a.status, 201, "{:#}", a.body);
    assert_eq!(a.body["brand"], "acme");
    assert_eq!(a.body["renders"], 3);
    assert_eq!(
        a.body["remaining"], 7,
        "starter holds 10 renders: {:#}",
        a.body
    );
    assert_eq!(ledger.usage("acme", "renders_3d").await, 3);
    assert_eq!(ledger.usage("globex", "renders_3d").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_identity_or_amount_are_refused_before_the_ledger_is_asked() {
    // Proves 401 without an authenticated brand (even with brandId in the body) and 422
    // for a missing or invalid count, and that neither spends anything.
    let ledger = Ledger::start().await;
    let acme = ledger.brand_with_key("acme").await;
    let svc = RenderService::start(&ledger, &[("acme", &acme)]).await;

    let anonymous = svc
        .call(
            Method::POST,
            "/render/3d",
            None,
            Some(json!({ "count": 1, "brandId": "acme" })),
        )
        .await;
    anonymous.assert_problem(401, "unauthenticated");
    for body in [json!({}), json!({ "count": 0 }), json!({ "count": "2" })] {
        svc.render("acme", body)
            .await
            .assert_problem(422, "invalid-amount");
    }
    assert_eq!(ledger.usage("acme", "renders_3d").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_block_quota_is_a_402_carrying_the_ledgers_decision() {
    // Proves a refusal is 402 problem+json with the decision (limit, remaining, policy),
    // and that the refused units are not counted.
    let ledger = Ledger::start().await;
    let acme = ledger.brand_with_key("acme").await;
    let svc = RenderService::start(&ledger, &[("acme", &acme)]).await;
    assert_eq!(svc.render("acme", json!({ "count": 8 })).await.status, 201);

    let refused = svc.render("acme", json!({ "count": 5 })).await;

    refused.assert_problem(402, "quota-exceeded");
    let d = &refused.body["decision"];
    assert_eq!(d["allowed"], false, "{d:#}");
    assert_eq!(d["remaining"], 2, "{d:#}");
    assert_eq!(d["limit"], 10, "{d:#}");
    assert_eq!(d["overagePolicy"], "block", "{d:#}");
    assert_eq!(refused.body["metric"], "renders_3d");
    assert_eq!(ledger.usage("acme", "renders_3d").await, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_sent_again_is_counted_once_and_served_once() {
    // Proves a client cannot get free renders by reusing one X-Request-Id: the retry is
    // recognised by its key, counted nothing and refused (409), while another brand's
    // request with the same id is its own.
    let ledger = Ledger::start().await;
    let acme = ledger.brand_with_key("acme").await;
    let globex = ledger.brand_with_key("globex").await;
    let svc = RenderService::start(&ledger, &[("acme", &acme), ("globex", &globex)]).await;
    let body = json!({ "count": 2 });
    assert_eq!(
        svc.render_with_id("acme", "r-1", body.clone()).await.status,
        201
    );

    let again = svc.render_with_id("acme", "r-1", body.clone()).await;

    again.assert_problem(409, "duplicate-request");
    assert_eq!(ledger.usage("acme", "renders_3d").await, 2);
    assert_eq!(svc.render_with_id("globex", "r-1", body).await.status, 201);
    assert_eq!(ledger.usage("globex", "renders_3d").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_the_ledger_refuses_is_a_502_never_quota_exceeded() {
    // Proves the original's 403-for-everything is gone: a revoked or wrong API key is the
    // service's problem (502, logged), not a refusal of the caller's quota.
    let ledger = Ledger::start().await;
    ledger.brand_with_key("acme").await;
    let svc = RenderService::start(&ledger, &[("acme", "ulk_not-a-real-key")]).await;

    let a = svc.render("acme", json!({ "count": 1 })).await;

    a.assert_problem(502, "ledger-rejected");
    assert!(a.body.get("decision").is_none(), "{:#}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_jwt_listing_several_brands_serves_each_of_them() {
    // Proves the bearer credential: one service token for two brands, each charged its own.
    let ledger = Ledger::start().await;
    ledger.brand_with_key("acme").await;
    ledger.brand_with_key("globex").await;
    let token = ledger.service_token(&["acme", "globex"]);
    let callers = render_service::Callers::new(["acme", "globex"].map(|b| {
        (
            format!("token-{b}"),
            ledger_guard::BrandIdentity::new(b).unwrap(),
        )
    }));
    let svc = RenderService::start_with(
        &ledger.base,
        Credentials::one(Credential::bearer(token)),
        callers,
    )
    .await;

    assert_eq!(svc.render("acme", json!({ "count": 2 })).await.status, 201);
    assert_eq!(
        svc.render("globex", json!({ "count": 4 })).await.status,
        201
    );

    assert_eq!(ledger.usage("acme", "renders_3d").await, 2);
    assert_eq!(ledger.usage("globex", "renders_3d").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ledger_killed_fail_closed_answers_503_and_fail_open_spools_then_replays_exactly_once(
) {
    // Proves the outage contract end to end: while the ledger is dead a fail-closed route
    // answers 503 with Retry-After and counts nothing; a fail-open route serves and spools;
    // after the restart the spool drains, every spooled key sent twice (by the replayer
    // and by hand, as when a first attempt's answer is lost) is counted once, and the
    // ledger's totals equal exactly the units the service accepted.
    let mut ledger = Ledger::start().await;
    let acme = ledger.brand_with_key("acme").await;
    let svc = RenderService::start(&ledger, &[("acme", &acme)]).await;
    let mut renders_accepted = 0;
    let mut calls_accepted = 0;
    for count in [2, 1] {
        assert_eq!(
            svc.render("acme", json!({ "count": count })).await.status,
            201
        );
        renders_accepted += count;
    }
    for _ in 0..2 {
        let a = svc.designs("acme").await;
        assert_eq!(
            (a.status, &a.body["spooled"]),
            (200, &json!(false)),
            "{:#}",
            a.body
        );
        calls_accepted += 1;
    }
    assert_eq!(ledger.usage("acme", "api_calls").await, calls_accepted);

    ledger.kill();

    let closed = svc.render("acme", json!({ "count": 4 })).await;
    closed.assert_problem(503, "ledger-unavailable");
    assert!(
        closed.headers.contains_key("retry-after"),
        "{:?}",
        closed.headers
    );
    for _ in 0..3 {
        let open = svc.designs("acme").await;
        assert_eq!(open.status, 200, "{:#}", open.body);
        assert_eq!(open.body["spooled"], true);
        calls_accepted += 1;
    }
    let spooled = svc.guard.spool().entries();
    assert_eq!(
        spooled.len(),
        3,
        "one entry per request, though layered twice"
    );

    ledger.restart().await;
    // Send each spooled consumption ourselves, racing the replayer: whichever comes
    // second is a retry whose first try reached the ledger.
    let client = svc.guard.client();
    let mut by_hand_replayed = 0;
    for e in &spooled {
        let a = client
            .consume(
                &e.brand,
                &e.metric,
                e.amount,
                (&e.idempotency_key, &e.served_at),
                &e.metadata,
            )
            .await
            .expect("the restarted ledger answers");
        assert!(a.decision.allowed);
        by_hand_replayed += u64::from(a.replayed);
    }
    assert!(
        svc.guard.spool().drained(DRAIN_TIMEOUT).await,
        "the spool drains"
    );
    let stats = svc.guard.spool().stats();

    assert_eq!(stats.spooled, 3);
    assert_eq!(stats.counted + stats.duplicates, 3, "{stats:?}");
    // Each key went twice: whichever sender came first counted it, the other was told
    // it was a repeat.
    assert_eq!(stats.counted, by_hand_replayed, "{stats:?}");
    assert_eq!(stats.duplicates + by_hand_replayed, 3, "{stats:?}");
    let counted = eventually(READ_TIMEOUT, calls_accepted, || {
        ledger.usage("acme", "api_calls")
    })
    .await;
    assert_eq!(counted, calls_accepted, "no loss, no double count");
    assert_eq!(ledger.usage("acme", "renders_3d").await, renders_accepted);
    // A later replay of any spooled key still counts nothing.
    let again = client
        .consume(
            &spooled[0].brand,
            &spooled[0].metric,
            spooled[0].amount,
            (&spooled[0].idempotency_key, &spooled[0].served_at),
            &spooled[0].metadata,
        )
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(ledger.usage("acme", "api_calls").await, calls_accepted);

    // A second outage, left to the replayer alone: it counts what it spooled.
    ledger.kill();
    for _ in 0..2 {
        assert_eq!(svc.designs("acme").await.body["spooled"], true);
        calls_accepted += 1;
    }
    ledger.restart().await;
    assert!(
        svc.guard.spool().drained(DRAIN_TIMEOUT).await,
        "the spool drains"
    );
    let after = svc.guard.spool().stats();
    assert_eq!(after.spooled, 5, "{after:?}");
    assert_eq!(after.counted, stats.counted + 2, "{after:?}");
    let counted = eventually(READ_TIMEOUT, calls_accepted, || {
        ledger.usage("acme", "api_calls")
    })
    .await;
    assert_eq!(counted, calls_accepted, "no loss, no double count");
    assert_eq!(ledger.usage("acme", "renders_3d").await, renders_accepted);
}
